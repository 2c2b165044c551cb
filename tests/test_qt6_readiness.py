"""Qt 6 (QGIS 4) readiness without QGIS 4: the plugin's code passes the rules of QGIS's PyQt5 → PyQt6 migration
script (scripts/check_qt6.py applies them), and declares it in metadata.txt."""
import configparser
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
check_qt6 = pytest.importorskip("check_qt6")


@pytest.fixture(scope="module")
def enums():
    pytest.importorskip("qgis.core")
    return check_qt6.enum_table()


def test_plugin_code_passes_the_pyqt6_migration_rules(enums):
    findings = []
    for path in sorted((REPO / "mtp_qgis").rglob("*.py")):
        findings += check_qt6.check_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)), enums)
    assert findings == []


def test_the_checker_reports_every_rule(enums):
    source = '''
from PyQt5.QtCore import QVariant
from qgis.PyQt.Qt import Qt
from qgis.PyQt.QtCore import QRegExp, QDateTime, QDate
from qgis.PyQt.QtWidgets import QAction, QComboBox, qApp
from qgis.PyQt.QtGui import QPainter
from qgis.core import QgsProcessing, QgsProcessingParameterNumber
import resources_rc
from . import resources_rc
Qt.AlignLeft
Qt.AlignmentFlag.AlignLeft
Qt.MidButton
QPainter.HighQualityAntialiasing
QgsProcessing.TypeVectorPolygon
QgsProcessingParameterNumber.Type.Double
dialog.exec_()
def exec_(self): pass
qApp.processEvents()
QVariant()
QDateTime(2020, 1, 1, 0, 0, 0, 0, 0)
QDateTime(QDate(2020, 1, 1))
menu.addAction(icon, "text", receiver, slot)
QApplication.desktop()
widget.fontMetrics().width("x")
combo.activated[str].connect(f)
request.setAttribute(QNetworkRequest.Attribute.FollowRedirectsAttribute, True)
'''
    found = "\n".join(check_qt6.check_source(source, "sample.py", enums))
    expected = [
        "2: import from qgis.PyQt.QtCore, not PyQt5.QtCore",
        "3: qgis.PyQt.Qt is gone",
        "4: QRegExp is removed in Qt 6",
        "5: QAction lives in QtGui in Qt 6",
        "5: qApp is removed",
        "8: compiled resources",
        "9: compiled resources",
        "10: scoped enum needed in Qt 6: Qt.AlignmentFlag.AlignLeft",
        "12: Qt.MidButton is gone in Qt 6: use Qt.MouseButton.MiddleButton",
        "13: QPainter.HighQualityAntialiasing is gone",
        "14: scoped enum needed in Qt 6: QgsProcessing.SourceType.TypeVectorPolygon",
        "16: exec_() is gone in Qt 6",
        "17: define exec(), not exec_()",
        "18: qApp is removed",
        "19: a null QVariant() is not NULL",
        "20: this QDateTime constructor is gone",
        "21: this QDateTime constructor is gone",
        "22: fragile addAction",
        "23: QApplication.desktop() is removed",
        "24: QFontMetrics.width() is removed",
        "25: activated[str] is removed",
        "26: FollowRedirectsAttribute is removed in Qt 6",
    ]
    for line in expected:
        assert f"sample.py:{line}" in found, found
    assert "sample.py:11:" not in found and "sample.py:15:" not in found  # scoped forms pass


def test_a_guarded_qaction_import_passes(enums):
    source = '''
try:
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction
'''
    assert check_qt6.check_source(source, "guarded.py", enums) == []


def test_metadata_declares_qt6_support():
    meta = configparser.ConfigParser(interpolation=None)
    meta.optionxform = str
    meta.read(REPO / "metadata.txt", encoding="utf-8")
    assert meta["general"]["supportsQt6"] == "True"
    assert meta["general"]["qgisMaximumVersion"] == "4.99"

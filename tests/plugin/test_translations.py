"""Every string the analyst reads goes through tr(), the translation template lists them all, and a
translation compiled by Qt's own lrelease changes what the dock shows."""
import shutil
import subprocess
import sys
from xml.etree import ElementTree

import pytest

from plugin_test_support import REPO

sys.path.insert(0, str(REPO / "scripts"))
import update_translations

TEMPLATE = REPO / "mtp_qgis" / "i18n" / "mtp_qgis.ts"


def test_template_is_current_and_no_shown_string_escapes_tr():
    messages, problems = update_translations.collect()
    assert problems == []
    assert TEMPLATE.read_text(encoding="utf-8") == update_translations.template(messages)
    assert len(messages) > 150
    for text in ("Install backend", "Run", "Semantic segmentation", "Download", "Resample to the model's resolution"):
        assert text in messages


def test_the_check_finds_untranslated_text(tmp_path, monkeypatch):
    sample = tmp_path / "mtp_qgis" / "sample.py"
    sample.parent.mkdir()
    sample.write_text('''
label = QLabel("Hello", parent)
button.setToolTip(f"Runs {name}")
feedback.pushInfo(tr(f"Job {job_id}"))
raise QgsProcessingException("Something broke")
QgsProcessingParameterNumber("X", "Cell size", QgsProcessingParameterNumber.Type.Integer)
def displayName(self):
    return "Segment"
ok = QLabel(tr("Fine"), parent)
''')
    monkeypatch.setattr(update_translations, "REPO", tmp_path)
    strings, problems = update_translations.scan(sample)
    assert strings == [("Fine", 9)]
    lines = sorted(int(p.split(":")[1]) for p in problems)
    assert lines == [2, 3, 4, 5, 6, 8]


def test_a_compiled_translation_changes_the_dock(qgis_app, tmp_path):
    lrelease = shutil.which("lrelease")
    if lrelease is None:
        pytest.skip("lrelease (Debian qttools5-dev-tools, installed by scripts/setup.sh) is missing")
    from qgis.PyQt.QtCore import QCoreApplication, QTranslator

    tree = ElementTree.parse(TEMPLATE)
    german = {"Run": "Ausführen", "Install backend": "Backend installieren", "Models": "Modelle"}
    for message in tree.getroot().iter("message"):
        source = message.findtext("source")
        if source in german:
            translation = message.find("translation")
            translation.text = german[source]
            translation.attrib.pop("type")
    ts, qm = tmp_path / "mtp_qgis_de.ts", tmp_path / "mtp_qgis_de.qm"
    tree.write(ts, encoding="utf-8", xml_declaration=True)
    done = subprocess.run([lrelease, str(ts), "-qm", str(qm)], capture_output=True, text=True)
    assert done.returncode == 0 and qm.is_file(), done.stdout + done.stderr
    assert "Generated 3 translation(s)" in done.stdout, done.stdout
    translator = QTranslator()
    assert translator.load(str(qm))
    QCoreApplication.installTranslator(translator)
    try:
        from mtp_qgis.dock import MtpDockWidget

        dock = MtpDockWidget(None)
        assert dock.run_button.text() == "Ausführen"
        assert dock.backend_panel.install_button.text() == "Backend installieren"
        assert dock.tabs.tabText(1) == "Modelle"
        assert dock.cancel_button.text() == "Cancel"  # untranslated messages stay in English
        dock.shutdown()
        dock.deleteLater()
    finally:
        QCoreApplication.removeTranslator(translator)

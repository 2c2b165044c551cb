"""Translations: every string the analyst reads goes through `tr()`.

`mtp_qgis.ts` (beside this file) is the template translators fill in with Qt Linguist; it is generated from
the tr("...") calls by `python scripts/update_translations.py`. A compiled `mtp_qgis_<locale>.qm` placed here
is loaded for QGIS's user interface locale.
"""
from pathlib import Path

from qgis.core import QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QTranslator

CONTEXT = "mtp_qgis"
FOLDER = Path(__file__).resolve().parent
_translator = None


def tr(text):
    """The translation of `text` for QGIS's locale (the text itself when there is none)."""
    return QCoreApplication.translate(CONTEXT, text)


def install_translator():
    """Load mtp_qgis_<locale>.qm for QGIS's locale if there is one; the path loaded, or None."""
    global _translator
    locale = str(QgsSettings().value("locale/userLocale", "") or "")[:2]
    qm = FOLDER / f"mtp_qgis_{locale}.qm"
    if not locale or not qm.is_file() or _translator is not None:
        return None
    translator = QTranslator()
    if translator.load(str(qm)):
        QCoreApplication.installTranslator(translator)
        _translator = translator
        return qm
    return None

"""Suite-wide set-up. The suite imports in importlib mode, so the helper modules at this level
(qgis_process_support) become importable here."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

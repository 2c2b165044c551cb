"""Suite-wide set-up: settings every test process and every backend the tests start share (they inherit the
environment), and the helper modules at this level (qgis_process_support) made importable (the suite imports in
importlib mode)."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Backends measure CPU options when idle (backend.calibration); in the suite that would be CPU taken from the
# tests running beside them, and results measured on a developer's machine would change the sessions the tests
# use. tests/backend/test_calibration.py measures in folders of its own.
os.environ["MTP_QGIS_CALIBRATE"] = "0"
os.environ["MTP_QGIS_CALIBRATION_DIR"] = tempfile.mkdtemp(prefix="mtp_calibration_")

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
REPO = TESTS.parent
OFFICIAL_FIXTURES = TESTS / "fixtures" / "official"


@pytest.fixture(scope="session")
def official_import(tmp_path_factory):
    """`python -m training import-official` of a reduced official fixture (tests/fixtures/official/NAME), as a
    user runs it, once per session: the training tests check its package against the official outputs and the
    end-to-end tests run it through qgis_process, so the export (10-60 s each) is not repeated per file.
    Returns name -> {"path", "metadata" (the package's), "report" {"loaded", "dropped"}, "summary" (the CLI's)}."""
    out = tmp_path_factory.mktemp("official_imports")
    done: dict[str, dict] = {}

    def run(name: str) -> dict:
        if name not in done:
            folder = OFFICIAL_FIXTURES / name
            proc = subprocess.run([sys.executable, "-m", "training", "import-official", str(folder / "checkpoint.pth"),
                                   "--config", str(folder / "config.py"), "--out", str(out),
                                   "--id", f"test_official_{name}"],
                                  capture_output=True, text=True, cwd=REPO, timeout=900)
            assert proc.returncode == 0, proc.stderr[-2000:]
            summary = json.loads(proc.stdout)
            from training.export import read_metadata
            done[name] = {"path": summary["model"], "metadata": read_metadata(summary["model"]),
                          "report": {"loaded": summary["loaded_tensors"], "dropped": set(summary["dropped_tensors"])},
                          "summary": summary}
        return done[name]

    return run

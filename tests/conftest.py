"""Suite-wide set-up. The suite imports in importlib mode, so the helper modules at this level
(qgis_process_support) become importable here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

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

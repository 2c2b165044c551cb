"""Running a Processing algorithm the way an analyst's script does: qgis_process through scripts/qgis_run.sh (the
plugin from this checkout, a backend it starts itself, HOME=build/demo-home). Shared by the end-to-end tests."""
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_algorithm(algorithm: str, **parameters) -> subprocess.CompletedProcess:
    """qgis_process's run of `algorithm` with PARAMETER=value arguments; the caller judges its exit status."""
    args = [f"{key}={value}" for key, value in parameters.items()]
    return subprocess.run(["bash", str(REPO / "scripts/qgis_run.sh"), algorithm, *args], capture_output=True,
                          text=True, timeout=600)


def qgis_run(algorithm: str, **parameters) -> str:
    """Like run_algorithm for a run that must succeed: its standard output (the algorithm's results)."""
    done = run_algorithm(algorithm, **parameters)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout

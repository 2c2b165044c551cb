"""A full disk, for real: every task writes its result onto a small tmpfs that is nearly full (mounted in
a private mount namespace, so nothing outside sees it). Each says the disk is full, and leaves nothing.
Skipped, with the reason, where the machine does not allow mounting one."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz_support import COGEO, TALLY

PROBE = Path(__file__).resolve().parent / "enospc_probe.py"


@pytest.mark.slow
def test_a_full_disk_is_reported_as_such_and_leaves_nothing(fuzz_models_dir, corpus, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no `unshare` here to mount a small tmpfs in a private mount namespace")
    script = (f'mount -t tmpfs -o size=1m tmpfs "{disk}" && exec "{sys.executable}" "{PROBE}" "{disk}" '
              f'"{fuzz_models_dir}" "{corpus["clean"].path}" "{COGEO}"')
    attempts = [[unshare, "--mount", "sh", "-c", script],  # root
                [unshare, "--mount", "--map-root-user", "sh", "-c", script]]  # unprivileged user namespaces
    reasons = []
    for command in attempts:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode == 0:
            break
        reasons.append(done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])
        if "Traceback" in done.stderr:
            pytest.fail(done.stderr)
    else:
        pytest.skip(f"cannot mount a small tmpfs here: {reasons}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 10
    for case, result in results.items():
        message = result["error"][0] if isinstance(result["error"], list) else result["error"]
        assert "Not enough disk space" in (message or "") and str(disk) in message, (case, result)
        assert result["left"] == [], (case, result)
        if "exit" in result:
            assert result["exit"] == 2, (case, result)
        else:
            assert result["status"] == "failed", (case, result)
    TALLY.notes.append(f"full disk (1 MiB tmpfs, 8 KiB free): {len(results)} runs, every one 'Not enough disk "
                       "space', nothing left")

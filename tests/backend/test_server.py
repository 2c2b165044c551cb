"""The real server as a subprocess: port 0 + state file, token file, cancel mid-job, parent-pid exit."""

import json
import subprocess
import sys
import time

import pytest
import requests

from backend_test_data import COGEO, REPO, start_server, stop


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


@pytest.fixture
def server(tmp_path, models_dir):
    proc, state, token_file = start_server(tmp_path, models_dir)
    yield proc, state, token_file
    stop(proc)


def test_state_file_token_file_and_health(server):
    proc, state, token_file = server
    info = json.loads(state.read_text())
    assert info["pid"] == proc.pid and info["version"]
    assert info["url"].startswith("http://127.0.0.1:") and not info["url"].endswith(":0")
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert requests.get(info["url"] + "/health", timeout=5).json()["status"] == "ok"
    assert requests.get(info["url"] + "/models", timeout=5).status_code == 401
    r = requests.get(info["url"] + "/models", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert r.status_code == 200 and len(r.json()["models"]) == 4
    stop(proc)
    assert proc.returncode == 0 and not state.exists()  # removed on exit


def test_submit_poll_and_cancel_mid_job(server, tmp_path):
    proc, state, token_file = server
    url = json.loads(state.read_text())["url"]
    auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    body = {"task": "semantic_segmentation", "model": "slow", "inputs": [str(COGEO)],
            "outputs": {"raster": str(out_dir / "cancelled.tif")}, "options": {"batch_size": 1}}
    r = requests.post(url + "/jobs", json=body, headers=auth, timeout=10)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    deadline = time.time() + 60
    while True:  # wait until it is really under way: a partial file exists and some tiles are done
        job = requests.get(f"{url}/jobs/{job_id}", headers=auth, timeout=5).json()
        partials = list(out_dir.glob(".cancelled.*.partial.tif"))
        if job["status"] == "running" and job["progress"] > 0 and partials:
            break
        assert job["status"] in ("queued", "running") and time.time() < deadline, job
        time.sleep(0.05)
    assert job["progress"] < 100, "job finished before it could be cancelled; make the slow model slower"
    assert partials[0].name == f".cancelled.{job_id}.partial.tif"

    r = requests.post(f"{url}/jobs/{job_id}/cancel", headers=auth, timeout=5)
    assert r.status_code == 200
    deadline = time.time() + 30
    while (job := requests.get(f"{url}/jobs/{job_id}", headers=auth, timeout=5).json())["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.05)
    assert job["status"] == "cancelled" and job["outputs"] is None and job["progress"] < 100
    assert list(out_dir.iterdir()) == []  # neither the result nor the partial file


def test_server_exits_when_parent_process_is_gone(tmp_path, models_dir):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    proc, state, _ = start_server(tmp_path, models_dir, parent_pid=parent.pid)
    try:
        time.sleep(1.5)
        assert proc.poll() is None  # parent alive: server stays
        parent.kill()
        parent.wait()
        proc.wait(15)
        assert not state.exists()
    finally:
        parent.kill()
        stop(proc)


def test_token_from_environment_wins(tmp_path, models_dir):
    proc, state, token_file = start_server(tmp_path, models_dir, env_token="from-env-token")
    try:
        url = json.loads(state.read_text())["url"]
        ok = requests.get(url + "/jobs", headers={"Authorization": "Bearer from-env-token"}, timeout=5)
        assert ok.status_code == 200
        assert not token_file.exists()
    finally:
        stop(proc)


def test_non_loopback_host_is_refused(tmp_path, models_dir):
    done = subprocess.run([sys.executable, "-m", "backend", "serve", "--host", "0.0.0.0",
                           "--state-file", str(tmp_path / "s.json"), "--token-file", str(tmp_path / "t"),
                           "--models-dir", str(models_dir)], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "not a loopback address" in done.stderr
    assert not (tmp_path / "s.json").exists()


def test_a_lingering_server_outlives_its_parent_until_idle(tmp_path, models_dir):
    # qgis_process starts the backend with --linger: the next call finds it warm through the state file.
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    proc, state, token_file = start_server(tmp_path, models_dir, parent_pid=parent.pid,
                                           more=["--linger", "3", "--config-key", "k1"])
    try:
        published = json.loads(state.read_text())
        assert published["config_key"] == "k1" and published["pid"] == proc.pid
        parent.kill()
        parent.wait()
        auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        started = time.monotonic()
        while time.monotonic() - started < 5:  # requests keep it alive past its 3 s of linger
            assert requests.get(published["url"] + "/models", headers=auth, timeout=5).status_code == 200
            time.sleep(0.5)
        assert proc.poll() is None
        proc.wait(15)  # then idle: it goes, and takes its state file with it
        assert time.monotonic() - started >= 5 + 2
        assert not state.exists()
    finally:
        parent.kill()
        stop(proc)


def test_linger_needs_a_parent(tmp_path, models_dir):
    done = subprocess.run([sys.executable, "-m", "backend", "serve", "--linger", "5", "--state-file",
                           str(tmp_path / "s.json"), "--token-file", str(tmp_path / "t"), "--models-dir",
                           str(models_dir)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--linger needs --parent-pid" in done.stderr

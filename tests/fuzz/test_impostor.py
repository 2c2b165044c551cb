"""The token is never handed to a program that took a dead backend's port: the plugin's client asks the
server to prove it knows the token (an HMAC of a fresh challenge and the port) before every authenticated
request. An impostor cannot answer; one that relays the challenge to the real backend on another port gets
an answer bound to that other port."""

import http.server
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from backend_test_data import REPO, start_server, stop
from fuzz_support import TALLY

PROBE = Path(__file__).resolve().parent / "impostor_probe.py"


class Impostor:
    """Answers like a backend (GET /health, /models, /jobs) on 127.0.0.1:port and records every request's
    headers; with relay_to, passes /health (and its challenge) on to a real backend."""

    def __init__(self, port=0, relay_to=None):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                seen.append((self.command, self.path, dict(self.headers)))
                if self.path.startswith("/health") and relay_to:
                    body = requests.get(relay_to + self.path, timeout=5).content
                elif self.path.startswith("/health"):
                    body = json.dumps({"status": "ok", "version": "0.1.0"}).encode()
                else:
                    body = json.dumps({"models": [], "jobs": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True  # the dead backend's port, at once
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tokens_seen(self, token):
        return [(m, p) for m, p, headers in self.seen if token in json.dumps(headers)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def real_backend(fuzz_models_dir, tmp_path):
    proc, state, token_file = start_server(tmp_path, fuzz_models_dir)
    yield proc, json.loads(state.read_text())["url"], token_file.read_text().strip(), state
    stop(proc)


@pytest.mark.slow
def test_the_client_sends_the_token_only_to_a_server_that_proves_it_holds_it(real_backend):
    from mtp_qgis.client import BackendIdentityError, MtpClient

    _, url, token, _ = real_backend
    assert [m["id"] for m in MtpClient(url, token).models()]  # the real backend proves itself
    for impostor in (Impostor(), Impostor(relay_to=url)):
        try:
            client = MtpClient(impostor.url, token, "the test's token")
            for call in (client.models, client.jobs, lambda c=client: c.job("abc"), lambda c=client: c.submit({})):
                with pytest.raises(BackendIdentityError, match="could not prove"):
                    call()
            assert impostor.seen and impostor.tokens_seen(token) == []
        finally:
            impostor.close()
    TALLY.notes.append("impostor: a fake backend and a relay to the real one got 8 authenticated calls, no token")


@pytest.mark.slow
def test_the_plugin_starts_its_own_backend_when_a_dead_ones_port_is_taken(real_backend, fuzz_models_dir, tmp_path):
    proc, url, token, state = real_backend
    os.kill(proc.pid, signal.SIGKILL)  # dies without removing its state file
    proc.wait()
    assert json.loads(state.read_text())["url"] == url
    port = int(url.rsplit(":", 1)[1])
    try:
        impostor = Impostor(port=port)
    except OSError as exc:  # pragma: no cover - the port was taken by someone else first
        pytest.skip(f"port {port} could not be rebound: {exc}")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTP_QGIS_")}
        env.update(HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="offscreen", MTP_QGIS_TOKEN=token,
                   MTP_QGIS_STATE_FILE=str(state), MTP_QGIS_MODELS_DIR=str(fuzz_models_dir),
                   MTP_QGIS_BACKEND_PYTHON=sys.executable)
        done = subprocess.run([sys.executable, str(PROBE)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["url"] != url and "seg" in result["models"]  # a backend of its own, with our models
        assert impostor.seen, "the plugin never looked at the state file's URL: the test proves nothing"
        assert impostor.tokens_seen(token) == []
    finally:
        impostor.close()

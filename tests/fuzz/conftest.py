"""Fixtures of the fuzz suite: its models, the bad-raster corpus, a local HTTP server that counts requests
(nothing may reach it), and the tally printed at the end of the run."""

import http.server
import socketserver
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fuzz_support (pytest runs in importlib mode)

from fuzz_support import TALLY, build_corpus, write_fuzz_models

from backend.registry import ModelRegistry


class CountingServer:
    """An HTTP server on 127.0.0.1 that records every request (the network must not be touched)."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append((self.command, self.path))
                self.send_response(404)
                self.end_headers()

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def network_spy():
    spy = CountingServer()
    yield spy
    spy.close()


@pytest.fixture(scope="session")
def fuzz_models_dir(tmp_path_factory):
    return write_fuzz_models(tmp_path_factory.mktemp("fuzz_models"))


@pytest.fixture(scope="session")
def fuzz_registry(fuzz_models_dir):
    return ModelRegistry([fuzz_models_dir])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, network_spy):
    return build_corpus(tmp_path_factory.mktemp("corpus"), network_spy.port)


def pytest_terminal_summary(terminalreporter):
    lines = TALLY.lines()
    if lines:
        terminalreporter.section("fuzz suite counts (tests/fuzz/README.md)")
        for line in lines:
            terminalreporter.write_line(line)

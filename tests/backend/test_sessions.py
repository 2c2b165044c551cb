"""ONNX Runtime sessions: provider choice and the per-model cache."""

import os

from backend.sessions import available_providers, get_session
from backend.synthetic_models import write_package


def test_providers_end_with_cpu_and_can_be_narrowed(monkeypatch):
    assert available_providers()[-1] == "CPUExecutionProvider"
    monkeypatch.setenv("MTP_QGIS_PROVIDERS", "cpu")
    assert available_providers() == ["CPUExecutionProvider"]
    monkeypatch.setenv("MTP_QGIS_PROVIDERS", "nonsense")
    assert available_providers() == ["CPUExecutionProvider"]  # never nothing


def test_session_is_cached_until_the_file_changes(tmp_path):
    path = write_package(tmp_path / "m.onnx")
    first = get_session(path)
    assert get_session(path) is first
    write_package(path, seed=7)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert get_session(path) is not first

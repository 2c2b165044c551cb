"""ONNX Runtime sessions: provider choice and the per-model cache."""

import os

from backend.sessions import (ALLOW_SPINNING, DYNAMIC_BLOCK_BASE, available_providers, get_session, physical_cores,
                              session_settings)
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


def test_session_options_are_those_the_benchmarks_report(tmp_path):
    # The tables in benchmarks/results name these settings; a session built otherwise would make them lie.
    session = get_session(write_package(tmp_path / "m.onnx"))
    options = session.get_session_options()
    assert options.get_session_config_entry("session.dynamic_block_base") == str(DYNAMIC_BLOCK_BASE)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if ALLOW_SPINNING else "0")
    assert options.inter_op_num_threads == 1
    assert options.intra_op_num_threads == physical_cores()
    assert f"dynamic block base {DYNAMIC_BLOCK_BASE}" in session_settings()

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


# --- GPU providers, without a GPU: a stubbed provider list and a stub nvidia-smi ---------------------------------

import logging  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

from backend import sessions  # noqa: E402
from backend.errors import BackendError  # noqa: E402

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_provider_order_and_the_device_setting(monkeypatch):
    monkeypatch.delenv("MTP_QGIS_PROVIDERS", raising=False)
    monkeypatch.delenv("MTP_QGIS_DEVICE", raising=False)
    assert sessions.available_providers(GPU_BUILD[::-1]) == GPU_BUILD  # best first, whatever the build's order
    assert sessions.available_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    monkeypatch.setenv("MTP_QGIS_PROVIDERS", "cuda,cpu")  # skip TensorRT's engine build
    assert sessions.available_providers(GPU_BUILD) == GPU_BUILD[1:]
    monkeypatch.delenv("MTP_QGIS_PROVIDERS")
    monkeypatch.setenv("MTP_QGIS_DEVICE", "cpu")
    assert sessions.available_providers(GPU_BUILD) == ["CPUExecutionProvider"]
    monkeypatch.setenv("MTP_QGIS_DEVICE", "cuda")
    assert sessions.available_providers(GPU_BUILD) == GPU_BUILD[:2]  # no quiet CPU fallback
    with pytest.raises(BackendError, match="MTP_QGIS_DEVICE=cuda, but this ONNX Runtime .* offers no CUDA provider"):
        sessions.available_providers(["CPUExecutionProvider"])
    monkeypatch.setenv("MTP_QGIS_DEVICE", "gpu")
    with pytest.raises(BackendError, match="MTP_QGIS_DEVICE='gpu' is not one of auto, cpu, cuda"):
        sessions.available_providers(GPU_BUILD)


def test_each_model_falls_back_provider_by_provider_with_the_reason(tmp_path, monkeypatch, caplog):
    path = write_package(tmp_path / "m.onnx")
    tried = []

    def factory(*args, providers, **kwargs):  # TensorRT fails to build its engine; CUDA is left out quietly
        tried.append(list(providers))
        if providers[0] == "TensorrtExecutionProvider":
            raise RuntimeError("TensorRT EP failed to create engine from network")
        return sessions.Session(*args, providers=providers, **kwargs)

    with caplog.at_level(logging.WARNING, logger="backend.sessions"):
        session, fallbacks = sessions.create_session(path, GPU_BUILD, 1, factory=factory)
    assert tried == [GPU_BUILD, GPU_BUILD[1:]]
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert [p for p, _ in fallbacks] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert "failed to create engine" in fallbacks[0][1] and "doctor" in fallbacks[1][1]
    assert "m.onnx: TensorrtExecutionProvider could not create a session" in caplog.text
    assert "m.onnx: CUDAExecutionProvider not used" in caplog.text
    # The TensorRT options: engine and timing cache in a folder per model content, a batch profile.
    options = sessions.trt_options(path)
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"]
    assert options["trt_engine_cache_path"].endswith(sessions.model_digest(path))
    assert options["trt_profile_min_shapes"].endswith(":1x3x64x64")
    assert options["trt_profile_max_shapes"].endswith(f":{sessions.MAX_GPU_BATCH}x3x64x64")

    def broken(*args, **kwargs):
        raise RuntimeError("no provider at all")
    with pytest.raises(sessions.ModelPackageError, match="could not load .*CPUExecutionProvider: no provider at all"):
        sessions.create_session(path, ["CPUExecutionProvider"], 1, factory=broken)


def test_cached_session_reports_the_fallbacks(tmp_path, monkeypatch):
    monkeypatch.delenv("MTP_QGIS_DEVICE", raising=False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: GPU_BUILD)  # as onnxruntime-gpu lists them
    path = write_package(tmp_path / "m.onnx")
    info = sessions.session_info(path)
    assert info.provider == "CPUExecutionProvider" and info.device.startswith("CPU (")
    assert [p for p, _ in info.fallbacks] == GPU_BUILD[:2] and info.batch_size == sessions.CPU_BATCH
    assert sessions.get_session(path).bind_device is None  # IO binding is for the GPU
    monkeypatch.setenv("MTP_QGIS_DEVICE", "cuda")
    with pytest.raises(BackendError, match="MTP_QGIS_DEVICE=cuda, but no GPU provider could run m.onnx"):
        sessions.session_info(path)


def test_io_binding_gives_the_same_outputs_as_run(tmp_path):
    path = write_package(tmp_path / "m.onnx", spatial=True)
    plain = sessions.Session(str(path), providers=["CPUExecutionProvider"])
    bound = sessions.Session(str(path), providers=["CPUExecutionProvider"], bind_device="cpu")
    name = plain.get_inputs()[0].name
    rng = np.random.default_rng(3)
    for batch in (3, 3, 1, 4):  # the device buffer is reused, then re-made when the shape changes
        x = rng.normal(size=(batch, 3, 64, 64)).astype(np.float32)
        np.testing.assert_array_equal(bound.run(None, {name: x})[0], plain.run(None, {name: x})[0])


def stub_nvidia_smi(folder, output, code=0):
    """An `nvidia-smi` on PATH that prints `output` (CSV, as --query-gpu prints it) and exits with `code`."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit {code}\n")  # builtins only: PATH is the stub's
    script.chmod(0o755)
    return folder


def test_gpus_and_the_batch_that_fits_their_free_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(stub_nvidia_smi(tmp_path / "bin", "0, NVIDIA H200, 580.159.03, 143771, 140000")))
    gpus, why = sessions.nvidia_gpus()
    assert gpus == [sessions.Gpu(0, "NVIDIA H200", "580.159.03", 143771, 140000)] and why == ""
    monkeypatch.setenv("PATH", str(stub_nvidia_smi(tmp_path / "bad", "NVIDIA-SMI has failed", code=9)))
    assert sessions.nvidia_gpus() == ([], "nvidia-smi failed (exit 9): NVIDIA-SMI has failed")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert sessions.nvidia_gpus()[1] == "nvidia-smi is not on PATH (no NVIDIA driver installed)"
    gib = 1 << 30
    assert sessions.gpu_batch_size(8 * gib, gib) == 4          # half of the free memory
    assert sessions.gpu_batch_size(140 * gib, gib) == sessions.MAX_GPU_BATCH
    assert sessions.gpu_batch_size(gib, 4 * gib) == 1           # never below one tile
    # The probe runs one tile and reads what it took: 1 GiB free less, 6 GiB left -> 3 tiles.
    readings = iter([7 * 1024, 6 * 1024])
    session = sessions.Session(str(write_package(tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    assert sessions.probe_batch_size(session, lambda: next(readings)) == 3

"""`python -m backend doctor` without a GPU: what it says about the ONNX Runtime build, a GPU that nvidia-smi
reports (a stub on PATH), the CUDA/cuDNN/TensorRT libraries of the GPU providers, and the timing per provider."""

import json
import os
import subprocess
import sys

import onnxruntime as ort
import pytest

from backend import doctor, sessions
from backend.synthetic_models import write_package
from backend_test_data import REPO

H200 = "0, NVIDIA H200, 580.159.03, 143771, 140000"


def stub_path(tmp_path, line):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '%s\\n' '{line}'\n")
    (folder / "nvidia-smi").chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.slow
def test_doctor_on_a_cpu_build_with_a_gpu_says_what_to_install(tmp_path):
    env = dict(os.environ, PATH=stub_path(tmp_path, H200), MTP_QGIS_DEVICE="auto")
    done = subprocess.run([sys.executable, "-m", "backend", "doctor", "--seconds", "0.3"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"ONNX Runtime {ort.__version__} (onnxruntime, CPU build)" in text
    assert "GPU 0: NVIDIA H200, driver 580.159.03, 140000 of 143771 MiB free" in text
    assert "This machine has NVIDIA H200 but ONNX Runtime is the CPU build: python mtp_qgis/backend_installer.py " \
           "--device cuda" in text
    timing = next(line for line in text.splitlines() if line.strip().startswith("CPUExecutionProvider"))
    assert "mtp_seg_default 512 px, batch 1" in timing and "Mpx/s" in timing

    done = subprocess.run([sys.executable, "-m", "backend", "doctor", "--seconds", "0", "--json"], cwd=REPO,
                          env=dict(os.environ, PATH=str(tmp_path / "nothing")), capture_output=True, text=True,
                          timeout=300)
    report = json.loads(done.stdout)
    assert report["gpus"] == [] and report["gpu_note"] == "nvidia-smi is not on PATH (no NVIDIA driver installed)"
    assert report["timings"] == [] and report["onnxruntime"]["providers"][-1] == "CPUExecutionProvider"


def test_libraries_found_missing_or_broken_each_with_its_fix(tmp_path):
    (tmp_path / "libcudnn.so.9").write_bytes(b"not a library")
    libraries = {lib.file: lib for lib in doctor.find_libraries(13, [tmp_path])}
    assert set(libraries) >= {"libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcufft.so.12",
                              "libcurand.so.10", "libcudnn.so.9", "libnvinfer.so.10", "libnvonnxparser.so.10"}
    cudnn = libraries["libcudnn.so.9"]
    assert cudnn.path == str(tmp_path / "libcudnn.so.9") and not cudnn.loads
    assert cudnn.error.startswith("found but does not load") and "backend_installer.py --device cuda" in cudnn.fix
    trt = libraries["libnvinfer.so.10"]
    assert not trt.loads and trt.error == "not found" and "tensorrt-cu13-libs>=10,<11" in trt.fix
    assert [lib.file for lib in doctor.find_libraries(12, [])][1] == "libcudart.so.12"  # a CUDA 12 build's names


def test_report_of_a_gpu_build_whose_libraries_are_missing(tmp_path, monkeypatch):
    # onnxruntime-gpu lists TensorRT and CUDA; TensorRT's libraries are missing here (CUDA's may be present: torch's
    # wheels bring them), and this CPU build cannot enable either provider.
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(sessions.PREFERRED_PROVIDERS))
    monkeypatch.setattr(ort, "cuda_version", "13.0", raising=False)
    monkeypatch.setenv("PATH", stub_path(tmp_path, H200))
    monkeypatch.delenv("MTP_QGIS_DEVICE", raising=False)
    monkeypatch.delenv("MTP_QGIS_PROVIDERS", raising=False)
    model = write_package(tmp_path / "m.onnx")
    report = doctor.report(seconds=0.2, model=model)
    assert report["onnxruntime"]["cuda_version"] == "13.0"
    for lib in report["libraries"]:
        assert (lib["loads"] and lib["path"]) or (lib["fix"] and any(a.startswith(f"{lib['what']} ({lib['file']}")
                                                                     for a in report["advice"]))
    nvinfer = next(lib for lib in report["libraries"] if lib["file"] == "libnvinfer.so.10")
    assert not nvinfer["loads"] and nvinfer["needed_by"] == "TensorRT provider"
    timings = {t["provider"]: t for t in report["timings"]}
    assert list(timings) == list(sessions.PREFERRED_PROVIDERS)  # each provider that might work is tried
    assert timings["CUDAExecutionProvider"]["error"] == "ONNX Runtime did not enable it"
    assert timings["CPUExecutionProvider"]["megapixels_per_s"] > 0
    text = doctor.format_report(report)
    assert "TensorRT 10" in text and "MISSING (not found)" in text and "To do:" in text

"""benchmarks/gpu_check.sh, the GPU check a lent GPU machine runs once, dry-run on the CPU (`--cpu-smoke`): every
section's code path (the project's finetune loop against plain PyTorch, the MTP step from the carried sample's tar,
a package made through import-official and its fp16 conversion, torch vs ONNX Runtime parity, throughput of bare
session.run against the backend's session and job) runs at tiny sizes and lands in the results file. And the
Pillow stand-in that lets import-official's parity read the sample where GDAL is missing (the GPU machine)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def test_cpu_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.md"
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHON=sys.executable)
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["smoke"] and data["skipped"] == [], data["skipped"]
    sections = data["sections"]
    assert set(sections) == {"(a) finetune step", "(a) MTP multi-task step", "(c) parity", "(b) torch inference",
                             "(b) inference", "(b) backend job vs bare session.run"}
    loops = [row["loop"] for row in sections["(a) finetune step"]]
    assert loops == ["project (training.engine.train_loop)", "plain PyTorch"]
    assert all(row["s per step"] > 0 for row in sections["(a) finetune step"])
    assert sections["(a) MTP multi-task step"][0]["images per step"] == 3
    parity = {row["against torch fp32 on cpu"]: row for row in sections["(c) parity"]}
    assert parity["fp32 package, ONNX Runtime CPU"]["argmax agreement"] == 1.0
    assert parity["fp16 package, ONNX Runtime CPU"]["argmax agreement"] >= 0.99
    models = {row["model"] for row in sections["(b) inference"]}
    assert models == {"mtp_seg_upernet_vit_rvsa", "mtp_seg_upernet_vit_rvsa_fp16", "mtp_seg_default",
                      "mtp_seg_default_fp16"}
    assert all(row["bare Mpx/s"] > 0 and row["backend session Mpx/s"] > 0 for row in sections["(b) inference"])
    assert all(0 < row["job / bare"] for row in sections["(b) backend job vs bare session.run"])
    text = out.read_text()
    assert text.startswith("# GPU check (issue 15) — CPU smoke run, not a measurement")
    assert "`python -m backend doctor` there:" in text and "## Skipped\n\n- nothing" in text
    assert "skipped: nothing" in done.stdout


def test_without_gdal_the_importer_reads_the_sample_through_pillow():
    from training.official.config_file import read_official_config
    from training.official.importer import sample_tiles
    from training.official.models import read_spec
    config = REPO / "tests" / "fixtures" / "official" / "seg_upernet_vit_rvsa" / "config.py"
    expected = sample_tiles(read_spec(read_official_config(config), config), 3).numpy()
    script = f"""
import sys, numpy as np
sys.modules["osgeo"] = None  # as on the GPU machine: `from osgeo import gdal` fails
sys.path.insert(0, {str(REPO / 'benchmarks')!r})
import official_package
assert official_package.pillow_gdal()
from training.official.config_file import read_official_config
from training.official.importer import sample_tiles
from training.official.models import read_spec
config = {str(config)!r}
np.save(sys.argv[1], sample_tiles(read_spec(read_official_config(config), config), 3).numpy())
"""
    out = REPO / "build" / "pillow_tiles.npy"
    out.parent.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr[-2000:]
    try:
        np.testing.assert_array_equal(np.load(out), expected)
    finally:
        out.unlink()

"""Run inside a private mount namespace by test_enospc.py: DISK is a small tmpfs that is nearly full. Every
task writes its result there, through the server's job path (JobManager) and the command line; prints JSON
{case: {"error": message, "exit": code, "left": files left in DISK besides the filler}}."""

import contextlib
import io
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from backend import cli  # noqa: E402
from backend.jobs import JobManager, JobSpec  # noqa: E402
from backend.registry import ModelRegistry  # noqa: E402

disk, models, small, large = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
FILLER = disk / "filler"
CASES = {  # name -> task, model, outputs (names in DISK), options
    "segmentation": ("semantic_segmentation", "seg", {"raster": "r.tif"}, {}),
    "change detection": ("change_detection", "change", {"raster": "c.tif", "polygons": "c.gpkg"}, {}),
    "scene classification": ("scene_classification", "scene", {"vector": "s.gpkg"}, {"cell_size": 8}),
    "detection": ("detection", "det", {"vector": "d.gpkg"}, {}),
    "rotated detection": ("rotated_detection", "rdet", {"vector": "rd.gpkg"}, {}),
}


def fill(free_bytes: int) -> None:
    """Empty DISK, then fill it but for about free_bytes."""
    for path in disk.iterdir():
        path.unlink()
    with open(FILLER, "wb", buffering=0) as f:  # unbuffered: nothing left to flush when the disk is full
        chunk = b"\0" * 4096
        try:
            while f.write(chunk):
                pass
        except OSError:
            pass
    size = FILLER.stat().st_size
    with open(FILLER, "r+b") as f:
        f.truncate(max(0, size - free_bytes))


def left() -> list[str]:
    return sorted(p.name for p in disk.iterdir() if p != FILLER)


results = {}
manager = JobManager(ModelRegistry([models]))
for name, (task, model, outputs, options) in CASES.items():
    raster = large if task == "semantic_segmentation" else small  # a small result still fills the last 8 KiB
    inputs = [raster, raster] if task == "change_detection" else [raster]
    paths = {k: str(disk / v) for k, v in outputs.items()}
    fill(8192)
    job = manager.submit(JobSpec(task, model, inputs, paths, None, options))
    while manager.get(job.id).status in ("queued", "running"):
        time.sleep(0.05)
    results[f"{name} (server job)"] = {"status": job.status, "error": job.error, "left": left()}
    fill(8192)
    argv = ["run", "--task", task, "--models-dir", str(models), "--model", model, "--out", paths[next(iter(paths))]]
    for path in inputs:
        argv += ["--input", path]
    if "polygons" in paths:
        argv += ["--polygons", paths["polygons"]]
    if "cell_size" in options:
        argv += ["--cell-size", str(options["cell_size"])]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli.main(argv)
    results[f"{name} (command line)"] = {"exit": code, "error": stderr.getvalue().strip().splitlines()[-1:],
                                         "left": left()}
manager.shutdown()
print(json.dumps(results))

"""Paths of the real sample rasters, the tile geometry of the test models, and the backend started in-process
or as a server process."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = (REPO.parent / "shared" / "data").resolve()
COGEO = DATA / "aerial_geotiff" / "cogeo.tif"
RGB_BYTE = DATA / "aerial_geotiff" / "RGB.byte.tif"
LOVEDA_PNG = DATA / "loveda" / "img_dir" / "0.png"
NAIP = DATA / "naip_change" / "m_4709963_se_14_1_20090818.tif"
NAIP_2020 = DATA / "naip_change" / "m_4709963_se_14_1_20200831.tif"  # 934x723, origin 1 m off NAIP's
LEVIR = DATA / "levir_cd"  # A/ before, B/ after: 256x256 RGB PNG pairs without CRS
LEVIR_PAIRS = ["test_102_0512_0000.png", "test_2_0000_0512.png", "train_36_0512_0512.png"]

TILE, OVERLAP = 64, 16
CHANGE_THRESHOLD = 0.4  # of the synthetic change models: mean |normalised after - before| above it is change
SCENE_GAIN = 10.0  # of the synthetic scene models: logit k = gain x mean normalised band k


def vrt_over_copy(raster: Path, folder: Path, name: str = "mosaic.vrt") -> tuple[Path, Path]:
    """A VRT over a copy of `raster`, and that copy. Unlinking the copy later gives a raster that opens
    (checks pass when the job is planned) but fails when its pixels are read, mid-job."""
    import shutil

    from osgeo import gdal

    source = folder / f"{Path(name).stem}_source{raster.suffix}"
    shutil.copy(raster, source)
    vrt = folder / name
    gdal.BuildVRT(str(vrt), [str(source)]).FlushCache()
    return vrt, source


DOTA_PNG = DATA / "dota" / "images" / "P0706.png"  # 1111x1182 RGB, no CRS


def burn_objects(src: Path, dst: Path, objects=(), src_win=None, darken: float = 0.5, gt=None, srs: str | None = None,
                 nodata: float | None = None) -> Path:
    """A copy of a real raster (or of its src_win = (x, y, w, h) crop) for the detection stand-in: bands 1-3,
    pixels times `darken` (0.5: nothing reaches the stand-in's brightness ramp, so it finds only the
    objects), then each object (x0, y0, mask, rgb) burnt in: the pixels under the bool mask placed at
    column x0, row y0 set to rgb. A .png dst has no georeferencing; a .tif keeps the source's (moved to the
    crop), or gets gt/srs (WKT or authid) when given. nodata: set on every band of the copy."""
    import numpy as np
    from osgeo import gdal, osr

    gdal.UseExceptions()
    ds = gdal.Open(str(src))
    x, y, w, h = src_win or (0, 0, ds.RasterXSize, ds.RasterYSize)
    data = (ds.ReadAsArray(x, y, w, h)[:3].astype(np.float64) * darken).astype(np.uint8)
    for x0, y0, mask, rgb in objects:
        mh, mw = mask.shape
        for b in range(3):
            data[b, y0 : y0 + mh, x0 : x0 + mw][mask] = rgb[b]
    mem = gdal.GetDriverByName("MEM").Create("", w, h, 3, gdal.GDT_Byte)
    for b in range(3):
        mem.GetRasterBand(b + 1).WriteArray(data[b])
        if nodata is not None:
            mem.GetRasterBand(b + 1).SetNoDataValue(nodata)
    if dst.suffix.lower() == ".tif":
        source_gt = ds.GetGeoTransform(can_return_null=True)
        if gt is None and source_gt is not None:
            gt = (source_gt[0] + x * source_gt[1] + y * source_gt[2], source_gt[1], source_gt[2],
                  source_gt[3] + x * source_gt[4] + y * source_gt[5], source_gt[4], source_gt[5])
        if gt is not None:
            mem.SetGeoTransform(gt)
        if srs is not None:
            ref = osr.SpatialReference()
            ref.SetFromUserInput(srs)
            mem.SetSpatialRef(ref)
        elif ds.GetSpatialRef() is not None:
            mem.SetSpatialRef(ds.GetSpatialRef())
        driver = "GTiff"
    else:
        driver = "PNG"
    gdal.GetDriverByName(driver).CreateCopy(str(dst), mem)
    return dst


@contextmanager
def api_client(registry, token: str):
    """The real app in-process (FastAPI TestClient); its job workers are shut down afterwards."""
    from fastapi.testclient import TestClient

    from backend.api import create_app
    app = create_app(registry, token)
    with TestClient(app) as c:
        yield c
    app.state.jobs.shutdown()


def start_server(tmp_path: Path, models_dir: Path, parent_pid: int | None = None, env_token: str | None = None,
                 more: list[str] | None = None):
    """`python -m backend serve` on a free port with its state and token files under tmp_path; returns once
    the state file says it listens: (process, state file, token file)."""
    state, token_file = tmp_path / "state" / "backend.json", tmp_path / "config" / "token"
    cmd = [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", "0",
           "--state-file", str(state), "--token-file", str(token_file), "--models-dir", str(models_dir)]
    if parent_pid:
        cmd += ["--parent-pid", str(parent_pid)]
    cmd += more or []
    env = {k: v for k, v in os.environ.items() if k != "MTP_QGIS_TOKEN"}
    if env_token:
        env["MTP_QGIS_TOKEN"] = env_token
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while not state.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"server wrote no state file: {proc.communicate()[0]}")
        time.sleep(0.05)
    return proc, state, token_file


def stop(proc):
    """SIGTERM (a graceful stop that removes the state file), then kill if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

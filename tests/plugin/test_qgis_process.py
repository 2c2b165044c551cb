"""qgis_process loads the plugin from a temporary profile and runs mtp:segment, a model and a batch loop."""
import re
from pathlib import Path
import time

import pytest
from osgeo import gdal
from qgis.core import QgsRasterLayer

from plugin_test_support import COGEO, DATA, LOVEDA_PNG, run_qgis_process

SHIPPED_MODEL = Path(__file__).resolve().parent / "data" / "segment_and_count.model3"

pytestmark = [pytest.mark.usefixtures("plugin"), pytest.mark.slow]


@pytest.fixture()
def env(qgis_process_env, backend):
    return dict(qgis_process_env, MTP_QGIS_BACKEND_URL=backend["url"])


def test_plugin_is_listed_and_loaded(env):
    done, listing = run_qgis_process(env, "plugins")
    assert listing["plugins"]["mtp_qgis"]["loaded"] is True, done.stdout + done.stderr
    done, _ = run_qgis_process(env, "help", "mtp:segment")
    assert done.returncode == 0, done.stderr
    for name in ("INPUT", "EXTENT", "MODEL", "OUTPUT"):
        assert name in done.stdout


def test_run_segment_with_defaults(env, out_dir):
    out = out_dir / "qp.tif"
    done, result = run_qgis_process(env, "run", "mtp:segment", "--", f"INPUT={COGEO}", f"OUTPUT={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert result["results"]["OUTPUT"] == str(out)
    dataset = gdal.Open(str(out))
    assert (dataset.RasterXSize, dataset.RasterYSize) == (1024, 1024)
    assert (out_dir / "qp.qml").is_file()


def test_run_segment_with_extent_in_wgs84(env, out_dir):
    layer = QgsRasterLayer(str(COGEO), "c", "gdal")
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject

    box = QgsCoordinateTransform(layer.crs(), QgsCoordinateReferenceSystem("EPSG:4326"),
                                 QgsProject.instance()).transformBoundingBox(layer.extent())
    # the western half, given in lon/lat
    extent = f"{box.xMinimum()},{(box.xMinimum() + box.xMaximum()) / 2},{box.yMinimum()},{box.yMaximum()} [EPSG:4326]"
    out = out_dir / "west.tif"
    done, _ = run_qgis_process(env, "run", "mtp:segment", "--", f"INPUT={COGEO}", f"EXTENT={extent}",
                               "MODEL=mtp_seg_default", f"OUTPUT={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    result = QgsRasterLayer(str(out), "r", "gdal")
    assert result.crs().authid() == "EPSG:3857"
    assert result.width() == pytest.approx(512, abs=2)
    assert result.height() == pytest.approx(1024, abs=2)


def test_run_segment_on_raster_without_crs(env, out_dir):
    out = out_dir / "png.tif"
    done, _ = run_qgis_process(env, "run", "mtp:segment", "--", f"INPUT={LOVEDA_PNG}", f"OUTPUT={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    result = QgsRasterLayer(str(out), "r", "gdal")
    assert not result.crs().isValid()
    assert result.extent() == QgsRasterLayer(str(LOVEDA_PNG), "s", "gdal").extent()


def test_errors_reach_the_command_line(env, out_dir):
    done, _ = run_qgis_process(env, "run", "mtp:segment", "--", f"INPUT={COGEO}", "MODEL=no_such_model",
                               f"OUTPUT={out_dir / 'x.tif'}")
    assert done.returncode != 0
    assert "no_such_model" in done.stdout + done.stderr
    bad_token = dict(env, MTP_QGIS_TOKEN="wrong")
    done, _ = run_qgis_process(bad_token, "run", "mtp:segment", "--", f"INPUT={COGEO}", f"OUTPUT={out_dir / 'x.tif'}")
    assert done.returncode != 0
    # The backend cannot prove it holds that token, so it is not even sent (docs/contract.md §2).
    assert "could not prove" in done.stdout + done.stderr and "MTP_QGIS_TOKEN" in done.stdout + done.stderr
    assert list(out_dir.iterdir()) == []


def test_model3_file(env, out_dir):
    path = SHIPPED_MODEL  # as saved from the graphical modeler (see model_builder.py)
    classes, table = out_dir / "classes.tif", out_dir / "counts.gpkg"
    done, result = run_qgis_process(env, "run", str(path), "--", f"image={COGEO}",
                                    f"segment:classes={classes}", f"count:class_table={table}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert classes.is_file() and table.is_file()


def test_batch_loop(env, out_dir):
    """The shell form of batch processing: one qgis_process call per input."""
    inputs = [COGEO, LOVEDA_PNG, DATA / "loveda" / "img_dir" / "0.png"]
    for i, src in enumerate(inputs):
        done, _ = run_qgis_process(env, "run", "mtp:segment", "--", f"INPUT={src}", f"OUTPUT={out_dir / f'b{i}.tif'}")
        assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out_dir.glob("b*.tif")) == ["b0.tif", "b1.tif", "b2.tif"]


def test_qgis_process_starts_its_own_backend_when_none_is_configured(qgis_process_env, models_dir, out_dir, sandbox):
    env = dict(qgis_process_env, MTP_QGIS_MODELS_DIR=str(models_dir),
               MTP_QGIS_STATE_FILE=str(sandbox / "state" / "qgis_process_own.json"), MTP_QGIS_BACKEND_LINGER_S="0")
    env.pop("MTP_QGIS_BACKEND_URL", None)
    out = out_dir / "own.tif"
    done, _ = run_qgis_process(env, "run", "mtp:segment", "--", f"INPUT={LOVEDA_PNG}", f"OUTPUT={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert out.is_file()
    started = re.search(r"Backend http://127.0.0.1:\d+ \(pid (\d+), started by this QGIS from ", done.stdout)
    pid = int(started.group(1))
    # qgis_process has exited; the backend it started follows it (--parent-pid polls once a second)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and backend_alive(pid):
        time.sleep(0.2)
    assert not backend_alive(pid)


def backend_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


def test_consecutive_qgis_process_calls_reuse_one_warm_backend(qgis_process_env, models_dir, out_dir, sandbox):
    # A shell loop of qgis_process calls: the backend the first call starts lingers, idle, for the next one
    # (15 s here: a qgis_process start takes seconds on a loaded machine);
    # a call that would start it differently (another models folder) starts its own; idle, both go.
    env = dict(qgis_process_env, MTP_QGIS_MODELS_DIR=str(models_dir), MTP_QGIS_BACKEND_LINGER_S="15",
               MTP_QGIS_STATE_FILE=str(sandbox / "state" / "qgis_process_warm.json"))
    env.pop("MTP_QGIS_BACKEND_URL", None)
    pids = []
    for i, extra in enumerate((models_dir, models_dir, out_dir)):
        done, _ = run_qgis_process(dict(env, MTP_QGIS_MODELS_DIR=str(extra)), "run", "mtp:segment", "--",
                                   f"INPUT={LOVEDA_PNG}", f"OUTPUT={out_dir / f'warm{i}.tif'}")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        line = re.search(r"Backend http://127.0.0.1:\d+ \(pid (\d+)(, started by this QGIS)?", done.stdout)
        pids.append((int(line.group(1)), bool(line.group(2))))
    assert pids[0][1], pids  # the first call started it
    assert pids[1] == (pids[0][0], False)  # the second call found the first one's backend, warm
    assert pids[2][1] and pids[2][0] != pids[0][0]  # other models folder: a backend of its own
    assert backend_alive(pids[0][0])  # qgis_process has exited, the first backend waits for the next call
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and (backend_alive(pids[0][0]) or backend_alive(pids[2][0])):
        time.sleep(0.5)
    assert not backend_alive(pids[0][0]) and not backend_alive(pids[2][0])

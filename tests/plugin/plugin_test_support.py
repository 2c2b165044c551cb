"""Helpers shared by the plugin tests (conftest.py holds the fixtures)."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
COGEO = DATA / "aerial_geotiff" / "cogeo.tif"
LOVEDA_PNG = DATA / "loveda" / "img_dir" / "2.png"
NAIP_2009 = DATA / "naip_change" / "m_4709963_se_14_1_20090818.tif"
NAIP_2020 = DATA / "naip_change" / "m_4709963_se_14_1_20200831.tif"
LEVIR = DATA / "levir_cd"
BACKEND_PYTHON = os.environ.get("MTP_TEST_BACKEND_PYTHON", str(REPO / ".venv" / "bin" / "python"))
TOKEN = "plugin-tests-token"
# The machine's pip cache (read before the fixtures move HOME): the backend installer test reuses its wheels.
PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")

CLASSES = [
    {"id": 0, "name": "reddish", "color": "#d94f3d"},
    {"id": 1, "name": "greenish", "color": "#3a8f3a"},
    {"id": 2, "name": "bluish", "color": "#2f6fbf"},
    {"id": 3, "name": "dark", "color": "#202020"},
]


def _package_metadata(name, tile_size, overlap, gsd_m):
    return {
        "format_version": 1, "task": "semantic_segmentation", "name": name,
        "description": "test model: argmax of normalised colour channels", "classes": CLASSES,
        "input": {"bands": [1, 2, 3], "band_names": ["red", "green", "blue"], "scale": 255.0,
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "tile_size": tile_size, "tile_overlap": overlap, "gsd_m": gsd_m,
        "output": {"type": "logits", "layout": "NCHW"},
        "metrics": {"mIoU": 0.0, "evaluated_on": "nothing"}, "training": {"by": "tests/plugin/conftest.py"},
    }


def write_colour_model(path, tile_size=256, overlap=32, gsd_m=0.6, hidden_layers=0):
    """A segmentation ONNX model whose class is the dominant colour (plus `hidden_layers` 3x3 convs
    of 32 channels that only make it slow, for the cancel test)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    colour_w = np.zeros((4, 3, 1, 1), np.float32)
    colour_w[0, 0] = colour_w[1, 1] = colour_w[2, 2] = 1.0
    colour_w[3, :, 0, 0] = -1.0
    colour_b = np.array([0, 0, 0, -1.5], np.float32)
    inits += [numpy_helper.from_array(colour_w, "colour_w"), numpy_helper.from_array(colour_b, "colour_b")]
    nodes.append(helper.make_node("Conv", ["input", "colour_w", "colour_b"], ["colour"]))
    last = "colour"
    if hidden_layers:
        w = rng.normal(0, 0.05, (32, 3, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "h_in"))
        nodes.append(helper.make_node("Conv", ["input", "h_in"], ["h0"], pads=[1, 1, 1, 1]))
        for i in range(hidden_layers):
            w = rng.normal(0, 0.05, (32, 32, 3, 3)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"h_w{i}"))
            nodes.append(helper.make_node("Conv", [f"h{i}", f"h_w{i}"], [f"h{i + 1}"], pads=[1, 1, 1, 1]))
        w = np.zeros((4, 32, 1, 1), np.float32)  # zero weights: the slow branch does not change the answer
        inits.append(numpy_helper.from_array(w, "h_out"))
        nodes.append(helper.make_node("Conv", [f"h{hidden_layers}", "h_out"], ["slow"]))
        nodes.append(helper.make_node("Add", ["colour", "slow"], ["summed"]))
        last = "summed"
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    graph = helper.make_graph(
        nodes, "colour_seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = _package_metadata(Path(path).stem, tile_size, overlap, gsd_m)
    helper.set_model_props(model, {"mtp_qgis": json.dumps(meta)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return meta


SCENE_CLASSES = [  # the synthetic scene model's class k is "band k is the brightest"
    {"id": 0, "name": "Reddish", "color": "#d94f3d"},
    {"id": 1, "name": "Green-ish", "color": "#3a8f3a"},
    {"id": 2, "name": "bluish", "color": "#2f6fbf"},
]
CHANGE_THRESHOLD = 0.4  # of the synthetic change model, in normalised units (std 0.25, scale 255)


def write_task_models(folder):
    """The change-detection and scene-classification test packages (backend/synthetic_models.py), and the bundled
    land-cover model."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from backend.synthetic_models import default_metadata, write_change_package, write_classification_package

    folder = Path(folder)
    write_change_package(folder / "mtp_change_default.onnx", num_bands=3, tile_size=64, tile_overlap=16,
                         threshold=CHANGE_THRESHOLD)
    # Tiny tiles with a large overlap: thousands of tiles on the NAIP pair, slow enough to cancel.
    write_change_package(folder / "slow_change.onnx", num_bands=3, tile_size=16, tile_overlap=12,
                         threshold=CHANGE_THRESHOLD)
    meta = default_metadata(3, 3, 64, 0, task="scene_classification")
    meta["classes"] = SCENE_CLASSES
    write_classification_package(folder / "mtp_scene_default.onnx", num_bands=3, num_classes=3, tile_size=64,
                                 metadata=meta)
    # The bundled multispectral land-cover model itself (2 MB, fast): its bands go by role (blue, green, red, nir).
    shutil.copy(REPO / "resources" / "models" / "mtp_landcover_default.onnx", folder / "mtp_landcover_default.onnx")


def expected_change(before, after):
    """What the synthetic change model answers for two (bands, H, W) arrays on one grid: 1 = change."""
    import numpy as np

    diff = np.abs(after[:3].astype(np.float64) - before[:3].astype(np.float64)) / 255.0 / 0.25
    return (diff.mean(axis=0) > CHANGE_THRESHOLD).astype(np.uint8)


def _backend_available():
    main = REPO / "backend" / "__main__.py"
    if not main.is_file():
        return False, "backend/__main__.py does not exist yet"
    probe = subprocess.run([BACKEND_PYTHON, "-m", "backend", "serve", "--help"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return False, f"`python -m backend serve --help` fails: {probe.stderr[-500:]}"
    return True, ""


def start_backend(models_dir, state_file, log_path, extra_env=None):
    env = dict(os.environ)
    env.update(extra_env or {})
    env["MTP_QGIS_TOKEN"] = TOKEN
    env.pop("MTP_QGIS_BACKEND_URL", None)
    state_file = Path(state_file)
    if state_file.exists():
        state_file.unlink()
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [BACKEND_PYTHON, "-m", "backend", "serve", "--port", "0", "--state-file", str(state_file),
             "--token-file", str(state_file.parent / "token"), "--models-dir",
             *[str(d) for d in (models_dir if isinstance(models_dir, (list, tuple)) else [models_dir])]],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"backend exited: {Path(log_path).read_text()[-2000:]}")
        if state_file.exists():
            try:
                state = json.loads(state_file.read_text())
                import requests

                with requests.get(state["url"] + "/health", timeout=2) as answer:
                    if answer.ok:
                        return process, state
            except (ValueError, KeyError, OSError):  # half-written state file, or not listening yet
                pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"backend not ready in 60 s: {Path(log_path).read_text()[-2000:]}")


def stop_process(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def qgis_process_binary():
    # Debian's /usr/bin/qgis_process wrapper passes --noversioncheck, which qgis_process 3.22 rejects
    # ("Command --noversioncheck not known!"); the real binary next to it works.
    return shutil.which("qgis_process.bin") or shutil.which("qgis_process")


def run_qgis_process(env, *args, timeout=240):
    command = [qgis_process_binary(), "--json", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    result = None
    start = done.stdout.find("{")
    if start >= 0:
        try:
            result = json.loads(done.stdout[start:])
        except ValueError:
            result = None
    return done, result


# --- the dock ------------------------------------------------------------------------------------

def wait_for(condition, timeout=60):
    from qgis.core import QgsApplication

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        QgsApplication.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def dock_on(backend, raster, name, task=None):
    """A dock widget with the backend's models listed, `raster` added to the project and selected,
    and `task` (a backend task name) chosen when given."""
    from qgis.core import QgsProject, QgsRasterLayer

    from mtp_qgis.client import MtpClient
    from mtp_qgis.dock import MtpDockWidget

    layer = QgsRasterLayer(str(raster), name, "gdal")
    QgsProject.instance().addMapLayer(layer)
    dock = MtpDockWidget(None)
    try:
        if task:
            dock.set_task(task)
        dock.layer_combo.setLayer(layer)
        dock.fill_models(MtpClient(backend["url"], backend["token"]).models())
        yield dock, layer
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
        dock.shutdown()
        dock.deleteLater()


def run_dock(dock):
    """Run the dock's job to its end; the layers it added to the project."""
    from qgis.core import QgsProject

    before = set(QgsProject.instance().mapLayers())
    dock.run()
    assert not dock.run_button.isEnabled(), dock.status.text()
    assert wait_for(lambda: dock.run_button.isEnabled()), dock.status.text()
    return [QgsProject.instance().mapLayer(i) for i in set(QgsProject.instance().mapLayers()) - before]


@contextlib.contextmanager
def once_running(feedback, action, timeout=60):
    """Call `action` (cancel the job, kill the backend, ...) from a thread as soon as the algorithm run
    inside the block reports progress; yields the list of progress values seen."""
    progress = []
    feedback.progressChanged.connect(progress.append)

    def wait_then_act():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(p > 0 for p in progress):
            time.sleep(0.02)
        action()

    actor = threading.Thread(target=wait_then_act)
    actor.start()
    try:
        yield progress
    finally:
        actor.join()


def run_batch_rows(algorithm_id, rows):
    """What BatchAlgorithmDialog.runAlgorithm does: one context per row, so a failing row does not stop
    the rest. Returns each row's ok flag."""
    from processing.gui.BatchAlgorithmDialog import BatchFeedback
    from processing.tools import dataobjects
    from qgis.core import QgsApplication, QgsProcessingFeedback

    alg = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    feedback = QgsProcessingFeedback()
    multi = BatchFeedback(len(rows), feedback)
    oks = []
    for count, parameters in enumerate(rows):
        multi.setCurrentStep(count)
        context = dataobjects.createContext(feedback)
        _, ok = alg.run(alg.preprocessParameters(parameters), context, multi)
        oks.append(ok)
    return oks


# --- object detection ---------------------------------------------------------------------------------

# The stand-in detector (backend/synthetic_models.py build_detection_model) finds bright objects of one
# shape: class 0 "red object" in band 1, class 1 "green object" in band 2; a pure 255 object scores 1.
DETECTION_CLASS_NAMES = ["red object", "green object"]
DET_BOX = (12, 6)           # long x short side in pixels
RDET_ANGLE_DEG = 30.0       # the rotated stand-in's objects: the long side turned 30° clockwise on screen
DET_THRESHOLD = 0.5         # the stand-ins' own score threshold


def write_detection_models(folder):
    """mtp_det_default (horizontal boxes), mtp_rdet_default (rotated) and slow_rdet (tiny tiles with a large
    overlap: tens of thousands of tiles on a 1024² raster, slow enough to cancel)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from backend.synthetic_models import write_detection_package

    folder = Path(folder)
    write_detection_package(folder / "mtp_det_default.onnx", rotated=False, tile_size=64, tile_overlap=16,
                            score_threshold=DET_THRESHOLD, box=DET_BOX)
    write_detection_package(folder / "mtp_rdet_default.onnx", rotated=True, tile_size=64, tile_overlap=16,
                            score_threshold=DET_THRESHOLD, box=DET_BOX, angle_deg=RDET_ANGLE_DEG)
    write_detection_package(folder / "slow_rdet.onnx", rotated=True, tile_size=24, tile_overlap=20,
                            score_threshold=DET_THRESHOLD, box=DET_BOX, angle_deg=RDET_ANGLE_DEG)


def burn_objects(pixels, objects, rotated):
    """Burn stand-in objects into a (3, H, W) uint8 array. `objects`: (colour, x0, y0) with colour "red",
    "green", "white" or a (r, g, b) tuple, (x0, y0) the top-left pixel of the object's mask. Returns the
    expected detections: (class name, score, box) with box the hbox (x1, y1, x2, y2) or the rbox
    (cx, cy, w, h, angle in degrees clockwise on screen), in pixels of the array (x right, y down)."""
    import numpy as np

    from backend.synthetic_models import object_mask

    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "white": (255, 255, 255)}
    w, h = DET_BOX
    mask = object_mask(w, h, RDET_ANGLE_DEG) if rotated else np.ones((h, w), bool)
    size_y, size_x = mask.shape
    expected = []
    for colour, x0, y0 in objects:
        rgb = colours.get(colour, colour)
        for band, value in enumerate(rgb):
            pixels[band, y0:y0 + size_y, x0:x0 + size_x][mask] = value
        box = ((x0 + size_x / 2, y0 + size_y / 2, w, h, RDET_ANGLE_DEG) if rotated
               else (x0, y0, x0 + w, y0 + h))
        for k, name in enumerate(DETECTION_CLASS_NAMES):
            score = min(1.0, max(0.0, (rgb[k] - 200.0) / 50.0))  # the stand-in's brightness ramp
            if score > 0:
                expected.append((name, score, box))
    return expected


def box_corners(box, rotated):
    """The 4 corners (pixel x right, y down) of an expected hbox or rbox."""
    import math

    if not rotated:
        x1, y1, x2, y2 = box
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    cx, cy, w, h, angle = box
    a = math.radians(angle)
    return [(cx + u * math.cos(a) - v * math.sin(a), cy + u * math.sin(a) + v * math.cos(a))
            for u, v in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


# --- a web server on 127.0.0.1 (plugin repository, model index) ------------------------------------------

@contextlib.contextmanager
def serve_folder(folder):
    """Serve `folder` over HTTP on 127.0.0.1 (any free port); yields the base URL (ending in '/').
    `/cut/<file>` announces the whole file, sends half of it and closes the connection; `/slow/<file>` sends
    it in 64 KiB pieces 50 ms apart (for cancelling). Requests are logged in the server's `.requests`."""
    import functools
    import http.server

    folder = str(folder)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output quiet
            pass

        def do_GET(self):
            server.requests.append(self.path)
            for mode in ("cut", "slow"):
                if self.path.startswith(f"/{mode}/"):
                    path = os.path.join(folder, self.path[len(mode) + 2:])
                    if not os.path.isfile(path):
                        self.send_error(404)
                        return
                    with open(path, "rb") as f:
                        data = f.read()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if mode == "cut":
                        self.wfile.write(data[:len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    for start in range(0, len(data), 65536):
                        self.wfile.write(data[start:start + 65536])
                        time.sleep(0.05)
                    return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server
    finally:
        server.shutdown()
        server.server_close()


LOVEDA_NAMES = {1: "background", 2: "building", 3: "road", 4: "water", 5: "barren", 6: "forest", 7: "agriculture"}


def loveda_label_polygons(tile: str, path, box=None) -> Path:
    """The LoveDA ground truth of `tile` as polygons with a text field `class` (the analyst's labels), in the
    coordinates QGIS gives the PNG (no CRS: x = column, y = -row). `box` = [x0, y0, x1, y1] in pixels keeps
    only that part. No-data (raw 0) is left unlabelled."""
    import numpy as np
    from osgeo import gdal, ogr

    raw = gdal.Open(str(DATA / "loveda" / "ann_dir" / tile)).ReadAsArray()
    keep = raw != 0
    if box is not None:
        inside = np.zeros_like(keep)
        inside[box[1]:box[3], box[0]:box[2]] = True
        keep &= inside
    mem = gdal.GetDriverByName("MEM").Create("", raw.shape[1], raw.shape[0], 2, gdal.GDT_Byte)
    mem.SetGeoTransform((0, 1, 0, 0, 0, -1))
    mem.GetRasterBand(1).WriteArray(raw)
    mem.GetRasterBand(2).WriteArray(keep.astype(np.uint8))
    out = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = out.CreateLayer("labels", geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
    gdal.Polygonize(mem.GetRasterBand(1), mem.GetRasterBand(2), layer, 0)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    layer.ResetReading()
    out.StartTransaction()
    for feature in layer:
        feature.SetField("class", LOVEDA_NAMES[feature.GetField("code")])
        layer.SetFeature(feature)
    out.CommitTransaction()
    out = None
    return Path(path)


def dota_object_polygons(path, box, classes=("ship",)) -> Path:
    """DOTA P0706's own oriented boxes of `classes` whose centre lies in pixel box [x0, y0, x1, y1], as polygons
    with a text field `class` (the analyst's boxes), where QGIS places the PNG (no CRS: x = column, y = -row)."""
    from osgeo import ogr

    x0, y0, x1, y1 = box
    out = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = out.CreateLayer("boxes", geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    for line in (DATA / "dota" / "labelTxt" / "P0706.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) < 9 or parts[8] not in classes:
            continue
        xy = [float(v) for v in parts[:8]]
        cx, cy = sum(xy[0::2]) / 4, sum(xy[1::2]) / 4
        if not (x0 <= cx < x1 and y0 <= cy < y1):
            continue
        ring = ", ".join(f"{xy[i]} {-xy[i + 1]}" for i in (0, 2, 4, 6, 0))
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON (({ring}))"))
        feature.SetField("class", parts[8])
        layer.CreateFeature(feature)
    out = None
    return Path(path)


def levir_change_polygons(pair: str, path) -> Path:
    """LEVIR-CD's change mask of `pair` as polygons of class 'change', plus one 'no change' polygon over the whole
    256 px pair (the area checked), field `class`, where QGIS places the PNG (x = column, y = -row)."""
    import numpy as np
    from osgeo import gdal, ogr

    raw = gdal.Open(str(DATA / "levir_cd" / "label" / pair)).ReadAsArray()
    mem = gdal.GetDriverByName("MEM").Create("", raw.shape[1], raw.shape[0], 1, gdal.GDT_Byte)
    mem.SetGeoTransform((0, 1, 0, 0, 0, -1))
    mem.GetRasterBand(1).WriteArray((raw > 0).astype(np.uint8))
    out = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = out.CreateLayer("changes", geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
    gdal.Polygonize(mem.GetRasterBand(1), mem.GetRasterBand(1), layer, 0)  # the changed pixels only
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    height, width = raw.shape
    area = ogr.Feature(layer.GetLayerDefn())
    area.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON ((0 0, {width} 0, {width} {-height}, 0 {-height}, 0 0))"))
    area.SetField("code", 0)
    layer.CreateFeature(area)
    layer.ResetReading()
    out.StartTransaction()
    for feature in layer:
        feature.SetField("class", "change" if feature.GetField("code") == 1 else "no change")
        layer.SetFeature(feature)
    out.CommitTransaction()
    out = None
    return Path(path)


def rectangle_polygons(path, box) -> Path:
    """One polygon covering pixel box [x0, y0, x1, y1] of a PNG as QGIS places it (y = -row)."""
    from osgeo import ogr

    x0, y0, x1, y1 = box
    out = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = out.CreateLayer("area", geom_type=ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt(
        f"POLYGON (({x0} {-y0}, {x1} {-y0}, {x1} {-y1}, {x0} {-y1}, {x0} {-y0}))"))
    layer.CreateFeature(feature)
    out = None
    return Path(path)

"""The finetune job's checks before queueing, its held-out split, and cancel (the training runs for real in
tests/plugin/test_finetune.py through qgis_process)."""
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr

from backend.errors import BackendError, ConflictError
from backend.jobs import JobManager, JobSpec, plan_job
from backend.registry import ModelRegistry
from backend.synthetic_models import default_metadata, instance_metadata, write_instance_package, write_package
from backend_test_data import DATA

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "plugin"))  # the LoveDA labels helper the qgis_process test uses too
from plugin_test_support import dota_object_polygons, levir_change_polygons, loveda_label_polygons  # noqa: E402
BUNDLED = REPO / "resources" / "models"
TILE_1 = DATA / "loveda" / "img_dir" / "1.png"  # 1024 x 1024 RGB, no CRS: QGIS places it at x 0..1024, y -1024..0


def polygons(path: Path, boxes, classes=None) -> Path:
    """A GeoPackage of pixel boxes [x0, y0, x1, y1] of the PNG (y = -row), field `class`."""
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("labels", geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(
            f"POLYGON (({x0} {-y0}, {x1} {-y0}, {x1} {-y1}, {x0} {-y1}, {x0} {-y0}))"))
        if classes is not None:
            feature.SetField("class", classes[i])
        layer.CreateFeature(feature)
    ds = None
    return path


@pytest.fixture()
def user_models(tmp_path) -> Path:
    folder = tmp_path / "user_models"
    folder.mkdir()
    return folder


@pytest.fixture()
def registry(user_models) -> ModelRegistry:
    return ModelRegistry([user_models, BUNDLED])


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    return loveda_label_polygons("1.png", tmp_path_factory.mktemp("labels") / "loveda_1.gpkg")


def spec(labels_path, user_models, model="mtp_seg_default", raster=TILE_1, **options) -> JobSpec:
    opts = {"class_field": "class", "model_id": "my_model", "models_dir": str(user_models), "iterations": 5}
    opts.update(options)
    return JobSpec("finetune", model, [str(raster), str(labels_path)], {}, options=opts)


def test_validation_area_splits_the_labels(registry, user_models, labels, tmp_path):
    val = polygons(tmp_path / "val.gpkg", [[512, 512, 1024, 1024]])
    plan = plan_job(spec(labels, user_models, validation=str(val)), registry, "j1")
    assert [c["name"] for c in plan.classes] == ["agriculture", "background", "building", "forest", "road", "water"]
    assert plan.classes[2]["color"] == "#ff0000"  # the base model's colour for a class it knows
    assert plan.size == (1024, 1024) and "no CRS" in plan.gsd_note
    train, held = plan.train_label != 255, plan.val_label != 255
    assert not (train & held).any()
    assert held[:512].sum() == 0 and held[:, :512].sum() == 0 and held[512:, 512:].all()
    assert train[512:, 512:].sum() == 0 and train.sum() == 1024 * 1024 - 512 * 512


def test_without_validation_the_tool_holds_out_a_strip(registry, user_models, labels):
    plan = plan_job(spec(labels, user_models), registry, "j2")
    train, held = plan.train_label != 255, plan.val_label != 255
    assert not (train & held).any()
    assert 0.15 < held.sum() / (train.sum() + held.sum()) < 0.3
    assert "chosen by the tool" in plan.split
    # Spatially disjoint: a band of at least 16 px separates the two along the split axis.
    cols_held, cols_train = np.nonzero(held.any(0))[0], np.nonzero(train.any(0))[0]
    rows_held, rows_train = np.nonzero(held.any(1))[0], np.nonzero(train.any(1))[0]
    gaps = [cols_train.min() - cols_held.max(), cols_held.min() - cols_train.max(),
            rows_train.min() - rows_held.max(), rows_held.min() - rows_train.max()]
    assert max(gaps) > 16
    assert len(np.unique(plan.val_label[held])) >= 3


@pytest.mark.parametrize("case, expected", [
    ("outside", "lie outside the raster"),
    ("one_class", "has one class only"),
    ("few_pixels", "at least 2000 are needed"),
    ("no_training_left", "for a held-out check: 0 for training"),
    ("no_field", "has no field 'class'"),
])
def test_bad_labels_are_refused_before_queueing(case, expected, registry, user_models, tmp_path):
    options = {}
    if case == "outside":
        path = polygons(tmp_path / "l.gpkg", [[2000, 2000, 2100, 2100], [2200, 2000, 2300, 2100]], ["a", "b"])
    elif case == "one_class":
        path = polygons(tmp_path / "l.gpkg", [[0, 0, 100, 100], [200, 200, 300, 300]], ["building", "building"])
    elif case == "few_pixels":
        path = polygons(tmp_path / "l.gpkg", [[0, 0, 20, 20], [100, 100, 120, 120]], ["a", "b"])
    elif case == "no_training_left":
        path = polygons(tmp_path / "l.gpkg", [[0, 0, 100, 100], [200, 200, 300, 300]], ["a", "b"])
        options["validation"] = str(polygons(tmp_path / "v.gpkg", [[0, 0, 400, 400]]))
    else:
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "l.gpkg"))
        ds.CreateLayer("labels", geom_type=ogr.wkbPolygon).CreateField(ogr.FieldDefn("kind", ogr.OFTString))
        ds = None
        path = tmp_path / "l.gpkg"
    with pytest.raises(BackendError, match=expected) as err:
        plan_job(spec(path, user_models, **options), registry, "j3")
    assert str(path) in err.value.message


def test_base_models_that_cannot_be_finetuned_are_refused(registry, user_models, labels, tmp_path):
    with pytest.raises(BackendError, match="does land_cover_extraction, not semantic_segmentation or "
                                           "scene_classification or change_detection or detection or rotated_detection "
                                           "or instance_segmentation"):
        plan_job(spec(labels, user_models, model="mtp_landcover_default"), registry, "j4")
    # A package without a training config (a third-party ONNX file, here a synthetic one) has no torch model.
    write_package(user_models / "foreign.onnx")
    with pytest.raises(BackendError, match="carries no training config"):
        plan_job(spec(labels, user_models, model="foreign"), registry, "j5")
    # An imported official package of a task the importer does not write (none is an instance model) is refused by
    # name; one imported before the importer kept the official config is told to import it again.
    instances = instance_metadata(3, 64, 16, 12)
    instances["official"] = {"config": {}, "config_name": "mask_rcnn.py", "dataset": None, "num_classes": 2}
    write_instance_package(user_models / "official_inst.onnx", metadata=instances)
    with pytest.raises(BackendError, match="imported official MTP instance segmentation model; finetuning imported "
                                           "official models is built for semantic segmentation, scene "
                                           "classification, change detection, detection, rotated detection only"):
        plan_job(spec(labels, user_models, model="official_inst"), registry, "j6")
    old = default_metadata(3, 4, 64, 16)
    old["provenance"] = {"kind": "official MTP finetuned checkpoint"}
    write_package(user_models / "official_old.onnx", metadata=old)
    with pytest.raises(BackendError, match="imported before .* import its checkpoint again"):
        plan_job(spec(labels, user_models, model="official_old"), registry, "j7")


def test_a_backend_without_pytorch_says_how_to_install_it(registry, user_models, labels, monkeypatch):
    """Before queueing: the sentence the dock recognises to offer 'Install the training environment'."""
    import importlib.util

    from backend import finetune
    real = importlib.util.find_spec
    monkeypatch.delenv("MTP_QGIS_TRAINING_PYTHON", raising=False)
    monkeypatch.setattr(finetune.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(BackendError) as err:
        plan_job(spec(labels, user_models), registry, "t1")
    assert err.value.message.startswith(finetune.TRAINING_MISSING)
    assert "Install the training environment" in err.value.message and "--training" in err.value.message
    assert list(user_models.iterdir()) == []


def test_model_id_and_folder_are_checked(registry, user_models, labels, tmp_path):
    with pytest.raises(ConflictError, match="exists already"):
        plan_job(spec(labels, user_models, model_id="mtp_seg_default"), registry, "j6")
    with pytest.raises(BackendError, match="not one of this backend's models folders"):
        plan_job(spec(labels, user_models, models_dir=str(tmp_path)), registry, "j7")
    with pytest.raises(BackendError, match="options.model_id must be"):
        plan_job(spec(labels, user_models, model_id="../evil"), registry, "j8")


def test_a_scene_classifier_base_needs_labelled_cells(registry, user_models, labels, tmp_path):
    """Scene classification learns from cells of the package's tile (128 px), at least half labelled: small
    polygons that would do for segmentation are refused; LoveDA's labels with a validation quadrant plan."""
    small = polygons(tmp_path / "small.gpkg", [[0, 0, 90, 90], [200, 0, 290, 90], [400, 0, 490, 90],
                                               [600, 0, 690, 90]], ["water", "forest", "water", "forest"])
    with pytest.raises(BackendError, match=r"Too few labelled cells .* of 128 x 128 px") as err:
        plan_job(spec(small, user_models, model="mtp_scene_default"), registry, "s1")
    assert str(small) in err.value.message
    val = polygons(tmp_path / "val.gpkg", [[512, 512, 1024, 1024]])
    plan = plan_job(spec(labels, user_models, model="mtp_scene_default", validation=str(val)), registry, "s2")
    assert not plan.is_detection and (plan.val_label != 255)[512:, 512:].all()


def test_a_scene_classifier_base_takes_points_one_per_cell(registry, user_models, tmp_path):
    """A point labels the model's cell (128 px) centred on it: points at the centres of LoveDA 1.png's 128 px
    grid with each cell's majority class become fully labelled cells of that class."""
    from osgeo import gdal

    raw = gdal.Open(str(DATA / "loveda" / "ann_dir" / "1.png")).ReadAsArray()
    names = {1: "background", 2: "building", 3: "road", 4: "water", 5: "barren", 6: "forest", 7: "agriculture"}
    path = tmp_path / "points.gpkg"
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("points", geom_type=ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    expected = {}
    for row in range(8):
        for col in range(8):
            cell = raw[row * 128:(row + 1) * 128, col * 128:(col + 1) * 128]
            code = int(np.bincount(cell[cell > 0].ravel(), minlength=8).argmax())
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({col * 128 + 64} {-(row * 128 + 64)})"))
            feature.SetField("class", names[code])
            layer.CreateFeature(feature)
            expected[row, col] = names[code]
    ds = None
    val = polygons(tmp_path / "val.gpkg", [[512, 512, 1024, 1024]])
    plan = plan_job(spec(path, user_models, model="mtp_scene_default", validation=str(val)), registry, "s3")
    classes = [c["name"] for c in plan.classes]
    assert plan.size == (1024, 1024)
    for (row, col), name in expected.items():
        label = plan.val_label if row >= 4 and col >= 4 else plan.train_label
        assert (label[row * 128:(row + 1) * 128, col * 128:(col + 1) * 128] == classes.index(name)).all()
    with pytest.raises(BackendError, match="label with polygons .*, or points: one per cell"):
        lines = tmp_path / "lines.gpkg"
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(lines))
        layer = ds.CreateLayer("lines", geom_type=ogr.wkbLineString)
        layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt("LINESTRING (0 0, 100 -100)"))
        feature.SetField("class", "water")
        layer.CreateFeature(feature)
        ds = None
        plan_job(spec(lines, user_models, model="mtp_scene_default"), registry, "s4")


@pytest.mark.slow
def test_cancel_stops_training_and_leaves_nothing(registry, user_models, labels, tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_QGIS_TRAINING_THREADS", "1")
    before = set(Path(tempfile.gettempdir()).glob("mtp_finetune_*"))
    manager = JobManager(registry)
    job = manager.submit(spec(labels, user_models, iterations=100000))
    deadline = time.monotonic() + 240
    while "training: iteration" not in job.message and job.status in ("queued", "running"):
        assert time.monotonic() < deadline, f"training did not start: {job.message} {job.error}"
        time.sleep(0.2)
    assert job.status == "running", job.error
    manager.cancel(job.id)
    deadline = time.monotonic() + 60
    while job.status == "running":
        assert time.monotonic() < deadline, "the training process was not stopped"
        time.sleep(0.2)
    assert job.status == "cancelled"
    assert list(user_models.iterdir()) == []
    assert "my_model" not in {m.id for m in registry.list()}
    assert set(Path(tempfile.gettempdir()).glob("mtp_finetune_*")) == before
    assert not any("training finetune" in " ".join(p.cmdline()) and str(job.id) in " ".join(p.cmdline())
                   for p in _processes())
    manager.shutdown()


@pytest.mark.slow
def test_a_killed_training_resumes_from_its_last_checkpoint(registry, user_models, labels, monkeypatch):
    """The training process dies mid-run (SIGKILL, as the OOM killer does): the job fails saying how to resume
    and keeps its checkpoints beside the models; the same request resumes from the last one (every 5
    iterations here) and finishes; nothing is left behind then."""
    monkeypatch.setenv("MTP_QGIS_TRAINING_THREADS", "1")
    manager = JobManager(registry)
    request = spec(labels, user_models, iterations=20, batch_size=2)
    job = manager.submit(request)
    deadline = time.monotonic() + 300
    while not any(f"iteration {i}/20" in job.message for i in range(7, 20)) and job.status in ("queued", "running"):
        assert time.monotonic() < deadline, f"training did not get to iteration 7: {job.message} {job.error}"
        time.sleep(0.05)
    trainers = [p for p in _processes() if "training" in p.cmdline() and "finetune" in p.cmdline()
                and any(part.startswith(str(user_models / ".finetune")) for part in p.cmdline())]
    assert len(trainers) == 1, [p.cmdline() for p in trainers]
    os.kill(trainers[0].pid, 9)
    while job.status == "running":
        assert time.monotonic() < deadline, "the job did not notice its training process died"
        time.sleep(0.2)
    assert job.status == "failed" and "resume from the last one" in job.error, job.error
    kept = user_models / ".finetune" / "my_model"
    assert (kept / "run" / "latest.pt").is_file() and "my_model" not in {m.id for m in registry.list()}

    again = manager.submit(request)
    messages = []
    while again.status in ("queued", "running"):
        assert time.monotonic() < deadline + 300, f"the resumed run did not finish: {again.message}"
        if not messages or messages[-1] != again.message:
            messages.append(again.message)
        time.sleep(0.05)
    assert again.status == "succeeded", again.error
    resumed = [m for m in messages if m.startswith("training: resumed at iteration")]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1]) in (5, 10, 15), messages
    from backend.model_package import load_package
    figures = load_package(user_models / "my_model.onnx").raw["finetune"]
    assert figures["iterations_done"] == 20
    assert [p.name for p in user_models.iterdir()] == ["my_model.onnx"]  # no .finetune folder left
    manager.shutdown()


def _processes():
    """Live processes' command lines (no psutil here): /proc."""
    class P:
        def __init__(self, pid):
            self.pid = pid

        def cmdline(self):
            try:
                return Path(f"/proc/{self.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                return []
    return [P(int(p)) for p in os.listdir("/proc") if p.isdigit()]


def test_cli_refuses_bad_labels_before_training(user_models, tmp_path, capsys):
    from backend.cli import main

    one_class = polygons(tmp_path / "one.gpkg", [(0, 0, 200, 200), (300, 300, 500, 500)], ["water", "water"])
    code = main(["finetune", "--model", "mtp_seg_default", "--input", str(TILE_1), "--labels", str(one_class),
                 "--class-field", "class", "--model-id", "mine", "--into", str(user_models)])
    assert code == 2 and "has one class only" in capsys.readouterr().err
    assert list(user_models.iterdir()) == []


def test_cli_writes_into_the_folder_it_is_given_and_checks_the_id_there(labels, user_models, capsys):
    # --into is searched like a models folder (the package would be listed), so an id taken there is refused
    # before any training, as the job API refuses it (409).
    from backend.cli import main

    shutil.copyfile(BUNDLED / "mtp_seg_default.onnx", user_models / "mine.onnx")
    code = main(["finetune", "--model", "mtp_seg_default", "--input", str(TILE_1), "--labels", str(labels),
                 "--class-field", "class", "--model-id", "mine", "--into", str(user_models), "--iterations", "3"])
    assert code == 2 and "A model 'mine' exists already" in capsys.readouterr().err
    assert sorted(p.name for p in user_models.iterdir()) == ["mine.onnx"]


# --- detection: one polygon per object -----------------------------------------------------------------------

HARBOUR = DATA / "dota" / "images" / "P0706.png"  # 1111 x 1182, no CRS; the bundled detectors' held-out part:
SHIPS_UNSEEN = [760, 0, 1111, 1182]               # x in [760, 1111)


def _dota_ships(box):
    found = []
    for line in (DATA / "dota" / "labelTxt" / "P0706.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 9 and parts[8] == "ship":
            quad = np.array([float(v) for v in parts[:8]]).reshape(4, 2)
            if box[0] <= quad[:, 0].mean() < box[2] and box[1] <= quad[:, 1].mean() < box[3]:
                found.append(quad)
    return found


def _area(corners):
    x, y = corners[:, 0], corners[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_object_polygons_become_rotated_boxes_in_disjoint_regions(registry, user_models, tmp_path):
    """DOTA's own ship quadrilaterals as polygons: each becomes a rectangle in pixels of the cut that holds it and
    is no larger than its bounds (its minimum rectangle); one class is enough for a detector; about a fifth of the ships is
    held out in a strip the training region does not touch, and the cut writes one DOTA line per ship."""
    labels = dota_object_polygons(tmp_path / "ships.gpkg", SHIPS_UNSEEN)
    truth = _dota_ships(SHIPS_UNSEEN)
    plan = plan_job(spec(labels, user_models, model="mtp_rdet_default", raster=HARBOUR), registry, "d1")
    assert plan.is_detection and [c["name"] for c in plan.classes] == ["ship"] and plan.size[0] < 400
    assert len(plan.objects) == len(truth) == 149
    x0, y0 = plan.window.x, plan.window.y   # the raster is at the model's GSD: cut pixels = raster pixels - offset
    for (corners, k), quad in zip(plan.objects, truth):
        assert k == 0
        quad = quad - [x0, y0]
        sides = np.roll(corners, -1, 0) - corners
        assert abs(np.dot(sides[0], sides[1])) < 1e-6 * np.dot(sides[0], sides[0])   # a rectangle ...
        u, v = sides[0] / np.hypot(*sides[0]), sides[1] / np.hypot(*sides[1])
        pu, pv = (quad - corners[0]) @ u, (quad - corners[0]) @ v
        assert pu.min() > -1e-6 and pu.max() < np.hypot(*sides[0]) + 1e-6           # ... holding every corner
        assert pv.min() > -1e-6 and pv.max() < np.hypot(*sides[1]) + 1e-6
        assert _area(corners) <= np.prod(quad.max(0) - quad.min(0)) + 1e-6          # ... no larger than its bounds
        assert _area(corners) >= _area(quad) - 1e-6
    [val], train = plan.val_regions, plan.train_regions
    longest = max(np.hypot(*(np.roll(c, -1, 0) - c).T).max() for c, _ in plan.objects)
    assert all(b[3] <= val[1] - longest or b[1] >= val[3] + longest or b[2] <= val[0] - longest
               or b[0] >= val[2] + longest for b in train)
    centres = np.array([c.mean(0) for c, _ in plan.objects])
    held = ((centres[:, 0] >= val[0]) & (centres[:, 0] < val[2]) & (centres[:, 1] >= val[1]) & (centres[:, 1] < val[3]))
    assert 0.15 < held.mean() < 0.3 and "chosen by the tool" in plan.split
    from backend.finetune import cut_training_data
    cut_training_data(plan, tmp_path / "data")
    lines = (tmp_path / "data" / "labelTxt" / "scene.txt").read_text().splitlines()
    assert len(lines) == len(truth) and all(line.endswith(" ship 0") for line in lines)
    assert (tmp_path / "data" / "images" / "scene.png").is_file()


def test_horizontal_detector_gets_the_polygons_bounds_and_a_validation_area(registry, user_models, tmp_path):
    labels = dota_object_polygons(tmp_path / "ships.gpkg", SHIPS_UNSEEN)
    val = polygons(tmp_path / "val.gpkg", [[760, 900, 1111, 1182]])
    plan = plan_job(spec(labels, user_models, model="mtp_det_default", raster=HARBOUR, validation=str(val)),
                    registry, "d2")
    x0, y0 = plan.window.x, plan.window.y
    for (corners, _), quad in zip(plan.objects, _dota_ships(SHIPS_UNSEEN)):
        assert np.allclose(corners.min(0), quad.min(0) - [x0, y0], atol=1e-6)
        assert np.allclose(corners.max(0), quad.max(0) - [x0, y0], atol=1e-6)
    [val_box] = plan.val_regions
    assert val_box[1] == 900 - y0 and "validation area" in plan.split
    assert all(b[3] <= val_box[1] for b in plan.train_regions)   # the area is the bottom: training lies above


def test_object_outlines_become_instance_ids_for_an_instance_model(registry, user_models, tmp_path):
    """An instance-segmentation base: the same objects and split as a detector's, and the cut burns each outline as
    its own id (a 16-bit map over the cut) with the class of every id beside it."""
    labels = dota_object_polygons(tmp_path / "ships.gpkg", SHIPS_UNSEEN)
    plan = plan_job(spec(labels, user_models, model="mtp_inst_default", raster=HARBOUR), registry, "i1")
    assert plan.is_detection and plan.batch_size == 0 and len(plan.objects) == 149
    ids = plan.instance_label
    assert ids.shape == (plan.size[1], plan.size[0]) and ids.max() == 149
    x0, y0 = plan.window.x, plan.window.y
    for i, quad in enumerate(_dota_ships(SHIPS_UNSEEN), start=1):  # each id lies inside its ship's bounds
        rows, cols = np.nonzero(ids == i)
        if rows.size:  # a ship overlapped by a later one may have lost every pixel
            (qx0, qy0), (qx1, qy1) = quad.min(0) - [x0, y0], quad.max(0) - [x0, y0]
            assert qx0 - 1 <= cols.min() and cols.max() <= qx1 + 1 and qy0 - 1 <= rows.min() and rows.max() <= qy1 + 1
    # Burnt pixels cover the outlines (less where moored ships overlap): at least 3/4 of their summed areas.
    assert (ids > 0).sum() >= 0.75 * sum(_area(q) for q in _dota_ships(SHIPS_UNSEEN))
    from backend.finetune import cut_training_data
    cut_training_data(plan, tmp_path / "data")
    written = gdal.Open(str(tmp_path / "data" / "instances" / "scene.png"))
    assert written.GetRasterBand(1).DataType == gdal.GDT_UInt16 and np.array_equal(written.ReadAsArray(), ids)
    listing = json.loads((tmp_path / "data" / "instances" / "scene.json").read_text())
    assert listing == {"classes": ["ship"] * 149}


@pytest.mark.parametrize("case, expected", [
    ("few", "Too few objects"),
    ("class_only_held_out", "No object of class boat lies outside the held-out part"),
    ("tiny", "smaller than a pixel"),
])
def test_bad_object_labels_are_refused_before_queueing(case, expected, registry, user_models, tmp_path):
    options = {}
    if case == "few":
        path = dota_object_polygons(tmp_path / "l.gpkg", [760, 0, 1111, 271])  # 9 ships
    elif case == "class_only_held_out":  # 20 ships above, 6 boats in the validation area below
        boxes = [[100 + 40 * i, 200, 130 + 40 * i, 210] for i in range(20)] + [[100 + 40 * i, 900, 130 + 40 * i, 910]
                                                                               for i in range(6)]
        path = polygons(tmp_path / "l.gpkg", boxes, ["ship"] * 20 + ["boat"] * 6)
        options["validation"] = str(polygons(tmp_path / "v.gpkg", [[0, 800, 1111, 1000]]))
    else:
        path = polygons(tmp_path / "l.gpkg", [[100, 100, 100.2, 100.3]] + [[200 + 40 * i, 200, 230 + 40 * i, 210]
                                                                          for i in range(20)], ["ship"] * 21)
    with pytest.raises(BackendError, match=expected) as err:
        plan_job(spec(path, user_models, model="mtp_rdet_default", raster=HARBOUR, **options), registry, "d3")
    assert str(path) in err.value.message or case == "class_only_held_out"


# --- change detection: polygons of change over a pair of rasters ---------------------------------------------

LEVIR = DATA / "levir_cd"
PAIR = "test_121_0768_0256.png"   # held out by mtp_change_default


def change_spec(labels_path, user_models, inputs=None, **options) -> JobSpec:
    opts = {"class_field": "class", "model_id": "my_change", "models_dir": str(user_models), "iterations": 5}
    opts.update(options)
    rasters = inputs if inputs is not None else [str(LEVIR / "A" / PAIR), str(LEVIR / "B" / PAIR)]
    return JobSpec("finetune", "mtp_change_default", [*rasters, str(labels_path)], {}, options=opts)


def test_change_polygons_become_the_pairs_mask_and_disjoint_pairs(registry, user_models, tmp_path):
    """LEVIR-CD's own mask as polygons (and a 'no change' polygon over the pair): the cut's label is the mask; the
    validation half is held out, training lies beyond a 16 px band; the cut writes LEVIR-layout pairs of both
    dates."""
    from osgeo import gdal

    labels = levir_change_polygons(PAIR, tmp_path / "changes.gpkg")
    val = polygons(tmp_path / "val.gpkg", [[128, 0, 256, 256]])
    plan = plan_job(change_spec(labels, user_models, validation=str(val)), registry, "c1")
    mask = gdal.Open(str(LEVIR / "label" / PAIR)).ReadAsArray() > 0
    assert plan.is_change and plan.size == (256, 256) and [c["name"] for c in plan.classes] == ["no change", "change"]
    assert np.array_equal(plan.train_label == 1, mask)
    assert plan.val_regions == [[128, 0, 256, 256]] and plan.train_regions == [[0, 0, 112, 256]]
    from backend.finetune import cut_training_data
    cut_training_data(plan, tmp_path / "data")
    after = gdal.Open(str(LEVIR / "B" / PAIR)).ReadAsArray()
    written = gdal.Open(str(tmp_path / "data" / "B" / "val.png")).ReadAsArray()
    assert np.array_equal(written, after[:, :, 128:])
    label = gdal.Open(str(tmp_path / "data" / "label" / "train_0.png")).ReadAsArray()
    assert np.array_equal(label == 255, mask[:, :112]) and set(np.unique(label)) <= {0, 255}


def test_bad_change_requests_are_refused_before_queueing(registry, user_models, tmp_path):
    labels = levir_change_polygons(PAIR, tmp_path / "changes.gpkg")
    with pytest.raises(BackendError, match="takes 3 inputs, the before raster, the after raster and the labels"):
        plan_job(change_spec(labels, user_models, inputs=[str(LEVIR / "A" / PAIR)]), registry, "c2")
    few = polygons(tmp_path / "few.gpkg", [[10, 10, 20, 20]], ["change"])
    with pytest.raises(BackendError, match="mark 100 changed pixels at the model's GSD; at least 400"):
        plan_job(change_spec(few, user_models), registry, "c3")
    val = polygons(tmp_path / "val.gpkg", [[0, 0, 20, 256]])   # too narrow to be a held-out pair
    with pytest.raises(BackendError, match="Too little change .* in parts of at least 32 x 32 px"):
        plan_job(change_spec(labels, user_models, validation=str(val)), registry, "c4")

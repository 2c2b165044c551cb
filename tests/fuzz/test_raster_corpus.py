"""Every raster of the bad-raster corpus (fuzz_support.build_corpus) through every task: each gives its
expected result or a clear refusal naming the file, and no file is left behind when there is no result."""

import numpy as np
import pytest
from osgeo import gdal, ogr

from backend.errors import BackendError
from backend.jobs import JobSpec, plan_job, run_plan
from fuzz_support import NAN_PIXEL, TALLY, TILE, invalid_pixels

gdal.UseExceptions()
ogr.UseExceptions()
CORPUS_NAMES = ["clean", "float32, one NaN pixel", "float32, NaN block", "float32, NaN block, nodata=NaN declared",
                "float32, +Inf pixel and -Inf block", "float32, all NaN", "uint8, all nodata", "uint16 (8-bit x 257)",
                "int16 (8-bit values)", "float64 (8-bit values)", "13 bands (Sentinel-2 L1C, uint16)", "1 x 1",
                "100000 x 1", "rotated geotransform", "two bands", "truncated GeoTIFF", "text file named .tif",
                "empty file", "VRT with a /vsicurl/ source", "VRT over that VRT"]
# role -> (task, model, outputs); change detection takes the corpus raster as either date.
ROLES = {
    "segmentation": ("semantic_segmentation", "seg", {"raster": "result.tif"}),
    "change (as before)": ("change_detection", "change", {"raster": "changes.tif", "polygons": "changes.gpkg"}),
    "change (as after)": ("change_detection", "change", {"raster": "changes.tif", "polygons": "changes.gpkg"}),
    "scenes": ("scene_classification", "scene", {"vector": "scenes.gpkg"}),
    "detection": ("detection", "det", {"vector": "detections.gpkg"}),
    "rotated detection": ("rotated_detection", "rdet", {"vector": "detections.gpkg"}),
}
_clean_results: dict = {}


def run(registry, task, model, inputs, outputs, out_dir):
    """("ok", {key: result}) or ("refused" | "failed", message); out_dir must hold the outputs or nothing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / v for k, v in outputs.items()}
    spec = JobSpec(task, model, [str(p) for p in inputs], {k: str(p) for k, p in paths.items()}, None,
                   {"cell_size": 32} if task == "scene_classification" else {})
    try:
        plan = plan_job(spec, registry, "fuzz")
    except BackendError as exc:
        assert list(out_dir.iterdir()) == [], "a refused job wrote something"
        return "refused", exc.message
    try:
        run_plan(task, plan)
    except BackendError as exc:
        assert list(out_dir.iterdir()) == [], f"a failed job left {list(out_dir.iterdir())}"
        return "failed", exc.message
    assert sorted(out_dir.iterdir()) == sorted(paths.values()), "not exactly the outputs were written"
    return "ok", {k: read_result(p) for k, p in paths.items()}


def read_result(path):
    if path.suffix == ".tif":
        return gdal.Open(str(path)).ReadAsArray()
    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    rows = []
    for f in layer:
        items = f.items()
        items["geometry"] = f.GetGeometryRef().ExportToWkt()
        rows.append(items)
    return rows


def clean_result(registry, corpus, role, tmp_path_factory):
    if role not in _clean_results:
        task, model, outputs = ROLES[role]
        base = corpus["clean"].path
        inputs = [base, base] if task == "change_detection" else [base]
        outcome, result = run(registry, task, model, inputs, outputs, tmp_path_factory.mktemp("clean"))
        assert outcome == "ok", result
        _clean_results[role] = result
    return _clean_results[role]


def inputs_for(role, raster, corpus):
    if ROLES[role][0] != "change_detection":
        return [raster.path]
    if raster.grid != "base":
        return [raster.path, raster.path]  # a grid of its own: paired with itself
    base = corpus["clean"].path
    return [raster.path, base] if role == "change (as before)" else [base, raster.path]


@pytest.mark.slow
@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_raster_through_every_task(fuzz_registry, corpus, network_spy, tmp_path, tmp_path_factory, name, role):
    raster = corpus[name]
    task, model, outputs = ROLES[role]
    outcome, result = run(fuzz_registry, task, model, inputs_for(role, raster, corpus), outputs, tmp_path / "out")
    TALLY.inputs.add(name)
    TALLY.raster_runs[outcome] += 1
    expect = raster.expect
    if expect.startswith("refused"):
        assert outcome == "refused", f"{name} through {role} gave {outcome}: {result}"
        assert expect.split(": ", 1)[1] in result and str(raster.path) in result, result
        assert network_spy.hits == [], "the backend fetched something from the network"
        return
    assert outcome == "ok", f"{name} through {role}: {outcome}: {result}"
    check(expect, role, raster, result, clean_result(fuzz_registry, corpus, role, tmp_path_factory))


def check(expect, role, raster, result, clean):
    task = ROLES[role][0]
    if task in ("semantic_segmentation", "change_detection"):
        ids = result["raster"]
        if expect == "valid":
            assert ids.shape[-2:] == gdal.Open(str(raster.path)).ReadAsArray().shape[-2:]
            assert ((ids < 4) | (ids == 255)).all()
            if task == "change_detection":  # paired with itself: nothing changed
                assert (ids == 0).all() and result["polygons"] == []
            return
        invalid = invalid_pixels(raster) if expect in ("masked", "empty") else np.zeros(ids.shape, bool)
        if expect == "empty":
            assert invalid.all()
        # Invalid pixels are nodata; every other pixel is what the clean raster gives (the models are pointwise).
        assert (ids[invalid] == 255).all()
        assert np.array_equal(ids[~invalid], clean["raster"][~invalid])
        if expect in ("masked", "empty"):
            assert invalid.any()
        return
    rows = result["vector"]
    if task == "scene_classification":
        if expect == "valid":
            assert rows and all(r["class_id"] is not None for r in rows)
            return
        assert len(rows) == len(clean["vector"])
        for got, want in zip(rows, clean["vector"]):
            assert (got["row"], got["col"], got["geometry"]) == (want["row"], want["col"], want["geometry"])
            if expect == "empty":
                assert got["class_id"] is None and got["score"] is None  # all-invalid cells are NULL
            else:  # filled invalid pixels do not change a cell's class; scores stay numbers
                assert got["class_id"] == want["class_id"] and np.isfinite(got["score"])
        return
    # detection, rotated detection
    if expect == "empty":
        assert rows == []
    elif expect == "valid":
        assert all(np.isfinite(r["score"]) for r in rows)
    else:  # invalid pixels lie on no object: every object is found as in the clean raster
        assert len(clean["vector"]) >= 3 if task == "detection" else len(clean["vector"]) >= 1
        assert rows == clean["vector"]


def test_one_nan_pixel_does_not_spread_through_a_model_with_tile_context(fuzz_registry, corpus, tmp_path):
    """The issue's case: one NaN changed 43 % of a segmentation. seg_context mixes the tile's mean features
    into every pixel, so a NaN fed to it poisons its whole tile (checked first); through the backend the NaN
    pixel is nodata and the other pixels are (up to the tiny shift of the tile mean) the clean result."""
    from backend.sessions import get_session

    model = fuzz_registry.get("seg_context")
    tile = np.full((1, 3, TILE, TILE), 0.1, np.float32)
    tile[0, 0, 5, 5] = np.nan
    (logits,) = get_session(model.path).run(None, {"image": tile})
    assert np.isnan(logits).all(), "the model does not spread a NaN: this test would prove nothing"
    results = {}
    for name in ("clean", "float32, one NaN pixel"):
        outcome, result = run(fuzz_registry, "semantic_segmentation", "seg_context", [corpus[name].path],
                              {"raster": "r.tif"}, tmp_path / name.replace(" ", "_").replace(",", ""))
        assert outcome == "ok", result
        results[name] = result["raster"]
    nan_result, clean = results["float32, one NaN pixel"], results["clean"]
    assert nan_result[NAN_PIXEL] == 255 and (nan_result != 255).sum() == nan_result.size - 1
    changed = (nan_result != clean) & (nan_result != 255)
    assert changed.mean() < 0.005, f"{changed.mean():.1%} of the valid pixels changed"


def test_16_bit_input_runs_with_a_model_declared_for_it(fuzz_registry, corpus, tmp_path, tmp_path_factory):
    """The uint16 copy (x 257) refused by the 8-bit model gives, with seg16 (scale 65535, value_range 0..65535,
    dtype uint16), exactly the 8-bit model's classes on the 8-bit original."""
    outcome, result = run(fuzz_registry, "semantic_segmentation", "seg16", [corpus["uint16 (8-bit x 257)"].path],
                          {"raster": "r.tif"}, tmp_path / "out")
    assert outcome == "ok", result
    assert np.array_equal(result["raster"], clean_result(fuzz_registry, corpus, "segmentation", tmp_path_factory)["raster"])
    outcome, message = run(fuzz_registry, "semantic_segmentation", "seg16", [corpus["clean"].path],
                           {"raster": "r.tif"}, tmp_path / "out8")
    assert outcome == "refused" and "is uint8, but model 'seg16' takes uint16 imagery" in message


def test_13_band_input_runs_with_a_model_declared_for_it(fuzz_registry, corpus, tmp_path):
    outcome, result = run(fuzz_registry, "semantic_segmentation", "s2", [corpus["13 bands (Sentinel-2 L1C, uint16)"].path],
                          {"raster": "r.tif"}, tmp_path / "out")
    assert outcome == "ok", result
    assert result["raster"].shape == (101, 100) and (result["raster"] < 4).all()


def test_the_8_bit_refusal_says_what_to_do(fuzz_registry, corpus, tmp_path):
    outcome, message = run(fuzz_registry, "semantic_segmentation", "seg", [corpus["uint16 (8-bit x 257)"].path],
                           {"raster": "r.tif"}, tmp_path / "out")
    assert outcome == "refused"
    assert "(uint16) has values from" in message and "8-bit imagery" in message and "gdal_translate" in message


def test_extent_crs_given_as_a_url_is_not_fetched(fuzz_registry, corpus, network_spy, tmp_path):
    from backend.raster_io import Extent

    out = tmp_path / "r.tif"
    spec = JobSpec("semantic_segmentation", "seg", [str(corpus["clean"].path)], {"raster": str(out)},
                   Extent(0, 0, 1, 1, f"http://127.0.0.1:{network_spy.port}/crs.wkt"))
    with pytest.raises(BackendError, match="is a URL; the backend does not fetch CRS definitions"):
        plan_job(spec, fuzz_registry, "x")
    assert network_spy.hits == [] and not out.exists()

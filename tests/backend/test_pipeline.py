"""The inference pipeline of run_tiles: same results as the sequential path, nodata tiles skipped, cancel
and failures mid-pipeline, and the cheaper softmax/argmax it uses."""

import threading

import numpy as np
import pytest
from osgeo import gdal

from backend import raster_io, segmentation, tile_pipeline
from backend.errors import BackendError, JobCancelled
from backend.jobs import JobSpec, plan_job
from backend.raster_io import Window
from backend.segmentation import argmax_classes, segment_raster
from backend.sessions import physical_cores
from backend.tile_pipeline import TileModel, run_tiles, softmax

from backend_test_data import COGEO, RGB_BYTE


def pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mtp-inference"]


def blend(package, path, window, pipelined, skip_nodata=False, stripe_width=10**6, batch_size=3):
    ds = raster_io.open_raster(path)
    reader = raster_io.RasterReader(ds, package.input.bands, str(path))
    out = np.full((package.num_classes, window.height, window.width), np.nan, np.float32)

    def sink(x, y, probs):
        out[:, y : y + probs.shape[1], x : x + probs.shape[2]] = probs

    run_tiles(TileModel(package), reader, window, sink, batch_size=batch_size, stripe_width=stripe_width,
              skip_nodata=skip_nodata, pipelined=pipelined)
    return out


@pytest.mark.parametrize("window, stripe_width", [(Window(0, 0, 1024, 1024), 10**6), (Window(3, 5, 1000, 150), 200),
                                                  (Window(10, 10, 5, 3), 10**6)])
def test_pipelined_blend_is_identical_to_the_sequential_path(registry, window, stripe_width):
    package = registry.get("spatial")
    pipelined = blend(package, COGEO, window, True, stripe_width=stripe_width)
    sequential = blend(package, COGEO, window, False, stripe_width=stripe_width)
    assert not np.isnan(pipelined).any()
    assert np.array_equal(pipelined, sequential)
    np.testing.assert_allclose(pipelined.sum(axis=0), 1.0, rtol=1e-5)  # still probabilities
    assert pipeline_threads() == []  # the worker is gone once run_tiles returns


def count_inferred_tiles(monkeypatch) -> list[int]:
    counts = []
    infer = TileModel.infer

    def counting(self, batch):
        counts.append(len(batch))
        return infer(self, batch)

    monkeypatch.setattr(TileModel, "infer", counting)
    return counts


def segment(registry, tmp_path, path, name, model="spatial"):
    spec = JobSpec("semantic_segmentation", model, [str(path)], {"raster": str(tmp_path / name)}, None,
                   {"batch_size": 2})
    segment_raster(plan_job(spec, registry, job_id=name))
    ds = gdal.Open(str(tmp_path / name))  # held: a band outlives its dataset only until a segfault
    return ds.GetRasterBand(1).ReadAsArray()


def test_all_nodata_tiles_are_not_inferred_and_the_result_is_unchanged(registry, tmp_path, monkeypatch):
    counts = count_inferred_tiles(monkeypatch)
    skipped = segment(registry, tmp_path, RGB_BYTE, "skipped.tif")
    inferred_with_skip = sum(counts)
    counts.clear()
    run_tiles_default = segmentation.run_tiles
    monkeypatch.setattr(segmentation, "run_tiles",
                        lambda *a, **k: run_tiles_default(*a, **{**k, "skip_nodata": False}))
    every_tile = segment(registry, tmp_path, RGB_BYTE, "every.tif")
    assert 0 < inferred_with_skip < sum(counts)  # RGB.byte.tif's nodata collar holds whole tiles
    assert np.array_equal(skipped, every_tile)
    src = gdal.Open(str(RGB_BYTE)).ReadAsArray()
    assert np.array_equal(skipped == 255, (src == 0).all(axis=0))


def test_class_raster_is_identical_pipelined_or_not(registry, tmp_path, monkeypatch):
    pipelined = segment(registry, tmp_path, COGEO, "pipelined.tif")
    run_tiles_default = segmentation.run_tiles
    monkeypatch.setattr(segmentation, "run_tiles",
                        lambda *a, **k: run_tiles_default(*a, **{**k, "pipelined": False}))
    assert np.array_equal(pipelined, segment(registry, tmp_path, COGEO, "sequential.tif"))


def test_cancel_mid_pipeline_stops_the_worker_and_leaves_no_partial(registry, tmp_path):
    spec = JobSpec("semantic_segmentation", "spatial", [str(COGEO)], {"raster": str(tmp_path / "r.tif")}, None,
                   {"batch_size": 1})
    plan = plan_job(spec, registry, job_id="cancelme")
    calls = []
    with pytest.raises(JobCancelled):
        segment_raster(plan, cancelled=lambda: calls.append(1) or len(calls) > 5)
    assert list(tmp_path.iterdir()) == []
    assert pipeline_threads() == []


def test_inference_failure_in_the_worker_fails_the_job_cleanly(registry, tmp_path, monkeypatch):
    infer = TileModel.infer
    calls = []

    def failing(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise BackendError("the model broke on batch 3")
        return infer(self, batch)

    monkeypatch.setattr(TileModel, "infer", failing)
    spec = JobSpec("semantic_segmentation", "spatial", [str(COGEO)], {"raster": str(tmp_path / "r.tif")}, None,
                   {"batch_size": 2})
    with pytest.raises(BackendError, match="broke on batch 3"):
        segment_raster(plan_job(spec, registry, job_id="broken"))
    assert list(tmp_path.iterdir()) == []
    assert pipeline_threads() == []


def test_read_failure_while_batches_are_in_flight_fails_cleanly(registry, tmp_path, monkeypatch):
    read = raster_io.RasterReader.read
    calls = []

    def failing(self, x, y, w, h):
        calls.append(1)
        if len(calls) == 7:
            raise BackendError(f"Reading {self.name} at pixels x={x} y={y} failed: disk gone")
        return read(self, x, y, w, h)

    monkeypatch.setattr(raster_io.RasterReader, "read", failing)
    spec = JobSpec("semantic_segmentation", "spatial", [str(COGEO)], {"raster": str(tmp_path / "r.tif")}, None,
                   {"batch_size": 2})
    with pytest.raises(BackendError, match="disk gone"):
        segment_raster(plan_job(spec, registry, job_id="readfail"))
    assert list(tmp_path.iterdir()) == []
    assert pipeline_threads() == []


def test_scores_times_scale_are_the_softmax_and_huge_logits_fall_back_to_the_stable_path(registry):
    model = TileModel(registry.get("spatial"))
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (2, 7, 8, 8)).astype(np.float32)
    scores, scale = model.to_scores(logits.copy())
    np.testing.assert_allclose(scores * scale, softmax(logits), rtol=1e-5, atol=1e-7)
    scratch = np.empty((7, 8, 8), np.float32)
    scores, scale = model.to_scores(logits[1].copy(), scratch)  # one tile, scores in the scratch memory
    assert scores is scratch and scale.shape == (1, 8, 8)
    np.testing.assert_allclose(scores * scale, softmax(logits)[1], rtol=1e-5, atol=1e-7)
    huge = logits * 100  # exp overflows / underflows
    scores, scale = model.to_scores(huge.copy())
    assert scale is None
    np.testing.assert_allclose(scores, softmax(huge), rtol=1e-6)
    assert np.isfinite(scores).all()
    scores, scale = model.to_scores(huge[0].copy(), scratch)
    assert scale is None
    np.testing.assert_allclose(scores, softmax(huge)[0], rtol=1e-6)


def test_argmax_classes_matches_ndarray_argmax_ties_included():
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 3, (7, 33, 17)).astype(np.float32)  # many ties
    assert np.array_equal(argmax_classes(probs), probs.argmax(axis=0).astype(np.uint8))


def test_unnormalised_blocks_give_the_same_class_ids(registry):
    """ClassIdWriter ranks classes only, so run_tiles skips the division by the summed weight for it."""
    package = registry.get("spatial")
    ds = raster_io.open_raster(COGEO)
    reader = raster_io.RasterReader(ds, package.input.bands, "cogeo")
    window = Window(0, 0, 300, 260)
    ids = {}
    for normalised in (True, False):
        out = np.full((window.height, window.width), 255, np.uint8)

        def sink(x, y, probs, out=out):
            out[y : y + probs.shape[1], x : x + probs.shape[2]] = argmax_classes(probs)

        sink.needs_probabilities = normalised
        run_tiles(TileModel(package), reader, window, sink, batch_size=4)
        ids[normalised] = out
    assert (ids[True] == ids[False]).mean() > 0.9999  # only exact rounding ties could differ


def test_intra_op_threads_default_to_physical_cores():
    import os

    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_scene_inference_failure_in_the_worker_fails_cleanly(task_registry, tmp_path, monkeypatch):
    from backend import scenes
    from backend.jobs import run_plan

    probabilities = scenes.SceneModel.probabilities
    calls = []

    def failing(self, batch):
        calls.append(1)
        if len(calls) == 4:
            raise BackendError("the scene model broke on batch 4")
        return probabilities(self, batch)

    monkeypatch.setattr(scenes.SceneModel, "probabilities", failing)
    spec = JobSpec("scene_classification", "scene", [str(COGEO)], {"vector": str(tmp_path / "s.gpkg")}, None,
                   {"batch_size": 2, "cell_size": 128})
    with pytest.raises(BackendError, match="broke on batch 4"):
        run_plan("scene_classification", plan_job(spec, task_registry, job_id="scenefail"))
    assert list(tmp_path.iterdir()) == []
    assert pipeline_threads() == []


def test_pipeline_shortens_the_switch_interval_only_while_it_runs(registry, monkeypatch):
    """The worker must not wait Python's default 5 ms for the GIL after each batch; the setting is restored."""
    import sys

    before = sys.getswitchinterval()
    seen = []
    infer = TileModel.infer

    def spying(self, batch):
        seen.append(sys.getswitchinterval())
        return infer(self, batch)

    monkeypatch.setattr(TileModel, "infer", spying)
    blend(registry.get("spatial"), COGEO, Window(0, 0, 600, 600), True)
    assert seen and max(seen) <= tile_pipeline.PIPELINE_SWITCH_INTERVAL
    assert sys.getswitchinterval() == before


def test_prepare_into_writes_exactly_what_prepare_returns(registry):
    """Tiles are normalised straight into the batch array: same float32 operations, same values, padded or not."""
    model = TileModel(registry.get("spatial"))
    t = model.model.tile_size
    rng = np.random.default_rng(2)
    for h, w in ((t, t), (t - 7, t - 30)):
        raw = rng.integers(0, 256, (len(model.model.input.bands), h, w)).astype(np.float32)
        out = np.full((raw.shape[0], t, t), np.nan, np.float32)
        model.prepare_into(raw, out)
        assert np.array_equal(out, model.prepare(raw))

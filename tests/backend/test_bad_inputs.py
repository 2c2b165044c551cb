"""Each bad input gives a clear error naming the problem, and leaves no output or partial file."""

import shutil

import pytest

from backend.errors import BackendError, ModelPackageError, NotFoundError
from backend.jobs import JobSpec, plan_job
from backend.raster_io import Extent
from backend.registry import ModelRegistry
from backend.segmentation import segment_raster
from backend.synthetic_models import build_model

from backend_test_data import COGEO, RGB_BYTE, vrt_over_copy


def submit(registry, tmp_path, input_path, model="pointwise", extent=None, output=None):
    output = output or tmp_path / "out" / "result.tif"
    output.parent.mkdir(exist_ok=True)
    spec = JobSpec("semantic_segmentation", model, [str(input_path)], {"raster": str(output)}, extent)
    return segment_raster(plan_job(spec, registry, job_id="bad"))


def assert_nothing_written(tmp_path):
    out_dir = tmp_path / "out"
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_missing_input(registry, tmp_path):
    with pytest.raises(BackendError, match=r"nope\.tif does not exist"):
        submit(registry, tmp_path, tmp_path / "nope.tif")
    assert_nothing_written(tmp_path)


def test_not_a_raster(registry, tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image\n")
    with pytest.raises(BackendError, match=r"notes\.tif is not a raster GDAL can read"):
        submit(registry, tmp_path, text)
    assert_nothing_written(tmp_path)


def test_truncated_geotiff(registry, tmp_path):
    broken = tmp_path / "truncated.tif"
    data = COGEO.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BackendError, match=r"truncated\.tif is truncated or corrupt"):
        submit(registry, tmp_path, broken)
    assert_nothing_written(tmp_path)


def test_read_error_mid_job_fails_cleanly(registry, tmp_path):
    """A VRT whose source disappears opens fine and fails only when tiles are read."""
    vrt, source = vrt_over_copy(COGEO, tmp_path)
    spec = JobSpec("semantic_segmentation", "pointwise", [str(vrt)], {"raster": str(tmp_path / "out" / "r.tif")})
    (tmp_path / "out").mkdir()
    plan = plan_job(spec, registry, job_id="midjob")
    source.unlink()
    with pytest.raises(BackendError, match=r"Reading .*mosaic\.vrt at pixels"):
        segment_raster(plan)
    assert_nothing_written(tmp_path)


def test_extent_that_does_not_intersect(registry, tmp_path):
    with pytest.raises(BackendError, match="does not intersect"):
        submit(registry, tmp_path, COGEO, extent=Extent(2.0, 48.0, 2.1, 48.1, "EPSG:4326"))  # Paris, not Korea
    assert_nothing_written(tmp_path)


def test_unknown_crs_string(registry, tmp_path):
    with pytest.raises(BackendError, match="not a CRS GDAL understands"):
        submit(registry, tmp_path, COGEO, extent=Extent(0, 0, 1, 1, "EPSG:99999999"))


def test_unknown_model(registry, tmp_path):
    with pytest.raises(NotFoundError, match="Unknown model 'no_such_model'"):
        submit(registry, tmp_path, COGEO, model="no_such_model")
    assert_nothing_written(tmp_path)


def test_model_without_metadata(tmp_path):
    import onnx

    models = tmp_path / "models"
    models.mkdir()
    onnx.save(build_model(), str(models / "bare.onnx"))
    with pytest.raises(ModelPackageError, match=r"bare\.onnx has no model metadata.*import-model"):
        submit(ModelRegistry([models]), tmp_path, COGEO, model="bare")
    assert_nothing_written(tmp_path)


def test_too_few_bands(registry, tmp_path):
    with pytest.raises(BackendError, match=r"has 3 band\(s\) but model 'nir4' reads bands \[1, 2, 3, 4\]"):
        submit(registry, tmp_path, RGB_BYTE, model="nir4")
    assert_nothing_written(tmp_path)


def test_output_folder_missing_and_output_equal_to_input(registry, tmp_path):
    spec = JobSpec("semantic_segmentation", "pointwise", [str(COGEO)], {"raster": str(tmp_path / "no" / "r.tif")})
    with pytest.raises(BackendError, match="Output folder .* does not exist"):
        plan_job(spec, registry, "x")
    copy = tmp_path / "in.tif"
    shutil.copy(COGEO, copy)
    spec = JobSpec("semantic_segmentation", "pointwise", [str(copy)], {"raster": str(copy)})
    with pytest.raises(BackendError, match="is the input raster"):
        plan_job(spec, registry, "x")


def test_task_mismatch(registry, tmp_path):
    spec = JobSpec("change_detection", "pointwise", [str(COGEO)], {"raster": str(tmp_path / "r.tif")})
    with pytest.raises(BackendError, match="does semantic_segmentation, not change_detection"):
        plan_job(spec, registry, "x")
    spec = JobSpec("panoptic_segmentation", "pointwise", [str(COGEO)], {"raster": str(tmp_path / "r.tif")})
    with pytest.raises(BackendError, match="Task 'panoptic_segmentation' is not supported yet"):
        plan_job(spec, registry, "x")

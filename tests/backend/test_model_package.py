"""Model packages: our metadata, Deepness metadata, refusals that name the keys, import-model."""

import json
import subprocess
import sys

import onnx
import pytest
import yaml

from backend.errors import BackendError, ModelPackageError
from backend.jobs import JobSpec, plan_job
from backend.model_package import load_package
from backend.registry import ModelRegistry
from backend.synthetic_models import build_model, default_metadata, write_package

from backend_test_data import COGEO, REPO


def save_with_props(path, props: dict, **model_args):
    model = build_model(**model_args)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_package_info_matches_metadata(registry):
    package = registry.get("pointwise")
    info = package.info()
    assert info["id"] == "pointwise" and info["task"] == "semantic_segmentation"
    assert info["tile_size"] == 64 and info["tile_overlap"] == 16 and info["bands"] == [1, 2, 3]
    assert [c["id"] for c in info["classes"]] == [0, 1, 2, 3]
    assert {m.id for m in registry.list()} == {"pointwise", "spatial", "nir4", "slow"}


def test_deepness_metadata_is_translated(tmp_path):
    path = save_with_props(tmp_path / "deep.onnx", {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({"0": "background", "1": "road", "2": "building", "3": "water"}),
        "resolution": json.dumps(30),
        "tiles_size": json.dumps(64),
        "tiles_overlap": json.dumps(25),
        "standardization_mean": json.dumps([0.1, 0.2, 0.3]),
        "standardization_std": json.dumps([0.5, 0.5, 0.5]),
    }, tile_size=64)
    package = load_package(path)
    assert package.metadata_source == "deepness"
    assert [c.name for c in package.classes] == ["background", "road", "building", "water"]
    assert package.tile_size == 64 and package.tile_overlap == 16  # 25 % of 64
    assert package.gsd_m == pytest.approx(0.30)  # 30 cm/px
    assert package.input.scale == 255.0 and package.input.mean == [0.1, 0.2, 0.3]
    assert package.output_type == "probabilities"


def test_deepness_with_python_literal_class_names(tmp_path):
    path = save_with_props(tmp_path / "lit.onnx", {
        "model_type": '"Segmentor"', "class_names": "{0: 'a', 1: 'b', 2: 'c', 3: 'd'}",
        "resolution": "50", "tiles_size": "64", "tiles_overlap": "10",
    })
    assert [c.name for c in load_package(path).classes] == ["a", "b", "c", "d"]


def test_incomplete_deepness_metadata_names_the_missing_keys(tmp_path):
    path = save_with_props(tmp_path / "half.onnx", {"model_type": '"Segmentor"'})
    with pytest.raises(ModelPackageError) as err:
        load_package(path)
    assert "class_names" in err.value.message and "resolution" in err.value.message
    assert "tiles_size" in err.value.message and "import-model" in err.value.message


def test_deepness_detector_is_refused(tmp_path):
    path = save_with_props(tmp_path / "det.onnx", {
        "model_type": '"Detector"', "class_names": '{"0": "a"}', "resolution": "10", "tiles_size": "64"})
    with pytest.raises(ModelPackageError, match="only 'Segmentor'"):
        load_package(path)


def test_invalid_mtp_metadata_lists_every_problem(tmp_path):
    meta = default_metadata(3, 4, 64, 16)
    del meta["tile_size"]
    meta["classes"][1]["color"] = "red"
    meta["input"]["mean"] = [0.5, 0.5]
    model = build_model()
    model.metadata_props.add(key="mtp_qgis", value=json.dumps(meta))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelPackageError) as err:
        load_package(tmp_path / "bad.onnx")
    msg = err.value.message
    assert "missing key 'tile_size'" in msg and "classes[1].color 'red'" in msg
    assert "'input.mean' has 2 values for 3 bands" in msg


def test_metadata_that_contradicts_the_graph_is_refused(tmp_path):
    meta = default_metadata(3, 5, 64, 16)  # graph has 4 output channels
    write_package(tmp_path / "five.onnx", num_classes=4, metadata=meta)
    with pytest.raises(ModelPackageError, match="output 0 has 4 channels but metadata lists 5 classes"):
        load_package(tmp_path / "five.onnx")


def test_registry_skips_invalid_files_but_explains_on_get(tmp_path):
    onnx.save(build_model(), str(tmp_path / "bare.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    write_package(tmp_path / "good.onnx")
    registry = ModelRegistry([tmp_path])
    assert [m.id for m in registry.list()] == ["good"]
    with pytest.raises(ModelPackageError, match="not a readable ONNX file"):
        registry.get("junk")


def test_model_of_another_task_is_refused_for_segmentation(tmp_path):
    from backend.synthetic_models import write_change_package

    write_change_package(tmp_path / "cd.onnx")
    spec = JobSpec("semantic_segmentation", "cd", [str(COGEO)], {"raster": str(tmp_path / "r.tif")})
    with pytest.raises(BackendError, match="does change_detection, not semantic_segmentation"):
        plan_job(spec, ModelRegistry([tmp_path]), "x")


@pytest.mark.slow
def test_import_model_cli_writes_a_package_the_registry_lists(tmp_path):
    onnx.save(build_model(), str(tmp_path / "third_party.onnx"))
    meta_file = tmp_path / "meta.yaml"
    meta_file.write_text(yaml.safe_dump(default_metadata(3, 4, 64, 16)))
    out = tmp_path / "models"
    out.mkdir()
    cli = [sys.executable, "-m", "backend"]
    done = subprocess.run(cli + ["import-model", str(tmp_path / "third_party.onnx"), str(meta_file),
                                 "--out", str(out), "--id", "imported"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["imported.onnx"]
    listed = subprocess.run(cli + ["models", "--json", "--models-dir", str(out)], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert [m["id"] for m in json.loads(listed.stdout)["models"]] == ["imported"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"task": "semantic_segmentation"}))
    failed = subprocess.run(cli + ["import-model", str(tmp_path / "third_party.onnx"), str(bad), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert failed.returncode == 2 and "missing key 'classes'" in failed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["imported.onnx"]


def test_deepness_package_runs_end_to_end(tmp_path):
    from osgeo import gdal

    from backend.segmentation import segment_raster

    models = tmp_path / "models"
    models.mkdir()
    save_with_props(models / "deep.onnx", {
        "model_type": '"Segmentor"', "class_names": '{"0": "a", "1": "b", "2": "c", "3": "d"}',
        "resolution": "60", "tiles_size": "64", "tiles_overlap": "25"})
    out = tmp_path / "deep.tif"
    spec = JobSpec("semantic_segmentation", "deep", [str(COGEO)], {"raster": str(out)})
    segment_raster(plan_job(spec, ModelRegistry([models]), "d"))
    ds = gdal.Open(str(out))
    assert (ds.RasterXSize, ds.RasterYSize) == (1024, 1024)
    assert json.loads(ds.GetMetadataItem("CLASS_NAMES")) == ["a", "b", "c", "d"]


def test_output_layout_must_fit_the_task(tmp_path):
    from backend.synthetic_models import write_classification_package
    scenes = default_metadata(3, 3, 64, 0, task="scene_classification")
    assert scenes["output"]["layout"] == "NC"
    assert load_package(write_classification_package(tmp_path / "nc.onnx", metadata=scenes)).task == "scene_classification"
    scenes["output"]["layout"] = "NCHW"  # a per-pixel layout on an N x K classifier
    write_classification_package(tmp_path / "wrong.onnx", metadata=scenes)
    with pytest.raises(ModelPackageError, match="'output.layout' must be 'NC' for a scene_classification model"):
        load_package(tmp_path / "wrong.onnx")
    seg = default_metadata(3, 4, 64, 16)
    seg["output"]["layout"] = "NC"
    write_package(tmp_path / "seg.onnx", metadata=seg)
    with pytest.raises(ModelPackageError, match="'output.layout' must be 'NCHW'"):
        load_package(tmp_path / "seg.onnx")

"""int8 packages: `python -m training export --precision int8` quantizes the graph statically (weights per channel,
activation ranges from tiles of the model's own training data) and writes it only when the task's held-out metric,
measured through ONNX Runtime on the fp32 and the int8 graph, moves within the contract's allowance; the backend
serves it like any package."""
import json

import onnx
import pytest

from training.__main__ import main
from training.config import REPO_ROOT
from training.export import INT8_ALLOWED_CHANGE, ExportError, export_int8, read_metadata

pytestmark = pytest.mark.slow  # each exports the tiny model and evaluates it twice through ONNX Runtime

SAMPLE = REPO_ROOT / "resources" / "samples" / "aerial_3857.tif"


def test_int8_package_is_written_with_its_check_and_served_by_the_backend(tiny_checkpoint, tmp_path, capsys):
    from osgeo import gdal

    from backend.jobs import JobSpec, plan_job, run_plan
    from backend.registry import ModelRegistry

    out = tmp_path / "models" / "tiny_seg_int8.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--precision", "int8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["precision"] == "int8" and summary["precision_check"]["passed"] is True
    assert [p.name for p in out.parent.iterdir()] == ["tiny_seg_int8.onnx"]

    meta = read_metadata(out)
    check = meta["precision_check"]
    assert meta["precision"] == "int8" and meta["name"].endswith("(int8)")
    assert check["metric"] == "mIoU" and check["allowed_change"] == INT8_ALLOWED_CHANGE["semantic_segmentation"][1]
    assert abs(check["int8"] - check["fp32"]) <= check["allowed_change"] and check["calibration_tiles"] > 0
    assert meta["training"]["parity"]["passed"]
    graph = onnx.load(str(out)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # quantized, QDQ
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert int8_weights  # the convolution weights are stored as int8
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # the backend still feeds fp32

    result = tmp_path / "classes.tif"
    spec = JobSpec("semantic_segmentation", "tiny_seg_int8", [str(SAMPLE)], {"raster": str(result)})
    run_plan(spec.task, plan_job(spec, ModelRegistry([out.parent]), "int8"))
    ds = gdal.Open(str(result))  # kept while its band is read: GDAL frees a band with its dataset
    classes = ds.GetRasterBand(1).ReadAsArray()
    assert classes.shape == (1024, 1024) and classes.max() < 7


def test_int8_package_whose_metric_moves_too_much_is_refused(tiny_checkpoint, tmp_path):
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(ExportError, match="int8 package refused, no model written: int8 check: held-out mIoU"):
        export_int8(tiny_checkpoint, out, max_change=-1.0)  # no package can be that close
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_rotated_detector_int8_quantizes_its_arithmetic_only_and_is_served(tmp_path):
    """The bundled rotated ship detector, quantized as `python -m training quantize` does: convolutions and matrix
    products run in int8, box decoding and proposal selection stay fp32, the held-out AP50 is checked, and the
    backend's rotated-detection job runs the package on the held-out part of its image."""
    from osgeo import gdal

    from backend.jobs import JobSpec, plan_job, run_plan
    from backend.registry import ModelRegistry
    from training.export import INT8_COMPUTE_OPS, int8_package

    out = tmp_path / "models" / "rdet_int8.onnx"
    meta = int8_package(REPO_ROOT / "resources" / "models" / "mtp_rdet_default.onnx", out)
    check = meta["precision_check"]
    assert meta["precision"] == "int8" and check["passed"] and check["metric"] == "map50_voc07"
    assert check["allowed_change"] == INT8_ALLOWED_CHANGE["rotated_detection"][1]
    assert check["int8"] - check["fp32"] >= -check["allowed_change"] and check["fp32"] > 0.5

    # Box decoding (Exp of size deltas, the angle's Sin / Cos / Atan) and proposal ranking (TopK) read fp32 arithmetic,
    # never a dequantized tensor; the int8 weights are the convolutions' and the linear layers'.
    graph = onnx.load(str(out)).graph
    producer = {name: node for node in graph.node for name in node.output}
    box_ops = [n for n in graph.node if n.op_type in ("TopK", "Exp", "Sin", "Cos", "Atan")]
    assert {"TopK", "Exp", "Atan"} <= {n.op_type for n in box_ops}
    for node in box_ops:
        assert all(name not in producer or producer[name].op_type != "DequantizeLinear" for name in node.input), node.name
    weight_readers = {c.op_type for c in graph.node for name in c.input
                      if name in producer and producer[name].op_type == "DequantizeLinear"
                      and producer[name].input[0] in {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}}
    assert weight_readers and weight_readers <= set(INT8_COMPUTE_OPS)

    image = REPO_ROOT.parent / "shared" / "data" / "dota" / "images" / "P0706.png"
    held_out = tmp_path / "held_out.tif"
    gdal.Translate(str(held_out), str(image), srcWin=[760, 0, 351, 1182])
    result = tmp_path / "ships.gpkg"
    spec = JobSpec("rotated_detection", "rdet_int8", [str(held_out)], {"vector": str(result)})
    run_plan(spec.task, plan_job(spec, ModelRegistry([out.parent]), "int8"))
    ships = gdal.OpenEx(str(result))  # kept while its layer is read: GDAL frees a layer with its dataset
    assert ships.GetLayer(0).GetFeatureCount() >= 20  # the held-out strip has ~150 ships

"""Export a checkpoint to a model package: one .onnx file with `mtp_qgis` metadata (docs/contract.md),
accepted only if ONNX Runtime reproduces torch's logits on real image tiles."""
import ast
import datetime
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
import torch

from mtp_common import package_schema
from training.config import config_to_dict

log = logging.getLogger("training")
METADATA_KEY = "mtp_qgis"


class ExportError(RuntimeError):
    pass


def compare_with_torch(model: torch.nn.Module, onnx_path: Path, inputs: Sequence[torch.Tensor], batch_size: int,
                       input_names: Optional[Sequence[str]] = None) -> Tuple[float, int, int]:
    """Run torch and ONNX Runtime on the same batches of `inputs` (one tensor per graph input, in order).
    Batches of batch_size and a shorter last one also exercise the dynamic batch dimension.
    Returns (max |logit difference|, argmax agreements along axis 1, argmax count)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if input_names is not None and names != list(input_names):
        raise ExportError(f"exported graph has inputs {names}, expected {list(input_names)}")
    max_diff, agree, total = 0.0, 0, 0
    for start in range(0, len(inputs[0]), batch_size):
        batch = [x[start:start + batch_size] for x in inputs]
        with torch.no_grad():
            expected = model(*batch).numpy()
        got = session.run(None, {name: x.numpy() for name, x in zip(names, batch)})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from torch's {expected.shape}")
        max_diff = max(max_diff, float(np.abs(got - expected).max()))
        matches = got.argmax(1) == expected.argmax(1)
        agree, total = agree + int(matches.sum()), total + matches.size
    return max_diff, agree, total


def check_parity(model: torch.nn.Module, onnx_path: Path, inputs: Sequence[torch.Tensor], atol: float,
                 min_agreement: float, input_names: Optional[Sequence[str]] = None) -> Dict:
    """Per-pixel parity of a dense model (segmentation, change): logits within atol, argmax agreeing."""
    max_diff, agree, total = compare_with_torch(model, onnx_path, inputs, 2, input_names)
    result = {"tiles": int(len(inputs[0])), "max_abs_logit_diff": max_diff, "tolerance": atol,
              "argmax_agreement": agree / total, "min_argmax_agreement": min_agreement}
    result["passed"] = max_diff <= atol and result["argmax_agreement"] >= min_agreement
    return result


def classes_and_input(data) -> Dict:
    """The `classes` and `input` entries of a package (docs/contract.md §1), from any task's data config."""
    return {"classes": [{"id": i, "name": c.name, "color": c.color} for i, c in enumerate(data.classes)],
            "input": {"bands": list(data.bands), "band_names": list(data.band_names), "scale": data.scale,
                      "mean": list(data.mean), "std": list(data.std)}}


def training_provenance(cfg, state: Dict, parity: Dict, **extra) -> Dict:
    """The free-form `training` entry: iterations, time, what it started from (extra), date, torch, parity
    and the whole config (every task's config is a dataclass)."""
    return {"iterations": int(state["iteration"]), "elapsed_s": round(float(state.get("elapsed_s", 0)), 1),
            **extra,
            "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "parity": parity, "config": config_to_dict(cfg)}


def export_onnx(model: torch.nn.Module, path: Path, tile_size: int, channels: int, opset: int) -> None:
    # An example batch of 2: with 1, the exporter may specialise the batch to 1 in graphs that reshape
    # (ViT tokens, detector proposals) and the "dynamic" batch then fails at 2.
    example = torch.zeros(2, channels, tile_size, tile_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    # The dynamo exporter handles the fixed-kernel pooling; the tile size is fixed, the batch is not.
    torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                      opset_version=opset, dynamo=True, dynamic_shapes={"x": {0: batch}},
                      external_data=False, verbose=False)


# ------------------------------------------------------------------------------ torch tensors of a package

TRAINING_TENSORS = "mtp_qgis_training_tensors"  # the training_info graph holding tensors the graph folded away


def linear_weights(graph: onnx.GraphProto) -> Dict[str, np.ndarray]:
    """`<module>.weight` of the Linear layers whose weight the exporter stored transposed under a generated name
    (the MatMul of torch's `linear`, e.g. a ViT's qkv, proj and MLP layers): found through the name scopes the
    exporter records on each node."""
    initializers = {i.name: i for i in graph.initializer}
    found: Dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in initializers:
            continue
        props = {p.key: p.value for p in node.metadata_props}
        if "aten.linear" not in props.get("pkg.torch.onnx.fx_node", ""):
            continue
        try:
            scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        if len(scopes) >= 2 and isinstance(scopes[-2], str) and scopes[-2]:
            value = numpy_helper.to_array(initializers[node.input[1]])
            if value.ndim == 2:
                found[f"{scopes[-2]}.weight"] = value.T.copy()
    return found


def graph_weights(proto: onnx.ModelProto) -> Dict[str, np.ndarray]:
    """The torch tensors a package holds, by torch name: its initializers that keep their names, the Linear weights
    stored transposed (linear_weights), and those keep_training_tensors put in its training_info."""
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name, value in linear_weights(proto.graph).items():
        weights.setdefault(name, value)
    for info in proto.training_info:
        if info.initialization.name == TRAINING_TENSORS:
            for tensor in info.initialization.initializer:
                weights.setdefault(tensor.name, numpy_helper.to_array(tensor))
    return weights


def keep_training_tensors(proto: onnx.ModelProto, model: torch.nn.Module) -> List[str]:
    """Put into the package's training_info the tensors of `model` its graph no longer holds by name: the exporter
    folds parameters computed on (e.g. relative-position tables gathered by constant indices) into anonymous
    constants, and finetuning must rebuild the torch model from the package. BatchNorm tensors are left out
    (rebuilt from the folded convolution); ONNX Runtime ignores training_info. Returns the names kept."""
    present = graph_weights(proto)
    norms = {name for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    kept = []
    info = None
    for name, value in model.state_dict().items():
        if name in present or name.rsplit(".", 1)[0] in norms or name.endswith("num_batches_tracked"):
            continue
        if info is None:
            info = proto.training_info.add()
            info.initialization.name = TRAINING_TENSORS
        info.initialization.initializer.append(
            numpy_helper.from_array(value.detach().cpu().float().numpy(), name))
        kept.append(name)
    return kept


def onnx_out_path(out) -> Path:
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx (the model id is the file name), got {out}")
    return out


def write_package(out: Path, export_graph: Callable[[Path], None], check_parity: Callable[[Path], Dict],
                  build_metadata: Callable[[Dict], Dict], describe_parity: Callable[[Dict], str],
                  trainable: Optional[torch.nn.Module] = None) -> Dict:
    """The steps every task's export shares: export_graph(path) writes the ONNX graph to a temporary
    .partial file; check_parity(path) must pass; build_metadata(parity) goes into the METADATA_KEY
    property once it fits mtp_common.package_schema; after onnx.checker the file is renamed onto `out`, so a
    failed export leaves no file behind (and never replaces a good one). `trainable`: the exported model, whose
    tensors the graph folded away are kept in the package (keep_training_tensors). Returns the metadata written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        export_graph(tmp)
        parity = check_parity(tmp)
        if not parity["passed"]:
            raise ExportError(f"parity check failed, no model written: {parity}")
        proto = onnx.load(str(tmp))
        try:  # what the backend will read: the shared schema's keys and value types (docs/package_metadata.schema.json)
            metadata = package_schema.checked(build_metadata(parity))
        except ValueError as exc:
            raise ExportError(f"no model written: {exc}") from exc
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        if trainable is not None:
            keep_training_tensors(proto, trainable)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("wrote %s (%.1f MB), %s", out, out.stat().st_size / 1e6, describe_parity(parity))
    return metadata


def describe_parity(parity: Dict) -> str:
    """Parity of tiled logits (segmentation, change detection), for the final log line."""
    return f"parity: max |diff| {parity['max_abs_logit_diff']:.2e}, argmax agreement {parity['argmax_agreement']:.5f}"


# --------------------------------------------------------------------------------------------- fp16 packages

# fp16 packages (docs/contract.md §1 "Precision"): the task's own held-out evaluation is run through ONNX Runtime on
# the fp32 package and on its fp16 conversion; the fp16 package is written only when its headline metric moves
# by at most this much (absolute, metric in 0..1).
FP16_ALLOWED_CHANGE = {
    "semantic_segmentation": ("mIoU", 0.005),
    "change_detection": ("f1", 0.005),
    "scene_classification": ("overall_accuracy", 0.005),
    "detection": ("map50_voc07", 0.01),
    "rotated_detection": ("map50_voc07", 0.01),
}
# Kept in fp32 besides onnxruntime's defaults: the ONNX spec defines IsInf / IsNaN for fp32/fp64 only.
FP16_KEEP_FP32 = ["IsInf", "IsNaN"]


def convert_to_fp16(src: Path, dst: Path) -> None:
    """An fp16 copy of an fp32 ONNX graph: weights and arithmetic in fp16, inputs and outputs still fp32 (the
    backend feeds and reads the same arrays), the operators fp16 would break kept in fp32 (casts around them).
    onnxruntime's own converter, its duplicated casts removed and the nodes put back in producer order."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     op_block_list=list(DEFAULT_OP_BLOCK_LIST) + FP16_KEEP_FP32)
    # The converter casts a value once per consumer it blocks, under one name: keep the first of such twins.
    producers: Dict[str, onnx.NodeProto] = {}
    kept = []
    for node in model.graph.node:
        twin = next((producers[o] for o in node.output if o in producers), None)
        if twin is not None and (twin.op_type, list(twin.input), list(twin.attribute)) == \
                (node.op_type, list(node.input), list(node.attribute)):
            continue
        producers.update({o: node for o in node.output})
        kept.append(node)
    names: Dict[str, int] = {}
    for node in kept:  # node names must be unique too
        names[node.name] = names.get(node.name, -1) + 1
        if names[node.name]:
            node.name = f"{node.name}_{names[node.name]}"
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _sort_nodes(model.graph)  # the converter appends the input casts last; ONNX wants producers first
    onnx.save(model, str(dst))


def _sort_nodes(graph) -> None:
    """Order the graph's nodes so each comes after the producers of its inputs (Kahn's algorithm, stable)."""
    import heapq
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    waiting = [0] * len(graph.node)
    users: Dict[int, List[int]] = {}
    for i, node in enumerate(graph.node):
        for name in set(node.input):
            if name in producer and producer[name] != i:
                waiting[i] += 1
                users.setdefault(producer[name], []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) == len(graph.node):  # else a cycle: leave it for the checker to name
        nodes = [graph.node[i] for i in order]
        del graph.node[:]
        graph.node.extend(nodes)


class OnnxModule(torch.nn.Module):
    """An ONNX graph run by ONNX Runtime (CPU) behind a torch module's call, so a task's own held-out evaluation
    (which calls model(x) or model(before, after)) measures the package instead of the torch model."""

    def __init__(self, path: Path):
        super().__init__()
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, *inputs):
        outs = self.session.run(None, {n: x.detach().cpu().numpy() for n, x in zip(self.names, inputs)})
        tensors = tuple(torch.from_numpy(o) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors


def fp16_check(task: str, cfg, evaluate: Callable, fp32_path: Path, fp16_path: Path,
               max_change: Optional[float] = None) -> Dict:
    """The task's held-out evaluation through ONNX Runtime on both packages; passed when the headline metric
    moves by at most the allowance (FP16_ALLOWED_CHANGE, or max_change)."""
    return precision_check(task, "fp16", cfg, evaluate, fp32_path, fp16_path, FP16_ALLOWED_CHANGE, max_change)


def export_fp16(checkpoint: Path, out: Path, max_change: Optional[float] = None) -> Dict:
    """`python -m training export --precision fp16`: the fp32 package first (with its parity check against
    torch), then its fp16 conversion, written only if fp16_check passes; returns the metadata written."""
    import tempfile

    from training.tasks import checkpoint_task, task_named
    out = onnx_out_path(out)
    task = checkpoint_task(checkpoint)
    if task not in FP16_ALLOWED_CHANGE:
        raise ExportError(f"fp16 packages are made for {', '.join(FP16_ALLOWED_CHANGE)}; {checkpoint} is {task}")
    code = task_named(task).package_code(checkpoint)
    evaluate = code.evaluate_model
    with tempfile.TemporaryDirectory(prefix="mtp_fp16_") as tmp:
        fp32_path, fp16_path = Path(tmp) / "fp32.onnx", Path(tmp) / "fp16.onnx"
        metadata32 = code.export_checkpoint(checkpoint, fp32_path)
        convert_to_fp16(fp32_path, fp16_path)
        _, cfg, _ = code.model_from_checkpoint(checkpoint)

        def describe(r: Dict) -> str:
            return (f"fp16 check: held-out {r['metric']} {r['fp32']:.4f} (fp32) -> {r['fp16']:.4f} (fp16), change "
                    f"{r['change']:+.4f}, allowed +-{r['allowed_change']}")

        return write_reduced_package(out, "fp16", fp16_path, metadata32,
                                     lambda path: fp16_check(task, cfg, evaluate, fp32_path, path, max_change),
                                     describe, "export fp32")


def write_reduced_package(out: Path, precision: str, graph: Path, fp32_metadata: Dict, measure: Callable[[Path], Dict],
                          describe: Callable[[Dict], str], instead: str) -> Dict:
    """write_package for an fp16 / int8 graph: its precision check (measure) must pass, else nothing is written
    and the error says what to do instead; the metadata is the fp32 package's with the precision and its check."""
    def check(path: Path) -> Dict:
        result = measure(path)
        if not result["passed"]:
            raise ExportError(f"{precision} package refused, no model written: {describe(result)}; its metric would "
                              f"move more than the contract allows (docs/contract.md §1 Precision): {instead}")
        return result

    return write_package(out, export_graph=lambda path: shutil.copyfile(graph, path), check_parity=check,
                         build_metadata=lambda result: {**fp32_metadata, "name": f"{fp32_metadata['name']} ({precision})",
                                                        "precision": precision, "precision_check": result},
                         describe_parity=describe)


# --------------------------------------------------------------------------------------------- int8 packages

# int8 packages (docs/contract.md §1 "Precision"): static quantization (QDQ; weights int8 per output channel,
# activations uint8 with ranges measured on tiles of the model's own training data), written only when the task's
# held-out headline metric drops by at most this much (absolute): one point of mIoU / F1 / overall accuracy / AP50.
INT8_ALLOWED_CHANGE = {
    "semantic_segmentation": ("mIoU", 0.01),
    "land_cover_extraction": ("mIoU", 0.01),
    "change_detection": ("f1", 0.01),
    "scene_classification": ("overall_accuracy", 0.01),
    "detection": ("map50_voc07", 0.01),
    "rotated_detection": ("map50_voc07", 0.01),
    "instance_segmentation": ("mask_ap50", 0.01),
}
INT8_CALIBRATION_TILES = 32
# Detectors quantize only the network's arithmetic: their graphs also decode boxes, select proposals (TopK,
# Gather) and sample RoIs, where uint8 steps would move coordinates and reorder candidates. Dense tasks quantize
# every operator ONNX Runtime can, so that int8 runs from one convolution to the next without converting back.
INT8_BOX_TASKS = ("detection", "rotated_detection", "instance_segmentation")
INT8_COMPUTE_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]


class _Recorded(Exception):
    """Enough calibration inputs: stop the evaluation that produced them."""


class RecordingModule(torch.nn.Module):
    """Runs the fp32 graph behind a torch module's call and keeps the inputs it is given, so a task's own
    evaluation code, pointed at its training data, yields calibration batches exactly as the package sees
    them (normalised, at the tile size, one input per date for change detection)."""

    def __init__(self, path: Path, limit: int):
        super().__init__()
        self.inner = OnnxModule(path)
        self.limit = limit
        self.batches: List[Dict[str, np.ndarray]] = []
        self.tiles = 0

    def forward(self, *inputs):
        self.batches.append({n: x.detach().cpu().numpy().astype(np.float32) for n, x in zip(self.inner.names, inputs)})
        self.tiles += int(inputs[0].shape[0])
        if self.tiles >= self.limit:
            raise _Recorded()
        return self.inner(*inputs)


def training_as_held_out(cfg):
    """A copy of a task's config whose held-out data is its training data, so that the task's own evaluation
    reads training tiles: `data.val` = `data.train` (segmentation, change, scenes), or the training regions /
    split in place of the held-out ones (detection, instances)."""
    import dataclasses

    data = cfg.data
    if hasattr(data, "train") and hasattr(data, "val"):
        return dataclasses.replace(cfg, data=dataclasses.replace(data, val=data.train))
    if getattr(data, "images", None):
        return dataclasses.replace(cfg, data=dataclasses.replace(data, val_regions=data.train_regions))
    if getattr(data, "label_format", None) == "samrs":
        raise ExportError("int8 calibration reads the training data through the held-out evaluation, which a SAMRS "
                          "subset fixes to its valid split: quantize a package trained on listed images")
    if hasattr(data, "val_split"):  # detection split mode: whole images of the training split and its folders
        return dataclasses.replace(cfg, data=dataclasses.replace(
            data, val_split=data.train_split, val_image_dir=data.image_dir, val_label_dir=data.label_dir,
            val_label_file=data.label_file))
    raise ExportError(f"int8 calibration does not know where {type(data).__name__} keeps its training data")


def calibration_batches(cfg, evaluate: Callable, fp32_path: Path, limit: int = INT8_CALIBRATION_TILES) -> List[Dict]:
    """Up to `limit` input tiles of the training data (the task's evaluation run on training_as_held_out(cfg))."""
    train_cfg = training_as_held_out(cfg)
    recorder = RecordingModule(fp32_path, limit)
    try:
        evaluate(recorder, train_cfg)
    except _Recorded:
        pass
    if not recorder.batches:
        raise ExportError("int8 calibration found no training tiles (cfg.data.train is empty)")
    return recorder.batches


def convert_to_int8(src: Path, dst: Path, batches: List[Dict[str, np.ndarray]],
                    op_types: Optional[List[str]] = None) -> None:
    """A statically quantized copy of an fp32 ONNX graph (QDQ format; inputs and outputs stay fp32); op_types:
    only these operators (None: every one the quantizer supports)."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(batches)

        def get_next(self):
            return next(self.left, None)

    with tempfile.TemporaryDirectory(prefix="mtp_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)  # shapes + folding, as ORT advises
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=op_types)
    model = onnx.load(str(dst))  # the quantizer keeps the graph's metadata only sometimes: put it back
    props = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))


def precision_check(task: str, precision: str, cfg, evaluate: Callable, fp32_path: Path, reduced_path: Path,
                    allowed_change: Dict[str, Tuple[str, float]], max_change: Optional[float] = None,
                    loss_only: bool = False) -> Dict:
    """The task's held-out evaluation through ONNX Runtime on the fp32 and the reduced-precision graph; passed
    when the headline metric moves by at most the allowance (or max_change); with loss_only, when it drops by
    at most that (a gain is no reason to refuse)."""
    metric, allowed = allowed_change[task]
    allowed = allowed if max_change is None else max_change
    fp32 = evaluate(OnnxModule(fp32_path), cfg)
    reduced = evaluate(OnnxModule(reduced_path), cfg)
    change = float(reduced[metric]) - float(fp32[metric])
    return {"metric": metric, "fp32": float(fp32[metric]), precision: float(reduced[metric]), "change": change,
            "allowed_change": allowed, "evaluated_on": fp32.get("evaluated_on", ""),
            "runtime": f"onnxruntime {ort.__version__} CPU",
            "passed": bool((-change if loss_only else abs(change)) <= allowed)}


def package_training_config(path: Path, meta: Dict):
    """The training config a package was exported with (metadata training.config), as its task's config."""
    from training.tasks import task_named
    raw = (meta.get("training") or {}).get("config")
    if not isinstance(raw, dict):
        raise ExportError(f"{path.name} carries no training config (metadata training.config): only packages "
                          "written by `python -m training export` can be quantized here (their training tiles "
                          "calibrate it and their held-out data check it)")
    return task_named(meta["task"]).config_from_dict(raw)


def int8_package(fp32_path: Path, out: Path, max_change: Optional[float] = None) -> Dict:
    """An int8 package from an fp32 package that carries its training config (`python -m training quantize`,
    and the last step of `export --precision int8`): calibrated on its training tiles, written only if the
    held-out check passes; returns the metadata written."""
    import tempfile

    fp32_path, out = Path(fp32_path), onnx_out_path(out)
    meta = read_metadata(fp32_path)
    task = meta.get("task")
    if task not in INT8_ALLOWED_CHANGE:
        raise ExportError(f"int8 packages are made for {', '.join(INT8_ALLOWED_CHANGE)}; {fp32_path.name} is {task} "
                          "(keep fp32, or export fp16)")
    if meta.get("precision", "fp32") != "fp32":
        raise ExportError(f"{fp32_path.name} is already {meta['precision']}; quantize its fp32 package")
    from training.tasks import task_named
    cfg = package_training_config(fp32_path, meta)
    evaluate = task_named(task).package_code(fp32_path.name).evaluate_model
    with tempfile.TemporaryDirectory(prefix="mtp_int8_") as tmp:
        int8_path = Path(tmp) / "int8.onnx"
        batches = calibration_batches(cfg, evaluate, fp32_path)
        convert_to_int8(fp32_path, int8_path, batches, INT8_COMPUTE_OPS if task in INT8_BOX_TASKS else None)
        tiles = sum(next(iter(b.values())).shape[0] for b in batches)

        def describe(r: Dict) -> str:
            return (f"int8 check: held-out {r['metric']} {r['fp32']:.4f} (fp32) -> {r['int8']:.4f} (int8), change "
                    f"{r['change']:+.4f}, at most {r['allowed_change']} may be lost; calibrated on {tiles} training "
                    "tiles")

        def measure(path: Path) -> Dict:
            result = precision_check(task, "int8", cfg, evaluate, fp32_path, path, INT8_ALLOWED_CHANGE, max_change,
                                     loss_only=True)
            return {**result, "calibration_tiles": tiles}

        return write_reduced_package(out, "int8", int8_path, meta, measure, describe, "keep fp32")


def export_int8(checkpoint: Path, out: Path, max_change: Optional[float] = None) -> Dict:
    """`python -m training export --precision int8`: the fp32 package first (with its parity check against
    torch), then int8_package of it."""
    import tempfile

    from training.tasks import checkpoint_task, task_named
    task = checkpoint_task(checkpoint)
    if task not in INT8_ALLOWED_CHANGE:
        raise ExportError(f"int8 packages are made for {', '.join(INT8_ALLOWED_CHANGE)}; {checkpoint} is {task} "
                          "(export fp32 or fp16)")
    with tempfile.TemporaryDirectory(prefix="mtp_int8_") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        task_named(task).export(checkpoint, fp32_path)
        return int8_package(fp32_path, out, max_change)


def read_metadata(path) -> Dict:
    """The `mtp_qgis` JSON of a package (what the backend reads)."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path} has no {METADATA_KEY!r} metadata")
    return json.loads(props[METADATA_KEY])

"""Read, validate and write model packages: one .onnx file whose metadata describes how to run it.

Two metadata conventions are understood (docs/contract.md §1):
- key ``mtp_qgis``: a JSON object written by our training export or by ``import-model``;
- the Deepness QGIS plugin keys (``model_type``, ``class_names``, ``resolution``, ``tiles_size``,
  ``tiles_overlap``, ...), each value JSON-encoded, which we translate into the same structure.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from backend.errors import ModelPackageError
from mtp_common import package_schema
from backend.spectral import INDICES, ROLES

if TYPE_CHECKING:
    from backend.tasks import GraphRule

METADATA_KEY = "mtp_qgis"
# The `metrics` key each task's packages report first, and how it is named to an analyst.
HEADLINE_METRICS = (("mIoU", "mIoU"), ("f1", "F1"), ("overall_accuracy", "OA"), ("mAP50", "AP50"),
                    ("mask_ap", "mask AP"))
# A model that divides by 255 was trained on 8-bit imagery unless it says otherwise (`input.value_range`).
EIGHT_BIT_SCALE = 255.0
# Bounds on what one package may carry: its metadata is parsed on every scan of the models folder, and
# the description is sent with every GET /models.
MAX_METADATA_BYTES = 1024 * 1024
MAX_DESCRIPTION_CHARS = 4000
# The keys of a detection package's `detection` (docs/contract.md §3).
DETECTION_KEYS = ("score_threshold", "nms_iou", "max_per_tile")
DEEPNESS_REQUIRED_KEYS = ("model_type", "class_names", "resolution")
IMPORT_HINT = (
    "Add the metadata with `python -m backend import-model MODEL.onnx META.yaml --out DIR` "
    "(see docs/contract.md)."
)
# Colours for classes whose metadata gives none (Deepness packages carry no colours).
DEFAULT_PALETTE = (
    "#a0a0a0", "#e31a1c", "#1f78b4", "#33a02c", "#ff7f00", "#6a3d9a", "#b15928", "#fb9a99",
    "#a6cee3", "#b2df8a", "#fdbf6f", "#cab2d6", "#ffff99", "#000000", "#ffffff", "#8dd3c7",
)


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: str

    def rgb(self) -> tuple[int, int, int]:
        return int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16)


@dataclass(frozen=True)
class InputSpec:
    bands: list[int]  # 1-based band numbers; for a model that names its bands by role, those of one job's raster
    band_names: list[str]
    scale: float
    mean: list[float]
    std: list[float]
    dtypes: tuple[str, ...] = ()  # raster data types accepted (`input.dtype`); empty: any
    value_range: tuple[float, float] | None = None  # raw values the model was trained on (`input.value_range`)
    band_roles: tuple[str, ...] = ()  # `input.band_roles`: bands by role, resolved per raster (backend.spectral)
    indices: tuple[str, ...] = ()  # `input.indices`: spectral index channels appended after the bands
    # Per band, reflectance = raw * gain + offset before `scale` (set for a job's raster when bands go by role).
    gains: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()

    @property
    def by_role(self) -> bool:
        return bool(self.band_roles)

    @property
    def channels(self) -> int:
        """Graph input channels: the bands, then one per index."""
        return len(self.band_roles or self.bands) + len(self.indices)

    @property
    def roles(self) -> tuple[str, ...]:
        """The role of each band read: `band_roles`, or `band_names` for a model that reads bands by number."""
        return self.band_roles or tuple(self.band_names)

    def expected_range(self) -> tuple[float, float] | None:
        """The raw value range input pixels must lie in: the declared one, else 0-255 for a model that
        divides by 255 (8-bit imagery), else unknown (not checked). Bands by role are checked as reflectance."""
        if self.value_range is not None:
            return self.value_range
        return (0.0, EIGHT_BIT_SCALE) if self.scale == EIGHT_BIT_SCALE and not self.by_role else None

    def raw_fill(self) -> np.ndarray:
        """Per band, the raw value that normalises to 0 (the training mean): what invalid pixels are given."""
        n = len(self.bands)
        value = np.asarray(self.mean[:n], np.float64) * self.scale
        if self.gains:
            value = (value - np.asarray(self.offsets)) / np.asarray(self.gains)
        return value.astype(np.float32)


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    id: str
    task: str
    name: str
    description: str
    classes: list[ClassInfo]
    input: InputSpec
    tile_size: int
    tile_overlap: int
    gsd_m: float | None
    output_type: str  # "logits" (softmax applied by us) or "probabilities"
    metadata_source: str  # "mtp_qgis" or "deepness"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def scene_cell_size(self) -> int:
        """Scene classification: source pixels per cell by default (`scene.cell_size`, e.g. 64 for EuroSAT's
        64 px images, which the model sees resized to its tile); else the tile size."""
        return int((self.raw.get("scene") or {}).get("cell_size") or self.tile_size)

    @property
    def detection(self) -> dict[str, Any]:
        """Detection defaults (score_threshold, nms_iou, max_per_tile); empty for other tasks."""
        return dict(self.raw.get("detection") or {})

    @property
    def headline_metric(self) -> str:
        """The package's main figure and its kind, e.g. "mIoU 0.524 (paper)" or "F1 0.742 (held out)";
        "" when it has none."""
        metrics = self.raw.get("metrics") or {}
        if not isinstance(metrics, dict):
            return ""
        where = " ".join(str(metrics.get(k, "")) for k in ("source", "evaluated_on")).lower()
        kind = " (paper)" if "paper" in where else " (held out)" if "held out" in where else ""
        for key, label in HEADLINE_METRICS:
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return f"{label} {value:.3f}{kind}"
        return ""

    def info(self) -> dict[str, Any]:
        """The ModelInfo object of the HTTP contract."""
        return {
            "id": self.id,
            "name": self.name,
            "task": self.task,
            "dataset": _short_text(self.raw.get("dataset")),
            "encoder": _short_text(self.raw.get("encoder")),
            "metric": self.headline_metric,
            "description": self.description,
            "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in self.classes],
            "tile_size": self.tile_size,
            "tile_overlap": self.tile_overlap,
            "gsd_m": self.gsd_m,
            "bands": [] if self.input.by_role else list(self.input.bands),
            "band_roles": list(self.input.band_roles),
            "indices": list(self.input.indices),
            "path": str(self.path),
        }


def _short_text(value: Any, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


def read_onnx(path: Path) -> onnx.ModelProto:
    """The graph and metadata of an ONNX file, without loading external weight files."""
    path = Path(path)
    if not path.is_file():
        raise ModelPackageError(f"Model file {path} does not exist.")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelPackageError(f"{path} is not a readable ONNX file: {exc}") from exc


def load_package(path: str | os.PathLike) -> ModelPackage:
    path = Path(path).resolve()
    proto = read_onnx(path)
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY in props:
        if len(props[METADATA_KEY]) > MAX_METADATA_BYTES:
            raise ModelPackageError(f"{path}: metadata '{METADATA_KEY}' holds {len(props[METADATA_KEY])} characters; "
                                    f"at most {MAX_METADATA_BYTES} are read. Shorten its description or training notes.")
        try:
            meta = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ModelPackageError(f"{path}: metadata '{METADATA_KEY}' is not valid JSON: {exc}") from exc
        return package_from_metadata(path, meta, METADATA_KEY, proto)
    if "model_type" in props or "class_names" in props:
        return package_from_metadata(path, deepness_to_metadata(path, props, proto), "deepness", proto)
    raise ModelPackageError(
        f"{path} has no model metadata: neither the key '{METADATA_KEY}' nor the Deepness keys "
        f"({', '.join(DEEPNESS_REQUIRED_KEYS)}) are present. {IMPORT_HINT}"
    )


def _deepness_value(props: dict[str, str], key: str) -> Any:
    text = props[key]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # Deepness accepts Python literals too (e.g. class dicts with int keys).
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text


def deepness_to_metadata(path: Path, props: dict[str, str], proto: onnx.ModelProto) -> dict[str, Any]:
    """Translate Deepness plugin metadata into our metadata structure."""
    missing = [k for k in DEEPNESS_REQUIRED_KEYS if k not in props]
    tile_key = "tiles_size" if "tiles_size" in props else "tile_size"
    if tile_key not in props:
        missing.append("tiles_size")
    if missing:
        raise ModelPackageError(
            f"{path}: Deepness metadata is incomplete, missing key(s): {', '.join(missing)}. {IMPORT_HINT}"
        )
    model_type = str(_deepness_value(props, "model_type")).capitalize()
    if model_type != "Segmentor":
        raise ModelPackageError(
            f"{path}: Deepness model_type is '{model_type}'; only 'Segmentor' models are supported."
        )
    class_names = _deepness_value(props, "class_names")
    if isinstance(class_names, list):
        class_names = dict(enumerate(class_names))
    if not isinstance(class_names, dict) or not class_names:
        raise ModelPackageError(f"{path}: Deepness class_names must be a non-empty {{id: name}} mapping.")
    try:
        ordered = sorted((int(k), str(v)) for k, v in class_names.items())
    except ValueError as exc:
        raise ModelPackageError(f"{path}: Deepness class_names keys must be integers: {exc}") from exc
    tile_size = int(_deepness_value(props, tile_key))
    overlap_percent = float(_deepness_value(props, "tiles_overlap")) if "tiles_overlap" in props else 0.0
    channels = _static_input_channels(proto)
    mean = _deepness_value(props, "standardization_mean") if "standardization_mean" in props else [0.0]
    std = _deepness_value(props, "standardization_std") if "standardization_std" in props else [1.0]
    mean, std = _as_list(mean), _as_list(std)
    if channels is None:
        channels = max(len(mean), len(std), 3)
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    return {
        "format_version": 1,
        "task": "semantic_segmentation",
        "name": path.stem,
        "description": "Deepness model package",
        "classes": [
            {"id": cid, "name": name, "color": DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)]}
            for i, (cid, name) in enumerate(ordered)
        ],
        # Deepness feeds uint8 imagery divided by 255, then standardises.
        "input": {"bands": list(range(1, channels + 1)), "scale": 255.0, "mean": mean, "std": std},
        "tile_size": tile_size,
        "tile_overlap": int(round(tile_size * overlap_percent / 100.0)),
        "gsd_m": float(_deepness_value(props, "resolution")) / 100.0,
        # Deepness segmentors end with softmax/sigmoid already.
        "output": {"type": "probabilities", "layout": "NCHW"},
    }


def _as_list(value: Any) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)]
    return [float(v) for v in value]


def _static_input_channels(proto: onnx.ModelProto) -> int | None:
    inputs, _ = graph_shapes(proto)
    shape = inputs[0] if inputs else None
    if shape is not None and len(shape) == 4 and isinstance(shape[1], int):
        return shape[1]
    return None


Shape = list  # of int (static) or str/None (dynamic); None instead of a list when the rank is unknown


def graph_shapes(model: onnx.ModelProto) -> tuple[list[Shape | None], list[Shape | None]]:
    """Shapes of every graph input (weights excluded) and output, in order."""
    initializer_names = {i.name for i in model.graph.initializer}

    def dims(value_info) -> Shape | None:
        tensor_type = value_info.type.tensor_type
        if not tensor_type.HasField("shape"):
            return None
        out: Shape = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value"):
                out.append(int(d.dim_value))
            else:
                out.append(d.dim_param or None)
        return out

    inputs = [dims(i) for i in model.graph.input if i.name not in initializer_names]
    return inputs, [dims(o) for o in model.graph.output]


def graph_io_shapes(model: onnx.ModelProto) -> tuple[list[int | str | None], list[int | str | None]]:
    """Shapes of graph input 0 and output 0; ints where static, names/None where dynamic."""
    inputs, outputs = graph_shapes(model)
    return inputs[0] or [], outputs[0] or []


def validate_metadata(meta: Any, where: str) -> list[str]:
    """All problems with a metadata object, as readable phrases (empty list = valid): the keys and value types
    of the shared schema (mtp_common.package_schema, docs/package_metadata.schema.json), then what needs the
    backend's tables or several keys at once."""
    problems = package_schema.problems(meta)
    if not isinstance(meta, dict):
        return problems
    classes = meta.get("classes")
    if isinstance(classes, list):
        for i, c in enumerate(classes):
            if isinstance(c, dict) and c.get("id", i) != i:
                problems.append(f"classes[{i}] has id {c.get('id')!r}; ids must be 0..N-1 in order")
    inp = meta.get("input")
    if isinstance(inp, dict) and not any(p.startswith(("'input.", "missing key 'input.")) for p in problems):
        problems += _input_problems(inp)
    tile, overlap = meta.get("tile_size"), meta.get("tile_overlap")
    if isinstance(tile, int) and isinstance(overlap, int) and overlap >= tile:
        problems.append(f"'tile_overlap' {overlap} must be less than tile_size {tile}")
    output = meta.get("output", {"type": "logits"})
    if detection_box(meta.get("task")):
        problems += _detection_problems(meta["task"], output, "detection" in meta)
    elif not isinstance(output, dict) or output.get("type", "logits") not in ("logits", "probabilities"):
        problems.append("'output.type' must be 'logits' or 'probabilities'")
    else:
        # Pixel tasks answer N x C x H x W, scene classification N x K ("NC"); the key may be left out.
        expected = "NC" if meta.get("task") == "scene_classification" else "NCHW"
        if output.get("layout", expected) != expected:
            problems.append(f"'output.layout' must be '{expected}' for a {meta.get('task')} model")
    return list(dict.fromkeys(problems))  # one phrase once


def _input_problems(inp: dict[str, Any]) -> list[str]:
    """`input` (whose value types fit the schema): bands by number or by role, indices, one mean/std per channel."""
    if "bands" in inp and "band_roles" in inp:
        return ["'input' has both 'bands' (numbers) and 'band_roles'; give one"]
    if "bands" not in inp and "band_roles" not in inp:
        return ["missing key 'input.bands' (or 'input.band_roles')"]
    if "band_roles" in inp and not _roles_ok(inp["band_roles"]):
        return [f"'input.band_roles' must be a non-empty list of distinct roles among {', '.join(ROLES)}"]
    problems = _index_problems(inp)
    channels = len(inp.get("bands") or inp.get("band_roles")) + len(inp.get("indices") or [])
    for key in ("mean", "std"):
        if len(inp[key]) != channels:
            what = "bands" if not inp.get("indices") else "channels (bands, then indices)"
            problems.append(f"'input.{key}' has {len(inp[key])} values for {channels} {what}")
    if any(float(v) == 0 for v in inp["std"]):
        problems.append("'input.std' contains 0")
    value_range = inp.get("value_range")
    if value_range is not None and not value_range[0] < value_range[1]:
        problems.append(f"'input.value_range' must be [low, high] with low < high, got {value_range!r}")
    return problems


def _roles_ok(roles: Any) -> bool:
    return (isinstance(roles, list) and bool(roles) and all(isinstance(r, str) and r in ROLES for r in roles)
            and len(set(roles)) == len(roles))


def _index_problems(inp: dict[str, Any]) -> list[str]:
    """`input.indices`: known index names, each reading only roles among the model's bands."""
    if "indices" not in inp:
        return []
    indices = inp["indices"] or []
    if len(set(indices)) != len(indices):
        return ["'input.indices' must be a list of distinct index names"]
    unknown = [i for i in indices if i not in INDICES]
    if unknown:
        return [f"'input.indices' names {', '.join(map(repr, unknown))}; known: {', '.join(INDICES)}"]
    roles = inp.get("band_roles") or inp.get("band_names") or []
    problems = []
    for name in indices:
        missing = [r for r in INDICES[name].roles if r not in roles]
        if missing:
            source = "input.band_roles" if "band_roles" in inp else "input.band_names"
            problems.append(f"index '{name}' reads {', '.join(INDICES[name].roles)}, but {source} has no "
                            f"{', '.join(missing)}")
    return problems


def _detection_problems(task: str, output: Any, present: bool) -> list[str]:
    """docs/contract.md §3 "Object detection": output {type detections, box} and a `detection` object (its
    values are the schema's to check)."""
    problems = []
    box = detection_box(task)
    kind = "instances" if task_graphs()[task].masks else "detections"
    if not isinstance(output, dict) or output.get("type") != kind:
        problems.append(f"'output.type' must be '{kind}' for a {task} model")
    elif output.get("box") != box:
        problems.append(f"'output.box' must be '{box}' for a {task} model, got {output.get('box')!r}")
    if not present:
        problems.append(f"missing key 'detection' (an object with {', '.join(DETECTION_KEYS)})")
    return problems


def package_from_metadata(path: Path, meta: Any, source: str, proto: onnx.ModelProto) -> ModelPackage:
    problems = validate_metadata(meta, str(path))
    if problems:
        raise ModelPackageError(f"{path}: invalid model metadata: {'; '.join(problems)}. {IMPORT_HINT}")
    inp = meta["input"]
    classes = [
        ClassInfo(i, str(c["name"]), str(c.get("color", DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)])))
        for i, c in enumerate(meta["classes"])
    ]
    package = ModelPackage(
        path=path,
        id=path.stem,
        task=meta["task"],
        name=str(meta.get("name") or path.stem),
        description=_shortened(str(meta.get("description", ""))),
        classes=classes,
        input=InputSpec(
            bands=list(inp.get("bands") or []),
            band_names=list(inp.get("band_names") or inp.get("band_roles")
                            or [f"band {b}" for b in inp["bands"]]),
            scale=float(inp["scale"]),
            mean=[float(v) for v in inp["mean"]],
            std=[float(v) for v in inp["std"]],
            dtypes=tuple(inp["dtype"] if isinstance(inp.get("dtype"), list) else [inp["dtype"]])
            if "dtype" in inp else (),
            value_range=(float(inp["value_range"][0]), float(inp["value_range"][1])) if "value_range" in inp else None,
            band_roles=tuple(inp.get("band_roles") or ()),
            indices=tuple(inp.get("indices") or ()),
        ),
        tile_size=int(meta["tile_size"]),
        tile_overlap=int(meta["tile_overlap"]),
        gsd_m=float(meta["gsd_m"]) if meta.get("gsd_m") is not None else None,
        output_type=meta.get("output", {}).get("type", "logits"),
        metadata_source=source,
        raw=meta,
    )
    check_graph_matches(package, proto)
    return package


def task_graphs() -> dict[str, GraphRule]:
    """The graph of each task's packages, from the backend's task table (backend/tasks.py). Imported when a
    package is checked, not with this module: the table's task modules import this one."""
    from backend.tasks import GRAPH_RULES

    return GRAPH_RULES


def known_tasks() -> tuple[str, ...]:
    """The tasks a package may declare (docs/contract.md §1): the task table's, and those declared but not served."""
    from backend.tasks import PACKAGE_TASKS

    return PACKAGE_TASKS


def detection_box(task: str | None) -> str | None:
    """The box kind `output.box` must name for a detection task; None for the other tasks."""
    rule = task_graphs().get(task) if isinstance(task, str) else None
    return rule.box if rule is not None else None


def _shortened(text: str) -> str:
    """A description cut to MAX_DESCRIPTION_CHARS: it travels with every GET /models."""
    return text if len(text) <= MAX_DESCRIPTION_CHARS else text[: MAX_DESCRIPTION_CHARS - 1] + "…"


def check_graph_matches(package: ModelPackage, proto: onnx.ModelProto) -> None:
    """The graph's static dimensions must agree with the metadata and with the task's graph shape."""
    inputs, outputs = graph_shapes(proto)
    problems = []
    rule = task_graphs().get(package.task)
    n_inputs, out_rank, layout = (rule.inputs, rule.output_rank, rule.layout) if rule else (1, None, "")
    if rule is not None and len(inputs) != n_inputs:
        # A graph with another number of inputs cannot run this task's jobs at all.
        problems.append(f"the graph has {len(inputs)} input(s) but a {package.task} model has {n_inputs}")
    names = ["input 0"] if n_inputs == 1 else ["input 0 (before)", "input 1 (after)"]
    for name, shape in zip(names, inputs[:n_inputs]):
        if shape is None:
            continue  # rank unknown: ONNX Runtime checks it at run time
        if len(shape) != 4:
            problems.append(f"{name} has rank {len(shape)}, expected 4 (N, C, H, W)")
            continue
        channels = package.input.channels
        if isinstance(shape[1], int) and shape[1] != channels:
            what = f"{channels} bands" if not package.input.indices else \
                f"{channels} channels ({channels - len(package.input.indices)} bands, {len(package.input.indices)} indices)"
            problems.append(f"{name} has {shape[1]} channels but metadata lists {what}")
        for axis, dim in zip("HW", shape[2:]):
            if isinstance(dim, int) and dim != package.tile_size:
                problems.append(f"{name} {axis} is {dim} but tile_size is {package.tile_size}")
    out = outputs[0] if outputs else None
    if detection_box(package.task):
        problems += _detection_graph_problems(package, outputs, [o.name for o in proto.graph.output])
    elif out_rank is not None and out is not None:
        if len(out) != out_rank:
            problems.append(f"output 0 has rank {len(out)}, expected {out_rank}")
        elif isinstance(out[1], int) and out[1] != package.num_classes:
            problems.append(f"output 0 has {out[1]} channels but metadata lists {package.num_classes} classes")
    if package.task == "change_detection" and package.num_classes != 2:
        problems.append(f"a change_detection model has exactly 2 classes (no change, change), "
                        f"metadata lists {package.num_classes}")
    if problems:
        hint = f" A {package.task} graph is: {layout}." if layout else ""
        raise ModelPackageError(f"{package.path}: graph does not match its metadata: {'; '.join(problems)}.{hint}")


def _detection_graph_problems(package: ModelPackage, outputs: list[Shape | None], names: list[str]) -> list[str]:
    """Detectors: boxes, scores; instance segmentation: boxes, scores, masks N x P x M x M."""
    expected = ["boxes", "scores", "masks"] if task_graphs()[package.task].masks else ["boxes", "scores"]
    if len(outputs) != len(expected):
        return [f"the graph has {len(outputs)} output(s) but a {package.task} model has {len(expected)} "
                f"({', '.join(expected)})"]
    if sorted(names) == sorted(expected) and names != expected:  # outputs are taken by position
        return [f"the graph's outputs are in the order {', '.join(names)}; the contract's order is "
                f"{', '.join(expected)}"]
    boxes, scores = outputs[:2]
    problems = _mask_graph_problems(package, boxes, outputs[2]) if len(expected) == 3 else []
    box_dim = 5 if detection_box(package.task) == "rbox_le90" else 4
    if boxes is not None:
        if len(boxes) != 3:
            problems.append(f"output 0 (boxes) has rank {len(boxes)}, expected 3")
        elif isinstance(boxes[2], int) and boxes[2] != box_dim:
            problems.append(f"output 0 (boxes) has {boxes[2]} numbers per box, expected {box_dim} for {package.task}")
    if scores is not None:
        if len(scores) != 3:
            problems.append(f"output 1 (scores) has rank {len(scores)}, expected 3")
        elif isinstance(scores[2], int) and scores[2] != package.num_classes:
            problems.append(f"output 1 (scores) has {scores[2]} classes but metadata lists {package.num_classes}")
    if (boxes is not None and scores is not None and len(boxes) == len(scores) == 3
            and isinstance(boxes[1], int) and isinstance(scores[1], int) and boxes[1] != scores[1]):
        problems.append(f"output 0 (boxes) has {boxes[1]} candidates but output 1 (scores) {scores[1]}")
    return problems


def _mask_graph_problems(package: ModelPackage, boxes: Shape | None, masks: Shape | None) -> list[str]:
    if masks is None:
        return []
    if len(masks) != 4:
        return [f"output 2 (masks) has rank {len(masks)}, expected 4 (N, P, M, M)"]
    problems = []
    if isinstance(masks[2], int) and isinstance(masks[3], int) and masks[2] != masks[3]:
        problems.append(f"output 2 (masks) is {masks[2]} x {masks[3]} per candidate; masks are square (M x M)")
    size = (package.raw.get("output") or {}).get("mask_size")
    if isinstance(size, int) and isinstance(masks[2], int) and masks[2] != size:
        problems.append(f"output 2 (masks) is {masks[2]} x {masks[3]} but output.mask_size is {size}")
    if boxes is not None and len(boxes) == 3 and isinstance(boxes[1], int) and isinstance(masks[1], int) \
            and boxes[1] != masks[1]:
        problems.append(f"output 0 (boxes) has {boxes[1]} candidates but output 2 (masks) {masks[1]}")
    return problems


def import_model(onnx_path: str | os.PathLike, metadata: dict[str, Any], out_dir: str | os.PathLike,
                 model_id: str | None = None) -> ModelPackage:
    """Copy a third-party ONNX file into out_dir with our metadata added; validated before and after."""
    onnx_path = Path(onnx_path)
    out_dir = Path(out_dir)
    problems = validate_metadata(metadata, str(onnx_path))
    if problems:
        raise ModelPackageError(f"Metadata for {onnx_path} is invalid: {'; '.join(problems)}.")
    if not out_dir.is_dir():
        raise ModelPackageError(f"Output folder {out_dir} does not exist; create it first.")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:
        raise ModelPackageError(f"{onnx_path} is not a readable ONNX file: {exc}") from exc
    write_metadata(model, metadata)
    target = out_dir / f"{model_id or onnx_path.stem}.onnx"
    # Write beside the target and rename, so a half-written package never appears in a model dir.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".partial", dir=out_dir)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        package_from_metadata(Path(tmp), metadata, METADATA_KEY, model)  # graph vs metadata check
        shutil.move(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return load_package(target)


def write_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Attach our metadata to an in-memory model (used by tests and tools that build models)."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))

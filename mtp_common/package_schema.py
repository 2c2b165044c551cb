"""The `mtp_qgis` metadata of a model package (docs/contract.md §1) as pydantic models: the one description of
its keys and value types. Training's export checks what it writes with it, the backend checks what it reads
with it (backend/model_package.py adds the checks that need the backend's own tables: band roles, spectral
indices, the graph), and docs/package_metadata.schema.json is generated from it
(`python -m mtp_common.package_schema --write`, `make schema`).

`problems(meta)` lists what is wrong as phrases naming the key path ("missing key 'tile_size'",
"'detection.nms_iou' must be a number in (0, 1]"); values are checked strictly (JSON types: "512" is not an
integer). Keys the schema does not name are kept and not checked (a package may carry its own notes)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION = 1
KNOWN_TASKS = ("semantic_segmentation", "change_detection", "detection", "rotated_detection",
               "instance_segmentation", "scene_classification", "land_cover_extraction")
KNOWN_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_CLASSES = 255  # results are uint8 rasters; 255 is nodata
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "package_metadata.schema.json"


class Must:
    """What a value must be, as the phrase of an error about it: "'tile_size' must be a positive integer".
    whole=True: errors anywhere inside the value are reported on it with this phrase."""

    def __init__(self, phrase: str, whole: bool = False):
        self.phrase, self.whole = phrase, whole


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


Number = float  # strict mode: an int is a number too, a string or a bool is not


class ClassEntry(_Section):
    id: Optional[int] = Field(None, description="0..N-1 in list order (may be left out)")
    name: str
    color: Annotated[Optional[str], Must("'#rrggbb'")] = Field(
        None, pattern=r"^#[0-9a-fA-F]{6}$", description="display colour #rrggbb; left out: a default palette colour")


class InputSpec(_Section):
    """How raster values become the graph's input: channel i = (raw[band i] / scale - mean[i]) / std[i]."""
    bands: Annotated[Optional[List[Annotated[int, Field(ge=1)]]], Must("a non-empty list of 1-based band numbers")] = \
        Field(None, min_length=1, description="1-based raster band numbers read, in order (or band_roles)")
    band_roles: Annotated[Optional[List[str]], Must("a non-empty list of distinct roles")] = Field(
        None, min_length=1, description="bands by role (blue, green, red, nir, ...), found per raster (or bands)")
    band_names: Annotated[Optional[List[str]], Must("a list of names, one per band")] = None
    scale: Annotated[Number, Must("a positive number")] = Field(gt=0)
    mean: Annotated[List[Number], Must("a list of numbers, one per band")] = Field(
        description="per channel (bands, then indices)")
    std: Annotated[List[Number], Must("a list of numbers, one per band")] = Field(
        description="per channel (bands, then indices); no zero")
    dtype: Annotated[Optional[Union[Literal[KNOWN_DTYPES], List[Literal[KNOWN_DTYPES]]]],
                     Must(f"one of {', '.join(KNOWN_DTYPES)} or a list of them", whole=True)] = Field(
        None, description="raster data type(s) accepted; left out: any")
    value_range: Annotated[Optional[List[Number]], Must("[low, high] with low < high")] = Field(
        None, min_length=2, max_length=2, description="raw values the model was trained on")
    indices: Annotated[Optional[List[str]], Must("a list of distinct index names")] = Field(
        None, description="spectral index channels appended after the bands (ndvi, ndwi, ...)")


class OutputSpec(_Section):
    type: Annotated[Literal["logits", "probabilities", "detections", "instances"],
                    Must("'logits', 'probabilities', 'detections' or 'instances'")] = "logits"
    layout: Optional[Literal["NCHW", "NC"]] = Field(None, description="NCHW: pixel tasks; NC: scene classification")
    box: Optional[Literal["hbox", "rbox_le90"]] = Field(None,
                                                        description="detection, instance_segmentation: hbox; "
                                                                    "rotated_detection: rbox_le90")
    mask_size: Annotated[Optional[int], Must("a positive integer")] = Field(
        None, ge=1, description="instance_segmentation: M of the graph's N x P x M x M mask logits")


class DetectionDefaults(_Section):
    """Detection tasks: the defaults a job starts from (docs/contract.md §3)."""
    score_threshold: Annotated[Number, Must("a number in [0, 1]")] = Field(ge=0, le=1)
    nms_iou: Annotated[Number, Must("a number in (0, 1]")] = Field(gt=0, le=1)
    max_per_tile: Annotated[int, Must("an integer >= 1")] = Field(ge=1)
    mask_threshold: Annotated[Optional[Number], Must("a number in (0, 1)")] = Field(
        None, gt=0, lt=1, description="instance_segmentation: a pixel is in the object when sigmoid(logit) >= it")


class SceneSpec(_Section):
    cell_size: Optional[int] = Field(None, ge=1, description="source pixels per cell; left out: tile_size")


class PackageMetadata(_Section):
    """The JSON object stored under the ONNX metadata key `mtp_qgis`."""
    format_version: Annotated[Literal[FORMAT_VERSION], Must(f"{FORMAT_VERSION}")]
    task: Annotated[Literal[KNOWN_TASKS], Must(f"one of {', '.join(KNOWN_TASKS)}")]
    name: str
    description: Optional[str] = ""
    classes: Annotated[List[ClassEntry], Must(f"a non-empty list of at most {MAX_CLASSES} classes (results are uint8; "
                                              "255 is nodata)")] = Field(min_length=1, max_length=MAX_CLASSES)
    input: Annotated[InputSpec, Must("an object")]
    tile_size: Annotated[int, Must("a positive integer")] = Field(ge=1)
    tile_overlap: Annotated[int, Must("a non-negative integer")] = Field(ge=0, description="less than tile_size")
    gsd_m: Annotated[Optional[Number], Must("a positive number of metres per pixel (or null)")] = Field(None, gt=0)
    output: Annotated[Optional[OutputSpec], Must("an object")] = None
    detection: Annotated[Optional[DetectionDefaults], Must("an object")] = None
    scene: Annotated[Optional[SceneSpec], Must("an object whose 'cell_size' is a whole number of pixels >= 1",
                                               whole=True)] = None
    metrics: Optional[Dict[str, Any]] = Field(None, description="held-out (or paper) figures; mIoU, f1, "
                                                                "overall_accuracy or mAP50 first")


def _must(model: Any, loc: tuple) -> tuple[Optional[Must], int]:
    """The outermost `whole` phrase along loc, else the phrase of the field at loc; with the loc's length."""
    found, depth, current = None, len(loc), model
    for i, key in enumerate(loc):
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or key not in current.model_fields:
            break
        info = current.model_fields[key]
        phrase = next((m for m in info.metadata if isinstance(m, Must)), None)
        if phrase is not None and phrase.whole:
            return phrase, i + 1
        if i == len(loc) - 1 or (isinstance(loc[i + 1], int) and i == len(loc) - 2):
            found, depth = phrase, i + 1
        current = _model_in(info.annotation)
    return found, depth


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside Optional[...] / List[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        model = _model_in(arg)
        if model is not None:
            return model
    return None


def _path(loc: tuple) -> str:
    text = ""
    for key in loc:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def problems(meta: Any) -> List[str]:
    """Everything `meta` breaks of the schema, as phrases naming the key path (empty: it fits)."""
    if not isinstance(meta, dict):
        return [f"metadata must be a JSON object, got {type(meta).__name__}"]
    try:
        PackageMetadata.model_validate(meta)
    except ValidationError as exc:
        found: List[str] = []
        for error in exc.errors():
            loc = _strip_union_tags(tuple(error["loc"]))
            if error["type"] == "missing":
                phrase = f"missing key '{_path(loc)}'"
            else:
                must, depth = _must(PackageMetadata, loc)
                where = _path(loc[:depth])
                if error["type"] in ("model_type", "model_attributes_type", "dict_type") and not (must and must.whole):
                    phrase = f"'{_path(loc)}' must be an object"
                elif must is not None:
                    phrase = f"'{where}' must be {must.phrase}"
                    if error["type"] == "string_pattern_mismatch":
                        phrase = f"{where} {error['input']!r} is not {must.phrase}"
                elif loc and loc[-1] == "color":
                    phrase = f"{where} {error['input']!r} is not '#rrggbb'"
                else:
                    phrase = f"'{_path(loc)}': {error['msg']}"
            if phrase not in found:
                found.append(phrase)
        return found
    return []


def _strip_union_tags(loc: tuple) -> tuple:
    """pydantic puts the union member tried into error locations ('int', 'list[...]', 'literal[...]')."""
    return tuple(k for k in loc if isinstance(k, int) or not (k in ("int", "float", "str") or "[" in k))


def checked(meta: Dict[str, Any]) -> Dict[str, Any]:
    """`meta` itself when it fits the schema; ValueError listing its problems otherwise (training's export)."""
    found = problems(meta)
    if found:
        raise ValueError(f"the package metadata breaks docs/package_metadata.schema.json: {'; '.join(found)}")
    return meta


def json_schema_text() -> str:
    schema = PackageMetadata.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "package_metadata.schema.json",
              **schema, "title": "mtp_qgis model package metadata (generated from mtp_common/package_schema.py)"}
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        SCHEMA_PATH.write_text(json_schema_text())
        print(f"wrote {SCHEMA_PATH}")
    elif sys.argv[1:] == ["--check"]:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text() != json_schema_text():
            sys.exit(f"{SCHEMA_PATH} is out of date: run python -m mtp_common.package_schema --write")
    else:
        sys.exit("python -m mtp_common.package_schema --write | --check")

"""Model packages on disk and in a published model index, without QGIS or ONNX: the model manager's logic.

- A model package is one `.onnx` file whose metadata (docs/contract.md §1) says what it does; its id is the
  file name without `.onnx`. The metadata is read here with a small protobuf reader, so the plugin can show
  a card for a file before any backend has loaded it.
- The model index is a JSON file published next to the models (`make package` writes `dist/models/index.json`):
  `{"format_version": 1, "models": [{"id", "task", "name", "dataset", "metric", "size", "sha256", "url", ...}]}`
  plus the card fields (`classes`, `gsd_m`, `bands`, `band_names`, `tile_size`, `description`, `provenance`).
- Models are installed into the user models folder, which the backend the plugin starts always searches.
  Nothing half-written ever carries a model's name: downloads and copies go to `.<id>.onnx.partial` and
  are renamed only once complete and checked.

Standard library only (the packaging script imports it too).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from urllib.parse import urljoin

INDEX_FORMAT_VERSION = 1
INDEX_FIELDS = ("id", "task", "name", "dataset", "metric", "size", "sha256", "url")
METADATA_KEY = "mtp_qgis"
DEEPNESS_KEYS = ("model_type", "class_names", "resolution")
# The figure a card shows first, per package task (the first one the metadata has); its keys are the tasks a
# package may declare (docs/contract.md §1).
HEADLINE_METRICS = {
    "semantic_segmentation": ("mIoU", "miou"),
    "change_detection": ("f1", "F1", "iou"),
    "scene_classification": ("overall_accuracy", "OA", "macro_f1"),
    "detection": ("mAP50", "mAP", "map50"),
    "rotated_detection": ("mAP50", "mAP", "map50"),
    "instance_segmentation": ("mask_ap", "mask_ap50"),
    "land_cover_extraction": ("mIoU", "miou"),
}
TASKS = tuple(HEADLINE_METRICS)
PARTIAL_SUFFIX = ".partial"


class ModelStoreError(Exception):
    """A model file, an index or a download that cannot be used; the message is meant for the analyst."""


# --- ONNX metadata without onnx ----------------------------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _read_varint(stream) -> int | None:
    result = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7


def _string_pair(data: bytes) -> tuple[str, str]:
    """A StringStringEntryProto: field 1 key, field 2 value."""
    key = value = ""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        if tag & 7 != 2:
            raise ValueError("unexpected wire type in a metadata entry")
        length, pos = _varint(data, pos)
        text = data[pos:pos + length].decode("utf-8")
        pos += length
        if tag >> 3 == 1:
            key = text
        elif tag >> 3 == 2:
            value = text
    return key, value


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (ModelProto field 14), skipping the graph without reading it."""
    path = Path(path)
    props: dict[str, str] = {}
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            while True:
                tag = _read_varint(stream)
                if tag is None:
                    break
                field, wire = tag >> 3, tag & 7
                if wire == 0:
                    _read_varint(stream)
                elif wire == 1:
                    stream.seek(8, os.SEEK_CUR)
                elif wire == 5:
                    stream.seek(4, os.SEEK_CUR)
                elif wire == 2:
                    length = _read_varint(stream)
                    if length is None or stream.tell() + length > size:
                        raise ValueError("a field runs past the end of the file")
                    if field == 14:
                        key, value = _string_pair(stream.read(length))
                        props[key] = value
                    else:
                        stream.seek(length, os.SEEK_CUR)
                else:
                    raise ValueError(f"unknown protobuf wire type {wire}")
    except OSError as exc:
        raise ModelStoreError(f"{path} cannot be read: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelStoreError(f"{path} is not an ONNX model file ({exc}).") from exc
    return props


def package_metadata(path: str | os.PathLike) -> dict:
    """The model's metadata as a dict with at least `task`, `name`, `classes`; ModelStoreError otherwise."""
    path = Path(path)
    props = read_onnx_metadata(path)
    if METADATA_KEY in props:
        try:
            meta = json.loads(props[METADATA_KEY])
        except ValueError as exc:
            raise ModelStoreError(f"{path.name}: its '{METADATA_KEY}' metadata is not JSON ({exc}).") from exc
        if not isinstance(meta, dict) or meta.get("task") not in TASKS:
            raise ModelStoreError(f"{path.name}: its metadata names no known task ({', '.join(TASKS)}).")
        missing = [k for k in ("name", "classes", "input", "tile_size") if k not in meta]
        if missing:
            raise ModelStoreError(f"{path.name}: its metadata lacks {', '.join(missing)} (see docs/contract.md §1).")
        return meta
    if all(k in props for k in DEEPNESS_KEYS) and props.get("model_type") == "Segmentor":
        try:
            names = json.loads(props["class_names"])
        except ValueError:
            names = props["class_names"]
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names, key=lambda k: int(k))]
        try:
            gsd = float(props["resolution"]) / 100.0  # Deepness gives cm/px
        except ValueError:
            gsd = None
        return {"task": "semantic_segmentation", "name": path.stem, "format": "deepness",
                "classes": [{"id": i, "name": str(n)} for i, n in enumerate(names if isinstance(names, list) else [])],
                "gsd_m": gsd, "input": {"bands": [1, 2, 3]}}
    raise ModelStoreError(
        f"{path.name} is not an MTP model package: its ONNX metadata has no '{METADATA_KEY}' entry (nor the "
        "Deepness plugin's keys). Make one with `python -m backend import-model MODEL.onnx META.yaml --out DIR`.")


def headline_metric(meta: dict) -> dict | None:
    """{"name", "value"} of the figure to show first, or None when the metadata has none."""
    metrics = meta.get("metrics") or {}
    if not isinstance(metrics, dict):
        return None
    for name in HEADLINE_METRICS.get(meta.get("task", ""), ()) + tuple(metrics):
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"name": name, "value": round(float(value), 4)}
    return None


def provenance_of(meta: dict) -> str:
    """Where a model comes from, in one line: the importer's `provenance`, else training facts."""
    provenance = meta.get("provenance")
    if isinstance(provenance, str) and provenance.strip():
        return provenance.strip()
    if isinstance(provenance, dict):
        return ", ".join(f"{k}: {v}" for k, v in provenance.items() if isinstance(v, (str, int, float)))
    training = meta.get("training")
    if not isinstance(training, dict):
        training = {}
    parts = []
    encoder = meta.get("encoder") or ((training.get("config") or {}).get("model") or {}).get("encoder", {})
    if isinstance(encoder, dict) and encoder.get("name"):
        parts.append(f"encoder {encoder['name']}")
    elif isinstance(encoder, str):
        parts.append(f"encoder {encoder}")
    # The training record's plain facts (iterations, export date, who made it...), not its nested config.
    for key, value in training.items():
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and len(parts) < 6:
            parts.append(f"{key} {str(value)[:40]}")
    return ", ".join(parts)


def dataset_of(meta: dict) -> str:
    """The importer's `dataset`, else the held-out data the metrics name."""
    dataset = meta.get("dataset")
    if isinstance(dataset, str) and dataset.strip():
        return dataset.strip()
    evaluated = (meta.get("metrics") or {}).get("evaluated_on") if isinstance(meta.get("metrics"), dict) else None
    return str(evaluated or "")


def card_fields(meta: dict) -> dict:
    """The fields of a model card (and of an index entry) that come from a package's metadata."""
    inputs = meta.get("input")
    if not isinstance(inputs, dict):
        inputs = {}
    return {
        "task": meta.get("task", ""),
        "name": meta.get("name", ""),
        "description": meta.get("description", ""),
        "classes": [c.get("name", str(c.get("id"))) if isinstance(c, dict) else str(c)
                    for c in meta.get("classes", [])],
        "gsd_m": meta.get("gsd_m"),
        "bands": list(inputs.get("bands", [])),
        "band_names": list(inputs.get("band_names", [])),
        "band_roles": list(inputs.get("band_roles", [])),
        "indices": list(inputs.get("indices", [])),
        "tile_size": meta.get("tile_size"),
        "dataset": dataset_of(meta),
        "metric": headline_metric(meta),
        "provenance": provenance_of(meta),
    }


# --- the index ----------------------------------------------------------------------------------------

def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def index_entry(path: str | os.PathLike, url: str, dataset: str = "") -> dict:
    """The index entry of a package file published at `url`."""
    path = Path(path)
    entry = {"id": path.stem, **card_fields(package_metadata(path))}
    if dataset:
        entry["dataset"] = dataset
    entry.update(size=path.stat().st_size, sha256=sha256_of(path), url=url)
    return entry


def parse_index(text: str, source: str) -> list[dict]:
    """The entries of an index document; ModelStoreError naming `source` when it is not one."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ModelStoreError(f"The model index {source} is not JSON ({exc}).") from exc
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, list):
        raise ModelStoreError(f"The model index {source} has no \"models\" list.")
    entries = []
    for number, entry in enumerate(models, 1):
        if not isinstance(entry, dict):
            raise ModelStoreError(f"The model index {source}: entry {number} is not an object.")
        missing = [k for k in INDEX_FIELDS if k not in entry]
        if missing:
            raise ModelStoreError(f"The model index {source}: entry {number} ({entry.get('id', '?')}) lacks "
                                  f"{', '.join(missing)}.")
        if not valid_model_id(str(entry["id"])):
            raise ModelStoreError(f"The model index {source}: '{entry['id']}' is not a usable model id.")
        entry = dict(entry, url=urljoin(source, str(entry["url"])))  # relative URLs: next to the index
        entries.append(entry)
    return entries


def valid_model_id(model_id: str) -> bool:
    return bool(model_id) and not model_id.startswith(".") and all(c.isalnum() or c in "-_." for c in model_id)


# --- the user models folder ---------------------------------------------------------------------------

def partial_path(folder: str | os.PathLike, model_id: str) -> Path:
    return Path(folder) / f".{model_id}.onnx{PARTIAL_SUFFIX}"


def installed_models(folder: str | os.PathLike) -> list[dict]:
    """{"id", "path", "meta" or "error"} for each .onnx file in `folder`."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.glob("*.onnx")) if folder.is_dir() else []:
        item: dict = {"id": path.stem, "path": str(path)}
        try:
            item["meta"] = package_metadata(path)
        except ModelStoreError as exc:
            item["error"] = str(exc)
        found.append(item)
    return found


def _install(partial: Path, target: Path) -> Path:
    """Check the completed partial file is a model package, then give it its name (atomic rename)."""
    try:
        package_metadata(partial)
    except ModelStoreError as exc:
        partial.unlink(missing_ok=True)
        raise ModelStoreError(str(exc).replace(partial.name, target.name)) from exc
    os.replace(partial, target)
    return target


def add_local_package(source: str | os.PathLike, folder: str | os.PathLike, replace: bool = False) -> Path:
    """Copy a model package into `folder` under its own file name; refuses non-packages and clashes."""
    source = Path(source)
    if source.suffix.lower() != ".onnx":
        raise ModelStoreError(f"{source} is not a .onnx model package.")
    package_metadata(source)  # refuse before copying anything
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    if target.resolve() == source.resolve():
        raise ModelStoreError(f"{source.name} is already in the models folder {folder}.")
    if target.exists() and not replace:
        raise ModelStoreError(f"A model with the id '{source.stem}' is already installed ({target}); remove it first.")
    partial = partial_path(folder, source.stem)
    try:
        shutil.copyfile(source, partial)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ModelStoreError(f"Copying {source} to {folder} failed: {exc}") from exc
    return _install(partial, target)


def finish_download(partial: str | os.PathLike, entry: dict, folder: str | os.PathLike) -> Path:
    """Install a completed download if its size and SHA-256 match the index; else delete it and say why."""
    partial = Path(partial)
    try:
        size = partial.stat().st_size
    except OSError:
        raise ModelStoreError(f"The download of {entry['id']} left no file; nothing was installed.") from None
    if size != int(entry["size"]):
        partial.unlink(missing_ok=True)
        raise ModelStoreError(f"The download of {entry['id']} from {entry['url']} is incomplete ({size} of "
                              f"{entry['size']} bytes; the connection was probably cut). Nothing was installed; "
                              "try again.")
    digest = sha256_of(partial)
    if digest != str(entry["sha256"]).lower():
        partial.unlink(missing_ok=True)
        raise ModelStoreError(f"The download of {entry['id']} from {entry['url']} does not match the index's "
                              f"SHA-256 (got {digest[:12]}…, expected {str(entry['sha256'])[:12]}…). Nothing was "
                              "installed; the file or the index is wrong.")
    return _install(partial, Path(folder) / f"{entry['id']}.onnx")


def remove_model(model_id: str, folder: str | os.PathLike) -> None:
    target = Path(folder) / f"{model_id}.onnx"
    if not target.is_file():
        raise ModelStoreError(f"No model '{model_id}' in the user models folder {folder}; only models there "
                              "can be removed here.")
    target.unlink()

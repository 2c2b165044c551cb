"""The finetune job: an analyst's labels + raster(s) -> a segmentation, scene, change or detection package in a
models folder. Segmentation and scene labels are areas of one class (pixels under no polygon are ignored; scene
labels may also be points, and a cell counts when half of it is labelled); change labels are polygons of change
over a before/after pair, the rest of their extent unchanged; detection labels are one polygon per object (its
minimum rotated rectangle, or its bounds for horizontal boxes), and every object of the labelled area must be
drawn: image between them is background.

The backend never imports torch. It checks the request (before anything is queued), cuts the training
data from the raster at the base model's GSD (GDAL), and runs `python -m training finetune` in the
training environment as a supervised child process: its log lines become the job's progress, a cancel
kills it, and the package it writes is moved into the models folder only when it is complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from backend import outputs, raster_io
from backend.errors import BackendError, ConflictError, JobCancelled
from backend.model_package import ModelPackage
from backend.change import grid_offset, warp_problem, warped_after
from backend.tile_pipeline import with_context

REPO_ROOT = Path(__file__).resolve().parent.parent
MIN_LABELLED_PX = 2000      # labelled pixels (at the model's GSD) needed at all
MIN_HELD_OUT_PX = 500       # ... in the held-out part
MIN_TRAIN_PX = 1000         # ... in the training part
MAX_SCENE_PX = 6000 * 6000  # the labelled area, cut at the model's GSD, must fit in memory for training
SPLIT_GAP_PX = 16           # unlabelled band between training and automatically held-out labels
HELD_OUT_SHARE = 0.2        # share of the labelled pixels (objects) an automatic split holds out
DETECTION_TASKS = ("detection", "rotated_detection")
INSTANCES = "instance_segmentation"  # labelled as detection (one polygon per object), trained on the outlines
# Imported official packages that finetune (training.finetune.official): every task the importer writes.
OFFICIAL_FINETUNE_TASKS = ("semantic_segmentation", "scene_classification", "change_detection", "detection",
                           "rotated_detection")
MIN_TRAIN_OBJECTS = 10      # detection: objects needed for training ...
MIN_HELD_OUT_OBJECTS = 5    # ... and for a held-out AP
MIN_SCENE_CELLS = 4         # scene classification: cells at least half labelled, for training and held out
MIN_CHANGE_PX = 400         # change detection: changed pixels labelled (a half for training, a quarter held out)
DETECTION_MARGIN_PX = 8     # model pixels of image around the outermost labelled objects
RESUME_DIR = ".finetune"    # in the models folder: runs that can be resumed (resume_folder)
TRAINING_MISSING = "Finetuning needs the training environment"  # the plugin offers to install it on this
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# A hard-coded palette for classes the base model does not know by name (QGIS-like distinct colours).
PALETTE = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf", "#999999",
           "#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494"]
ITER_LINE = re.compile(r"iter (\d+)/(\d+) loss ([0-9.eE+-]+|nan|inf)")
PROGRESS_LINE = re.compile(r"progress ([0-9.]+) (.*)$")
RESUMED_LINE = re.compile(r"resuming from .* at iteration (\d+)")


@dataclass
class FinetuneRequest:
    base: ModelPackage
    input_path: Path
    labels_path: Path
    class_field: str
    classes: list[dict]             # [{"name", "color"}], id = position
    model_id: str
    target: Path                    # <models folder>/<model_id>.onnx
    report_path: Path | None
    iterations: int
    time_budget_s: int | None
    batch_size: int
    window: raster_io.Window        # the labelled area on the raster
    size: tuple[int, int]           # (width, height) of the cut at the model's GSD
    train_label: np.ndarray | None  # segmentation and scenes: class ids, 255 = unlabelled
    val_label: np.ndarray | None
    split: str                      # how the held-out labels were chosen, in words
    gsd_note: str
    job_id: str
    overwrite: bool
    # detection: every object as 4 corners (pixels of the cut) + class id; the regions (pixel boxes of the cut)
    # trained on and held out, in which every object is labelled
    objects: list[tuple[np.ndarray, int]] | None = None
    train_regions: list[list[int]] | None = None   # detection and change: pixel boxes of the cut
    val_regions: list[list[int]] | None = None
    after_path: Path | None = None                  # change detection: the after raster (train_label: 0/1)
    # instance segmentation: the objects' outlines burnt as instance ids 1..M (0: none; later polygons on top)
    instance_label: np.ndarray | None = None

    @property
    def is_change(self) -> bool:
        return self.after_path is not None

    @property
    def is_detection(self) -> bool:
        return self.objects is not None

    @property
    def outputs(self) -> dict[str, str]:
        written = {"model": str(self.target)}
        if self.report_path is not None:
            written["report"] = str(self.report_path)
        return written


def training_python() -> str:
    """The training environment's Python: $MTP_QGIS_TRAINING_PYTHON, else this one when torch is installed."""
    configured = os.environ.get("MTP_QGIS_TRAINING_PYTHON", "").strip()
    if configured:
        if not os.access(configured, os.X_OK):
            raise BackendError(f"MTP_QGIS_TRAINING_PYTHON is {configured}, which is not an executable Python.")
        return configured
    importlib.invalidate_caches()  # the plugin may have added PyTorch to this environment since the backend started
    if importlib.util.find_spec("torch") is None:
        raise BackendError(f"{TRAINING_MISSING}: this backend's Python ({sys.executable}) has no PyTorch. Install it "
                           "from the dock's Finetune tab ('Install the training environment'), or with "
                           "`backend_installer.py --training`, or install requirements/finetune.txt into that Python "
                           "yourself, or set MTP_QGIS_TRAINING_PYTHON to a Python that has them.")
    return sys.executable


def _option(spec, key: str, default, check, what: str):
    value = spec.options.get(key, default)
    if not check(value):
        raise BackendError(f"options.{key} must be {what}, got {str(value)[:80]!r}.")
    return value


def _is_int(v, low, high) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _vector_layer(path_text: str, what: str):
    path = outputs.checked_path(path_text, what)
    if not path.is_file():
        raise BackendError(f"{what} {path} does not exist; save the layer to a file (GeoPackage, GeoJSON, "
                           "Shapefile) first.")
    try:
        ds = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_READONLY)
    except RuntimeError as exc:
        raise BackendError(f"{what} {path} is not a vector file GDAL can read: {exc}") from None
    if ds is None or ds.GetLayerCount() == 0:
        raise BackendError(f"{what} {path} is not a vector file GDAL can read.")
    if ds.GetLayerCount() > 1:
        raise BackendError(f"{what} {path} holds {ds.GetLayerCount()} layers; give a file with one layer.")
    return path, ds


def _to_raster_srs(layer, raster_srs, what: str):
    """A transformation of the layer's coordinates into the raster's CRS (None: use them as they are)."""
    layer_srs = layer.GetSpatialRef()
    if layer_srs is None or raster_srs is None:
        return None
    layer_srs = layer_srs.Clone()
    layer_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    if layer_srs.IsSame(raster_srs):
        return None
    return osr.CoordinateTransformation(layer_srs, raster_srs)


def read_polygons(ds, what: str, raster_srs, class_field: str | None, point_cell: float | None = None):
    """[(geometry in the raster's CRS, class value or None)] of the polygons of a vector file. With `point_cell`
    (scene classification: a cell's side in the raster's CRS units), a point labels the cell-sized square
    centred on it."""
    layer = ds.GetLayer(0)
    if class_field is not None:
        fields = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
        if class_field not in fields:
            raise BackendError(f"{what} has no field '{class_field}'; its fields are: {', '.join(fields) or 'none'}. "
                               "Choose the field that holds the class of each polygon.")
    transform = _to_raster_srs(layer, raster_srs, what)
    found = []
    for feature in layer:
        geom = feature.GetGeometryRef()
        if geom is None or geom.IsEmpty():
            continue
        kind = ogr.GT_Flatten(geom.GetGeometryType())
        point = kind == ogr.wkbPoint and point_cell is not None
        if kind not in (ogr.wkbPolygon, ogr.wkbMultiPolygon) and not point:
            raise BackendError(f"{what} holds a {geom.GetGeometryName().lower()}; label with polygons (areas of one "
                               "class" + (", or points: one per cell" if point_cell is not None else "") + ").")
        geom = geom.Clone()
        if transform is not None:
            try:
                geom.Transform(transform)
            except RuntimeError as exc:
                raise BackendError(f"{what}: a polygon cannot be transformed into the raster's CRS ({exc}); check "
                                   "the layer's CRS.") from None
        if point:
            x, y, half = geom.GetX(), geom.GetY(), point_cell / 2
            geom = ogr.CreateGeometryFromWkt(f"POLYGON (({x - half} {y - half}, {x + half} {y - half}, "
                                             f"{x + half} {y + half}, {x - half} {y + half}, {x - half} {y - half}))")
        value = None
        if class_field is not None:
            if not feature.IsFieldSetAndNotNull(class_field):
                continue  # a polygon without class labels nothing
            value = str(feature.GetField(class_field)).strip()
        found.append((geom, value))
    return found


def _bounds(geoms) -> tuple[float, float, float, float]:
    envs = [g.GetEnvelope() for g in geoms]  # (minx, maxx, miny, maxy)
    return (min(e[0] for e in envs), min(e[2] for e in envs), max(e[1] for e in envs), max(e[3] for e in envs))


def _rasterize(features, values, gt, width: int, height: int, srs, dtype: int = gdal.GDT_Byte,
               fill: int = 255) -> np.ndarray:
    """Burn values[i] for features[i] (later ones on top) on a width x height grid of `dtype`; `fill` elsewhere."""
    target = gdal.GetDriverByName("MEM").Create("", width, height, 1, dtype)
    target.SetGeoTransform(gt)
    if srs is not None:
        target.SetSpatialRef(srs)
    target.GetRasterBand(1).Fill(fill)
    mem = ogr.GetDriverByName("Memory").CreateDataSource("labels")
    layer = mem.CreateLayer("labels", srs=srs, geom_type=ogr.wkbMultiPolygon)
    layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    for geom, value in zip(features, values):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(geom)
        f.SetField("value", int(value))
        layer.CreateFeature(f)
    gdal.PushErrorHandler("CPLQuietErrorHandler")  # a raster without CRS: GDAL warns that none is there
    try:
        gdal.RasterizeLayer(target, [1], layer, options=["ATTRIBUTE=value"])
    finally:
        gdal.PopErrorHandler()
    return target.GetRasterBand(1).ReadAsArray()


def _gsd(ds, base: ModelPackage) -> tuple[float, str]:
    """Scale from raster pixels to model pixels, and a sentence about it."""
    srs = raster_io.raster_srs(ds)
    gt = raster_io.geotransform(ds)
    pixel = math.hypot(gt[1], gt[4])
    if base.gsd_m is None:
        return 1.0, "the base model states no GSD: the raster's pixels are used as they are"
    if srs is None or not srs.IsProjected():
        kind = "has no CRS" if srs is None else "is in geographic coordinates"
        return 1.0, f"the raster {kind}: its pixels are taken to be the base model's {base.gsd_m} m"
    metres = pixel * srs.GetLinearUnits()
    factor = metres / base.gsd_m
    if abs(factor - 1) < 0.05:
        return 1.0, f"the raster's {metres:.3g} m pixels match the base model's {base.gsd_m} m"
    return factor, f"resampled from {metres:.3g} m to the base model's {base.gsd_m} m"


def _labelled_cells(label: np.ndarray, size: int) -> int:
    """Cells of a size x size grid at least half labelled (the scene recipe's min_labelled_share)."""
    rows, cols = label.shape[0] // size, label.shape[1] // size
    if rows == 0 or cols == 0:
        return 0
    labelled = (label[:rows * size, :cols * size] != 255).reshape(rows, size, cols, size).mean((1, 3))
    return int((labelled >= 0.5).sum())


def _strip_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Hold out a strip along one side of the labelled area with about HELD_OUT_SHARE of the labelled pixels,
    the side whose strip and remainder share the most classes; SPLIT_GAP_PX px between them stay unlabelled."""
    labelled = labels != 255
    best = None
    for axis, sides in ((1, ("left", "right")), (0, ("top", "bottom"))):
        per_line = labelled.sum(axis=1 - axis)
        cum = np.cumsum(per_line)
        total = cum[-1]
        for side in sides:
            if side in ("left", "top"):
                cut = int(np.searchsorted(cum, HELD_OUT_SHARE * total)) + 1
                held = np.zeros_like(labelled)
                gap = np.zeros_like(labelled)
                if axis == 1:
                    held[:, :cut], gap[:, cut:cut + SPLIT_GAP_PX] = True, True
                else:
                    held[:cut], gap[cut:cut + SPLIT_GAP_PX] = True, True
            else:
                cut = int(np.searchsorted(cum, (1 - HELD_OUT_SHARE) * total))
                held = np.zeros_like(labelled)
                gap = np.zeros_like(labelled)
                if axis == 1:
                    held[:, cut:], gap[:, max(0, cut - SPLIT_GAP_PX):cut] = True, True
                else:
                    held[cut:], gap[max(0, cut - SPLIT_GAP_PX):cut] = True, True
            val = np.where(held, labels, 255).astype(np.uint8)
            train = np.where(held | gap, 255, labels).astype(np.uint8)
            val_classes = set(np.unique(val[val != 255]).tolist())
            train_classes = set(np.unique(train[train != 255]).tolist())
            score = (len(val_classes & train_classes), -abs((val != 255).sum() / max(1, total) - HELD_OUT_SHARE))
            if best is None or score > best[0]:
                share = (val != 255).sum() / max(1, total)
                text = (f"the {side} {'columns' if axis == 1 else 'rows'} of the labelled area holding "
                        f"{share:.0%} of the labelled pixels (chosen by the tool; {SPLIT_GAP_PX} px left out "
                        "between training and held-out labels)")
                best = (score, train, val, text)
    return best[1], best[2], best[3]


def plan_finetune(spec, base: ModelPackage, job_id: str, protected, model_dirs: list[Path],
                  known_ids: set[str]) -> FinetuneRequest:
    training_python()
    if not (REPO_ROOT / "training" / "__main__.py").is_file():
        raise BackendError(f"The training code is not installed beside this backend ({REPO_ROOT / 'training'} is "
                           "missing); finetuning runs from a source checkout of mtp_qgis.")
    official = isinstance(base.raw.get("official"), dict)
    if official and base.task not in OFFICIAL_FINETUNE_TASKS:
        raise BackendError(f"Base model '{base.id}' is an imported official MTP {base.task.replace('_', ' ')} model; "
                           f"finetuning imported official models is built for "
                           f"{', '.join(t.replace('_', ' ') for t in OFFICIAL_FINETUNE_TASKS)} only so far. Choose "
                           "another base model.")
    if not official and not isinstance((base.raw.get("training") or {}).get("config"), dict):
        imported = (base.raw.get("provenance") or {}).get("kind") == "official MTP finetuned checkpoint"
        raise BackendError(f"Base model '{base.id}' cannot be finetuned: " + (
            "it was imported before imported models kept their official config; import its checkpoint again with "
            "`python -m training import-official`." if imported else
            "it carries no training config (only packages written by `python -m training export`, such as the "
            "bundled ones, and official MTP checkpoints imported with `python -m training import-official` can be "
            "loaded for training). Choose another base model."))
    change = base.task == "change_detection"
    if change and len(spec.inputs) != 3:
        raise BackendError(f"Finetuning a change-detection model takes 3 inputs, the before raster, the after raster "
                           f"and the labels vector file; got {len(spec.inputs)}.")
    if not change and len(spec.inputs) != 2:
        raise BackendError(f"finetune takes 2 inputs, the raster and the labels vector file; got {len(spec.inputs)}.")
    class_field = _option(spec, "class_field", None, lambda v: isinstance(v, str) and 0 < len(v) <= 255,
                          "the name of the labels' class field")
    model_id = _option(spec, "model_id", None, lambda v: isinstance(v, str) and bool(MODEL_ID.match(v)),
                       "a model id: letters, digits, _ . - (at most 100, not starting with . or -)")
    if model_id in known_ids:
        raise ConflictError(f"A model '{model_id}' exists already; choose another model id (or remove that model).")
    folder_text = _option(spec, "models_dir", None, lambda v: isinstance(v, str) and len(v) > 0,
                          "the models folder to write the package into")
    folder = outputs.checked_path(folder_text, "options.models_dir")
    searched = {d.resolve() for d in model_dirs if d.is_dir()}
    if folder.resolve() not in searched:
        raise BackendError(f"options.models_dir {folder} is not one of this backend's models folders "
                           f"({', '.join(str(d) for d in model_dirs)}), so the model would not be listed; choose one.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BackendError(f"Models folder {folder} is not writable.")
    iterations = _option(spec, "iterations", 300, lambda v: _is_int(v, 1, 1_000_000), "an integer from 1 to 1000000")
    budget = _option(spec, "time_budget_s", None, lambda v: v is None or _is_int(v, 10, 7 * 86400),
                     "a number of seconds from 10 to 604800 (or absent: no limit)")
    # 0: a detection base model's own recipe batch (crops of a few hundred px; 8 of them are slow on a CPU)
    default_batch = 0 if base.task in DETECTION_TASKS + (INSTANCES,) else 8
    batch_size = _option(spec, "batch_size", default_batch, lambda v: v == default_batch or _is_int(v, 1, 256),
                         "an integer from 1 to 256")

    input_path, ds = raster_io_input(spec.inputs[0], base)
    raster_srs = raster_io.raster_srs(ds)
    after_path = None
    if change:
        after_path, after_ds = raster_io_input(spec.inputs[1], base)
        problem = warp_problem(ds, after_ds)
        if problem:
            raise BackendError(f"The after raster {after_path} cannot be put on the before raster's grid: {problem}.")
    labels_path, labels_ds = _vector_layer(spec.inputs[-1], "Labels")
    factor, gsd_note = _gsd(ds, base)
    # Scene classification also takes points, each labelling the cell (the model's tile) around it.
    cell = (base.tile_size / factor * math.hypot(*raster_io.geotransform(ds)[1:3])
            if base.task == "scene_classification" else None)
    features = read_polygons(labels_ds, f"Labels {labels_path}", raster_srs, class_field, cell)
    if not features:
        raise BackendError(f"Labels {labels_path} hold no polygon with a value in '{class_field}'; draw some first.")
    names = sorted({v for _, v in features})
    detection = base.task in DETECTION_TASKS + (INSTANCES,)
    # A detector's background is implicit (one class of objects is enough); change labels are changes.
    if len(names) < 2 and not detection and not change:
        raise BackendError(f"The class field '{class_field}' of {labels_path} has one class only ({names[0]!r}); a "
                           "model needs at least two: label the other things too (e.g. a 'background' class).")
    validation = None
    if spec.options.get("validation"):
        val_text = _option(spec, "validation", None, lambda v: isinstance(v, str), "a vector file path")
        val_path, val_ds = _vector_layer(val_text, "Validation area")
        validation = [g for g, _ in read_polygons(val_ds, f"Validation area {val_path}", raster_srs, None)]
        if not validation:
            raise BackendError(f"Validation area {val_path} holds no polygon.")

    xmin, ymin, xmax, ymax = _bounds([g for g, _ in features] + (validation or []))
    try:
        window = raster_io.extent_to_window(ds, raster_io.Extent(xmin, ymin, xmax, ymax), str(input_path))
    except BackendError:
        raise BackendError(f"The labels in {labels_path} lie outside the raster {input_path}: their extent "
                           f"({xmin:.6g}, {ymin:.6g}, {xmax:.6g}, {ymax:.6g}) does not overlap it. Check that both "
                           "are in the right place (CRS).") from None
    if change:
        pass  # the labelled area is the polygons' extent exactly: every pixel in it is change or no change
    elif detection:  # a few pixels around the outermost objects: beyond them nothing is known to be labelled
        window = with_context(window, math.ceil(DETECTION_MARGIN_PX * factor), ds.RasterXSize, ds.RasterYSize)
    else:
        # Grown by the model's tile overlap as segmentation grows an extent: the scene the held-out score is
        # measured on then looks like what `mtp:segment` over the labelled area sees.
        window = with_context(window, base.tile_overlap, ds.RasterXSize, ds.RasterYSize)
    width, height = max(1, round(window.width * factor)), max(1, round(window.height * factor))
    if width * height > MAX_SCENE_PX:
        raise BackendError(f"The labelled area is {width} x {height} px at the model's GSD; at most "
                           f"{MAX_SCENE_PX} px can be trained on here. Label a smaller area.")
    gt = raster_io.window_geotransform(raster_io.geotransform(ds), window)
    gt = (gt[0], gt[1] / factor, gt[2] / factor, gt[3], gt[4] / factor, gt[5] / factor)
    base_colors = {c.name.strip().lower(): c.color for c in base.classes}
    classes = [{"name": n, "color": base_colors.get(n.lower(), PALETTE[i % len(PALETTE)])} for i, n in enumerate(names)]
    target = folder / f"{model_id}.onnx"
    report = None
    if "report" in spec.outputs:
        report = outputs.check_output(spec.outputs["report"], "report", "html", spec.overwrite,
                                      {**protected, input_path: "the input raster", labels_path: "the labels"})
    if change:
        return _plan_change(FinetuneRequest(
            base, input_path, labels_path, class_field, [{"name": c.name, "color": c.color} for c in base.classes],
            model_id, target, report, iterations, budget, batch_size, window, (width, height), None, None, "",
            gsd_note, job_id, spec.overwrite, after_path=after_path), features, validation, gt, raster_srs)
    if detection:
        rotated = base.task == "rotated_detection"
        objects = [(_object_corners(g, gt, rotated, labels_path), names.index(v)) for g, v in features]
        train_regions, val_regions, split = _detection_split(objects, names, validation, gt, width, height,
                                                             labels_path)
        instances = None
        if base.task == INSTANCES:  # the outlines themselves, each its own id (GDAL's rasterizer: pixel centres)
            instances = _rasterize([g for g, _ in features], range(1, len(features) + 1), gt, width, height,
                                   raster_srs, gdal.GDT_UInt16, 0)
        return FinetuneRequest(base, input_path, labels_path, class_field, classes, model_id, target, report,
                               iterations, budget, batch_size, window, (width, height), None, None, split, gsd_note,
                               job_id, spec.overwrite, objects, train_regions, val_regions,
                               instance_label=instances)
    labels = _rasterize([g for g, _ in features], [names.index(v) for _, v in features], gt, width, height,
                        raster_srs)
    labelled = int((labels != 255).sum())
    if labelled < MIN_LABELLED_PX:
        raise BackendError(f"The labels in {labels_path} cover {labelled} px of the raster at the model's GSD; at least "
                           f"{MIN_LABELLED_PX} are needed for training and a held-out check. Draw more or larger "
                           "polygons.")
    if validation:
        inside = _rasterize(validation, [1] * len(validation), gt, width, height, raster_srs) == 1
        train = np.where(inside, 255, labels).astype(np.uint8)
        val = np.where(inside, labels, 255).astype(np.uint8)
        split = f"the labels inside the validation area ({len(validation)} polygon(s))"
    else:
        train, val, split = _strip_split(labels)
    n_train, n_val = int((train != 255).sum()), int((val != 255).sum())
    if n_val < MIN_HELD_OUT_PX or n_train < MIN_TRAIN_PX:
        raise BackendError(f"Too few labelled pixels in {labels_path} for a held-out check: {n_train} for training and {n_val} held "
                           f"out ({split}); at least {MIN_TRAIN_PX} and {MIN_HELD_OUT_PX} are needed. Draw more "
                           "labels" + (" inside and outside the validation area." if validation else "."))
    if len(np.unique(train[train != 255])) < 2:
        raise BackendError(f"The training labels (outside the held-out part: {split}) hold one class only; label "
                           "at least two classes outside it.")
    if base.task == "scene_classification":  # examples are cells, not pixels
        cell = base.tile_size
        cells_train, cells_val = _labelled_cells(train, cell), _labelled_cells(val, cell)
        if cells_train < MIN_SCENE_CELLS or cells_val < MIN_SCENE_CELLS:
            raise BackendError(f"Too few labelled cells in {labels_path} for a scene classifier and a held-out check: "
                               f"{cells_train} for training and {cells_val} held out ({split}) of {cell} x {cell} px "
                               f"at the model's GSD, at least half labelled; at least {MIN_SCENE_CELLS} each are "
                               "needed. Draw larger polygons.")
    return FinetuneRequest(base, input_path, labels_path, class_field, classes, model_id, target, report,
                           iterations, budget, batch_size, window, (width, height), train, val, split, gsd_note,
                           job_id, spec.overwrite)


def _object_corners(geom, gt, rotated: bool, labels_path: Path) -> np.ndarray:
    """4 x 2 corners, in pixels of the cut (geotransform gt), of an object's box: the polygon's minimum-area
    rectangle for rotated boxes, its bounds for horizontal ones."""
    hull = geom.ConvexHull()
    ring = hull.GetGeometryRef(0) if hull.GetGeometryCount() else None
    corners = [(ring.GetX(i), ring.GetY(i)) for i in range(ring.GetPointCount())] if ring is not None else []
    pts = np.unique(_to_pixels(gdal.InvGeoTransform(gt), np.array(corners, dtype=np.float64).reshape(-1, 2)), axis=0)
    if len(pts) >= 3:
        pts = pts[_hull_order(pts)]
    if len(pts) < 3 or _shoelace(pts) < 1.0:
        raise BackendError(f"Labels {labels_path}: an object polygon is smaller than a pixel at the model's GSD "
                           f"(around {geom.Centroid().GetX():.6g}, {geom.Centroid().GetY():.6g}); draw each object's "
                           "outline or box.")
    if not rotated:
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    # Minimum-area rectangle: one of its sides lies on a side of the convex hull.
    best = None
    for a, b in zip(pts, np.roll(pts, -1, axis=0)):
        edge = b - a
        length = float(np.hypot(*edge))
        if length < 1e-9:
            continue
        u = edge / length
        v = np.array([-u[1], u[0]])
        pu, pv = pts @ u, pts @ v
        area = np.ptp(pu) * np.ptp(pv)
        if best is None or area < best[0]:
            best = (area, u, v, pu.min(), pu.max(), pv.min(), pv.max())
    _, u, v, u0, u1, v0, v1 = best
    return np.array([u0 * u + v0 * v, u1 * u + v0 * v, u1 * u + v1 * v, u0 * u + v1 * v])


def _shoelace(pts: np.ndarray) -> float:
    """Area of the polygon whose corners are `pts` in order."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _hull_order(pts: np.ndarray) -> np.ndarray:
    """Indices of the points in angular order around their centre (they are a convex hull's corners)."""
    centre = pts.mean(0)
    return np.argsort(np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0]))


def _to_pixels(inverse, points: np.ndarray) -> np.ndarray:
    """N x 2 map coordinates -> N x 2 pixel coordinates through an inverted geotransform."""
    x, y = points[:, 0], points[:, 1]
    return np.stack([inverse[0] + inverse[1] * x + inverse[2] * y, inverse[3] + inverse[4] * x + inverse[5] * y], 1)


def _pixel_bounds(polygons, gt, width: int, height: int) -> list[int]:
    """[x0, y0, x1, y1]: the polygons' bounds in pixels of the cut (geotransform gt), within it."""
    corners = np.array([(x, y) for env in (g.GetEnvelope() for g in polygons)  # (minx, maxx, miny, maxy)
                        for x, y in ((env[0], env[2]), (env[1], env[3]), (env[0], env[3]), (env[1], env[2]))])
    pixels = _to_pixels(gdal.InvGeoTransform(gt), corners)
    (x0, y0), (x1, y1) = pixels.min(0), pixels.max(0)
    return [max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1))]


def _rectangles_around(box: list[int], gap: int, width: int, height: int) -> list[list[int]]:
    """The up to four rectangles of a width x height area around `box`, `gap` px away from it: above, below, left
    and right (those under 32 px across are dropped)."""
    x0, y0, x1, y1 = box
    around = [[0, 0, width, y0 - gap], [0, y1 + gap, width, height],
              [0, max(0, y0 - gap), x0 - gap, min(height, y1 + gap)],
              [x1 + gap, max(0, y0 - gap), width, min(height, y1 + gap)]]
    return [b for b in around if b[2] - b[0] >= 32 and b[3] - b[1] >= 32]


def _inside(box: list[int], point: np.ndarray) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def _detection_split(objects, names: list[str], validation, gt, width: int, height: int,
                     labels_path: Path) -> tuple[list[list[int]], list[list[int]], str]:
    """Training and held-out regions (pixel boxes of the cut), a gap of the longest object between them so no
    object is in both: the validation area's bounds, else a strip along the side that holds out about
    HELD_OUT_SHARE of the objects and leaves most classes on both sides."""
    centres = np.array([c.mean(0) for c, _ in objects])
    labels = np.array([k for _, k in objects])
    longest = max(max(float(np.hypot(*(c[1] - c[0]))), float(np.hypot(*(c[2] - c[1])))) for c, _ in objects)
    gap = int(math.ceil(longest)) + 2
    candidates = []
    if validation:
        val = _pixel_bounds(validation, gt, width, height)
        if val[2] - val[0] < 1 or val[3] - val[1] < 1:
            raise BackendError("The validation area does not overlap the labelled area; draw it over some labels.")
        candidates.append((_rectangles_around(val, gap, width, height), [val],
                           f"the boxes inside the validation area's bounds (a band of {gap} px around it, the longest "
                           "object, is left out of training)"))
    else:
        for axis, sides in ((0, ("left", "right")), (1, ("top", "bottom"))):
            size = width if axis == 0 else height
            order = np.sort(centres[:, axis])
            for side in sides:
                k = max(1, int(round(HELD_OUT_SHARE * len(order))))
                if side in ("left", "top"):
                    cut = int(math.ceil(order[k - 1])) + 1
                    held, rest = (0, cut), (cut + gap, size)
                else:
                    cut = int(math.floor(order[-k]))
                    held, rest = (cut, size), (0, cut - gap)
                if rest[1] - rest[0] < 32:
                    continue
                box = (lambda a, b: [a, 0, b, height]) if axis == 0 else (lambda a, b: [0, a, width, b])
                what = "columns" if axis == 0 else "rows"
                candidates.append(([box(*rest)], [box(*held)],
                                   f"the boxes in the {side} {what} of the labelled area (chosen by the tool; a band "
                                   f"of {gap} px, the longest object, is left out between training and held-out "
                                   "boxes)"))
    best = None
    for train, val, text in candidates:
        in_val = np.array([any(_inside(b, c) for b in val) for c in centres])
        in_train = np.array([any(_inside(b, c) for b in train) for c in centres])
        score = (len(set(labels[in_val]) & set(labels[in_train])), int(in_train.sum()) >= MIN_TRAIN_OBJECTS,
                 -abs(in_val.mean() - HELD_OUT_SHARE))
        if best is None or score > best[0]:
            best = (score, train, val, text, int(in_train.sum()), int(in_val.sum()), set(labels[in_train].tolist()))
    if best is None:
        raise BackendError(f"The labelled area of {labels_path} is too small to hold out a part of it; label a "
                           "larger area.")
    _, train, val, text, n_train, n_val, trained = best
    if n_train < MIN_TRAIN_OBJECTS or n_val < MIN_HELD_OUT_OBJECTS:
        raise BackendError(f"Too few objects in {labels_path} for a held-out check: {n_train} for training and "
                           f"{n_val} held out ({text}); at least {MIN_TRAIN_OBJECTS} and {MIN_HELD_OUT_OBJECTS} are "
                           "needed. Label more objects.")
    untrained = [names[k] for k in sorted(set(labels.tolist()) - trained)]
    if untrained:
        raise BackendError(f"No object of class {', '.join(untrained)} lies outside the held-out part ({text}); "
                           "label some there too.")
    return train, val, text


def _plan_change(plan: FinetuneRequest, features, validation, gt, srs) -> FinetuneRequest:
    """Change labels: polygons of change; a polygon whose class is the base model's first class (`no change`)
    marks checked unchanged ground; every other pixel of the labelled area is no change too. Change wins where
    they overlap. The held-out part (validation bounds, or a strip along one side) and the training rectangles
    around it become separate pairs."""
    width, height = plan.size
    unchanged = plan.base.classes[0].name.strip().lower()
    label = np.zeros((height, width), np.uint8)
    for value, burn in ((0, [g for g, v in features if v.strip().lower() == unchanged]),
                        (1, [g for g, v in features if v.strip().lower() != unchanged])):
        if burn:
            mask = _rasterize(burn, [1] * len(burn), gt, width, height, srs) == 1
            label[mask] = value
    n_change = int(label.sum())
    if n_change < MIN_CHANGE_PX:
        raise BackendError(f"The labels in {plan.labels_path} mark {n_change} changed pixels at the model's GSD; at "
                           f"least {MIN_CHANGE_PX} are needed. Draw the changes as polygons (every change inside their "
                           "extent: the rest of it is taken as unchanged).")
    if validation:
        val = _pixel_bounds(validation, gt, width, height)
        split = (f"the labelled area inside the validation area's bounds ({SPLIT_GAP_PX} px around it left out of "
                 "training)")
    else:
        _, held, split = _strip_split(label)
        rows, cols = np.nonzero(held != 255)
        val = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
    train = _rectangles_around(val, SPLIT_GAP_PX, width, height)
    held_change = int(label[val[1]:val[3], val[0]:val[2]].sum())
    train_change = sum(int(label[b[1]:b[3], b[0]:b[2]].sum()) for b in train)
    if val[2] - val[0] < 32 or val[3] - val[1] < 32 or not train or held_change < MIN_CHANGE_PX // 4 or \
            train_change < MIN_CHANGE_PX // 2:
        raise BackendError(f"Too little change in {plan.labels_path} for a held-out check: {train_change} changed "
                           f"pixels for training and {held_change} held out ({split}); at least {MIN_CHANGE_PX // 2} "
                           f"and {MIN_CHANGE_PX // 4} are needed, in parts of at least 32 x 32 px. Draw more changes"
                           " or another validation area.")
    plan.train_label, plan.train_regions, plan.val_regions, plan.split = label, train, [val], split
    return plan


def raster_io_input(text: str, base: ModelPackage):
    """The input raster, checked as the segmentation job checks it (bands, local file)."""
    path = outputs.checked_path(text, "Input raster")
    ds = raster_io.open_raster(path)
    needed = max(base.input.bands)
    if ds.RasterCount < needed:
        raise BackendError(f"Input {path} has {ds.RasterCount} band(s) but model '{base.id}' reads bands "
                           f"{base.input.bands}; choose a raster with at least {needed} bands.")
    raster_io.check_pixel_values(ds, str(path), base.input.bands, base.input.dtypes, base.input.expected_range(),
                                 base.id, raster_io.full_window(ds))
    return path, ds


def _write_png(path: Path, bands: list[np.ndarray], dtype: int = gdal.GDT_Byte) -> None:
    mem = gdal.GetDriverByName("MEM").Create("", bands[0].shape[1], bands[0].shape[0], len(bands), dtype)
    for i, band in enumerate(bands, 1):
        mem.GetRasterBand(i).WriteArray(band)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gdal.GetDriverByName("PNG").CreateCopy(str(path), mem) is None:
        raise BackendError(f"Could not write the training image {path}: {gdal.GetLastErrorMsg()}")


def _read_cut(ds, plan: FinetuneRequest, offset: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """The model's bands of the labelled area (shifted by `offset` pixels) at its GSD, 8 bit (3 bands: the
    training readers' RGB), and where there is no data."""
    w = plan.window
    width, height = plan.size
    cut = gdal.Translate("", ds, format="MEM", srcWin=[w.x + offset[0], w.y + offset[1], w.width, w.height],
                         width=width, height=height, bandList=list(plan.base.input.bands), resampleAlg="bilinear")
    bands, invalid = [], np.zeros((height, width), bool)
    for i in range(1, cut.RasterCount + 1):
        band = cut.GetRasterBand(i)
        values = band.ReadAsArray().astype(np.float64)
        nodata = band.GetNoDataValue()
        if nodata is not None:
            invalid |= values == nodata
        invalid |= ~np.isfinite(values)
        bands.append(np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8))
    return (bands[:3] if len(bands) >= 3 else bands * 3), invalid


def cut_training_data(plan: FinetuneRequest, data_dir: Path) -> None:
    """Segmentation: img_dir/scene.png (the model's bands at its GSD, 8 bit), ann_train/ and ann_val/scene.png.
    Detection: images/scene.png and labelTxt/scene.txt (DOTA text: 4 corners, class name, difficult 0). Instance
    segmentation: images/scene.png, instances/scene.png (16-bit instance ids, 0 none) and instances/scene.json
    ({"classes": the class name of each id}).
    Change: A/ (before), B/ (after, on the before grid), label/ (0 / 255 change) of each training rectangle
    (train_<i>.png), of the held-out one (val.png) and of the whole area (scene.png); pixels without data count
    as unchanged."""
    ds = raster_io.open_raster(plan.input_path)
    rgb, invalid = _read_cut(ds, plan, (0, 0))
    if plan.is_change:
        after = raster_io.open_raster(plan.after_path)
        offset = grid_offset(ds, after)
        after_rgb, _ = _read_cut(after, plan, offset) if offset is not None else _read_cut(warped_after(ds, after),
                                                                                           plan, (0, 0))
        boxes = [(f"train_{i}.png", b) for i, b in enumerate(plan.train_regions or [])]
        # scene.png: the whole labelled area, on which the held-out part is scored with its context, as mtp:change
        # over that area sees it (val.png alone would be scored with zero padding around it).
        whole = ("scene.png", (0, 0, plan.size[0], plan.size[1]))
        for name, (x0, y0, x1, y1) in boxes + [("val.png", (plan.val_regions or [])[0]), whole]:
            _write_png(data_dir / "A" / name, [b[y0:y1, x0:x1] for b in rgb])
            _write_png(data_dir / "B" / name, [b[y0:y1, x0:x1] for b in after_rgb])
            _write_png(data_dir / "label" / name, [(plan.train_label[y0:y1, x0:x1] * 255).astype(np.uint8)])
        return
    if plan.instance_label is not None:
        _write_png(data_dir / "images" / "scene.png", rgb)
        names = [c["name"] for c in plan.classes]
        # Pixels without data teach nothing: no instance there.
        _write_png(data_dir / "instances" / "scene.png", [np.where(invalid, 0, plan.instance_label).astype(np.uint16)],
                   gdal.GDT_UInt16)
        (data_dir / "instances" / "scene.json").write_text(json.dumps({"classes": [names[k] for _, k in plan.objects or []]}))
        return
    if plan.is_detection:
        _write_png(data_dir / "images" / "scene.png", rgb)
        names = [c["name"] for c in plan.classes]
        # DOTA text separates fields by spaces: a class name with spaces is written with underscores there
        # and the spec lists the same spelling.
        lines = [" ".join(f"{v:.2f}" for v in corners.ravel()) + f" {names[k].replace(' ', '_')} 0"
                 for corners, k in plan.objects or []]
        (data_dir / "labelTxt").mkdir(parents=True, exist_ok=True)
        (data_dir / "labelTxt" / "scene.txt").write_text("\n".join(lines) + "\n")
        return
    _write_png(data_dir / "img_dir" / "scene.png", rgb)
    # Pixels without data teach nothing: their labels are dropped.
    _write_png(data_dir / "ann_train" / "scene.png", [np.where(invalid, 255, plan.train_label).astype(np.uint8)])
    _write_png(data_dir / "ann_val" / "scene.png", [np.where(invalid, 255, plan.val_label).astype(np.uint8)])


def _reader(stream, lines: "queue.Queue[str | None]") -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode("utf-8", "replace").rstrip())
    lines.put(None)


def _stop(process: subprocess.Popen) -> None:
    """End the training process group: SIGTERM, then SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def resume_folder(plan: FinetuneRequest) -> Path:
    """Where an interrupted finetuning keeps its data and checkpoints: beside the models, under a hidden name
    (no registry looks into it), per model id."""
    return plan.target.parent / RESUME_DIR / plan.model_id


def _fingerprint(data_dir: Path, spec: dict) -> str:
    """What makes a run the same run: the training data as cut, and the training settings."""
    digest = hashlib.sha256()
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(data_dir).as_posix().encode())
        digest.update(path.read_bytes())
    settings = {k: spec.get(k) for k in ("base_package", "classes", "iterations", "batch_size", "train_regions",
                                         "val_regions", "split")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _forget(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # the hidden folder goes too once no run is kept in it
    except OSError:
        pass


def run_finetune(plan: FinetuneRequest, progress=None, cancelled=None) -> dict[str, str]:
    """Train in the training environment. Data and checkpoints live in resume_folder(plan) while the run lasts:
    if the training process dies (or the backend with it), the same request later resumes from the last
    checkpoint; a finished, cancelled or refused run leaves nothing there."""
    progress = progress or (lambda p, m: None)
    cancelled = cancelled or (lambda: False)
    work = Path(tempfile.mkdtemp(prefix=f"mtp_finetune_{plan.job_id}_"))
    keep = resume_folder(plan)
    kept = False  # True once a failure leaves a run to resume
    partials: list[Path] = []
    try:
        progress(0.5, "cutting the training data from the raster")
        cut_training_data(plan, work / "data")
        report_tmp = work / "report.html"
        spec = {"base_package": str(plan.base.path), "data_dir": str(keep / "data"), "classes": plan.classes,
                "iterations": plan.iterations, "batch_size": plan.batch_size, "time_budget_s": plan.time_budget_s,
                "out": str(work / "model" / f"{plan.model_id}.onnx"), "name": plan.model_id,
                "description": f"Finetuned on labels from {plan.labels_path.name} ({plan.class_field}) over "
                               f"{plan.input_path.name}; {plan.gsd_note}.",
                "split": plan.split, "report": str(report_tmp),
                "num_threads": int(os.environ.get("MTP_QGIS_TRAINING_THREADS", "0") or 0), "parent_pid": os.getpid()}
        if plan.is_detection:
            spec.update(train_regions=plan.train_regions, val_regions=plan.val_regions)
        if plan.is_detection and plan.instance_label is None:  # DOTA text: names without spaces (cut_training_data)
            spec.update(classes=[{**c, "name": c["name"].replace(" ", "_")} for c in plan.classes])
        if plan.is_change:
            spec.update(train_pairs=[f"train_{i}.png" for i in range(len(plan.train_regions or []))],
                        val_pairs=["val.png"], scene_pair="scene.png", val_region=(plan.val_regions or [])[0])
        fingerprint = _fingerprint(work / "data", spec)
        checkpoint = keep / "run" / "latest.pt"
        if checkpoint.is_file() and (keep / "fingerprint").is_file() and \
                (keep / "fingerprint").read_text() == fingerprint:
            progress(1, "resuming the interrupted finetuning of this model from its last checkpoint")
        else:
            _forget(keep)
            keep.mkdir(parents=True)
            shutil.move(str(work / "data"), str(keep / "data"))
            (keep / "fingerprint").write_text(fingerprint)
        (keep / "finetune.json").write_text(json.dumps(spec, indent=2))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        process = subprocess.Popen([training_python(), "-m", "training", "finetune", "--spec", str(keep / "finetune.json")],
                                   cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True).start()
        tail: list[str] = []
        ended = False
        while not ended:
            if cancelled():
                _stop(process)
                raise JobCancelled()
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                ended = True
                continue
            tail = (tail + [line])[-40:]
            it = ITER_LINE.search(line)
            step = PROGRESS_LINE.search(line)
            resumed = RESUMED_LINE.search(line)
            if resumed:
                progress(10, f"training: resumed at iteration {resumed.group(1)}")
            elif it:
                done, total = int(it.group(1)), int(it.group(2))
                progress(10 + 78 * done / total, f"training: iteration {done}/{total}, loss {float(it.group(3)):.3f}")
            elif step:
                progress(float(step.group(1)), step.group(2))
        code = process.wait()
        if code != 0:
            errors = [l for l in tail if l.startswith("error:")]
            detail = errors[-1][len("error:"):].strip() if errors else " | ".join(tail[-5:])
            resumable = ""
            if checkpoint.is_file():
                kept = True
                resumable = (f" Its checkpoints are kept in {keep}: run the same finetuning again (same raster, "
                             "labels, base model, model id and iterations) to resume from the last one.")
            raise BackendError(f"Finetuning failed (training process exit code {code}): {detail}.{resumable}")
        # Partial names do not end in .onnx, so no registry lists a package before it is complete.
        partial = plan.target.with_name(f".{plan.model_id}.{plan.job_id}.partial")
        partials.append(partial)
        shutil.copyfile(work / "model" / f"{plan.model_id}.onnx", partial)
        report_partial = None
        if plan.report_path is not None:
            report_partial = plan.report_path.with_name(f".{plan.report_path.stem}.{plan.job_id}.partial.html")
            partials.append(report_partial)
            shutil.copyfile(report_tmp, report_partial)
        outputs.commit(partial, plan.target, overwrite=False)  # never replaces a model
        if report_partial is not None:
            try:
                outputs.commit(report_partial, plan.report_path, plan.overwrite)
            except BaseException:
                plan.target.unlink(missing_ok=True)
                raise
        return plan.outputs
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        if not kept:
            _forget(keep)

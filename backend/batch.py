"""One model over many rasters (a folder, a list file, a VRT's sources), with a results index GeoPackage.

Every raster is an ordinary job (jobs.plan_job + run_plan, on this machine or as one Dask task on a
cluster worker), so its result is exactly what a single job would give; each writes through its own partial
file, so an output that exists is complete. A rerun therefore skips every raster whose output exists: an
interrupted batch resumes where it stopped. The index (layer `rasters`: footprint in EPSG:4326, input,
output, status, error, seconds, reused) is written through a partial file at the end of every run, however the
run ends, and lists every raster of the batch.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from osgeo import gdal, ogr, osr

from backend import outputs, raster_io
from backend.errors import BackendError, JobCancelled
from backend.gpkg import create_layer, remove_gpkg
from backend.jobs import JobSpec, failure_message, plan_job, run_plan
from backend.registry import ModelRegistry
from backend.tasks import BATCH_TASKS, TASKS
from backend.tile_pipeline import CancelCheck, ProgressCallback, partial_path

log = logging.getLogger(__name__)
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".png", ".jpg", ".jpeg"}
INDEX_LAYER = "rasters"
STOP_WAIT_S = 120  # how long a cancelled batch waits for its running jobs to stop


def batch_inputs(sources: list[str]) -> list[Path]:
    """The rasters named by `sources`: a folder (its rasters, sorted), a .txt list (one path a line, relative to
    the list; # comments), a VRT (its source files; give it as a single input with a plain `run` to process
    the mosaic as one raster), or raster files. Duplicates are dropped, the order kept."""
    found: list[Path] = []
    for text in sources:
        path = Path(text).absolute()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES and p.is_file())
        elif path.suffix.lower() == ".txt":
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise BackendError(f"List of rasters {path} could not be read: {exc}.") from exc
            found += [(path.parent / line.strip()).absolute() for line in lines
                      if line.strip() and not line.lstrip().startswith("#")]
        elif path.suffix.lower() == ".vrt":
            ds = raster_io.open_raster(path)
            found += [Path(f).absolute() for f in ds.GetFileList()[1:]]  # [0] is the VRT itself
        else:
            found.append(path)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise BackendError(f"No rasters found in {', '.join(sources)}; give a folder of rasters ("
                           f"{', '.join(sorted(RASTER_SUFFIXES))}), a .txt list of paths, a VRT or raster files.")
    stems: dict[str, Path] = {}
    for p in unique:
        if p.stem in stems:
            raise BackendError(f"{p} and {stems[p.stem]} would write the same output name ({p.stem}); rename one "
                               "or run them as two batches.")
        stems[p.stem] = p
    return unique


@dataclass
class RasterResult:
    input: Path
    output: Path
    status: str = "pending"  # succeeded | failed | cancelled | pending
    error: str | None = None
    seconds: float | None = None
    reused: bool = False  # finished by an earlier run


@dataclass
class BatchResult:
    index: Path
    rasters: list[RasterResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rasters)


def output_key(task: str) -> str:
    """The one output of a batch task: raster (a GeoTIFF) or vector (a GeoPackage)."""
    return TASKS[task].required_outputs[0]


def output_for(raster: Path, out_dir: Path, task: str) -> Path:
    return out_dir / (raster.stem + (".tif" if output_key(task) == "raster" else ".gpkg"))


def job_spec(task: str, model: str, raster: Path, output: Path, options: dict[str, Any], overwrite: bool) -> JobSpec:
    return JobSpec(task, model, [str(raster)], {output_key(task): str(output)}, None, dict(options), overwrite)


def run_raster(spec: JobSpec, model_dirs: list[str], job_id: str, cancel_flag: str | None = None,
               cancelled: CancelCheck | None = None) -> float:
    """One raster's job, in this process (a cluster worker calls it too, with the batch's cancel flag file);
    returns its seconds."""
    start = time.time()
    if cancel_flag:
        cancelled = lambda: os.path.exists(cancel_flag)  # noqa: E731
    plan = plan_job(spec, ModelRegistry([Path(d) for d in model_dirs]), job_id)
    try:
        run_plan(spec.task, plan, None, cancelled)
    except (BackendError, JobCancelled):
        raise
    except Exception as exc:  # an I/O failure (full disk): a message that travels back from a worker
        raise BackendError(failure_message(exc, plan)) from exc
    return time.time() - start


def run_batch(task: str, model: str, sources: list[str], out_dir: Path, index_path: Path, registry: ModelRegistry,
              options: dict[str, Any] | None = None, overwrite: bool = False, client=None,
              progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> BatchResult:
    """Run `model` over every raster of `sources` into out_dir (one output per raster, named after it) and
    write the index. client: a dask Client (one task per raster), or None to run them here one by one.
    A raster whose job fails is recorded as failed and the batch goes on; cancel stops it (the index is
    written all the same)."""
    if task not in BATCH_TASKS:
        raise BackendError(f"A batch runs one of {', '.join(BATCH_TASKS)}; {task} takes pairs of rasters, run it "
                           "as single jobs.")
    package = registry.get(model)
    if package.task != task:
        raise BackendError(f"Model '{model}' does {package.task}, not {task}; pick a {task} model.")
    out_dir = Path(out_dir).absolute()
    if not out_dir.is_dir():
        raise BackendError(f"Output folder {out_dir} does not exist; create it first.")
    options = dict(options or {})
    rasters = batch_inputs(sources)
    result = BatchResult(Path(index_path).absolute(),
                         [RasterResult(r, output_for(r, out_dir, task)) for r in rasters])
    clash = next((r for r in result.rasters if r.output == result.index or r.output == r.input), None)
    if clash is not None:
        raise BackendError(f"The output of {clash.input} would be {clash.output}, which is "
                           f"{'the index' if clash.output == result.index else 'the input itself'}; choose another "
                           "--out-dir or --index.")
    model_dirs = [str(package.path.parent)]
    todo = []
    for r in result.rasters:
        if r.output.exists() and not overwrite:
            r.status, r.reused = "succeeded", True  # outputs appear only complete (partial file + rename)
        else:
            todo.append(r)
    total = len(result.rasters)
    finished = total - len(todo)

    def report(done: int) -> None:
        if progress:
            progress(100.0 * done / total, f"raster {done}/{total}")

    report(finished)
    try:
        if client is None:
            for n, r in enumerate(todo):
                if cancelled and cancelled():
                    raise JobCancelled()
                try:
                    r.seconds = run_raster(job_spec(task, model, r.input, r.output, options, overwrite), model_dirs,
                                           f"batch{n}", cancelled=cancelled)
                    r.status = "succeeded"
                except BackendError as exc:
                    r.status, r.error = "failed", exc.message
                finished += 1
                report(finished)
        else:
            finished = _run_on_cluster(client, task, model, todo, options, overwrite, model_dirs, out_dir, finished,
                                       report, cancelled)
    finally:
        for r in result.rasters:
            if r.status == "pending":
                r.status = "cancelled"
        write_index(result)
    return result


def _run_on_cluster(client, task, model, todo: list[RasterResult], options, overwrite, model_dirs, out_dir: Path,
                    finished: int, report: Callable[[int], None], cancelled: CancelCheck | None) -> int:
    """One Dask task per raster; a cancel flag file in out_dir stops the running ones."""
    flag = out_dir / f".mtp_batch_{uuid.uuid4().hex[:12]}.cancel"
    futures = {client.submit(run_raster, job_spec(task, model, r.input, r.output, options, overwrite), model_dirs,
                             f"batch{n}", str(flag), pure=False): r for n, r in enumerate(todo)}
    pending = dict(futures)
    try:
        while pending:
            if cancelled and cancelled():
                raise JobCancelled()
            for future in [f for f in pending if f.status in ("finished", "error", "cancelled")]:
                r = pending.pop(future)
                try:
                    r.seconds, r.status = future.result(), "succeeded"
                except BackendError as exc:
                    r.status, r.error = "failed", exc.message
                except Exception as exc:  # noqa: BLE001 - a lost task (KilledWorker) fails that raster only
                    r.status, r.error = "failed", f"{type(exc).__name__}: {exc}"
                finished += 1
                report(finished)
            time.sleep(0.2)
    except BaseException:
        # Running jobs stop at their next batch and remove their partial files, waiting ones stop at once; the
        # batch ends when they have (or after STOP_WAIT_S), so that no partial file outlives it.
        flag.touch()
        from distributed import wait

        try:
            wait(list(pending), timeout=STOP_WAIT_S)
        except TimeoutError:
            client.cancel(list(pending))
        for future, r in pending.items():
            if future.status == "finished":  # it finished before it saw the flag: a complete result
                r.seconds, r.status = future.result(), "succeeded"
        flag.unlink(missing_ok=True)
        raise
    return finished


def footprint_wgs84(path: Path) -> ogr.Geometry | None:
    """The raster's outline (edges densified) in EPSG:4326 longitude/latitude, or None without a CRS."""
    try:
        ds = gdal.Open(str(path))
    except RuntimeError:
        return None
    srs = raster_io.raster_srs(ds) if ds is not None else None
    if srs is None:
        return None
    gt, w, h = raster_io.geotransform(ds), ds.RasterXSize, ds.RasterYSize
    steps = np.linspace(0.0, 1.0, 11)[:-1]  # each edge without its last corner, the next edge's first
    px = np.concatenate([steps * w, np.full(10, w), (1 - steps) * w, np.zeros(10)])
    py = np.concatenate([np.zeros(10), steps * h, np.full(10, h), (1 - steps) * h])
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    try:
        points = osr.CoordinateTransformation(srs, wgs84).TransformPoints(
            np.column_stack([gt[0] + px * gt[1] + py * gt[2], gt[3] + px * gt[4] + py * gt[5]]).tolist())
    except RuntimeError:
        return None
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y, *_ in points:
        ring.AddPoint_2D(x, y)
    ring.CloseRings()
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def write_index(result: BatchResult) -> None:
    """The index GeoPackage, through a partial file: one feature per raster, in batch order."""
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    fields = [("input", ogr.OFTString), ("output", ogr.OFTString), ("status", ogr.OFTString),
              ("error", ogr.OFTString), ("seconds", ogr.OFTReal), ("reused", ogr.OFTInteger)]
    partial = partial_path(result.index, uuid.uuid4().hex[:12])
    try:
        out, layer = create_layer(partial, INDEX_LAYER, wgs84, fields)
        out.StartTransaction()
        for r in result.rasters:
            feature = ogr.Feature(layer.GetLayerDefn())
            footprint = footprint_wgs84(r.input)
            if footprint is not None:
                feature.SetGeometry(footprint)
            feature.SetField("input", str(r.input))
            if r.status == "succeeded":
                feature.SetField("output", str(r.output))
            feature.SetField("status", r.status)
            if r.error is not None:
                feature.SetField("error", r.error)
            if r.seconds is not None:
                feature.SetField("seconds", r.seconds)
            feature.SetField("reused", int(r.reused))
            layer.CreateFeature(feature)
        out.CommitTransaction()
        layer = out = None
        outputs.commit(partial, result.index, overwrite=True)
    except BaseException:
        layer = out = None
        remove_gpkg(partial)
        raise

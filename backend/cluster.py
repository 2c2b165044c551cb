"""One job over a Dask cluster: the job's tile grid cut into blocks, each block run by the ordinary tile
pipeline on a worker, the blocks' results staged and assembled into the result only when all are done.

Why the result is bit for bit the single-machine one: a block is a rectangle of the job's own tiles (the
grid `tiling.tile_starts` lays over the whole processed window, never a grid of its own), cut with
`tiling.column_stripes` in both directions, and it writes only the pixels whose every covering tile it
holds. The streaming blender then adds the same tiles' weighted probabilities in the same order for each
pixel it writes, as the single-machine column stripes already do (tested there and here).

Workers must see the inputs, the models and the output's folder at the same paths (a shared file system);
the staging folder `.<name>.<job>.partial.blocks` lives beside the output and is removed when the job ends, however
it ends. Dask recomputes the blocks of a lost worker; a block file appears under its final name only
once complete (written under a unique partial name, then renamed), so a recomputed block never meets half
a file. Cancel: a flag file in the staging folder, which every block checks between batches, and the
futures cancelled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from backend import outputs, raster_io
from backend.change import intersect
from backend.detection import Detections
from backend.errors import BackendError, JobCancelled
from backend.segmentation import ClassIdWriter, SegmentationRequest
from backend.sessions import physical_cores
from backend.tasks import CLUSTER_TASKS  # the tasks whose blocks run_plan_with_client runs
from backend.tile_pipeline import (CancelCheck, ProgressCallback, TileModel, partial_path, remove_partial, run_tiles,
                                   with_context)
from backend.tiling import TileGrid, TileSpec, column_stripes

log = logging.getLogger(__name__)

# Blocks of about this many pixels a side (whole tiles; the tiles on a block seam are inferred by both
# blocks: with 512 px tiles and 128 px overlap about 20 % more tiles at 4096 px, 10 % at 8192 px).
DEFAULT_BLOCK_SIZE = 4096
CANCEL_FLAG = "CANCEL"
POLL_S = 0.2  # how often the job thread looks at the blocks' state and the cancel flag


@dataclass(frozen=True)
class Block:
    """A rectangle of the job's tiles: `span` (raster pixels) covered by tiles at `xs` x `ys` (relative to
    span), writing `target` (raster pixels within the requested window)."""

    index: int
    span: raster_io.Window
    xs: tuple[int, ...]
    ys: tuple[int, ...]
    target: raster_io.Window


def plan_blocks(window: raster_io.Window, processed: raster_io.Window, tile: int, overlap: int,
                block_size: int = DEFAULT_BLOCK_SIZE) -> list[Block]:
    """The blocks of a job on `processed` (the window with its context) that together write `window`."""
    if block_size < 1:
        raise BackendError(f"The block size must be a number of pixels >= 1, got {block_size}.")
    grid = TileGrid(processed.width, processed.height, tile, overlap)
    cols = column_stripes(grid.xs, grid.tile_w, processed.width, block_size)
    rows = column_stripes(grid.ys, grid.tile_h, processed.height, block_size)
    blocks: list[Block] = []
    for row in rows:
        for col in cols:
            xs, ys = grid.xs[col.first : col.stop], grid.ys[row.first : row.stop]
            span = raster_io.Window(processed.x + xs[0], processed.y + ys[0],
                                    xs[-1] + grid.tile_w - xs[0], ys[-1] + grid.tile_h - ys[0])
            writes = raster_io.Window(processed.x + col.write_from, processed.y + row.write_from,
                                      col.write_to - col.write_from, row.write_to - row.write_from)
            target = intersect(writes, window)
            if target is None:
                continue  # context only
            blocks.append(Block(len(blocks), span, tuple(x - xs[0] for x in xs), tuple(y - ys[0] for y in ys),
                                target))
    return blocks


# ---------------------------------------------------------------------------------------------- workers

@dataclass(frozen=True)
class BlockJob:
    """What every block task of one job needs (plain data: it travels to the workers)."""

    task: str
    model_path: str
    inputs: tuple[str, ...]
    staging: str
    batch_size: int
    intra_op_threads: int | None  # None: the worker machine's physical cores
    window: raster_io.Window | None = None  # the requested window (tasks that rebuild their request)
    options: tuple[tuple[str, float], ...] = ()  # the task's own settings (a score threshold)
    model: object = None  # the plan's ModelPackage: bands by role already resolved for this raster (a few KB)


_packages: dict[tuple[str, float], object] = {}


def _package(path: str):
    """The model package, loaded once per worker process (its ONNX Runtime session is cached likewise, by
    sessions.get_session: one session per worker process and model)."""
    from backend.model_package import load_package

    key = (path, os.stat(path).st_mtime)
    if key not in _packages:
        for stale in [k for k in _packages if k[0] == path]:  # the file changed
            del _packages[stale]
        _packages[key] = load_package(path)
    return _packages[key]


def _model(job: BlockJob):
    """The job's model package: the plan's own (its bands resolved for the raster), else loaded from the file."""
    return job.model if job.model is not None else _package(job.model_path)


def _cancel_check(staging: str) -> CancelCheck:
    flag = os.path.join(staging, CANCEL_FLAG)
    return lambda: os.path.exists(flag) or not os.path.isdir(staging)


def block_file(staging: str | Path, index: int, suffix: str = ".tif") -> Path:
    return Path(staging) / f"block_{index:06d}{suffix}"


def _write_then_rename(staging: str, index: int, suffix: str, write: Callable[[Path], None]) -> str:
    """write(partial) under a name no other attempt at this block uses, then rename it onto the block's name."""
    final = block_file(staging, index, suffix)
    partial = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:12]}.partial{suffix}")
    try:
        write(partial)
        os.replace(partial, final)
    except BaseException:
        remove_partial(partial)
        raise
    return str(final)


def _class_source(job: BlockJob):
    """(dataset of the result grid, reader, tile model) of a class-raster task, in a worker."""
    model = _model(job)
    if job.task == "change_detection":
        from backend.change import ChangeRequest, ChangeTileModel, open_pair

        pair = ChangeRequest(model, Path(job.inputs[0]), Path(job.inputs[1]), Path(job.staging), None, job.window,
                             job.window)
        ds, reader = open_pair(pair)
        return ds, reader, ChangeTileModel(model, job.intra_op_threads)
    ds = raster_io.open_raster(job.inputs[0])
    return ds, raster_io.RasterReader(ds, model.input.bands, job.inputs[0]), TileModel(model, job.intra_op_threads)


def class_block(job: BlockJob, block: Block) -> str:
    """Worker side: the block's class ids (segmentation, change) as a GeoTIFF in the staging folder; returns
    its path."""
    ds, reader, tile_model = _class_source(job)
    cancelled = _cancel_check(job.staging)

    def write(path: Path) -> None:
        out_ds = class_raster(path, ds, block.target, tile_model.model)
        try:
            sink = ClassIdWriter(out_ds.GetRasterBand(1), reader, block.span, block.target)
            run_tiles(tile_model, reader, block.span, sink, job.batch_size, cancelled=cancelled, skip_nodata=True,
                      starts=(list(block.xs), list(block.ys)))
            out_ds.FlushCache()
        finally:
            out_ds = None

    return _write_then_rename(job.staging, block.index, ".tif", write)


def class_raster(path: Path, ds, window: raster_io.Window, model):
    """An empty class raster for `window` of ds's grid, as segmentation.write_class_raster makes it."""
    srs = ds.GetSpatialRef()
    gt = raster_io.window_geotransform(raster_io.geotransform(ds), window)
    try:
        return raster_io.create_class_raster(path, window.width, window.height, gt, srs.ExportToWkt() if srs else None,
                                             [c.rgb() for c in model.classes], [c.name for c in model.classes])
    except RuntimeError as exc:
        raise outputs.creation_error(exc, path) from exc


def assemble_class_raster(path: Path, ds, window: raster_io.Window, model,
                          pieces: list[tuple[raster_io.Window, Path]], cancelled: CancelCheck | None = None) -> None:
    """The result raster at `path` from the blocks' rasters (each `target` window of the source grid), one
    block in memory at a time."""
    from osgeo import gdal

    out_ds = class_raster(path, ds, window, model)
    try:
        band = out_ds.GetRasterBand(1)
        for target, piece in pieces:
            if cancelled and cancelled():
                raise JobCancelled()
            src = gdal.Open(str(piece))
            band.WriteArray(src.GetRasterBand(1).ReadAsArray(), target.x - window.x, target.y - window.y)
            src = None
        out_ds.FlushCache()
    finally:
        out_ds = None  # closing writes the last blocks; errors surface here


@dataclass(frozen=True)
class TileBlock:
    """Tiles [start, stop) of a job's grid in grid order, for tasks whose tiles do not blend (detection):
    each tile belongs to exactly one block. Blocks start on a batch boundary and hold whole batches, so every
    batch is the one the single-machine job infers: ONNX Runtime's output for a tile may depend in its last
    bits on the batch it came in (it does for the bundled detectors)."""

    index: int
    start: int
    stop: int


def plan_tile_blocks(grid: TileGrid, block_size: int, batch_size: int) -> list[TileBlock]:
    """Runs of whole batches of tiles, about block_size x block_size pixels of the grid each."""
    if block_size < 1:
        raise BackendError(f"The block size must be a number of pixels >= 1, got {block_size}.")
    stride = max(1, grid.tile - grid.overlap)
    per_side = max(1, (block_size - grid.overlap) // stride)
    per_block = max(1, round(per_side * per_side / batch_size)) * batch_size
    return [TileBlock(i, start, min(start + per_block, len(grid)))
            for i, start in enumerate(range(0, len(grid), per_block))]


def _detection_request(job: BlockJob):
    from backend.detection import DetectionRequest

    options = dict(job.options)
    return DetectionRequest(_model(job), Path(job.inputs[0]), Path(job.staging), job.window,
                            options["score_threshold"], job.batch_size)


def detect_block(job: BlockJob, block: TileBlock) -> str:
    """Worker side: the detections of the block's tiles (each kept in its core of the whole grid, as on one
    machine) as an .npz in the staging folder, with each detection's tile number in grid order."""
    from backend.detection import DetectionModel, detect_in_tiles, detection_grid

    request = _detection_request(job)
    ds = raster_io.open_raster(job.inputs[0])
    reader = raster_io.RasterReader(ds, request.model.input.bands, job.inputs[0])
    processed, grid = detection_grid(request, ds)
    tiles = [TileSpec(r, c, grid.xs[c], grid.ys[r], grid.tile_w, grid.tile_h)  # grid order is row-major
             for r, c in (divmod(i, len(grid.xs)) for i in range(block.start, block.stop))]
    found = detect_in_tiles(request, reader, DetectionModel(request.model, job.intra_op_threads), processed, grid,
                            tiles, cancelled=_cancel_check(job.staging))
    box_dim = 5 if request.model.task == "rotated_detection" else 4
    merged = Detections.concat([det for _, det in found], box_dim)
    # Each detection's tile, numbered in grid order: the job puts all blocks' detections back in that order.
    tile_numbers = np.concatenate([np.full(len(det), t.row * len(grid.xs) + t.col, np.int64) for t, det in found]
                                  or [np.zeros(0, np.int64)])

    def write(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, boxes=merged.boxes, scores=merged.scores, classes=merged.classes, tile=tile_numbers)

    return _write_then_rename(job.staging, block.index, ".npz", write)


@dataclass(frozen=True)
class CellBlock:
    """Cell rows [row0, row1) x columns [col0, col1) of a scene job, covering `window` (raster pixels)."""

    index: int
    row0: int
    row1: int
    col0: int
    col1: int
    window: raster_io.Window


def plan_cell_blocks(window: raster_io.Window, cell_size: int, block_size: int) -> list[CellBlock]:
    """Rectangles of whole cells, about block_size pixels a side. A block's window starts on a cell corner and
    ends on one or on the job window's edge, so its cells are exactly the job's cells there."""
    from backend.scenes import cell_starts

    if block_size < 1:
        raise BackendError(f"The block size must be a number of pixels >= 1, got {block_size}.")
    rows, cols = cell_starts(window.height, cell_size), cell_starts(window.width, cell_size)
    k = max(1, block_size // cell_size)
    blocks = []
    for r0 in range(0, len(rows), k):
        r1 = min(r0 + k, len(rows))
        for c0 in range(0, len(cols), k):
            c1 = min(c0 + k, len(cols))
            x, y = cols[c0][0], rows[r0][0]
            part = raster_io.Window(window.x + x, window.y + y, sum(w for _, w in cols[c0:c1]),
                                    sum(h for _, h in rows[r0:r1]))
            blocks.append(CellBlock(len(blocks), r0, r1, c0, c1, part))
    return blocks


def scene_block(job: BlockJob, block: CellBlock) -> str:
    """Worker side: the block's cells classified by scenes.classify_scenes (its own partial file and rename)
    into a GeoPackage in the staging folder; rows and columns there count from the block's corner."""
    from backend.scenes import SceneRequest, classify_scenes

    path = block_file(job.staging, block.index, ".gpkg")
    request = SceneRequest(_model(job), Path(job.inputs[0]), path, block.window,
                           int(dict(job.options)["cell_size"]), job.batch_size, uuid.uuid4().hex[:12], overwrite=True,
                           intra_op_threads=job.intra_op_threads)
    classify_scenes(request, cancelled=_cancel_check(job.staging))
    return str(path)


def merge_scene_blocks(path: Path, request, blocks: list[CellBlock], files: list[str],
                       cancelled: CancelCheck | None = None) -> None:
    """The scene grid GeoPackage at `path` from the blocks' GeoPackages: features in the single-machine job's
    order (row by row, column by column), row and col counted from the window's corner. One band of block
    rows is held at a time."""
    from osgeo import ogr

    from backend.gpkg import create_layer
    from backend.scenes import COMMIT_EVERY, LAYER_NAME, SCENE_FIELDS, probability_field_names

    model = request.model
    src = raster_io.open_raster(request.input_path)
    p_fields = probability_field_names([c.name for c in model.classes])
    out, layer = create_layer(path, LAYER_NAME, raster_io.raster_srs(src),
                              SCENE_FIELDS + [(n, ogr.OFTReal) for n in p_fields])
    try:
        defn = layer.GetLayerDefn()
        row_field, col_field = defn.GetFieldIndex("row"), defn.GetFieldIndex("col")
        bands: dict[int, list[tuple[CellBlock, str]]] = {}
        for block, f in zip(blocks, files):
            bands.setdefault(block.row0, []).append((block, f))
        written = 0
        out.StartTransaction()
        for row0 in sorted(bands):
            if cancelled and cancelled():
                raise JobCancelled()
            features = []
            for block, f in bands[row0]:
                ds = ogr.Open(f)
                for feature in ds.GetLayer(0):
                    copy = ogr.Feature(defn)
                    copy.SetFrom(feature)
                    copy.SetField(row_field, feature.GetField(row_field) + block.row0)
                    copy.SetField(col_field, feature.GetField(col_field) + block.col0)
                    features.append((copy.GetField(row_field), copy.GetField(col_field), copy))
                ds = None
            features.sort(key=lambda item: item[:2])
            for _, _, feature in features:
                feature.SetFID(-1)
                layer.CreateFeature(feature)
                written += 1
                if written % COMMIT_EVERY == 0:
                    out.CommitTransaction()
                    out.StartTransaction()
        out.CommitTransaction()
    finally:
        layer = None
        out = None  # closing writes the file; errors surface here


def scenes_on_cluster(request, client, threads: int | None, block_size: int,
                      progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> dict[str, str]:
    """scenes.classify_scenes's GeoPackage, its cells classified block by block on the cluster."""
    from backend.gpkg import remove_gpkg

    model = request.model
    blocks = plan_cell_blocks(request.window, request.cell_size, block_size)
    partial = partial_path(request.vector_path, request.job_id)
    try:
        job = BlockJob("scene_classification", str(model.path), (str(request.input_path),), "",
                       request.batch_size, threads, request.window, (("cell_size", request.cell_size),), model)
        with staged(partial, job, blocks) as job:
            files = run_blocks(client, scene_block, job, blocks, progress, cancelled, ".gpkg")
            if progress:
                progress(95.0, "merging blocks")
            merge_scene_blocks(partial, request, blocks, files, cancelled)
        outputs.commit(partial, request.vector_path, request.overwrite)
    except BaseException:
        remove_gpkg(partial)
        raise
    return request.outputs


# ---------------------------------------------------------------------------------------------- the job

def parse_address(address: str) -> tuple[str, int | None]:
    """('local', workers) for local / local:N, else ('remote', None) for a scheduler address."""
    text = address.strip()
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if count and (not count.isdigit() or not 1 <= int(count) <= 256):
            raise BackendError(f"Cluster {address}: local:N needs N, the number of worker processes, from 1 to 256.")
        return "local", int(count) if count else None
    if "://" not in text:
        raise BackendError(f"Cluster {address} is neither local[:N] nor a Dask scheduler address such as "
                           "tcp://host:8786.")
    return "remote", None


MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 64, 65536




def refuse_unless_cluster_task(task: str) -> None:
    """BackendError (400) before anything is planned when a cluster job asks for a task blocks cannot run."""
    if task not in CLUSTER_TASKS:
        raise BackendError(f"{task} does not run on a cluster; run it without --cluster. Cluster tasks: "
                           f"{', '.join(CLUSTER_TASKS)}.")


def job_cluster(options: dict, default: str | None) -> tuple[str | None, int]:
    """(address or None, block size) from a job request's options: `cluster` a scheduler address, local[:N],
    or true for the backend's own (serve --cluster); `block_size` pixels. Raises BackendError (400)."""
    value = options.get("cluster")
    block_size = options.get("block_size", DEFAULT_BLOCK_SIZE)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or \
            not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise BackendError(f"options.block_size must be an integer number of pixels from {MIN_BLOCK_SIZE} to "
                           f"{MAX_BLOCK_SIZE} (default {DEFAULT_BLOCK_SIZE}), got {str(block_size)[:80]}.")
    if value is None or value is False:
        if "block_size" in options:
            raise BackendError("options.block_size applies to jobs with options.cluster only.")
        return None, block_size
    if value is True:
        if default is None:
            raise BackendError("options.cluster is true but this backend has no cluster; start it with "
                               "--cluster ADDRESS (the plugin's cluster setting), or give the address itself.")
        return default, block_size
    if not isinstance(value, str) or len(value) > 300:
        raise BackendError("options.cluster must be true, local[:N] or a Dask scheduler address such as "
                           f"tcp://host:8786, got {str(value)[:80]}.")
    parse_address(value)
    return value, block_size


@contextmanager
def connect(address: str) -> Iterator[tuple[object, int | None]]:
    """(dask Client, ONNX Runtime threads per worker) for `address`: local[:N] starts a LocalCluster of N worker
    processes (default: one per physical core... or 2) with one thread each and closes it afterwards."""
    if not log.isEnabledFor(logging.INFO):  # Dask logs every worker's start and stop at INFO; -v shows them
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when distributed is imported,
        logging.getLogger("distributed").setLevel(logging.WARNING)    # here and in the worker processes
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise BackendError("Running on a cluster needs Dask: pip install -r requirements/cluster.txt "
                           f"(dask[distributed]); {exc}.") from exc
    kind, workers = parse_address(address)
    if kind == "local":
        workers = workers or max(1, physical_cores())
        threads = max(1, physical_cores() // workers)  # the machine's cores shared between the workers
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            yield client, threads
        return
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise BackendError(f"Cannot reach the Dask scheduler at {address}: {exc}. Start it (dask scheduler) or "
                           "check the address.") from exc
    with client:
        yield client, None


def dashboard_link(client) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing): nothing to show
        return None


def resume_key(job: BlockJob, blocks: list) -> str:
    """What decides the blocks' files: the task, the model and input files (path, size, modification time), the
    batch size, window and options, and the blocks themselves. A rerun of the same job has the same key and
    finds the block files an interrupted run finished."""
    def file_id(path: str) -> tuple:
        stat = os.stat(path)
        return os.path.realpath(path), stat.st_size, stat.st_mtime_ns

    what = (job.task, file_id(job.model_path), [file_id(p) for p in job.inputs], job.batch_size, job.window,
            job.options, blocks)
    return hashlib.sha256(repr(what).encode()).hexdigest()[:16]


def staging_folder(partial: Path, key: str) -> Path:
    """Beside the job's partial result, hidden, named by the blocks' resume key (not by the job id)."""
    return partial.parent / f".mtp_blocks.{key}"


def _remove_staging(staging: Path) -> None:
    """Remove the staging folder; blocks still stopping may add a file meanwhile, so try a few times."""
    for _ in range(50):
        shutil.rmtree(staging, ignore_errors=True)
        if not staging.exists():
            return
        time.sleep(0.1)
    log.warning("could not remove the staging folder %s", staging)


@contextmanager
def staged(partial: Path, job: BlockJob, blocks: list) -> Iterator[BlockJob]:
    """The job with its staging folder for `blocks` (the job writes `partial`), removed when the job ends:
    done, failed or cancelled. Only a run that could not end (its client killed) leaves it; a rerun of the
    same job then finds it (same resume key) and run_blocks keeps the blocks that run finished: each block file
    appears complete or not at all."""
    staging = staging_folder(partial, resume_key(job, blocks))
    staging.mkdir(exist_ok=True)
    (staging / CANCEL_FLAG).unlink(missing_ok=True)  # the interrupted run's cancel, if any
    try:
        yield replace(job, staging=str(staging))
    finally:
        _remove_staging(staging)


def run_blocks(client, fn: Callable, job: BlockJob, blocks: list, progress: ProgressCallback | None,
               cancelled: CancelCheck | None, suffix: str, share: float = 95.0) -> list[str]:
    """Run fn(job, block) for every block whose file (block_file(staging, index, suffix)) an interrupted run did
    not finish; the block files in block order. Progress: the fraction of finished blocks (times `share`
    percent). On cancel or on a failed block, the flag file stops the running blocks and the rest are
    cancelled."""
    kept = {b.index: str(block_file(job.staging, b.index, suffix)) for b in blocks
            if block_file(job.staging, b.index, suffix).is_file()}
    todo = [b for b in blocks if b.index not in kept]
    if kept:
        log.info("%d of %d blocks kept from an interrupted run of this job", len(kept), len(blocks))
    futures = client.map(fn, [job] * len(todo), todo, pure=False)
    note = f" ({len(kept)} kept from an interrupted run)" if kept else ""
    total, reported = len(blocks), -1
    try:
        while True:
            if cancelled and cancelled():
                raise JobCancelled()
            states = [f.status for f in futures]
            failed = next((f for f, s in zip(futures, states) if s in ("error", "cancelled")), None)
            if failed is not None:
                failed.result()  # raises the block's exception
                raise BackendError("A block of the job was cancelled on the cluster.")
            done = len(kept) + states.count("finished")
            # One report per finished block, even when several finish between two polls.
            while reported < done:
                reported = len(kept) if reported < 0 else reported + 1
                if progress:
                    progress(share * reported / total, f"block {reported}/{total}{note}")
            if done == total:
                ran = dict(zip((b.index for b in todo), (f.result() for f in futures)))
                return [kept.get(b.index) or ran[b.index] for b in blocks]
            time.sleep(POLL_S)
    except BaseException:
        Path(job.staging, CANCEL_FLAG).touch()
        client.cancel(futures)
        raise


def class_raster_on_cluster(client, job: BlockJob, ds, window: raster_io.Window, processed: raster_io.Window,
                            path: Path, block_size: int, progress: ProgressCallback | None = None,
                            cancelled: CancelCheck | None = None) -> None:
    """segmentation.write_class_raster's file at `path` (job.task's class ids of `window`, tiles over
    `processed`), computed block by block on the cluster and assembled here."""
    model = _model(job)
    blocks = plan_blocks(window, processed, model.tile_size, model.tile_overlap, block_size)
    with staged(path, job, blocks) as job:
        files = run_blocks(client, class_block, job, blocks, progress, cancelled, ".tif")
        if progress:
            progress(95.0, "assembling blocks")
        assemble_class_raster(path, ds, window, model, [(b.target, Path(f)) for b, f in zip(blocks, files)],
                              cancelled)


def segment_on_cluster(request: SegmentationRequest, client, threads: int | None, block_size: int,
                       progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> Path:
    """The single-machine segment_raster's result, computed block by block on the cluster."""
    model = request.model
    ds = raster_io.open_raster(request.input_path)
    window = request.window
    processed = with_context(window, model.tile_overlap, ds.RasterXSize, ds.RasterYSize)
    partial = partial_path(request.output_path, request.job_id)
    job = BlockJob("semantic_segmentation", str(model.path), (str(request.input_path),), "", request.batch_size,
                   threads, model=model)
    try:
        class_raster_on_cluster(client, job, ds, window, processed, partial, block_size, progress, cancelled)
        outputs.commit(partial, request.output_path, request.overwrite)
    except BaseException:
        remove_partial(partial)
        raise
    return request.output_path


def changes_on_cluster(request, client, threads: int | None, block_size: int,
                       progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> dict[str, str]:
    """change.detect_changes with its 0/1 raster computed on the cluster; the polygons are traced here."""
    from backend.change import detect_changes

    model = request.model
    job = BlockJob("change_detection", str(model.path), (str(request.before_path), str(request.after_path)), "",
                   request.batch_size, threads, request.window, model=model)
    before = raster_io.open_raster(request.before_path)

    def write_raster(window, processed, path, progress, cancelled):
        class_raster_on_cluster(client, job, before, window, processed, path, block_size, progress, cancelled)

    return detect_changes(request, progress, cancelled, write_raster=write_raster)


def detect_on_cluster(request, client, threads: int | None, block_size: int,
                      progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> Detections:
    """detection.detect_tiles's result, the tiles inferred block by block on the cluster: the blocks'
    detections back in grid order, then the same window filter and cross-tile NMS."""
    from backend.detection import detection_grid, merge_tile_detections

    model = request.model
    processed, grid = detection_grid(request, raster_io.open_raster(request.input_path))
    blocks = plan_tile_blocks(grid, block_size, request.batch_size)
    job = BlockJob(model.task, str(model.path), (str(request.input_path),), "", request.batch_size,
                   threads, request.window, (("score_threshold", request.score_threshold),), model)
    with staged(partial_path(request.vector_path, request.job_id), job, blocks) as job:
        files = run_blocks(client, detect_block, job, blocks, progress, cancelled, ".npz")
        parts = []
        for f in files:
            with np.load(f) as z:
                parts.append((Detections(z["boxes"], z["scores"], z["classes"]), z["tile"]))
    box_dim = 5 if model.task == "rotated_detection" else 4
    merged = Detections.concat([d for d, _ in parts], box_dim)
    tiles = np.concatenate([t for _, t in parts]) if parts else np.zeros(0, np.int64)
    merged = merged.take(np.argsort(tiles, kind="stable"))  # blocks are whole tiles: this is the grid order
    return merge_tile_detections(request, processed, [merged], box_dim, progress)


def run_plan_on_cluster(task: str, plan, address: str, block_size: int = DEFAULT_BLOCK_SIZE,
                        progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None,
                        on_dashboard: Callable[[str], None] | None = None,
                        on_report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, str]:
    """jobs.run_plan's result for a planned job, computed on the Dask cluster at `address` (local[:N] or a
    scheduler address). on_report gets cluster_report's figures once the result is written."""
    started = time.time()
    with connect(address) as (client, threads):
        link = dashboard_link(client)
        if link and on_dashboard:
            on_dashboard(link)
        written = run_plan_with_client(task, plan, client, threads, block_size, progress, cancelled)
        if on_report:
            try:
                on_report(cluster_report(client, plan, time.time() - started))
            except Exception:  # the result is written; a missing figure must not fail the job
                log.exception("no run report from the cluster")
        return written


def _worker_session_info(model_path: str) -> tuple[str, str] | None:
    """Worker side: (provider, device) of this worker's session of the model, None if it ran no block of it."""
    from backend.sessions import cached_session_info

    info = cached_session_info(Path(model_path))
    return (info.provider, info.device) if info is not None else None


def cluster_report(client, plan, seconds: float) -> dict[str, Any]:
    """jobs.run_report's figures for a cluster job: the providers and devices of the workers that ran its
    blocks, and megapixels of the job's window per second of the whole job (blocks, merge, write)."""
    found = [v for v in client.run(_worker_session_info, str(plan.model.path)).values() if v is not None]
    providers = sorted({provider for provider, _ in found})
    devices = sorted({device for _, device in found})
    window = plan.window
    return {"provider": "/".join(providers) or None,
            "device": f"{len(found)} Dask worker{'' if len(found) == 1 else 's'}: {', '.join(devices) or '?'}",
            "batch_size": plan.batch_size, "workers": len(found),
            "megapixels_per_s": round(window.width * window.height / 1e6 / max(seconds, 1e-9), 3)}


def run_plan_with_client(task: str, plan, client, threads: int | None, block_size: int = DEFAULT_BLOCK_SIZE,
                         progress: ProgressCallback | None = None,
                         cancelled: CancelCheck | None = None) -> dict[str, str]:
    """run_plan_on_cluster with a connected dask Client; threads: ONNX Runtime threads per worker (None: the
    worker machine's cores)."""
    from backend.detection import detect_objects

    def detect():
        return detect_objects(plan, progress, cancelled, detect=lambda request, progress, cancelled: detect_on_cluster(
            request, client, threads, block_size, progress, cancelled))

    runners = {
        "semantic_segmentation": lambda: {
            "raster": str(segment_on_cluster(plan, client, threads, block_size, progress, cancelled))},
        "change_detection": lambda: changes_on_cluster(plan, client, threads, block_size, progress, cancelled),
        "scene_classification": lambda: scenes_on_cluster(plan, client, threads, block_size, progress, cancelled),
        "detection": detect, "rotated_detection": detect}
    refuse_unless_cluster_task(task)
    return runners[task]()

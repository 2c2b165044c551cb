"""The tile pipeline every model task shares: tiles read, normalised and batched (TileModel), inferred on a
worker thread one batch behind the reader (InferenceThread), blended back into blocks (run_tiles), and the
`.partial` files results are written to before they are renamed (docs/contract.md §2)."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from backend import raster_io
from backend.errors import BackendError, JobCancelled
from backend.model_package import ModelPackage
from backend.sessions import get_session
from backend.tiling import StreamingBlender, TileGrid, TileSpec, column_stripes, pad_tile

ProgressCallback = Callable[[float, str], None]  # (percent 0-100, message)
CancelCheck = Callable[[], bool]


def softmax(logits: np.ndarray, axis: int = 1, in_place: bool = False) -> np.ndarray:
    """in_place: overwrite `logits` (an array the caller owns, e.g. a fresh ONNX Runtime output), saving a
    full-size temporary; the values are the same either way."""
    shifted = logits if in_place else logits.copy()
    shifted -= shifted.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def neutralise_invalid(x: np.ndarray) -> np.ndarray:
    """Non-finite values of a normalised array set to 0 in place (one pass when there are none): a NaN
    would spread through every convolution it meets and corrupt a whole neighbourhood of the result."""
    bad = ~np.isfinite(x)
    if bad.any():
        x[bad] = 0.0
    return x


def partial_path(output_path: Path, job_id: str) -> Path:
    """`<dir>/.<name>.<job id>.partial<ext>` as in the contract."""
    return output_path.with_name(f".{output_path.stem}.{job_id}.partial{output_path.suffix}")


class TileModel:
    """Normalises raw tiles, pads them to the model's tile size and returns probabilities."""

    def __init__(self, model: ModelPackage, intra_op_threads: int | None = None):
        """intra_op_threads: ONNX Runtime's threads (default: the physical cores; a cluster worker sharing a
        machine with others takes its share)."""
        self.model = model
        self.session = get_session(model.path, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name
        spec = model.input
        # GPU providers (TensorRT above all) re-plan for every new input shape: keep the batch size fixed.
        self.fixed_batch = any(p in self.session.get_providers()
                               for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider"))
        self.scale = np.float32(spec.scale)
        self.mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
        # Spectral priors (docs/contract.md §1): raw values -> reflectance with the raster's sensor scaling, then
        # index channels appended after the bands, all normalised alike.
        self.gains = np.asarray(spec.gains, np.float32)[:, None, None] if spec.gains else None
        self.offsets = np.asarray(spec.offsets, np.float32)[:, None, None] if spec.gains else None
        self.indices = tuple(spec.indices)
        self.roles = spec.roles

    def prepared_channels(self, raw_channels: int) -> int:
        """Channels of prepare(raw) for raw tiles of `raw_channels` bands (several dates for change detection)."""
        bands = len(self.model.input.bands)
        return raw_channels + len(self.indices) * (raw_channels // bands)

    def with_priors(self, raw: np.ndarray) -> np.ndarray:
        """(C, h, w) raw bands -> (C + I, h, w) before normalisation: the bands (reflectance when the sensor's
        scaling is known) divided by `input.scale`, then the indices computed from them."""
        x = (raw if self.gains is None else raw * self.gains + self.offsets) / self.scale
        if not self.indices:
            return x
        from backend.spectral import compute_indices
        return np.concatenate([x, compute_indices(dict(zip(self.roles, x)), self.indices)])

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """(C, h, w) raw values -> (C, T, T) normalised, mirrored into the padding when smaller. Invalid
        pixels (NaN from the reader, or any non-finite value) become 0, the mean of the model's training data."""
        x = neutralise_invalid((self.with_priors(raw) - self.mean) / self.std)
        return pad_tile(x, self.model.tile_size).astype(np.float32, copy=False)

    def prepare_into(self, raw: np.ndarray, out: np.ndarray) -> None:
        """prepare(raw) written into `out` (a tile's slot of the batch array), which saves prepare's
        temporaries and np.stack's copy: the same float32 operations in the same order, so the same values."""
        if (type(self).prepare is not TileModel.prepare or raw.dtype != np.float32
                or raw.shape[1:] != out.shape[1:] or self.gains is not None or self.indices):
            out[...] = self.prepare(raw)  # a subclass's own prepare, or a padded tile
            return
        np.divide(raw, self.scale, out=out)
        np.subtract(out, self.mean, out=out)
        np.divide(out, self.std, out=out)
        neutralise_invalid(out)

    def feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Graph inputs for a batch of prepared tiles (subclasses split it over several inputs)."""
        return {self.input_name: batch}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The graph's raw output 0 for a batch of prepared tiles, shape-checked."""
        (out,) = self.session.run(None, self.feeds(batch))[:1]
        if out.ndim != 4 or out.shape[1] != self.model.num_classes:
            raise BackendError(
                f"Model {self.model.id} returned shape {tuple(out.shape)}; expected "
                f"(N, {self.model.num_classes}, H, W) for its {self.model.num_classes} classes."
            )
        if out.shape[2:] != batch.shape[2:]:
            raise BackendError(
                f"Model {self.model.id} output is {out.shape[2]}x{out.shape[3]} for a "
                f"{batch.shape[2]}x{batch.shape[3]} input; segmentation output must have the input's size."
            )
        return out

    def to_probabilities(self, out: np.ndarray) -> np.ndarray:
        """infer's output (which it may overwrite) -> float32 probabilities."""
        out = out.astype(np.float32, copy=False)  # a fresh array of ours: softmax may overwrite it
        return softmax(out, in_place=True) if self.model.output_type == "logits" else out

    def to_scores(self, out: np.ndarray, scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """infer's output for one tile (C, H, W) or a batch (N, C, H, W), which it may overwrite ->
        (scores, scale): probabilities = scores x scale, scale (1, H, W) / (N, 1, H, W), or None for 1.

        For logits, scores = exp(logits) and scale = 1 / their sum over the classes: the blender folds the
        scale into its weights, which saves softmax's division pass over every class plane. Where exp would
        overflow or underflow (|logit| >~ 80) the max-shifted softmax is used instead. scratch: memory of
        out's shape for the scores (reused tile after tile, it stays in cache); the scores are valid until
        the next call with the same scratch."""
        out = out.astype(np.float32, copy=False)
        if self.model.output_type != "logits":
            return out, None
        with np.errstate(over="ignore", under="ignore"):
            scores = np.exp(out, out=scratch)
            total = scores.sum(axis=-3, keepdims=True)
        # total >= 0: finite and not underflowed <=> min > 1e-30 and max < inf (NaN fails both).
        if total.min() > 1e-30 and total.max() < np.inf:  # no overflow, no pixel lost to underflow
            return scores, np.reciprocal(total, out=total)
        return softmax(out, axis=-3, in_place=True), None  # rare: the max-shifted softmax

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.to_probabilities(self.infer(batch))


def with_context(window: raster_io.Window, margin: int, raster_width: int, raster_height: int) -> raster_io.Window:
    """The window grown by margin pixels on each side, within the raster: tiles at the border of a
    sub-extent then see the real neighbourhood instead of mirrored padding."""
    x0, y0 = max(0, window.x - margin), max(0, window.y - margin)
    x1 = min(raster_width, window.x + window.width + margin)
    y1 = min(raster_height, window.y + window.height + margin)
    return raster_io.Window(x0, y0, x1 - x0, y1 - y0)


# Widest stretch blended in one pass. Wider windows go in stripes (see tiling.column_stripes): memory
# stays flat in width at the cost of inferring the tile columns on each seam twice (~5% more tiles).
MAX_STRIPE_WIDTH = 8192


def all_nodata(reader, x: int, y: int, width: int, height: int) -> bool:
    mask = reader.nodata_mask(x, y, width, height)
    return mask is not None and bool(mask.all())


# When session.run returns, the worker needs the GIL, which the caller re-takes after each of its many short
# releases (numpy, GDAL); the worker then waits for Python's forced switch, 5 ms by default, while ONNX Runtime
# idles. 1 ms while a pipeline runs: ratio to bare ORT 0.90 -> 0.935 (segmentation, 4096², same run).
PIPELINE_SWITCH_INTERVAL = 0.001
_switch = {"users": 0, "saved": None}
_switch_lock = threading.Lock()


def _short_switch_interval(delta: int) -> None:
    """Count pipelines running (+1 / -1): the first shortens sys.setswitchinterval, the last restores it."""
    with _switch_lock:
        if _switch["users"] == 0 and delta > 0:
            _switch["saved"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch["saved"], PIPELINE_SWITCH_INTERVAL))
        _switch["users"] += delta
        if _switch["users"] == 0 and _switch["saved"] is not None:
            sys.setswitchinterval(_switch["saved"])
            _switch["saved"] = None


class InferenceThread:
    """Runs `run(batch)` (session.run and little else) on one worker thread, one batch behind the caller.

    ONNX Runtime releases the GIL while it runs, so the caller reads and prepares the next batch and
    blends and writes the previous one meanwhile; every GDAL call stays on the caller's thread (a GDAL
    dataset must not be used from two threads). At most one batch waits and one runs: memory is bounded.
    An exception in the worker is raised in the caller by `results`.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray]):
        self.run = run
        _short_switch_interval(+1)
        self.holds_switch = True
        self.todo: queue.Queue = queue.Queue(maxsize=1)
        self.done: queue.Queue = queue.Queue()
        self.pending = 0  # submitted, result not yet taken
        self.thread = threading.Thread(target=self._work, name="mtp-inference", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            item = self.todo.get()
            if item is None:
                return
            tag, batch = item
            try:
                self.done.put((tag, self.run(batch), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
                self.done.put((tag, None, exc))

    def submit(self, tag, batch: np.ndarray) -> None:
        self.todo.put((tag, batch))
        self.pending += 1

    def results(self, block: bool):
        """Finished (tag, probabilities) in submission order; with block, wait for every pending one."""
        while self.pending:
            try:
                tag, probs, exc = self.done.get(block=block)
            except queue.Empty:
                return
            self.pending -= 1
            if exc is not None:
                raise exc
            yield tag, probs

    def close(self) -> None:
        """Stop the worker (after the batch it is running, if any); safe after an error, and twice."""
        if self.holds_switch:
            self.holds_switch = False
            _short_switch_interval(-1)
        if not self.thread.is_alive():
            return
        while True:
            try:
                self.todo.get_nowait()
            except queue.Empty:
                break
        self.todo.put(None)
        self.thread.join()


def run_tiles(tile_model: TileModel, reader: raster_io.RasterReader, window: raster_io.Window,
              sink, batch_size: int, progress: ProgressCallback | None = None,
              cancelled: CancelCheck | None = None, stripe_width: int = MAX_STRIPE_WIDTH,
              skip_nodata: bool = False, pipelined: bool = True,
              starts: tuple[list[int], list[int]] | None = None) -> None:
    """Read, infer and blend every tile of the window; finished blocks go to sink.

    skip_nodata: tiles whose every pixel is nodata (reader.nodata_mask all True) are not inferred; they
    blend as zero probabilities, which changes only pixels that are nodata themselves (a sink that writes
    nodata there, like ClassIdWriter, gives the same result as without skipping).
    pipelined: inference runs on a worker thread overlapping reading, blending and writing (same result
    as the sequential path, which pipelined=False keeps for comparison).
    starts: explicit (column, row) tile starts relative to the window, for a window that is a block of a
    bigger job's grid (backend.cluster); default: tiles spread over the window (tiling.tile_starts).
    """
    model = tile_model.model
    xs, ys = starts if starts is not None else (None, None)
    full = TileGrid(window.width, window.height, model.tile_size, model.tile_overlap, xs=xs, ys=ys)
    stripes = column_stripes(full.xs, full.tile_w, window.width, stripe_width)
    total = sum((s.stop - s.first) * len(full.ys) for s in stripes)
    done = 0

    def stripe_grid(stripe) -> TileGrid:  # the stripe's tiles, in coordinates relative to its first tile
        xs = [x - full.xs[stripe.first] for x in full.xs[stripe.first : stripe.stop]]
        return TileGrid(xs[-1] + full.tile_w, window.height, model.tile_size, model.tile_overlap, xs=xs, ys=full.ys)

    grids = [stripe_grid(stripe) for stripe in stripes]
    carry = np.empty(max((model.num_classes + 1) * g.max_down_carry() * g.width for g in grids), np.float32)
    blank = np.zeros((model.num_classes, full.tile_h, full.tile_w), np.float32)  # skipped tiles' probabilities
    scratch = np.empty((model.num_classes, model.tile_size, model.tile_size), np.float32)  # one tile's scores

    def new_blender(index: int) -> StreamingBlender:
        """Stripe `index`'s blender; made only once the previous stripe is blended (they share `carry`)."""
        stripe, grid = stripes[index], grids[index]
        x_off = full.xs[stripe.first]
        keep_from, keep_to = stripe.write_from - x_off, stripe.write_to - x_off

        def stripe_sink(x: int, y: int, probs: np.ndarray) -> None:
            a, b = max(x, keep_from), min(x + probs.shape[2], keep_to)
            if a < b:
                sink(a + x_off, y, probs[:, :, a - x : b - x])

        return StreamingBlender(grid, model.num_classes, stripe_sink, carry, normalise=normalise)

    current: dict = {"index": None, "blender": None}  # the stripe being blended
    normalise = getattr(sink, "needs_probabilities", True)

    def batches():
        """(stripe index, [(tile, index in the batch or None when skipped)], batch array or None), in grid order."""
        for index, (stripe, grid) in enumerate(zip(stripes, grids)):
            x_off = full.xs[stripe.first]
            tiles: list[tuple[TileSpec, int | None]] = []
            batch, n = None, 0
            for tile in grid:
                x, y = window.x + x_off + tile.x, window.y + tile.y
                if skip_nodata and all_nodata(reader, x, y, tile.width, tile.height):
                    tiles.append((tile, None))
                else:
                    raw = reader.read(x, y, tile.width, tile.height)
                    if batch is None:  # fresh per batch: ORT may still be reading the previous one
                        batch = np.empty((batch_size, tile_model.prepared_channels(raw.shape[0]), model.tile_size,
                                          model.tile_size), np.float32)
                    tile_model.prepare_into(raw, batch[n])
                    tiles.append((tile, n))
                    n += 1
                if len(tiles) == batch_size:
                    yield index, tiles, finish(batch, n)
                    tiles, batch, n = [], None, 0
            if tiles:
                yield index, tiles, finish(batch, n)

    def finish(batch: np.ndarray | None, n: int) -> np.ndarray | None:
        if batch is None or n == batch_size:
            return batch
        if tile_model.fixed_batch:
            batch[n:] = batch[n - 1]  # results for the repeats are dropped
            return batch
        return batch[:n]

    def blend(stripe_index: int, tiles, out: np.ndarray | None) -> None:
        """out: infer's output for the batch (None when every tile was skipped)."""
        nonlocal done
        if current["index"] != stripe_index:
            current["index"], current["blender"] = stripe_index, new_blender(stripe_index)
        blender = current["blender"]
        for tile, k in tiles:
            h, w = tile.height, tile.width
            if k is None:
                blender.add(tile, blank[:, :h, :w])
                continue
            # One tile at a time through exp, sum and blend: its planes stay in cache between the passes. The
            # scores go straight into the blender's accumulator when it has the tile's shape (no copy).
            planes = blender.next_planes()
            scores, scale = tile_model.to_scores(out[k], planes if planes.shape == scratch.shape else scratch)
            blender.add(tile, scores[:, :h, :w], None if scale is None else scale[0, :h, :w])
        done += len(tiles)
        if progress:
            progress(100.0 * done / total, f"tile {done}/{total}")

    if not pipelined:
        for index, tiles, batch in batches():
            if cancelled and cancelled():
                raise JobCancelled()
            blend(index, tiles, None if batch is None else tile_model.infer(batch))
        return

    worker = InferenceThread(tile_model.infer)
    try:
        for index, tiles, batch in batches():
            if cancelled and cancelled():
                raise JobCancelled()
            if batch is None:  # nothing to infer; blend in order after what is in flight
                for tag, out in worker.results(block=True):
                    blend(*tag, out)
                blend(index, tiles, None)
                continue
            worker.submit((index, tiles), batch)
            for tag, out in worker.results(block=False):
                blend(*tag, out)
        for tag, out in worker.results(block=True):
            blend(*tag, out)
    finally:
        worker.close()


def remove_partial(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    for sidecar in (partial.with_name(partial.name + ".aux.xml"),):
        sidecar.unlink(missing_ok=True)

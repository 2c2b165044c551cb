"""Multi-task batches: every iteration takes `batch_per_subset` images from each SAMRS subset (as MTP's
zip over the SOTA, SIOR and FAST loaders), each image carrying all three label types.

Which images an iteration uses is a pure function of (seed, iteration, rank, world size): each subset is
reshuffled every epoch with a seeded permutation and sharded across ranks (DistributedSampler's
padding-by-repetition), so the "sampler position" of a checkpoint is its iteration and a resumed run
reads exactly the images an uninterrupted one would. Augmentation draws from a generator seeded the same way.
"""
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training.detection.boxes import normalize_rboxes
from training.mtp.config import MTPDataConfig
from training.mtp.photometric import photometric_distortion
from training.mtp.samrs import SEMANTIC_IGNORE, SAMRSDataset, SAMRSSample


class SubsetShard:
    """Rank `rank`'s view of one subset: index of the p-th image this rank draws."""

    def __init__(self, length: int, seed: int, subset_index: int, rank: int, world: int):
        if length == 0:
            raise ValueError("a SAMRS subset with no images cannot feed the multi-task loop")
        self.length, self.seed, self.k, self.rank, self.world = length, seed, subset_index, rank, world
        self.per_rank = math.ceil(length / world)

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.per_rank)
        perm = np.random.default_rng([self.seed, self.k, epoch]).permutation(self.length)
        padded = np.resize(perm, self.per_rank * self.world)  # repeats the start, as DistributedSampler pads
        return int(padded[self.rank::self.world][offset])

    def epoch(self, position: int) -> int:
        return position // self.per_rank


def _nearest_rows(start: int, size: int, src: int, dst: int) -> Tuple[Tensor, int]:
    """Output rows start..start+size-1 of a `src`-long axis resized to `dst` by nearest neighbour (as
    F.interpolate): their source rows, and how many of them lie inside the resized axis (a prefix; the rest
    is padding)."""
    rows = torch.arange(start, start + size, dtype=torch.float64)
    inside = int(min(size, max(0, dst - start)))
    return torch.clamp(torch.floor(rows * (src / dst)).long(), max=src - 1)[:inside], inside


def _flip(sample: Dict, horizontal: bool, size: int) -> Dict:
    out = dict(sample)
    dim = -1 if horizontal else -2
    out["image"] = sample["image"].flip(dim)
    out["semantic"] = sample["semantic"].flip(dim)
    out["masks"] = sample["masks"].flip(dim)
    b = sample["boxes"].clone()
    rb = sample["rboxes"].clone()
    if horizontal:
        b[:, [0, 2]] = size - sample["boxes"][:, [2, 0]]
        rb[:, 0] = size - rb[:, 0]
    else:
        b[:, [1, 3]] = size - sample["boxes"][:, [3, 1]]
        rb[:, 1] = size - rb[:, 1]
    rb[:, 4] = -rb[:, 4]  # a mirror reverses the rotation sense
    out["boxes"], out["rboxes"] = b, normalize_rboxes(rb)
    return out


def resize_factor(height: int, width: int, cfg: MTPDataConfig, rng: np.random.Generator, train: bool) -> float:
    """The random resize's scale factor. `fit_crop` (official MTP_RandomResize, keep_ratio): the image is
    fitted into a square of image_size x U(resize_range) px, so a 1024 px SAMRS image with a 512 px crop
    becomes 256..1024 px; at evaluation it is fitted into image_size (the official valid pipeline's Resize).
    `source`: the factor U(resize_range) applies to the source size (1024 px -> 512..2048 px)."""
    lo, hi = cfg.resize_range
    ratio = float(rng.uniform(lo, hi)) if train and hi > lo else (lo if train else 1.0)
    if cfg.resize_mode == "fit_crop":
        return int(cfg.image_size * ratio) / max(height, width)
    return ratio


def boxes_from_masks(masks: Tensor) -> Tensor:
    """(N, H, W) bool -> (N, 4) x1 y1 x2 y2 of each mask's pixels (mmdet's BitmapMasks.get_bboxes)."""
    if len(masks) == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    cols, rows = masks.any(1), masks.any(2)
    width, height = masks.shape[2], masks.shape[1]
    x = torch.arange(width)
    y = torch.arange(height)
    x1 = torch.where(cols, x, width).amin(1)
    x2 = torch.where(cols, x, -1).amax(1) + 1
    y1 = torch.where(rows, y, height).amin(1)
    y2 = torch.where(rows, y, -1).amax(1) + 1
    return torch.stack([x1, y1, x2, y2], 1).float()


def prepare(sample: SAMRSSample, cfg: MTPDataConfig, offset: int, rng: np.random.Generator, train: bool = True) -> Dict:
    """A SAMRS sample -> normalised CHW image and union-id targets, as the official train pipeline: random
    resize (`resize_factor`), an image_size window (padded past the border: image 0, semantic ignore, masks
    empty), photometric distortion of the window's pixels (photometric.py), boxes recomputed from the cropped
    masks (MTP_RandomCrop recompute_bbox), random flips (the official flip picks none / horizontal / vertical /
    diagonal with 1/4 each: two independent coin flips).

    Masks and the semantic map are resampled by nearest neighbour straight into the window, and only the
    instances whose box meets the window are decoded: memory stays at window size per instance however
    many objects the full image holds."""
    size = cfg.image_size
    h, w = sample.semantic.shape
    factor = resize_factor(h, w, cfg, rng, train)
    rh, rw = max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))
    y0 = int(rng.integers(0, rh - size + 1)) if train and rh > size else 0
    x0 = int(rng.integers(0, rw - size + 1)) if train and rw > size else 0
    src_rows, ch = _nearest_rows(y0, size, h, rh)
    src_cols, cw = _nearest_rows(x0, size, w, rw)

    image = torch.from_numpy(np.array(sample.image)).permute(2, 0, 1).float()
    if (rh, rw) != (h, w):
        image = F.interpolate(image[None], size=(rh, rw), mode="bilinear", align_corners=False)[0]
    pixels = image[:, y0:y0 + ch, x0:x0 + cw]
    if train and cfg.photometric != "none":
        distorted = photometric_distortion(pixels.permute(1, 2, 0).numpy(), rng, cfg.photometric)
        pixels = torch.from_numpy(distorted).permute(2, 0, 1).float()
    pixels = (pixels / cfg.scale - torch.tensor(cfg.mean)[:, None, None]) / torch.tensor(cfg.std)[:, None, None]
    window = pixels.new_zeros((pixels.shape[0], size, size))
    window[:, :ch, :cw] = pixels

    semantic = torch.full((size, size), SEMANTIC_IGNORE, dtype=torch.int64)
    src = torch.from_numpy(sample.semantic).long()
    src = torch.where(src > 0, src + offset, src)
    semantic[:ch, :cw] = src[src_rows][:, src_cols]

    sx, sy = rw / w, rh / h
    boxes = sample.boxes.float() * torch.tensor([sx, sy, sx, sy]) - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    boxes = torch.minimum(boxes.clamp_min(0), torch.tensor([float(cw), float(ch)] * 2))
    masks, keep = [], []
    for i in ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(1).nonzero().flatten().tolist():
        m = torch.zeros((size, size), dtype=torch.bool)
        m[:ch, :cw] = torch.from_numpy(sample.mask(i))[src_rows][:, src_cols]
        if m.any():
            masks.append(m)
            keep.append(i)
    keep_t = torch.tensor(keep, dtype=torch.int64)
    masks_t = torch.stack(masks) if masks else torch.zeros((0, size, size), dtype=torch.bool)
    rboxes = sample.rboxes.float().clone()
    rboxes[:, 0] *= sx
    rboxes[:, 1] *= sy
    rboxes[:, 2:4] *= factor
    rboxes[:, 0] -= x0
    rboxes[:, 1] -= y0
    rkeep = (rboxes[:, 0] >= 0) & (rboxes[:, 0] < cw) & (rboxes[:, 1] >= 0) & (rboxes[:, 1] < ch)
    s = {"image": window, "semantic": semantic, "masks": masks_t, "boxes": boxes_from_masks(masks_t),
         "labels": sample.labels[keep_t] + offset, "rboxes": rboxes[rkeep], "rlabels": sample.rlabels[rkeep] + offset}
    if train and cfg.flip:
        if rng.random() < 0.5:
            s = _flip(s, True, size)
        if rng.random() < 0.5:
            s = _flip(s, False, size)
    return s


class MultiTaskBatcher:
    """batch(iteration) -> (images N x C x S x S, targets) with N = batch_per_subset x len(datasets)."""

    def __init__(self, datasets: Sequence[SAMRSDataset], offsets: Sequence[int], cfg: MTPDataConfig, seed: int,
                 rank: int = 0, world: int = 1):
        self.datasets, self.offsets, self.cfg, self.seed = list(datasets), list(offsets), cfg, seed
        self.rank, self.world = rank, world
        self.shards = [SubsetShard(len(d), seed, k, rank, world) for k, d in enumerate(self.datasets)]

    def positions(self, iteration: int) -> List[int]:
        b = self.cfg.batch_per_subset
        return list(range(iteration * b, (iteration + 1) * b))

    def state(self, iteration: int) -> Dict:
        """Where the sampler stands after `iteration` iterations (what a resumed run continues from)."""
        pos = iteration * self.cfg.batch_per_subset
        return {"position": pos, "epochs": [s.epoch(pos) for s in self.shards], "seed": self.seed,
                "world_size": self.world}

    def batch(self, iteration: int) -> Tuple[Tensor, List[Dict]]:
        images, targets = [], []
        for k, (ds, shard) in enumerate(zip(self.datasets, self.shards)):
            for p in self.positions(iteration):
                rng = np.random.default_rng([self.seed, iteration, self.rank, k, p, 11])
                s = prepare(ds[shard.index(p)], self.cfg, self.offsets[k], rng)
                s["subset"] = k
                images.append(s.pop("image"))
                targets.append(s)
        return torch.stack(images), targets


class IterationBatches(torch.utils.data.Dataset):
    """Item i = the batch of iteration first + i, for a DataLoader with workers (batch_size=None): the
    batches stay a function of the iteration, so worker count and resuming change nothing."""

    def __init__(self, batcher: MultiTaskBatcher, first: int, last: int):
        self.batcher, self.first, self.last = batcher, first, last

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, i: int):
        return self.batcher.batch(self.first + i)


def iteration_batches(batcher: MultiTaskBatcher, first: int, last: int, num_workers: int):
    """Batches of iterations first..last-1 in order, prepared by `num_workers` processes ahead of use."""
    if num_workers <= 0:
        return (batcher.batch(it) for it in range(first, last))
    return iter(torch.utils.data.DataLoader(IterationBatches(batcher, first, last), batch_size=None, shuffle=False,
                                            num_workers=num_workers, persistent_workers=False, prefetch_factor=2))

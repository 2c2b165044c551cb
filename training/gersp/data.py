"""GeRSP's two data streams and their augmentation.

* Unlabelled remote-sensing images (`rs_images`): every image two independent views (query for the student,
  key for the teacher) for the contrastive branch.
* Labelled natural images (`natural_root`, an ImageFolder: one folder per class): one view each for the
  supervised branch.

Views follow the official GeRSP pipeline (MoCo-style): RandomResizedCrop(image_size, scale=crop_scale,
ratio 3/4..4/3), RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4) in a random order of its four parts,
RandomHorizontalFlip, normalisation. Every draw comes from a generator seeded with (seed, index, image), and
which images a batch holds is a seeded per-epoch permutation: batch `index` is a pure function, so resuming
repeats it exactly. Under DDP rank r of W draws index iteration x W + r (training.engine.train_loop).
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from training.config import repo_path
from training.data.sources import IMAGE_SUFFIXES
from training.gersp.config import GeRSPDataConfig



def find_images(paths: Sequence[str]) -> List[Path]:
    """Image files under each path (recursively, sorted), or the path itself when it is a file."""
    found: List[Path] = []
    for p in paths:
        path = repo_path(p)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        else:
            raise FileNotFoundError(f"GeRSP image source {path} does not exist")
    return found


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8. GeoTIFFs through GDAL (first three bands; one band repeated), others through PIL."""
    if path.suffix.lower() in (".tif", ".tiff"):
        from osgeo import gdal
        gdal.UseExceptions()
        ds = gdal.Open(str(path))
        bands = [ds.GetRasterBand(i + 1).ReadAsArray() for i in range(min(3, ds.RasterCount))]
        array = np.stack(bands * 3 if len(bands) == 1 else bands[:3], axis=-1)
        if array.dtype != np.uint8:   # other sample types: a 2-98 % stretch to 8 bit
            lo, hi = np.percentile(array, [2, 98])
            array = np.clip((array - lo) * 255.0 / max(hi - lo, 1e-6), 0, 255)
        return array.astype(np.uint8)
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


@dataclass
class ImageFolder:
    """root/<class>/<image>: class names sorted, images sorted within each class."""
    root: Path
    classes: List[str]
    items: List[Tuple[Path, int]]

    @classmethod
    def read(cls, root) -> "ImageFolder":
        root = repo_path(str(root))
        if not root.is_dir():
            raise FileNotFoundError(f"natural image folder {root} does not exist (an ImageFolder: root/<class>/<image>)")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        items = [(f, k) for k, c in enumerate(classes) for f in find_images([str(root / c)])]
        if not classes or not items:
            raise ValueError(f"{root}: an ImageFolder needs class folders with images (root/<class>/<image>)")
        empty = [c for k, c in enumerate(classes) if not any(label == k for _, label in items)]
        if empty:
            raise ValueError(f"{root}: class folders without images: {empty}")
        return cls(root, classes, items)


def random_resized_crop(image: torch.Tensor, size: int, scale: Sequence[float], rng: np.random.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop parameters (10 tries, then the central crop of clamped ratio), drawn
    from `rng`; bilinear resize with antialiasing."""
    _, h, w = image.shape
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:
        ratio = w / h
        if ratio < 3 / 4:
            cw, ch = w, int(round(w / (3 / 4)))
        elif ratio > 4 / 3:
            ch, cw = h, int(round(h * (4 / 3)))
        else:
            cw, ch = w, h
        y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = image[:, y0:y0 + ch, x0:x0 + cw]
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def augment(image: np.ndarray, cfg: GeRSPDataConfig, rng: np.random.Generator) -> torch.Tensor:
    """One view: H x W x 3 uint8 -> normalised 3 x S x S float."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    x = random_resized_crop(x, cfg.image_size, cfg.crop_scale, rng)
    if rng.random() < cfg.grayscale_p:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    b, c, s, hue = cfg.color_jitter
    for part in rng.permutation(4):          # ColorJitter: its four parts in a random order
        if part == 0 and b > 0:
            x = TF.adjust_brightness(x, float(rng.uniform(max(0, 1 - b), 1 + b)))
        elif part == 1 and c > 0:
            x = TF.adjust_contrast(x, float(rng.uniform(max(0, 1 - c), 1 + c)))
        elif part == 2 and s > 0:
            x = TF.adjust_saturation(x, float(rng.uniform(max(0, 1 - s), 1 + s)))
        elif part == 3 and hue > 0:
            x = TF.adjust_hue(x, float(rng.uniform(-hue, hue)))
    if rng.random() < 0.5:
        x = x.flip(-1)
    x = x * (255.0 / cfg.scale)
    return (x - torch.tensor(cfg.mean)[:, None, None]) / torch.tensor(cfg.std)[:, None, None]


class Stream:
    """Position p of an endless stream over `length` items: a seeded permutation per epoch."""

    def __init__(self, length: int, seed: int, stream: int):
        self.length, self.seed, self.stream = length, seed, stream

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        return int(np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.length)[offset])


class GeRSPBatcher:
    """batch(index) -> (query views B x 3 x S x S, key views, natural images N x 3 x S x S, labels (N,))."""

    def __init__(self, cfg: GeRSPDataConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.rs_paths = find_images(cfg.rs_images)
        if not self.rs_paths:
            raise ValueError(f"no remote-sensing images found in {cfg.rs_images}")
        self.natural = ImageFolder.read(cfg.natural_root)
        # Images are small in the tests and a real run streams them: read each one when a batch needs it.
        self.rs_stream = Stream(len(self.rs_paths), seed, 0)
        self.nat_stream = Stream(len(self.natural.items), seed, 1)

    def batch(self, index: int):
        cfg = self.cfg
        queries, keys, natural, labels = [], [], [], []
        for j in range(cfg.batch_rs):
            path = self.rs_paths[self.rs_stream.index(index * cfg.batch_rs + j)]
            image = read_rgb(path)
            queries.append(augment(image, cfg, np.random.default_rng([self.seed, index, j, 1])))
            keys.append(augment(image, cfg, np.random.default_rng([self.seed, index, j, 2])))
        for j in range(cfg.batch_natural):
            path, label = self.natural.items[self.nat_stream.index(index * cfg.batch_natural + j)]
            natural.append(augment(read_rgb(path), cfg, np.random.default_rng([self.seed, index, j, 3])))
            labels.append(label)
        return torch.stack(queries), torch.stack(keys), torch.stack(natural), torch.tensor(labels, dtype=torch.int64)

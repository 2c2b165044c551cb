"""OSCD (Onera Satellite Change Detection, Sentinel-2) in its published layout:

    <root>/Onera Satellite Change Detection dataset - Images/<city>/imgs_{1,2}_rect/B01.tif ... B12.tif, B8A.tif
    <root>/Onera Satellite Change Detection dataset - Images/{train,test}.txt     (city names, comma separated)
    <root>/Onera Satellite Change Detection dataset - {Train,Test} Labels/<city>/cm/cm.png | <city>-cm.tif

(a download that nests each folder in one of the same name is accepted). `data.train` / `data.val` entries are
split lists (`train.txt`, `test.txt`: in the Images folder or relative to root) or city names.

Bands (`data.oscd_bands`):
- `rgb`: B04, B03, B02 of imgs_*_rect (the paper's "OSCD - 3ch") as uint8 = min(255, DN * 255 / 3000 rounded
  half up), i.e. top-of-atmosphere reflectance 0..0.3 -> 0..255. Read from the bands rather than pair/img*.png
  (whose stretch is not documented): one fixed stretch for every city and both dates, so a brightness difference
  stays a real difference, and the task's 8-bit machinery (colour jitter, Otsu baseline, ImageNet mean/std)
  applies unchanged.
- `all13`: the 13 bands in B01..B08, B8A, B09..B12 order as raw uint16 DN (reflectance x 10000; use
  data.scale 10000). Colour jitter is refused for it (it is 8-bit only).

`data.oscd_upsample` resamples each city by a factor (images bilinear, change maps nearest) before cropping: the
official MTP recipe resizes its 96 px OSCD patches to 224 px (x 2.33); set gsd_m to 10 / factor to match.

Change maps: cm.png with 0/255 (or 0/1) values, change = nonzero; else <city>-cm.tif with 1 = no change, 2 = change
(values within {1, 2}), or 0/1, 0/255. cm.png wins when both exist. Anything else is refused, naming the file."""
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from training.config import repo_path

IMAGES_DIR = "Onera Satellite Change Detection dataset - Images"
LABEL_DIRS = ("Onera Satellite Change Detection dataset - Train Labels",
              "Onera Satellite Change Detection dataset - Test Labels")
ALL13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
RGB = ("B04", "B03", "B02")
BAND_SETS = {"rgb": RGB, "all13": ALL13}
RGB_FULL_SCALE_DN = 3000  # DN (reflectance x 10000) that maps to 255 in the `rgb` variant
DATE_DIRS = ("imgs_1_rect", "imgs_2_rect")
CITY_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


class OSCDError(ValueError):
    """A malformed or incomplete OSCD file; the message names the file."""


def _folder(root: Path, name: str) -> Path:
    """root/name, or root/name/name when the archive was extracted into a folder of its own name."""
    path = root / name
    return path / name if (path / name).is_dir() else path


def images_dir(root) -> Path:
    path = _folder(repo_path(str(root)), IMAGES_DIR)
    if not path.is_dir():
        raise FileNotFoundError(f"OSCD: {path} does not exist (data.root must hold the folders "
                                f"'{IMAGES_DIR}' and '{LABEL_DIRS[0]}')")
    return path


def read_city_list(path: Path) -> List[str]:
    """train.txt / test.txt: city names separated by commas (and/or newlines)."""
    names = [n.strip() for n in re.split(r"[,\n\r]", path.read_text()) if n.strip()]
    if not names:
        raise OSCDError(f"{path}: lists no city (expected e.g. 'abudhabi,aguasclaras,...')")
    bad = [n for n in names if not CITY_NAME.match(n)]
    if bad:
        raise OSCDError(f"{path}: {bad[0]!r} is not a city name (names are comma separated)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise OSCDError(f"{path}: lists {dup} more than once")
    return names


def expand_cities(root, entries: Sequence[str]) -> List[str]:
    """Split-list entries (`*.txt`) -> their cities; other entries are city names."""
    images = images_dir(root)
    cities: List[str] = []
    for entry in entries:
        if entry.endswith(".txt"):
            candidates = [images / entry, repo_path(str(root)) / entry]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise FileNotFoundError(f"OSCD split list {entry!r}: neither {candidates[0]} nor {candidates[1]} "
                                        f"exists")
            cities += read_city_list(path)
        else:
            cities.append(entry)
    return list(dict.fromkeys(cities))


def _read_tif(path: Path) -> np.ndarray:
    from osgeo import gdal
    gdal.UseExceptions()
    try:
        ds = gdal.Open(str(path))
        return ds.GetRasterBand(1).ReadAsArray()
    except RuntimeError as exc:
        raise OSCDError(f"{path}: cannot read the GeoTIFF ({exc})") from None


def read_date(city_dir: Path, date_dir: str, bands: Sequence[str]) -> np.ndarray:
    """H x W x len(bands) uint16 DN of one date (imgs_1_rect or imgs_2_rect)."""
    arrays, first = [], None
    for band in bands:
        path = city_dir / date_dir / f"{band}.tif"
        if not path.is_file():
            raise FileNotFoundError(f"OSCD city {city_dir.name!r}: band file {path} does not exist")
        array = _read_tif(path)
        if first is None:
            first = (path, array.shape)
        elif array.shape != first[1]:
            raise OSCDError(f"{path}: {array.shape[1]}x{array.shape[0]} px, but {first[0].name} is "
                            f"{first[1][1]}x{first[1][0]} (the *_rect bands share one 10 m grid)")
        arrays.append(array)
    stacked = np.stack(arrays, axis=-1)
    if stacked.dtype != np.uint16:
        if stacked.min() < 0 or stacked.max() > 65535:
            raise OSCDError(f"{city_dir / date_dir}: band values outside 0..65535 (expected Sentinel-2 DN)")
        stacked = np.round(stacked).astype(np.uint16)
    return stacked


def to_rgb8(dn: np.ndarray) -> np.ndarray:
    """DN -> uint8 with the fixed stretch of the `rgb` variant: DN * 255 / 3000 rounded half up, capped at 255
    (integer arithmetic, so the value is exact)."""
    full = RGB_FULL_SCALE_DN
    return np.minimum((dn.astype(np.uint32) * 255 + full // 2) // full, 255).astype(np.uint8)


def label_path(root, city: str) -> Path:
    base = repo_path(str(root))
    tried = []
    for name in LABEL_DIRS:
        cm = _folder(base, name) / city / "cm"
        for path in (cm / "cm.png", cm / f"{city}-cm.tif"):
            if path.is_file():
                return path
            tried.append(str(path))
    raise FileNotFoundError(f"OSCD city {city!r} has no change map (tried {', '.join(tried)})")


def read_oscd_label(path: Path) -> np.ndarray:
    """H x W uint8, 1 = change (see the module docstring for the codings accepted)."""
    if path.suffix.lower() == ".png":
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "1", "RGB", "RGBA", "I", "I;16"):
                raise OSCDError(f"{path}: unexpected image mode {image.mode} for a change map")
            raw = np.asarray(image)
        if raw.ndim == 3:  # grey stored as RGB(A): the colour bands must agree
            if np.any(raw[..., :3] != raw[..., :1]):
                raise OSCDError(f"{path}: a colour change map must have equal R, G, B")
            raw = raw[..., 0]
        tif_coding = False
    else:
        raw, tif_coding = _read_tif(path), True
    values = set(np.unique(raw).tolist())
    if tif_coding and values <= {1, 2}:
        return (raw == 2).astype(np.uint8)
    if values <= {0, 255} or values <= {0, 1}:
        return (raw > 0).astype(np.uint8)
    codings = "1/2, 0/1 or 0/255" if tif_coding else "0/255 or 0/1"
    raise OSCDError(f"{path}: a change map must hold {codings}, found values {sorted(values)[:8]}")


def upsample(dn: np.ndarray, label: np.ndarray, factor: float) -> Tuple[np.ndarray, np.ndarray]:
    """Bilinear (DN, rounded back to uint16) / nearest (label) resize by `factor`."""
    import torch
    import torch.nn.functional as F
    size = (max(1, round(label.shape[0] * factor)), max(1, round(label.shape[1] * factor)))
    x = torch.from_numpy(dn.astype(np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    resized = np.clip(np.round(x), 0, 65535).astype(np.uint16)
    return resized, np.asarray(Image.fromarray(label).resize(size[::-1], Image.NEAREST))


def read_city(root, city: str, band_set: str = "rgb", factor: float = 1.0):
    """-> ChangePair of one city: before/after H x W x C (uint8 for rgb, uint16 DN for all13), label 0/1;
    `factor` != 1 resamples all three (data.oscd_upsample)."""
    from training.change_detection.data import ChangePair
    if band_set not in BAND_SETS:
        raise ValueError(f"OSCD bands must be one of {sorted(BAND_SETS)}, not {band_set!r}")
    city_dir = images_dir(root) / city
    if not city_dir.is_dir():
        raise FileNotFoundError(f"OSCD city {city!r}: {city_dir} does not exist")
    before, after = (read_date(city_dir, d, BAND_SETS[band_set]) for d in DATE_DIRS)
    path = label_path(root, city)
    label = read_oscd_label(path)
    if before.shape != after.shape or before.shape[:2] != label.shape:
        raise OSCDError(f"OSCD city {city!r}: {DATE_DIRS[0]} {before.shape[1::-1]}, {DATE_DIRS[1]} "
                        f"{after.shape[1::-1]} and {path.name} {label.shape[::-1]} (width, height) must agree")
    if factor != 1.0:
        before, _ = upsample(before, label, factor)
        after, label = upsample(after, label, factor)
    if band_set == "rgb":
        before, after = to_rgb8(before), to_rgb8(after)
    return ChangePair(name=city, before=before, after=after, label=label)


def split_cities(data_cfg) -> Dict[str, List[str]]:
    """{'train': cities, 'val': cities} of a data config; a city on both sides is refused."""
    cities = {side: expand_cities(data_cfg.root, getattr(data_cfg, side)) for side in ("train", "val")}
    both = sorted(set(cities["train"]) & set(cities["val"]))
    if both:
        raise ValueError(f"OSCD cities {both} are in both data.train and data.val; held-out cities must never "
                         f"be trained on")
    return cities


def load_cities(data_cfg, side: str) -> list:
    """ChangePairs of data.train or data.val (side 'train' / 'val')."""
    return [read_city(data_cfg.root, c, data_cfg.oscd_bands, data_cfg.oscd_upsample)
            for c in split_cities(data_cfg)[side]]

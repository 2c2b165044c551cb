"""EuroSAT and NWPU-RESISC45 in their published layouts: one folder per class, `<Class>/<Class>_<n>.jpg`
(EuroSAT: 64x64 RGB release `2750/`, or `.tif` 13-band Sentinel-2 release, uint16 reflectance x 10000, read
with GDAL; RESISC-45: `NWPU-RESISC45/<class>/<class>_<nnn>.jpg`, 256x256, class names with underscores).

A scene source `{dataset: eurosat, root: <class folders>, tiles: [...]}` lists split files (`*.txt`,
relative to root, one image per line: `AnnualCrop_1.jpg` or `AnnualCrop/AnnualCrop_1.jpg`, as the common
train/val/test lists; a trailing class index, as in mmpretrain's annotation files `airplane_001.jpg 0`, is
allowed and ignored: the class comes from the name), class folders (`Forest/`) or image files. A listed `.jpg` that is missing is looked
for as `.tif` and the other way round (the common lists name `.jpg` files for both releases)."""
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from training.config import SourceConfig, repo_path

EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake")
RESISC45_CLASSES = (
    "airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge", "chaparral", "church",
    "circular_farmland", "cloud", "commercial_area", "dense_residential", "desert", "forest", "freeway",
    "golf_course", "ground_track_field", "harbor", "industrial_area", "intersection", "island", "lake", "meadow",
    "medium_residential", "mobile_home_park", "mountain", "overpass", "palace", "parking_lot", "railway",
    "railway_station", "rectangular_farmland", "river", "roundabout", "runway", "sea_ice", "ship", "snowberg",
    "sparse_residential", "stadium", "storage_tank", "tennis_court", "terrace", "thermal_power_station", "wetland")
# scene sources read by this module (class-folder datasets)
FOLDER_DATASETS = ("eurosat", "resisc45")
SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


class EuroSATError(ValueError):
    """A malformed EuroSAT list or image; the message names the file (and line)."""


def _class_of(entry: str) -> str:
    path = Path(entry)
    if len(path.parts) > 1:
        return path.parts[-2]
    stem = path.stem
    if "_" not in stem:
        raise ValueError(f"{entry!r} is neither <Class>/<file> nor <Class>_<n>.<ext>")
    return stem.rsplit("_", 1)[0]


def _find(root: Path, entry: str) -> Path:
    cls = _class_of(entry)
    path = root / cls / Path(entry).name
    if path.is_file():
        return path
    for suffix in SUFFIXES:
        other = path.with_suffix(suffix)
        if other.is_file():
            return other
    raise FileNotFoundError(f"EuroSAT image {path} does not exist (nor with {', '.join(SUFFIXES)})")


def list_images(source: SourceConfig, class_names: Sequence[str]) -> List[Tuple[Path, int]]:
    """(image path, class id in `class_names`) for every entry of the source."""
    root = repo_path(source.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{source.dataset} folder {root} does not exist (expected one folder per class)")
    out = []

    def add(entry: str, where: str):
        try:
            cls = _class_of(entry)
        except ValueError as exc:
            raise EuroSATError(f"{where}: {exc}") from None
        if cls not in class_names:
            raise EuroSATError(f"{where}: class {cls!r} is not in data.classes ({', '.join(class_names)})")
        out.append((_find(root, entry), class_names.index(cls)))

    for tile in source.tiles:
        path = root / tile
        if tile.endswith(".txt"):
            if not path.is_file():
                raise FileNotFoundError(f"{source.dataset} split file {path} does not exist")
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if line.strip():
                    add(line.split()[0], f"{path}:{number}")
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
            if not files:
                raise EuroSATError(f"{path}: class folder without images")
            for p in files:
                add(f"{path.name}/{p.name}", str(p))
        else:
            add(tile, f"{source.root} tiles")
    return out


def read_image(path: Path, bands: Sequence[int]) -> np.ndarray:
    """H x W x len(bands) array; `bands` are 1-based band numbers of the file."""
    if path.suffix.lower() in (".tif", ".tiff"):
        from osgeo import gdal
        gdal.UseExceptions()
        try:
            ds = gdal.Open(str(path))
        except RuntimeError as exc:
            raise EuroSATError(f"{path}: cannot read the GeoTIFF ({exc})") from None
        if max(bands) > ds.RasterCount:
            raise EuroSATError(f"{path}: has {ds.RasterCount} bands, data.bands asks for band {max(bands)}")
        return np.stack([ds.GetRasterBand(b).ReadAsArray() for b in bands], axis=-1)
    from PIL import Image
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise EuroSATError(f"{path}: cannot read the image ({exc})") from None
    if max(bands) > 3:
        raise EuroSATError(f"{path}: an RGB image has 3 bands, data.bands asks for band {max(bands)}")
    return array[..., [b - 1 for b in bands]]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to size x size (the paper's input size), keeping the dtype."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        y = np.clip(np.rint(y), info.min, info.max)
    return y.astype(image.dtype)

"""Readers for labelled tiles. Every tile comes back in the model's class set (LoveDA's 7 classes)
with IGNORE where there is no usable label."""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from training.config import SourceConfig, repo_path

IGNORE = 255

# LoveDA raw coding: 0 no-data, 1..7 -> background, building, road, water, barren, forest, agriculture.
LOVEDA_CLASS_MAP: Dict[int, int] = {raw: raw - 1 for raw in range(1, 8)}

# Potsdam 0..5 (impervious, building, low vegetation, tree, car, clutter) -> LoveDA ids.
# Impervious surfaces and cars sit on roads/parking; trees are the closest match to forest; urban
# lawns and clutter have no LoveDA counterpart other than background.
POTSDAM_TO_LOVEDA: Dict[int, int] = {0: 2, 1: 1, 2: 0, 3: 5, 4: 2, 5: 0}

DEFAULT_CLASS_MAPS = {"loveda": LOVEDA_CLASS_MAP, "potsdam": POTSDAM_TO_LOVEDA}


@dataclass
class LabelledTile:
    name: str
    image: np.ndarray  # H x W x 3 uint8
    label: np.ndarray  # H x W uint8 class ids, IGNORE where unknown


def remap_labels(raw: np.ndarray, class_map: Dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for raw_value, class_id in class_map.items():
        lut[int(raw_value)] = int(class_id)
    return lut[raw]


def read_tile(image_path: Path, label_path: Path, class_map: Dict[int, int],
              resample: float = 1.0) -> LabelledTile:
    for path in (image_path, label_path):
        if not path.is_file():
            raise FileNotFoundError(f"tile file {path} does not exist")
    image = Image.open(image_path).convert("RGB")
    label = Image.open(label_path)
    if label.mode not in ("L", "P"):
        raise ValueError(f"{label_path}: expected a single-band uint8 label image, got mode {label.mode}")
    if image.size != label.size:
        raise ValueError(f"{image_path} is {image.size} but its label {label_path} is {label.size}")
    if resample != 1.0:
        size = (max(1, round(image.width * resample)), max(1, round(image.height * resample)))
        image = image.resize(size, Image.BILINEAR)
        label = label.resize(size, Image.NEAREST)  # labels must stay categorical
    return LabelledTile(name=str(image_path), image=np.array(image),
                        label=remap_labels(np.array(label), class_map))


def cut_region(tile: LabelledTile, box: List[int], resample: float) -> LabelledTile:
    """The part of a tile inside box = [x0, y0, x1, y1], given in pixels of the original image."""
    x0, y0, x1, y1 = (round(v * resample) for v in box)
    height, width = tile.label.shape
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"region {box} is not inside {tile.name} ({round(width / resample)}x"
                         f"{round(height / resample)} pixels)")
    return LabelledTile(name=f"{tile.name}[x {box[0]}:{box[2]}, y {box[1]}:{box[3]}]",
                        image=tile.image[y0:y1, x0:x1], label=tile.label[y0:y1, x0:x1])


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def tile_names(source: SourceConfig) -> List[str]:
    """The source's tiles, glob entries (`*`, `*.png`) expanded over root/image_dir in sorted order."""
    folder = repo_path(source.root) / source.image_dir
    names: List[str] = []
    for entry in source.tiles:
        if any(c in entry for c in "*?["):
            found = sorted(p.name for p in folder.glob(entry) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"tiles {entry!r}: no image in {folder} (expected the images there and "
                                        f"their labels in {repo_path(source.root) / source.label_dir})")
            names += found
        else:
            names.append(entry)
    return names


def tile_paths(source: SourceConfig, name: str):
    root = repo_path(source.root)
    return root / source.image_dir / name, root / source.label_dir / name


def load_source(source: SourceConfig) -> List[LabelledTile]:
    class_map: Optional[Dict[int, int]] = source.class_map or DEFAULT_CLASS_MAPS.get(source.dataset)
    if class_map is None:
        raise ValueError(f"source {source.root}: unknown dataset {source.dataset!r} and no class_map given")
    tiles = [read_tile(*tile_paths(source, name), class_map, source.resample) for name in tile_names(source)]
    if not source.regions:
        return tiles
    return [cut_region(tile, box, source.resample) for tile in tiles for box in source.regions]

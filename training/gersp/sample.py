"""Tiny GeRSP inputs, made on demand (nothing downloaded, nothing binary committed):

* `write_natural_sample`: a labelled natural-image ImageFolder for the supervised branch, from the photographs
  scikit-image ships with their subjects (`skimage.data`);
* `write_rs_crops`: unlabelled remote-sensing crops for the contrastive branch, cut from the real images of
  ../shared/data (LoveDA, DOTA, Potsdam, LEVIR-CD), so the tiny queue holds many distinct scenes.

    python -m training.gersp.sample runs/gersp_natural runs/gersp_rs     # writes both
"""
import sys
from pathlib import Path
from typing import Dict, Union

import numpy as np
from PIL import Image

# class -> skimage.data loaders of photographs showing it (motorcycle: the stereo pair's two views)
NATURAL_CLASSES = {
    "astronaut": ("astronaut",),
    "cat": ("chelsea",),
    "coffee_cup": ("coffee",),
    "motorcycle": ("stereo_motorcycle:0", "stereo_motorcycle:1"),
    "rocket": ("rocket",),
}


def _load(spec: str) -> np.ndarray:
    import skimage.data
    name, _, index = spec.partition(":")
    image = getattr(skimage.data, name)()
    return np.asarray(image[int(index)] if index else image)


def write_natural_sample(out_dir: Union[str, Path]) -> Dict[str, int]:
    """Write out_dir/<class>/<image>.png; returns images per class."""
    out_dir = Path(out_dir)
    counts = {}
    for cls, specs in NATURAL_CLASSES.items():
        (out_dir / cls).mkdir(parents=True, exist_ok=True)
        for spec in specs:
            rgb = _load(spec)[..., :3]
            Image.fromarray(rgb.astype(np.uint8)).save(out_dir / cls / f"{spec.replace(':', '_')}.png")
        counts[cls] = len(specs)
    return counts


RS_SOURCES = ("loveda/img_dir/*.png", "dota/images/*.png", "potsdam/img_dir/*.png", "levir_cd/A/*.png",
              "levir_cd/B/*.png")


def write_rs_crops(out_dir: Union[str, Path], size: int = 256, data_root: Union[str, Path, None] = None) -> int:
    """Non-overlapping size x size crops of the shared remote-sensing images -> out_dir/<source>_<x>_<y>.png;
    returns how many."""
    from training.config import REPO_ROOT
    root = Path(data_root or REPO_ROOT / "../shared/data")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for pattern in RS_SOURCES:
        for path in sorted(root.glob(pattern)):
            image = np.asarray(Image.open(path).convert("RGB"))
            h, w = image.shape[:2]
            for y in range(0, h - size + 1, size):
                for x in range(0, w - size + 1, size):
                    name = f"{path.parent.parent.name}_{path.stem}_{x}_{y}.png"
                    Image.fromarray(np.ascontiguousarray(image[y:y + size, x:x + size])).save(out_dir / name)
                    count += 1
    if count == 0:
        raise FileNotFoundError(f"no remote-sensing images under {root} ({', '.join(RS_SOURCES)})")
    return count


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m training.gersp.sample NATURAL_OUT_DIR RS_OUT_DIR")
    print(write_natural_sample(sys.argv[1]), write_rs_crops(sys.argv[2]), "remote-sensing crops")

"""Paths of the real sample rasters and the tile geometry of the test models."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = (REPO.parent / "shared" / "data").resolve()
COGEO = DATA / "aerial_geotiff" / "cogeo.tif"
RGB_BYTE = DATA / "aerial_geotiff" / "RGB.byte.tif"
LOVEDA_PNG = DATA / "loveda" / "img_dir" / "0.png"
NAIP = DATA / "naip_change" / "m_4709963_se_14_1_20090818.tif"

TILE, OVERLAP = 64, 16

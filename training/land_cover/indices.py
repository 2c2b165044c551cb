"""Spectral indices on the training side. The same definitions as the backend's (backend/spectral.py; the
backend computes them when it runs a package that declares `input.indices`), kept in step by
tests/training/test_land_cover.py, which compares both on a real raster: training never imports the backend."""
from typing import Dict, Sequence

import numpy as np

ROLES = ("coastal", "blue", "green1", "green", "yellow", "red", "rededge1", "rededge2", "rededge3", "nir",
         "nir08", "water_vapour", "cirrus", "swir1", "swir2")
# name -> (roles read, (a roles, b roles)): index = (sum(a) - sum(b)) / (sum(a) + sum(b))
INDICES = {
    "ndvi": (("nir", "red"), (("nir",), ("red",))),
    "ndwi": (("green", "nir"), (("green",), ("nir",))),
    "mndwi": (("green", "swir1"), (("green",), ("swir1",))),
    "ndbi": (("swir1", "nir"), (("swir1",), ("nir",))),
    "bsi": (("swir1", "red", "nir", "blue"), (("swir1", "red"), ("nir", "blue"))),
}


def index_stack(reflectance: Dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """(len(names), H, W) float32 from H x W reflectance arrays by role; NaN where a + b is 0."""
    planes = []
    for name in names:
        _, (a_roles, b_roles) = INDICES[name]
        a = sum(reflectance[r] for r in a_roles)
        b = sum(reflectance[r] for r in b_roles)
        total = a + b
        with np.errstate(invalid="ignore", divide="ignore"):
            value = (a - b) / total
        value = np.where(total == 0, np.nan, value)
        planes.append(value.astype(np.float32))
    return np.stack(planes)

"""Write a real Sentinel-2 L1C scene as a 13-band GeoTIFF, the way products reach analysts.

The pixels are scene SCENE of ../shared/data/sentinel2_eolearn/REFERENCE_SCENES.npy (top-of-atmosphere
reflectance, 101 x 100 px at 10 m, Slovenia), stored as L1C digital numbers (reflectance x 10000, uint16) in band
order B01..B08, B8A, B09..B12, each band described by its name (as GDAL's Sentinel-2 driver and most exports do),
georeferenced with the patch's bounding box (TestEOPatch/bbox.geojson, EPSG:32633).

    python scripts/sentinel2_sample.py OUT.tif [--scene 4] [--no-band-names] [--drop B10]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "sentinel2_eolearn"
BAND_NAMES = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
CLEAR_SCENES = (2, 3, 4)  # scenes 0 and 1 are cloudy


def write_sentinel2(out: Path, scene: int = 4, band_names: bool = True, drop: tuple[str, ...] = (),
                    data: Path = DATA) -> Path:
    from osgeo import gdal, osr

    gdal.UseExceptions()
    scenes = np.load(data / "REFERENCE_SCENES.npy")
    ring = json.loads((data / "TestEOPatch" / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    height, width = scenes.shape[1:3]
    keep = [i for i, name in enumerate(BAND_NAMES) if name not in drop]
    dn = np.clip(np.round(scenes[scene] * 10000), 0, 65535).astype(np.uint16)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds = gdal.GetDriverByName("GTiff").Create(str(out), width, height, len(keep), gdal.GDT_UInt16,
                                              options=["COMPRESS=DEFLATE", "PREDICTOR=2", "INTERLEAVE=BAND"])
    ds.SetGeoTransform((min(xs), (max(xs) - min(xs)) / width, 0.0, max(ys), 0.0, -(max(ys) - min(ys)) / height))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for n, i in enumerate(keep):
        band = ds.GetRasterBand(n + 1)
        band.WriteArray(dn[..., i])
        if band_names:
            band.SetDescription(BAND_NAMES[i])
    ds = None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scene", type=int, default=4, choices=range(5))
    parser.add_argument("--no-band-names", action="store_true")
    parser.add_argument("--drop", nargs="*", default=[], choices=BAND_NAMES)
    args = parser.parse_args()
    print(write_sentinel2(args.out, args.scene, not args.no_band_names, tuple(args.drop)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""SpaceNet v1 (AOI_1_Rio) building footprints -> segmentation tiles in the layout the segmentation task reads.

Published layout (processedBuildingLabels): `3band/3band_AOI_1_RIO_img<N>.tif` (8-bit RGB GeoTIFF, EPSG:4326,
~0.5 m) and `vectordata/geojson/Geo_AOI_1_RIO_img<N>.geojson` (building polygons in lon/lat; images without
buildings have an empty FeatureCollection). Each image becomes `<split>/img_dir/img<N>.png` (its RGB) and
`<split>/ann_dir/img<N>.png` (0 background, 1 building: the polygons burnt with GDAL on the image's own grid,
a pixel is building when its centre lies inside a footprint), the layout of MTP's SpaceNetV1Dataset
(classes background, building). Every `val_every`-th image (by number) goes to val/, the rest to train/.

    python -m training.data.spacenet data/SpaceNet/AOI_1_Rio/processedData/processedBuildingLabels data/spacenetv1
"""
import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

IMAGE_GLOB = "3band/3band_AOI_1_RIO_img*.tif"
NUMBER = re.compile(r"_img(\d+)\.tif$")


class SpaceNetError(ValueError):
    """A SpaceNet file that does not follow the published layout; the message names it."""


def spacenet_pairs(src) -> List[Tuple[int, Path, Path]]:
    """(image number, 3-band GeoTIFF, its GeoJSON) for every image of the published layout, by number."""
    src = Path(src)
    images = sorted(src.glob(IMAGE_GLOB), key=lambda p: int(NUMBER.search(p.name).group(1)))
    if not images:
        raise FileNotFoundError(f"no SpaceNet v1 images {src / IMAGE_GLOB} (expected the processedBuildingLabels "
                                f"layout: 3band/ and vectordata/geojson/)")
    pairs = []
    for image in images:
        n = int(NUMBER.search(image.name).group(1))
        geojson = src / "vectordata/geojson" / f"Geo_AOI_1_RIO_img{n}.geojson"
        if not geojson.is_file():
            raise FileNotFoundError(f"{geojson}: the footprints of {image.name} are missing")
        pairs.append((n, image, geojson))
    return pairs


def rasterize_footprints(image_path: Path, geojson_path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 RGB, H x W uint8 mask: 1 where a building polygon covers the pixel centre)."""
    from osgeo import gdal, ogr, osr
    gdal.UseExceptions()
    ogr.UseExceptions()
    try:
        ds = gdal.Open(str(image_path))
    except RuntimeError as exc:
        raise SpaceNetError(f"{image_path}: cannot read the GeoTIFF ({exc})") from None
    if ds.RasterCount < 3:
        raise SpaceNetError(f"{image_path}: a 3-band image has {ds.RasterCount} band(s)")
    rgb = np.stack([ds.GetRasterBand(b).ReadAsArray() for b in (1, 2, 3)], axis=-1)
    if rgb.dtype != np.uint8:
        raise SpaceNetError(f"{image_path}: expected 8-bit bands (SpaceNet v1 3band), got {rgb.dtype}")
    try:
        collection = json.loads(geojson_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SpaceNetError(f"{geojson_path}: not valid GeoJSON ({exc})") from None
    if not isinstance(collection, dict) or not isinstance(collection.get("features", None), list):
        raise SpaceNetError(f"{geojson_path}: expected a FeatureCollection with a 'features' list")
    mask = gdal.GetDriverByName("MEM").Create("", ds.RasterXSize, ds.RasterYSize, 1, gdal.GDT_Byte)
    mask.SetGeoTransform(ds.GetGeoTransform())
    mask.SetProjection(ds.GetProjection())
    features = [f for f in collection["features"] if f.get("geometry")]
    if features:
        try:
            vector = gdal.OpenEx(json.dumps({"type": "FeatureCollection", "features": features}), gdal.OF_VECTOR)
        except RuntimeError as exc:
            raise SpaceNetError(f"{geojson_path}: unreadable footprints ({exc})") from None
        layer = vector.GetLayer(0)
        # GeoJSON coordinates are lon/lat (the image's EPSG:4326 grid): say so explicitly
        wgs84 = osr.SpatialReference()
        wgs84.ImportFromEPSG(4326)
        wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        image_srs = osr.SpatialReference(wkt=ds.GetProjection()) if ds.GetProjection() else wgs84
        image_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not image_srs.IsSame(wgs84):
            raise SpaceNetError(f"{image_path}: SpaceNet v1 images are in EPSG:4326, this one is not")
        gdal.RasterizeLayer(mask, [1], layer, burn_values=[1])
    return rgb, mask.GetRasterBand(1).ReadAsArray().astype(np.uint8)


def convert(src, out, val_every: int = 5) -> Dict[str, int]:
    """Write out/{train,val}/{img_dir,ann_dir}/img<N>.png; returns the number of images per split."""
    from PIL import Image
    out = Path(out)
    counts = {"train": 0, "val": 0}
    for k, (n, image, geojson) in enumerate(spacenet_pairs(src)):
        split = "val" if val_every > 0 and k % val_every == val_every - 1 else "train"
        rgb, mask = rasterize_footprints(image, geojson)
        for folder, array in (("img_dir", rgb), ("ann_dir", mask)):
            (out / split / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(out / split / folder / f"img{n}.png")
        counts[split] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="SpaceNet v1 building footprints -> img_dir/ann_dir PNG tiles")
    parser.add_argument("src", help="processedBuildingLabels folder (3band/, vectordata/geojson/)")
    parser.add_argument("out", help="output folder: train/ and val/ with img_dir/ and ann_dir/")
    parser.add_argument("--val-every", type=int, default=5, help="every N-th image (by number) is held out")
    args = parser.parse_args(argv)
    print(json.dumps(convert(args.src, args.out, args.val_every)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

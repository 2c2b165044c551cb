"""Paths of the real sample rasters and the tile geometry of the test models."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = (REPO.parent / "shared" / "data").resolve()
COGEO = DATA / "aerial_geotiff" / "cogeo.tif"
RGB_BYTE = DATA / "aerial_geotiff" / "RGB.byte.tif"
LOVEDA_PNG = DATA / "loveda" / "img_dir" / "0.png"
NAIP = DATA / "naip_change" / "m_4709963_se_14_1_20090818.tif"
NAIP_2020 = DATA / "naip_change" / "m_4709963_se_14_1_20200831.tif"  # 934x723, origin 1 m off NAIP's
LEVIR = DATA / "levir_cd"  # A/ before, B/ after: 256x256 RGB PNG pairs without CRS
LEVIR_PAIRS = ["test_102_0512_0000.png", "test_2_0000_0512.png", "train_36_0512_0512.png"]

TILE, OVERLAP = 64, 16
CHANGE_THRESHOLD = 0.4  # of the synthetic change models: mean |normalised after - before| above it is change
SCENE_GAIN = 10.0  # of the synthetic scene models: logit k = gain x mean normalised band k


def vrt_over_copy(raster: Path, folder: Path, name: str = "mosaic.vrt") -> tuple[Path, Path]:
    """A VRT over a copy of `raster`, and that copy. Unlinking the copy later gives a raster that opens
    (checks pass when the job is planned) but fails when its pixels are read, mid-job."""
    import shutil

    from osgeo import gdal

    source = folder / f"{Path(name).stem}_source{raster.suffix}"
    shutil.copy(raster, source)
    vrt = folder / name
    gdal.BuildVRT(str(vrt), [str(source)]).FlushCache()
    return vrt, source

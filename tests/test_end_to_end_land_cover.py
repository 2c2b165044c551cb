"""Land-cover extraction and spectral indices as an analyst runs them: qgis_process (scripts/qgis_run.sh: the plugin
from this checkout, a backend it starts itself, the bundled mtp_landcover_default) on the real Sentinel-2 sample
(resources/samples/sentinel2_l1c_slovenia.tif) and the NAIP RGBN raster; and the three refusals of issue 22 (an
instruction naming nothing known, a raster lacking the bands an index needs, a sensor nobody can recognise), each
with a clear message and no output."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis_process_support import run_algorithm

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
S2_SAMPLE = REPO / "resources/samples/sentinel2_l1c_slovenia.tif"
NAIP_2020 = DATA / "naip_change/m_4709963_se_14_1_20200831.tif"
NAIP_SENSOR = 4  # the SENSOR parameter's choices: auto, sentinel2_l1c, sentinel2_l2a, landsat8_9, naip, ...


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def polygons(path: Path) -> list[dict]:
    ds = ogr.Open(str(path))  # kept while the layer is read: GDAL frees a layer with its dataset
    return [f.items() for f in ds.GetLayerByName("land_cover")]


def test_water_bodies_with_explanations_through_qgis_process(tmp_path):
    out = tmp_path / "water.gpkg"
    done = run_algorithm("mtp:extract_land_cover", INPUT=NAIP_2020, INSTRUCTION="extract water bodies larger than half "
                    "a hectare", SENSOR=NAIP_SENSOR, OUTPUT=out)
    assert done.returncode == 0, done.stdout[-3000:]
    found = polygons(out)
    assert len(found) >= 10 and {f["class_name"] for f in found} == {"water"}
    assert all(f["area_m2"] > 5000 and f["explanation"].startswith("NDWI ") for f in found)
    assert any("(high) and NIR reflectance" in f["explanation"] and ": open water" in f["explanation"] for f in found)
    style = (tmp_path / "water.qml").read_text()
    assert "explanation" in style and "class_name" in style  # map tip and categories in the .qml


def test_the_sentinel2_sample(tmp_path):
    """The real Sentinel-2 L1C scene is recognised from its band names (no SENSOR given). It holds no open water: "extract
    water bodies" answers an empty layer; its vegetation comes with all five indices."""
    water = tmp_path / "water.gpkg"
    done = run_algorithm("mtp:extract_land_cover", INPUT=S2_SAMPLE, INSTRUCTION="extract water bodies", OUTPUT=water)
    assert done.returncode == 0, done.stdout[-3000:]
    assert polygons(water) == []
    veg = tmp_path / "veg.gpkg"
    done = run_algorithm("mtp:extract_land_cover", INPUT=S2_SAMPLE, INSTRUCTION="vegetation and buildings", OUTPUT=veg)
    assert done.returncode == 0, done.stdout[-3000:]
    found = polygons(veg)
    assert {f["class_name"] for f in found} >= {"vegetation"}
    assert all(None not in (f["ndvi"], f["ndwi"], f["mndwi"], f["ndbi"], f["bsi"]) for f in found)
    stack = tmp_path / "indices.tif"
    done = run_algorithm("mtp:spectral_indices", INPUT=S2_SAMPLE, INDICES="0,4", OUTPUT=stack)
    assert done.returncode == 0, done.stdout[-3000:]
    ds = gdal.Open(str(stack))
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)] == ["NDVI", "BSI"]
    assert 0.6 < float(np.nanmean(ds.GetRasterBand(1).ReadAsArray())) < 0.8


def test_refusals_say_why_and_write_nothing(tmp_path):
    spec = importlib.util.spec_from_file_location("s2", REPO / "scripts" / "sentinel2_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    unnamed = module.write_sentinel2(tmp_path / "inputs" / "s2_unnamed.tif", band_names=False)
    out = tmp_path / "out.gpkg"
    cases = [
        ("mtp:extract_land_cover", dict(INPUT=S2_SAMPLE, INSTRUCTION="extract the glaciers", OUTPUT=out),
         ["'glaciers'", "water (water bodies", "not a language model"]),
        ("mtp:spectral_indices", dict(INPUT=NAIP_2020, SENSOR=NAIP_SENSOR, INDICES="2", OUTPUT=tmp_path / "x.tif"),
         ["no swir1 band, which MNDWI (green, swir1) needs", "it has blue, green, red, nir"]),
        ("mtp:extract_land_cover", dict(INPUT=unnamed, INSTRUCTION="vegetation", OUTPUT=out),
         ["Cannot tell which sensor", "s2_unnamed.tif", "sentinel2_l1c, sentinel2_l2a, landsat8_9, naip"]),
    ]
    for algorithm, parameters, words in cases:
        done = run_algorithm(algorithm, **parameters)
        text = " ".join(done.stdout.split())
        assert done.returncode != 0 and all(w in text for w in words), (words, done.stdout[-3000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]  # no output, no partial file
    assert not [p for p in (tmp_path / "inputs").iterdir() if p.suffix in (".gpkg", ".partial")]


def test_the_wrapper_fails_on_an_unknown_algorithm():
    # qgis_process 3.22 exits 0 when the algorithm does not exist; the wrapper must not pass that on as success.
    done = run_algorithm("mtp:no_such_algorithm", INPUT=S2_SAMPLE)
    assert done.returncode == 1
    assert "Algorithm mtp:no_such_algorithm not found" in done.stdout + done.stderr

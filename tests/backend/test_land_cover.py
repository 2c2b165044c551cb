"""Land-cover extraction with the bundled multispectral model on real rasters: NAIP RGBN (water, checked against
the hand-drawn held-out boxes), the Sentinel-2 L1C sample (vegetation; no water in that scene), index and area
limits, and the refusals that leave nothing behind (an instruction naming nothing known, a raster lacking the bands
a limit needs, a sensor nobody can recognise)."""

import json

import numpy as np
import pytest
from osgeo import gdal, ogr

from backend.errors import BackendError
from backend.jobs import JobSpec, plan_job, run_plan
from backend.registry import ModelRegistry

from backend_test_data import NAIP_2020, REPO, api_client

gdal.UseExceptions()
MODEL = "mtp_landcover_default"
S2_SAMPLE = REPO / "resources" / "samples" / "sentinel2_l1c_slovenia.tif"
ANNOTATIONS = json.loads((REPO / "training" / "land_cover" / "naip_2020_annotations.json").read_text())
FIELDS = ["class_id", "class_name", "explanation", "target", "score", "area_m2", "area_px", "ndvi", "ndwi", "mndwi",
          "ndbi", "bsi"]


@pytest.fixture(scope="module")
def registry():
    if not (REPO / "resources" / "models" / f"{MODEL}.onnx").is_file():
        pytest.fail(f"{MODEL}.onnx is missing from resources/models: `make landcover-model` builds it")
    return ModelRegistry([REPO / "resources" / "models"])


def extract(registry, raster, out, instruction, **options):
    spec = JobSpec("land_cover_extraction", MODEL, [str(raster)], {"vector": str(out)},
                   options={"instruction": instruction, **options})
    return run_plan("land_cover_extraction", plan_job(spec, registry, job_id="lc"))


def features(path):
    ds = ogr.Open(str(path))
    assert [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] == ["land_cover"]
    layer = ds.GetLayer(0)
    defn = layer.GetLayerDefn()
    assert [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())] == FIELDS
    return [(f.items(), f.GetGeometryRef().Clone()) for f in layer]


def point(raster, x, y):
    gt = gdal.Open(str(raster)).GetGeoTransform()
    geom = ogr.Geometry(ogr.wkbPoint)
    geom.AddPoint_2D(gt[0] + (x + 0.5) * gt[1], gt[3] + (y + 0.5) * gt[5])
    return geom


def held_out_boxes(cover):
    x0 = ANNOTATIONS["held_out_columns"][0]
    return [b for b in ANNOTATIONS["boxes"][cover] if b[0] >= x0]


def test_water_bodies_on_naip(registry, tmp_path):
    out = tmp_path / "water.gpkg"
    assert extract(registry, NAIP_2020, out, "extract water bodies larger than half a hectare", sensor="naip") == \
        {"vector": str(out)}
    assert [p.name for p in tmp_path.iterdir()] == ["water.gpkg"]  # no scratch file left
    found = features(out)
    assert len(found) >= 10
    for items, geom in found:
        assert items["class_name"] == "water" and items["target"] == "water bodies"
        assert items["area_m2"] > 5000 and items["area_m2"] == pytest.approx(items["area_px"] * 25.0)
        assert geom.GetArea() == pytest.approx(items["area_m2"])
        assert items["mndwi"] is None and items["ndbi"] is None and items["bsi"] is None  # RGBN: no SWIR
        assert items["explanation"].startswith(f"NDWI {items['ndwi']:.2f} (")
        assert ": open water" in items["explanation"]  # "... by the model, although ..." when a cue disagrees
        assert items["explanation"].endswith(f"(model score {items['score']:.2f})")
        assert 0.25 < items["score"] <= 1.0
    assert np.median([items["ndwi"] for items, _ in found]) > 0  # water: NDWI high
    polygons = [geom for _, geom in found]
    # The hand-drawn held-out boxes (never trained on): every water box's centre lies in a water polygon, no
    # vegetation or bare-soil box's centre does.
    for cover, inside in (("water", True), ("vegetation", False), ("bare soil", False)):
        for x0, y0, x1, y1 in held_out_boxes(cover):
            centre = point(NAIP_2020, (x0 + x1) // 2, (y0 + y1) // 2)
            assert any(p.Contains(centre) for p in polygons) == inside, (cover, (x0, y0, x1, y1))


def test_index_limits_and_several_targets(registry, tmp_path):
    out = tmp_path / "limits.gpkg"
    extract(registry, NAIP_2020, out, "water with NDWI above 0.3 and bare soil of at least 40 pixels", sensor="naip")
    found = features(out)
    kinds = {items["class_name"] for items, _ in found}
    assert kinds == {"water", "bare soil"}
    for items, _ in found:
        if items["class_name"] == "water":
            assert items["ndwi"] >= 0.3 and items["target"] == "water"
        else:
            assert items["area_px"] > 40 and items["target"] == "bare soil"
            assert items["explanation"].startswith("NDVI") and "red reflectance" in items["explanation"]


def test_sentinel2_sample(registry, tmp_path):
    """The real Sentinel-2 scene (a forested valley with a road and a hamlet, no open water)."""
    out = tmp_path / "veg.gpkg"
    extract(registry, S2_SAMPLE, out, "vegetation larger than 1 ha")
    found = features(out)
    assert found and all(items["class_name"] == "vegetation" and items["area_m2"] > 10_000 for items, _ in found)
    for items, _ in found:
        assert items["ndvi"] > 0.5 and None not in (items["mndwi"], items["ndbi"], items["bsi"])  # 13 bands: all
        assert items["explanation"].startswith(f"NDVI {items['ndvi']:.2f} (high) and NIR reflectance")
    water = tmp_path / "water.gpkg"
    extract(registry, S2_SAMPLE, water, "extract water bodies")
    assert features(water) == []  # nothing to find is an empty layer with the schema, not an error


def test_refusals_name_the_problem_and_write_nothing(registry, tmp_path):
    out = tmp_path / "never.gpkg"
    cases = [
        (S2_SAMPLE, "extract clouds and snow", {}, r"words the grammar does not understand: 'clouds', 'snow'.*"
                                                   r"water \(water bodies.*not a language model"),
        (NAIP_2020, "water with MNDWI above 0", {"sensor": "naip"},
         r"has no swir1 band, which the limit on MNDWI \(green, swir1\) needs; it has blue, green, red, nir"),
        (NAIP_2020, "extract water bodies", {}, r"Cannot tell which sensor .*naip.*choose the sensor|Choose the sensor"),
        (S2_SAMPLE, "extract water bodies", {"sensor": "landsat8_9"}, r"has 13 band\(s\) but Landsat 8/9"),
        (S2_SAMPLE, "", {}, r"instruction is empty"),
    ]
    for raster, instruction, options, message in cases:
        with pytest.raises(BackendError, match=message):
            extract(registry, raster, out, instruction, **options)
    with pytest.raises(BackendError, match="options.instruction .* is required"):
        plan_job(JobSpec("land_cover_extraction", MODEL, [str(S2_SAMPLE)], {"vector": str(out)}), registry, "x")
    assert list(tmp_path.iterdir()) == []


def test_area_in_hectares_needs_a_crs(registry, tmp_path):
    bare = tmp_path / "no_crs.tif"  # a 200 x 200 px piece of the NAIP raster without georeferencing
    pixels = gdal.Open(str(NAIP_2020)).ReadAsArray(600, 0, 200, 200)
    ds = gdal.GetDriverByName("GTiff").Create(str(bare), 200, 200, 4, gdal.GDT_Byte)
    ds.WriteArray(pixels)
    ds = None
    with pytest.raises(BackendError, match="has no CRS, so areas in m² or hectares cannot be measured"):
        extract(registry, bare, tmp_path / "x.gpkg", "water larger than 1 ha", sensor="naip")
    out = tmp_path / "px.gpkg"
    extract(registry, bare, out, "water larger than 100 pixels", sensor="naip")
    found = features(out)
    assert found and all(items["area_px"] > 100 and items["area_m2"] is None for items, _ in found)
    assert sorted(tmp_path.iterdir()) == sorted([bare, out])  # nothing else left


def test_through_the_api(registry, tmp_path):
    with api_client(registry, "tok") as client:
        headers = {"Authorization": "Bearer tok"}
        info = {m["id"]: m for m in client.get("/models", headers=headers).json()["models"]}[MODEL]
        assert (info["task"], info["bands"], info["band_roles"], info["indices"]) == \
            ("land_cover_extraction", [], ["blue", "green", "red", "nir"], ["ndvi", "ndwi"])
        body = {"task": "land_cover_extraction", "model": MODEL, "inputs": [str(S2_SAMPLE)],
                "outputs": {"vector": str(tmp_path / "a.gpkg")}, "options": {"instruction": "find the glaciers"}}
        answer = client.post("/jobs", json=body, headers=headers)
        assert answer.status_code == 400 and "'glaciers'" in answer.json()["detail"]
        body = {"task": "spectral_indices", "inputs": [str(S2_SAMPLE)], "outputs": {"raster": str(tmp_path / "i.tif")},
                "options": {"indices": ["ndvi", "bsi"]}}
        answer = client.post("/jobs", json=body, headers=headers)
        assert answer.status_code == 202, answer.text

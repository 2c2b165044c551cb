"""Sensors, band roles and the index stack on real rasters: Sentinel-2 L1C (13 bands of ../shared/data as a
GeoTIFF, with and without band names, as L2A, with a nodata block), the NAIP RGBN quarter-quad; the instruction
grammar; package metadata with bands by role and index channels."""

import importlib.util
import json

import numpy as np
import pytest
from osgeo import gdal

from backend.errors import BackendError
from backend.instructions import explain, parse_instruction
from backend.jobs import JobSpec, plan_job, run_plan
from backend.model_package import validate_metadata
from backend.registry import ModelRegistry
from backend.spectral import INDICES, SENSORS, recognise

from backend_test_data import DATA, NAIP_2020, REPO

gdal.UseExceptions()
SCENES = DATA / "sentinel2_eolearn" / "REFERENCE_SCENES.npy"
_spec = importlib.util.spec_from_file_location("sentinel2_sample", REPO / "scripts" / "sentinel2_sample.py")
sentinel2_sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sentinel2_sample)


@pytest.fixture(scope="module")
def s2(tmp_path_factory):
    """Sentinel-2 L1C scene 4 as products deliver it (13 named bands), and variants."""
    d = tmp_path_factory.mktemp("s2")
    return {"named": sentinel2_sample.write_sentinel2(d / "l1c.tif"),
            "unnamed": sentinel2_sample.write_sentinel2(d / "l1c_unnamed.tif", band_names=False),
            "l2a": sentinel2_sample.write_sentinel2(d / "l2a.tif", drop=("B10",))}


def reflectance(scene=4):
    """The scene's reflectance as the GeoTIFFs store it (DN = round(reflectance x 10000)) / 10000."""
    return np.round(np.load(SCENES)[scene] * 10000) / 10000


def index_job(raster, out, registry=None, **options):
    spec = JobSpec("spectral_indices", "", [str(raster)], {"raster": str(out)}, options=options)
    return plan_job(spec, registry or ModelRegistry([]), job_id="ix")


# --------------------------------------------------------------------------------------------- sensors

def test_sentinel2_band_names_are_recognised(s2):
    layout = recognise(gdal.Open(str(s2["named"])), "l1c")
    assert layout.sensor == "sentinel2_l1c"
    assert layout.roles["blue"] == 2 and layout.roles["nir"] == 8 and layout.roles["nir08"] == 9
    assert layout.roles["swir1"] == 12 and layout.roles["swir2"] == 13
    assert layout.gains[4] == pytest.approx(1e-4) and layout.offsets[4] == 0
    l2a = recognise(gdal.Open(str(s2["l2a"])), "l2a")  # 12 bands, no B10: L2A; B11 is band 11 now
    assert l2a.sensor == "sentinel2_l2a" and l2a.roles["swir1"] == 11 and "cirrus" not in l2a.roles


def test_other_ways_a_raster_names_its_bands(tmp_path):
    """Landsat SR_B* names, PlanetScope role words, wavelengths, band scale/offset, float reflectance."""
    def raster(name, count, dtype=gdal.GDT_UInt16, describe=None, metadata=None, scale=None):
        ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / name), 8, 8, count, dtype)
        for i in range(count):
            band = ds.GetRasterBand(i + 1)
            band.Fill(1000)
            if describe:
                band.SetDescription(describe[i])
            if metadata:
                band.SetMetadata(metadata[i])
            if scale:
                band.SetScale(scale[0])
                band.SetOffset(scale[1])
        return ds

    landsat = recognise(raster("l8.tif", 7, describe=[f"SR_B{i}" for i in range(1, 8)]), "l8")
    assert landsat.sensor == "landsat8_9" and landsat.roles["nir"] == 5 and landsat.roles["swir1"] == 6
    assert (landsat.gains[5], landsat.offsets[5]) == (pytest.approx(2.75e-5), pytest.approx(-0.2))
    planet = recognise(raster("ps.tif", 4, describe=["blue", "green", "red", "nir"]), "ps")
    assert planet.sensor == "planetscope_4" and planet.roles == {"blue": 1, "green": 2, "red": 3, "nir": 4}
    waves = recognise(raster("w.tif", 3, metadata=[{"WAVELENGTH": "0.56", "WAVELENGTH_UNITS": "micrometers"},
                                                   {"WAVELENGTH": "665"}, {"wavelength": "842"}]), "w")
    assert waves.sensor == "" and waves.roles == {"green": 1, "red": 2, "nir": 3}
    scaled = recognise(raster("s.tif", 4, describe=["blue", "green", "red", "nir"], scale=(2e-5, -0.1)), "s")
    assert (scaled.gains[1], scaled.offsets[1]) == (pytest.approx(2e-5), pytest.approx(-0.1))
    floats = recognise(raster("f.tif", 4, gdal.GDT_Float32, describe=["Blue", "Green", "Red", "NIR"]), "f")
    assert floats.gains[1] == 1.0 and floats.offsets[1] == 0.0


def test_a_raster_that_names_no_bands_needs_a_sensor(s2):
    with pytest.raises(BackendError, match="Cannot tell which sensor .*l1c_unnamed.tif.*none of its 13 band.*"
                                           "sentinel2_l1c, sentinel2_l2a, landsat8_9, naip"):
        recognise(gdal.Open(str(s2["unnamed"])), str(s2["unnamed"]))
    chosen = recognise(gdal.Open(str(s2["unnamed"])), "x", "sentinel2_l1c")
    assert chosen.roles == recognise(gdal.Open(str(s2["named"])), "y").roles
    naip = recognise(gdal.Open(str(NAIP_2020)), "naip", "naip")
    assert naip.roles == {"red": 1, "green": 2, "blue": 3, "nir": 4} and naip.gains[1] == pytest.approx(1 / 255)
    with pytest.raises(BackendError, match="has 4 band.*Sentinel-2 L2A .* has 12"):
        recognise(gdal.Open(str(NAIP_2020)), "naip", "sentinel2_l2a")
    with pytest.raises(BackendError, match="Sensor 'worldview' is not known"):
        recognise(gdal.Open(str(NAIP_2020)), "naip", "worldview")


# --------------------------------------------------------------------------------------------- index stack

def test_index_stack_of_sentinel2_matches_the_formulas(s2, tmp_path):
    out = tmp_path / "indices.tif"
    plan = index_job(s2["named"], out)
    assert plan.indices == list(INDICES)  # every index: the scene has SWIR
    assert run_plan("spectral_indices", plan) == {"raster": str(out)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["indices.tif"]
    ds = gdal.Open(str(out))
    assert ds.GetGeoTransform() == gdal.Open(str(s2["named"])).GetGeoTransform()
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(5)] == ["NDVI", "NDWI", "MNDWI", "NDBI", "BSI"]
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Float32 and np.isnan(ds.GetRasterBand(1).GetNoDataValue())
    r = reflectance()
    blue, green, red, nir, swir1 = (r[..., i] for i in (1, 2, 3, 7, 11))
    expected = [(nir - red) / (nir + red), (green - nir) / (green + nir), (green - swir1) / (green + swir1),
                (swir1 - nir) / (swir1 + nir), ((swir1 + red) - (nir + blue)) / ((swir1 + red) + (nir + blue))]
    got = ds.ReadAsArray()
    for i, plane in enumerate(expected):
        np.testing.assert_allclose(got[i], plane, atol=1e-5)
    assert 0.6 < np.mean(got[0]) < 0.8  # a summer forest scene: NDVI high


def test_index_stack_honours_nodata_and_extent(s2, tmp_path):
    src = gdal.Open(str(s2["named"]))
    holed = tmp_path / "holed.tif"
    copy = gdal.Translate(str(holed), src)
    for i in range(13):
        band = copy.GetRasterBand(i + 1)
        band.SetNoDataValue(0)
        values = band.ReadAsArray()
        values[10:30, 20:50] = 0  # every band nodata there: invalid pixels
        band.WriteArray(values)
    copy = None
    out = tmp_path / "ndvi.tif"
    run_plan("spectral_indices", index_job(holed, out, indices=["ndvi", "ndwi"]))
    got = gdal.Open(str(out)).ReadAsArray()
    assert got.shape == (2, 101, 100)
    assert np.isnan(got[:, 10:30, 20:50]).all() and np.isfinite(got[:, :10]).all() and np.isfinite(got[:, 30:]).all()
    gt = src.GetGeoTransform()
    from backend.raster_io import Extent
    extent = Extent(gt[0] + 10 * gt[1], gt[3] + 60 * gt[5], gt[0] + 40 * gt[1], gt[3] + 20 * gt[5], "EPSG:32633")
    spec = JobSpec("spectral_indices", "", [str(s2["named"])], {"raster": str(tmp_path / "part.tif")}, extent,
                   {"indices": ["ndvi"]})
    run_plan("spectral_indices", plan_job(spec, ModelRegistry([]), job_id="ex"))
    part = gdal.Open(str(tmp_path / "part.tif")).ReadAsArray()
    full = gdal.Open(str(tmp_path / "ndvi.tif")).ReadAsArray()[0]
    assert part.shape == (40, 30)
    np.testing.assert_array_equal(part[:10, :10], full[20:30, 10:20])  # outside the hole, the same values


def test_index_stack_refusals_leave_nothing(s2, tmp_path):
    out = tmp_path / "x.tif"
    with pytest.raises(BackendError, match=r"has no swir1 band, which BSI \(swir1, red, nir, blue\) needs; it has "
                                           r"blue, green, red, nir"):
        index_job(NAIP_2020, out, indices=["bsi"], sensor="naip")
    with pytest.raises(BackendError, match="Cannot tell which sensor"):
        index_job(s2["unnamed"], out)
    with pytest.raises(BackendError, match="options.indices names 'evi'"):
        index_job(s2["named"], out, indices=["evi"])
    with pytest.raises(BackendError, match="spectral_indices runs no model"):
        plan_job(JobSpec("spectral_indices", "mtp_seg_default", [str(s2["named"])], {"raster": str(out)}),
                 ModelRegistry([]), job_id="m")
    with pytest.raises(BackendError, match=r"band 2 has values up to 1489, which, read as Sentinel-2 "
                                           r"L1C .*floating-point values taken as reflectance.*, is reflectance 1489; "
                                           "reflectance is 0..1"):
        index_job(_float_copy(s2["named"], tmp_path), out)
    assert list(tmp_path.iterdir()) == [tmp_path / "dn_as_float.tif"]
    naip = index_job(NAIP_2020, out, sensor="naip")
    assert naip.indices == ["ndvi", "ndwi"]  # what RGBN allows


def _float_copy(raster, folder):
    """Digital numbers stored as float32: float is taken as reflectance, so values of thousands are refused."""
    path = folder / "dn_as_float.tif"
    gdal.Translate(str(path), str(raster), outputType=gdal.GDT_Float32).FlushCache()
    return path


# --------------------------------------------------------------------------------------------- grammar

def test_instruction_grammar():
    (water,) = parse_instruction("Extract all the water bodies larger than half a hectare")
    assert (water.cover, water.phrase, water.min_area, water.max_area) == ("water", "water bodies", 5000.0, None)
    targets = parse_instruction("lakes bigger than 5,000 m² and vegetation with NDVI above 0.6; bare soil under 2 ha, "
                                "buildings and roads")
    assert [(t.cover, t.phrase) for t in targets] == [("water", "lakes"), ("vegetation", "vegetation"),
                                                       ("bare soil", "bare soil"), ("built-up", "buildings"),
                                                       ("built-up", "roads")]
    assert targets[0].min_area == 5000 and targets[1].index_limits == {"ndvi": (0.6, 1.0)}
    assert targets[2].max_area == 20000
    (ponds,) = parse_instruction("ponds of at least 12 pixels with score above 0.9")
    assert (ponds.area_unit, ponds.min_area, ponds.min_score) == ("px", 12, 0.9)
    assert [t.cover for t in parse_instruction("everything")] == ["water", "vegetation", "built-up", "bare soil"]
    (lake,) = parse_instruction("water, larger than 1 ha")  # limits of the target before
    assert lake.min_area == 10000
    for text, words in (("extract clouds", "'clouds'"), ("water except lakes", "'except'"),
                        ("find snow and ice", "'snow', 'ice'")):
        with pytest.raises(BackendError) as err:
            parse_instruction(text)
        message = err.value.message
        assert words in message and "water (water bodies" in message and "NDVI above 0.5" in message
        assert "not a language model" in message
    with pytest.raises(BackendError, match="sets limits before naming"):
        parse_instruction("larger than 1 ha")
    with pytest.raises(BackendError, match="is empty"):
        parse_instruction("  ")


def test_explanations_cite_the_measured_cues():
    assert explain("water", {"ndwi": 0.42, "nir": 0.03}, 0.97, False) == \
        "NDWI 0.42 (high) and NIR reflectance 0.03 (low): open water (model score 0.97)"
    assert explain("built-up", {"ndbi": 0.05, "ndvi": 0.1}, None, True) == \
        "NDBI 0.05 (high) and NDVI 0.10 (low): built-up surface"
    assert explain("bare soil", {"ndvi": 0.05, "red": 0.2}, 0.6, False).startswith("NDVI 0.05 (low) and red reflectance")
    doubt = explain("water", {"ndwi": -0.5, "nir": 0.4}, 0.51, False)
    assert "(low)" in doubt and "although the spectral cues do not point to it" in doubt


# --------------------------------------------------------------------------------------------- metadata

def role_metadata(**changes):
    meta = {"format_version": 1, "task": "land_cover_extraction", "name": "t",
            "classes": [{"name": "water"}, {"name": "vegetation"}],
            "input": {"band_roles": ["blue", "green", "red", "nir"], "indices": ["ndvi", "ndwi"], "scale": 1.0,
                      "mean": [0.0] * 6, "std": [1.0] * 6},
            "tile_size": 64, "tile_overlap": 16}
    meta["input"].update(changes)
    return meta


def test_metadata_with_bands_by_role():
    assert validate_metadata(role_metadata(), "m") == []
    problems = "; ".join(validate_metadata(role_metadata(indices=["ndvi", "mndwi"]), "m"))
    assert "index 'mndwi' reads green, swir1, but input.band_roles has no swir1" in problems
    assert "has 6 values" not in problems
    assert "has 4 values for 6 channels" in "; ".join(validate_metadata(role_metadata(mean=[0.0] * 4), "m"))
    assert "both 'bands'" in "; ".join(validate_metadata(role_metadata(bands=[1, 2, 3, 4]), "m"))
    assert "distinct roles" in "; ".join(validate_metadata(role_metadata(band_roles=["blue", "thermal"]), "m"))
    assert "'input.indices' names 'evi'" in "; ".join(validate_metadata(role_metadata(indices=["evi"]), "m"))
    numbered = role_metadata()
    numbered["input"] = {"bands": [1, 2, 3, 4], "band_names": ["red", "green", "blue", "nir"], "indices": ["ndvi"],
                         "scale": 255.0, "mean": [0.0] * 5, "std": [1.0] * 5}
    assert validate_metadata(numbered, "m") == []
    assert list(SENSORS) == ["sentinel2_l1c", "sentinel2_l2a", "landsat8_9", "naip", "planetscope_4",
                             "planetscope_8"]
    json.dumps(role_metadata())


# --------------------------------------------------------------------------------------------- any task

def test_any_task_can_take_index_channels(s2, tmp_path):
    """A scene classifier whose input is blue, green, red, nir reflectance and NDVI (the synthetic "brightest
    channel wins" model: class k when channel k has the highest cell mean): the backend finds the bands of each
    sensor, scales them to reflectance and appends NDVI, so each cell's class is the argmax of those five means,
    computed here from the raw pixels."""
    from backend.synthetic_models import default_metadata, write_classification_package

    folder = tmp_path / "models"
    folder.mkdir()
    meta = default_metadata(4, 5, 64, 0, task="scene_classification")
    meta["classes"] = [{"name": n} for n in ("blue", "green", "red", "nir", "ndvi")]
    meta["input"] = {"band_roles": ["blue", "green", "red", "nir"], "indices": ["ndvi"], "scale": 1.0,
                     "mean": [0.0] * 5, "std": [1.0] * 5}
    write_classification_package(folder / "roles.onnx", num_bands=5, num_classes=5, tile_size=64, metadata=meta)
    registry = ModelRegistry([folder])
    cases = [(s2["named"], {}, reflectance()[..., [1, 2, 3, 7]].transpose(2, 0, 1)),
             (NAIP_2020, {"sensor": "naip"}, gdal.Open(str(NAIP_2020)).ReadAsArray()[[2, 1, 0, 3]] / 255.0)]
    found = {}
    for raster, options, bands in cases:
        out = tmp_path / f"{raster.stem}.gpkg"
        spec = JobSpec("scene_classification", "roles", [str(raster)], {"vector": str(out)}, options=options)
        run_plan("scene_classification", plan_job(spec, registry, job_id="sc"))
        from osgeo import ogr
        ds = ogr.Open(str(out))
        classes = {(f["row"], f["col"]): f["class_name"] for f in ds.GetLayer(0)}
        h, w = bands.shape[1:]
        for (row, col), name in classes.items():
            cell = bands[:, row * 64:(row + 1) * 64, col * 64:(col + 1) * 64].astype(np.float64)
            ph, pw = 64 - cell.shape[1], 64 - cell.shape[2]
            cell = np.pad(cell, ((0, 0), (0, ph), (0, pw)), mode="symmetric")  # clipped cells are mirror-padded
            ndvi = (cell[3] - cell[2]) / (cell[3] + cell[2])
            means = [*cell.mean(axis=(1, 2)), ndvi.mean()]
            assert name == meta["classes"][int(np.argmax(means))]["name"], (raster.name, row, col, means)
        assert len(classes) == -(-h // 64) * -(-w // 64)
        found[raster] = set(classes.values())
    assert found[s2["named"]] == {"ndvi"}  # a forest: NDVI (0.7) above every reflectance
    assert "ndvi" not in found[NAIP_2020] and len(found[NAIP_2020]) >= 2  # NIR of the fields is higher
    with pytest.raises(BackendError, match=r"has no blue, green, red, nir band|Cannot tell which sensor"):
        plan_job(JobSpec("scene_classification", "roles", [str(s2["unnamed"])], {"vector": str(tmp_path / "x.gpkg")}),
                 registry, job_id="u")


def test_index_channels_of_a_model_with_numbered_bands(tmp_path):
    """bands by number (8-bit NAIP, scale 255) with band_names as roles and an NDVI channel: the bands are divided
    by the scale, the index is not (a ratio needs no scale), then each channel is normalised."""
    from backend.model_package import load_package
    from backend.raster_io import RasterReader
    from backend.synthetic_models import default_metadata, write_package
    from backend.tile_pipeline import TileModel

    meta = default_metadata(4, 2, 64, 16)
    meta["input"] = {"bands": [1, 2, 3, 4], "band_names": ["red", "green", "blue", "nir"], "indices": ["ndvi"],
                     "scale": 255.0, "mean": [0.4, 0.4, 0.4, 0.5, 0.1], "std": [0.2, 0.2, 0.2, 0.3, 0.4]}
    package = load_package(write_package(tmp_path / "n.onnx", num_bands=5, num_classes=2, metadata=meta))
    raw = RasterReader(gdal.Open(str(NAIP_2020)), [1, 2, 3, 4], "naip").read(100, 100, 64, 64)
    prepared = TileModel(package).prepare(raw)
    red, nir = raw[0] / 255.0, raw[3] / 255.0
    np.testing.assert_allclose(prepared[3], (nir - 0.5) / 0.3, atol=1e-5)
    np.testing.assert_allclose(prepared[4], ((nir - red) / (nir + red) - 0.1) / 0.4, atol=1e-5)

"""Tiled segmentation on real rasters: equality with untiled inference, result geometry, nodata."""

import numpy as np
import onnxruntime as ort
import pytest
from osgeo import gdal, osr

from backend import raster_io
from backend.jobs import JobSpec, plan_job
from backend.raster_io import Extent, Window
from backend.segmentation import SegmentationRequest, segment_raster
from backend.tile_pipeline import TileModel, run_tiles, softmax
from backend.synthetic_models import build_model

from backend_test_data import COGEO, LOVEDA_PNG, RGB_BYTE, TILE


def untiled_probabilities(ds, window, package, seed):
    """The same weights as a dynamic-size graph, run once over the whole window."""
    model = build_model(tile_size=TILE, fixed_size=False, seed=seed)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = ds.ReadAsArray(window.x, window.y, window.width, window.height).astype(np.float32)
    spec = package.input
    x = (raw / spec.scale - np.array(spec.mean, np.float32)[:, None, None]) / np.array(spec.std, np.float32)[:, None, None]
    (logits,) = session.run(None, {"image": x[None].astype(np.float32)})
    return softmax(logits)[0]


@pytest.mark.parametrize("window", [
    Window(10, 10, 5, 3),        # far smaller than a tile: padding wider than the data
    Window(0, 0, 40, 30),        # smaller than one tile: padded
    Window(100, 200, 64, 64),    # exactly one tile
    Window(5, 7, 65, 129),       # one pixel more than a tile / two tiles
    Window(300, 50, 203, 177),   # non-multiples of the stride
    Window(0, 0, 1024, 1024),    # the whole raster
])
def test_tiled_blend_equals_untiled_for_a_pointwise_model(registry, window):
    package = registry.get("pointwise")
    ds = raster_io.open_raster(COGEO)
    reader = raster_io.RasterReader(ds, package.input.bands, "cogeo")
    tiled = np.full((package.num_classes, window.height, window.width), np.nan, np.float32)

    def sink(x, y, probs):
        tiled[:, y : y + probs.shape[1], x : x + probs.shape[2]] = probs

    run_tiles(TileModel(package), reader, window, sink, batch_size=3)
    expected = untiled_probabilities(ds, window, package, seed=1)
    np.testing.assert_allclose(tiled, expected, rtol=1e-4, atol=1e-5)
    # Class ids agree wherever the top two classes are not a numerical tie.
    top2 = np.sort(expected, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4
    assert clear.mean() > 0.99
    assert np.array_equal(tiled.argmax(0)[clear], expected.argmax(0)[clear])


def test_stripes_blend_exactly_like_one_pass_over_the_width(registry):
    # Windows wider than MAX_STRIPE_WIDTH are blended stripe by stripe to keep memory flat in width;
    # the result must not show where the stripes meet.
    package = registry.get("spatial")
    ds = raster_io.open_raster(COGEO)
    reader = raster_io.RasterReader(ds, package.input.bands, "cogeo")
    window = Window(3, 5, 1000, 150)

    def blend(stripe_width):
        out = np.full((package.num_classes, window.height, window.width), np.nan, np.float32)
        writes = np.zeros((window.height, window.width), np.int32)

        def sink(x, y, probs):
            out[:, y : y + probs.shape[1], x : x + probs.shape[2]] = probs
            writes[y : y + probs.shape[1], x : x + probs.shape[2]] += 1

        run_tiles(TileModel(package), reader, window, sink, batch_size=4, stripe_width=stripe_width)
        assert (writes == 1).all()
        return out

    np.testing.assert_allclose(blend(200), blend(10**6), rtol=0, atol=1e-6)


def run_job(registry, tmp_path, input_path, extent=None, model="spatial", name="result.tif"):
    spec = JobSpec("semantic_segmentation", model, [str(input_path)], {"raster": str(tmp_path / name)}, extent)
    plan = plan_job(spec, registry, job_id="t1")
    out = segment_raster(plan)
    assert (tmp_path / name).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "partial" in p.name] == []
    return gdal.Open(str(out))


def test_full_cogeo_result_matches_source_grid_and_format(registry, tmp_path):
    src = gdal.Open(str(COGEO))
    out = run_job(registry, tmp_path, COGEO)
    assert (out.RasterXSize, out.RasterYSize, out.RasterCount) == (1024, 1024, 1)
    assert out.GetGeoTransform() == pytest.approx(src.GetGeoTransform())
    assert out.GetSpatialRef().IsSame(src.GetSpatialRef())
    band = out.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    assert band.GetBlockSize() == [256, 256]
    assert out.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
    package = registry.get("spatial")
    table = band.GetColorTable()
    for cls in package.classes:
        assert table.GetColorEntry(cls.id)[:3] == cls.rgb()
    ids = band.ReadAsArray()
    assert ids.max() < package.num_classes  # no nodata in this raster
    assert len(np.unique(ids)) > 1


def test_sub_extent_in_epsg4326_maps_to_the_expected_pixel_window(registry, tmp_path):
    src = gdal.Open(str(COGEO))
    gt = src.GetGeoTransform()
    col0, row0, col1, row1 = 100, 200, 400, 450
    # Corners of that pixel window, pulled 0.7 px inwards, in lon/lat: snapping outwards must restore it
    # (rounding to the nearest pixel edge would not).
    inset = 0.7
    xmin, xmax = gt[0] + (col0 + inset) * gt[1], gt[0] + (col1 - inset) * gt[1]
    ymax, ymin = gt[3] + (row0 + inset) * gt[5], gt[3] + (row1 - inset) * gt[5]
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    merc = src.GetSpatialRef()
    merc.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_ll = osr.CoordinateTransformation(merc, wgs84)
    lon0, lat0, _ = to_ll.TransformPoint(xmin, ymin)
    lon1, lat1, _ = to_ll.TransformPoint(xmax, ymax)
    assert 128 < lon0 < 129 and 37 < lat0 < 38  # lon/lat order, as QGIS sends it
    out = run_job(registry, tmp_path, COGEO, Extent(lon0, lat0, lon1, lat1, "EPSG:4326"))
    assert (out.RasterXSize, out.RasterYSize) == (col1 - col0, row1 - row0)
    expected_gt = (gt[0] + col0 * gt[1], gt[1], 0.0, gt[3] + row0 * gt[5], 0.0, gt[5])
    assert out.GetGeoTransform() == pytest.approx(expected_gt)
    # Same pixels as the full run: windows on the source grid.
    full = run_job(registry, tmp_path, COGEO, name="full.tif")
    sub = out.GetRasterBand(1).ReadAsArray()
    whole = full.GetRasterBand(1).ReadAsArray()[row0:row1, col0:col1]
    # Tiles differ between the two runs, so seams may flip a few near-tied pixels; but the sub-extent's
    # border tiles read real context beyond it, so its edges agree as well as its interior.
    assert (sub == whole).mean() > 0.995
    edges = np.concatenate([sub[:3].ravel() == whole[:3].ravel(), sub[-3:].ravel() == whole[-3:].ravel(),
                            sub[:, :3].ravel() == whole[:, :3].ravel(), sub[:, -3:].ravel() == whole[:, -3:].ravel()])
    assert edges.mean() > 0.99


def test_png_without_crs_uses_qgis_pixel_convention(registry, tmp_path):
    out = run_job(registry, tmp_path, LOVEDA_PNG)
    assert (out.RasterXSize, out.RasterYSize) == (1024, 1024)
    assert out.GetSpatialRef() is None
    assert out.GetGeoTransform() == pytest.approx((0, 1, 0, 0, 0, -1))
    # An extent in those coordinates (y up): columns 10..110, rows 200..300.
    sub = run_job(registry, tmp_path, LOVEDA_PNG, Extent(10, -300, 110, -200), name="sub.tif")
    assert (sub.RasterXSize, sub.RasterYSize) == (100, 100)
    assert sub.GetGeoTransform() == pytest.approx((10, 1, 0, -200, 0, -1))


def test_nodata_is_255_exactly_where_all_input_bands_are_nodata(registry, tmp_path):
    src = gdal.Open(str(RGB_BYTE)).ReadAsArray()
    all_nodata = (src == 0).all(axis=0)
    assert 0.1 < all_nodata.mean() < 0.9  # the sample really has a nodata collar
    out = run_job(registry, tmp_path, RGB_BYTE)
    ids = out.GetRasterBand(1).ReadAsArray()
    assert np.array_equal(ids == 255, all_nodata)
    assert ids[~all_nodata].max() < registry.get("spatial").num_classes


def test_progress_reaches_100_and_cancel_stops_and_removes_partial(registry, tmp_path):
    from backend.errors import JobCancelled

    package = registry.get("pointwise")
    out = tmp_path / "r.tif"
    request = SegmentationRequest(package, COGEO, out, Window(0, 0, 1024, 1024), batch_size=4, job_id="p")
    seen = []
    segment_raster(request, progress=lambda p, m: seen.append((p, m)))
    assert seen[-1][0] == pytest.approx(100.0) and seen[-1][1].startswith("tile ")
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)

    out.unlink()
    calls = []

    def cancel_after_three_batches():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(JobCancelled):
        segment_raster(request, cancelled=cancel_after_three_batches)
    assert list(tmp_path.iterdir()) == []


def test_alpha_band_marks_nodata(registry, tmp_path):
    """RGBA input: transparent pixels are nodata; the alpha band itself is not counted as imagery."""
    src = gdal.Open(str(COGEO))
    rgba = gdal.GetDriverByName("GTiff").Create(str(tmp_path / "rgba.tif"), 300, 200, 4, gdal.GDT_Byte)
    rgba.SetGeoTransform(src.GetGeoTransform())
    rgba.SetSpatialRef(src.GetSpatialRef())
    rgba.WriteRaster(0, 0, 300, 200, src.ReadRaster(0, 0, 300, 200), band_list=[1, 2, 3])
    alpha = np.full((200, 300), 255, np.uint8)
    alpha[50:120, 100:250] = 0
    rgba.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
    rgba.GetRasterBand(4).WriteArray(alpha)
    rgba = None
    (tmp_path / "out").mkdir()
    out = run_job(registry, tmp_path / "out", tmp_path / "rgba.tif")  # keep the dataset alive while reading
    ids = out.GetRasterBand(1).ReadAsArray()
    assert np.array_equal(ids == 255, alpha == 0)


def test_four_band_naip_with_a_four_band_model(registry, tmp_path):
    from backend_test_data import NAIP

    out = run_job(registry, tmp_path, NAIP, model="nir4")
    src = gdal.Open(str(NAIP))
    assert (out.RasterXSize, out.RasterYSize) == (src.RasterXSize, src.RasterYSize)
    assert out.GetSpatialRef().IsSame(src.GetSpatialRef())
    assert out.GetRasterBand(1).ReadAsArray().max() < 4

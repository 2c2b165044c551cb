"""What the fuzz tests share: their models, the corpus of bad rasters, the schema-driven request strategy,
and the tally of what was sent and what came back (printed at the end of the run, see conftest.py)."""

from __future__ import annotations

import collections
import json
import shutil
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (REPO, REPO / "tests" / "backend"):  # the backend, and backend_test_data (importlib mode)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from osgeo import gdal, osr  # noqa: E402

from backend.synthetic_models import (default_metadata, object_mask, write_change_package,  # noqa: E402
                                      write_classification_package, write_detection_package, write_package)
from backend_test_data import COGEO, DATA, burn_objects  # noqa: E402

gdal.UseExceptions()
TILE, OVERLAP = 64, 16
S2_SCENES = DATA / "sentinel2_eolearn" / "REFERENCE_SCENES.npy"
# Where the corpus rasters are cut from cogeo.tif, and the objects burnt in for the detection stand-ins.
BASE_WINDOW = (256, 256, 128, 128)
HBOX_OBJECTS = [(20, 20, np.ones((6, 12), bool), (255, 0, 0)), (90, 30, np.ones((6, 12), bool), (255, 0, 0)),
                (30, 95, np.ones((6, 12), bool), (0, 255, 0))]
RBOX_OBJECTS = [(70, 80, object_mask(12, 6, 30.0), (255, 0, 0))]
NAN_PIXEL = (23, 33)  # (row, col) of the single NaN pixel: 2 px right of the first object, on none
NAN_BLOCK = (slice(100, 116), slice(60, 76))


# ---------------------------------------------------------------------------------------------- tally

@dataclass
class Tally:
    """Counts for tests/fuzz/README.md: requests by endpoint and status, raster runs by outcome."""

    requests: collections.Counter = field(default_factory=collections.Counter)
    raster_runs: collections.Counter = field(default_factory=collections.Counter)
    inputs: set = field(default_factory=set)
    notes: list = field(default_factory=list)

    def request(self, method: str, path: str, status: int) -> None:
        self.requests[(method, path, status)] += 1

    def lines(self) -> list[str]:
        out = []
        if self.requests:
            total = sum(self.requests.values())
            by_status = collections.Counter()
            by_endpoint = collections.Counter()
            for (method, path, status), n in self.requests.items():
                by_status[status] += n
                by_endpoint[f"{method} {path}"] += n
            out.append(f"fuzz: {total} HTTP requests; by status: "
                       + ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items())))
            out.append("fuzz: by endpoint: " + ", ".join(f"{e}: {n}" for e, n in sorted(by_endpoint.items())))
        if self.raster_runs:
            total = sum(self.raster_runs.values())
            out.append(f"fuzz: {len(self.inputs)} corpus inputs, {total} task runs; outcomes: "
                       + ", ".join(f"{k}: {n}" for k, n in sorted(self.raster_runs.items())))
        out += [f"fuzz: {note}" for note in self.notes]
        return out


TALLY = Tally()


# ---------------------------------------------------------------------------------------------- models

def write_fuzz_models(folder: Path) -> Path:
    """One small model per task (pointwise where it matters: a pixel's class depends on that pixel only,
    so a NaN may change that pixel and no other), a segmentation model declared for 16-bit input, and a
    13-band model declared for Sentinel-2 L1C digital numbers."""
    write_package(folder / "seg.onnx", tile_size=TILE, tile_overlap=OVERLAP, seed=1)
    # Tile context (global average pooling): one NaN fed to it would turn its whole tile into NaN.
    write_package(folder / "seg_context.onnx", tile_size=TILE, tile_overlap=OVERLAP, seed=3, tile_context=True)
    write_change_package(folder / "change.onnx", tile_size=TILE, tile_overlap=OVERLAP, threshold=0.4)
    write_classification_package(folder / "scene.onnx", tile_size=TILE, gain=10.0)
    write_detection_package(folder / "det.onnx", False, tile_size=TILE, tile_overlap=OVERLAP)
    write_detection_package(folder / "rdet.onnx", True, tile_size=TILE, tile_overlap=24, angle_deg=30.0)
    # The same weights as seg.onnx, for 16-bit data: raw / 65535 is raw8 / 255 for raw = raw8 x 257.
    meta16 = default_metadata(3, 4, TILE, OVERLAP)
    meta16["input"].update(scale=65535.0, value_range=[0, 65535], dtype=["uint16"])
    write_package(folder / "seg16.onnx", tile_size=TILE, tile_overlap=OVERLAP, seed=1, metadata=meta16)
    meta_s2 = default_metadata(13, 4, TILE, OVERLAP)
    meta_s2["input"].update(scale=10000.0, value_range=[0, 20000], mean=[0.1] * 13, std=[0.05] * 13)
    write_package(folder / "s2.onnx", num_bands=13, tile_size=TILE, tile_overlap=OVERLAP, seed=2, metadata=meta_s2)
    return folder


# ---------------------------------------------------------------------------------------------- corpus

@dataclass(frozen=True)
class Raster:
    """A corpus input; `grid` names the pixel grid it shares (rasters of one grid are compared pixel by
    pixel); `expect` is what every task should do with it: "same" (the clean raster's result), "masked"
    (the clean result except at invalid pixels, which are nodata), "empty" (everything nodata),
    "valid" (a well-formed result), or "refused: <fragment of the message>"."""

    name: str
    path: Path
    grid: str
    expect: str


def _save(path: Path, data: np.ndarray, like: gdal.Dataset | None, dtype: int, nodata: float | None = None,
          gt=None, srs: str | None = None) -> Path:
    bands, height, width = data.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, dtype, options=["TILED=NO"])
    if like is not None:
        ds.SetGeoTransform(like.GetGeoTransform())
        ds.SetSpatialRef(like.GetSpatialRef())
    if gt is not None:
        ds.SetGeoTransform(gt)
    if srs is not None:
        ref = osr.SpatialReference()
        ref.SetFromUserInput(srs)
        ds.SetSpatialRef(ref)
    for b in range(bands):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(data[b])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds.FlushCache()
    return path


def build_corpus(folder: Path, http_port: int) -> dict[str, Raster]:
    """The bad rasters of the issue (and a clean base), cut from real imagery (cogeo.tif, Sentinel-2)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = burn_objects(COGEO, folder / "base.tif", HBOX_OBJECTS + RBOX_OBJECTS, src_win=BASE_WINDOW, darken=0.5)
    src = gdal.Open(str(base))
    pixels = src.ReadAsArray()  # (3, 128, 128) uint8
    f32 = pixels.astype(np.float32)
    out: dict[str, Raster] = {}

    def add(name: str, path: Path, grid: str, expect: str) -> None:
        out[name] = Raster(name, path, grid, expect)

    add("clean", base, "base", "same")
    one_nan = f32.copy()
    one_nan[0][NAN_PIXEL] = np.nan
    add("float32, one NaN pixel", _save(folder / "one_nan.tif", one_nan, src, gdal.GDT_Float32), "base", "masked")
    block = f32.copy()
    block[:, NAN_BLOCK[0], NAN_BLOCK[1]] = np.nan
    add("float32, NaN block", _save(folder / "nan_block.tif", block, src, gdal.GDT_Float32), "base", "masked")
    add("float32, NaN block, nodata=NaN declared",
        _save(folder / "nan_block_nodata.tif", block, src, gdal.GDT_Float32, nodata=float("nan")), "base", "masked")
    inf = f32.copy()
    inf[1][NAN_PIXEL] = np.inf
    inf[2][NAN_BLOCK[0], NAN_BLOCK[1]] = -np.inf
    add("float32, +Inf pixel and -Inf block", _save(folder / "inf.tif", inf, src, gdal.GDT_Float32), "base", "masked")
    add("float32, all NaN", _save(folder / "all_nan.tif", np.full_like(f32, np.nan), src, gdal.GDT_Float32),
        "base", "empty")
    add("uint8, all nodata", _save(folder / "all_nodata.tif", np.zeros_like(pixels), src, gdal.GDT_Byte, nodata=0),
        "base", "empty")
    add("uint16 (8-bit x 257)", _save(folder / "uint16.tif", pixels.astype(np.uint16) * 257, src, gdal.GDT_UInt16),
        "base", "refused: values from")
    add("int16 (8-bit values)", _save(folder / "int16.tif", pixels.astype(np.int16), src, gdal.GDT_Int16),
        "base", "same")
    add("float64 (8-bit values)", _save(folder / "float64.tif", pixels.astype(np.float64), src, gdal.GDT_Float64),
        "base", "same")
    s2 = np.load(S2_SCENES)[2]  # a clear scene, 101 x 100 x 13 TOA reflectance
    s2_dn = np.round(np.moveaxis(s2, -1, 0) * 10000).astype(np.uint16)  # L1C digital numbers
    add("13 bands (Sentinel-2 L1C, uint16)", _save(folder / "s2_13bands.tif", s2_dn, None, gdal.GDT_UInt16,
                                                   gt=(500000, 10, 0, 5100000, 0, -10), srs="EPSG:32633"),
        "s2", "refused: values from")
    add("1 x 1", _save(folder / "one_pixel.tif", pixels[:, 40:41, 40:41], None, gdal.GDT_Byte,
                       gt=(0, 1, 0, 0, 0, -1)), "one", "valid")
    row = np.tile(pixels[:, 64:65, :], (1, 1, 100000 // 128 + 1))[:, :, :100000]
    add("100000 x 1", _save(folder / "strip.tif", np.ascontiguousarray(row), None, gdal.GDT_Byte,
                            gt=(0, 1, 0, 0, 0, -1)), "strip", "valid")
    gt = src.GetGeoTransform()
    rotated = (gt[0], gt[1] * 0.8, gt[1] * 0.6, gt[3], gt[1] * 0.6, -gt[1] * 0.8)  # turned by ~37 degrees
    add("rotated geotransform", _save(folder / "rotated.tif", pixels, src, gdal.GDT_Byte, gt=rotated),
        "rotated", "valid")
    add("two bands", _save(folder / "two_bands.tif", pixels[:2], src, gdal.GDT_Byte), "base",
        "refused: has 2 band(s)")
    truncated = folder / "truncated.tif"
    gdal.Translate(str(truncated), str(base), creationOptions=["TILED=YES", "BLOCKXSIZE=32", "BLOCKYSIZE=32"])
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    add("truncated GeoTIFF", truncated, "base", "refused: truncated or corrupt")
    text = folder / "notes.tif"
    text.write_text("not an image\n")
    add("text file named .tif", text, "base", "refused: not a raster GDAL can read")
    empty = folder / "empty.tif"
    empty.write_bytes(b"")
    add("empty file", empty, "base", "refused: not a raster GDAL can read")
    def vrt_over(source: str) -> str:
        return ('<VRTDataset rasterXSize="128" rasterYSize="128">'
                + "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename '
                          f'relativeToVRT="0">{source}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource>'
                          "</VRTRasterBand>" for b in (1, 2, 3))
                + "</VRTDataset>")

    vrt = folder / "remote.vrt"
    vrt.write_text(vrt_over(f"/vsicurl/http://127.0.0.1:{http_port}/tile.tif"))
    add("VRT with a /vsicurl/ source", vrt, "base", "refused: over the network")
    nested = folder / "nested.vrt"
    nested.write_text(vrt_over(str(vrt)))
    add("VRT over that VRT", nested, "base", "refused: over the network")
    return out


def invalid_pixels(raster: Raster) -> np.ndarray:
    """Where a corpus raster on the base grid is invalid (any band non-finite, or every band nodata)."""
    ds = gdal.Open(str(raster.path))
    data = ds.ReadAsArray().astype(np.float64)
    bad = ~np.isfinite(data).all(axis=0)
    nodata = [ds.GetRasterBand(b + 1).GetNoDataValue() for b in range(ds.RasterCount)]
    if all(v is not None and not np.isnan(v) for v in nodata):
        bad |= np.all([data[b] == nodata[b] for b in range(ds.RasterCount)], axis=0)
    return bad


def copy_into(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, folder / path.name))


# ---------------------------------------------------------------------------------------------- requests

# Text that breaks naive code: NUL bytes, lone surrogates, over-long names, control characters, huge numbers.
NASTY_TEXT = ["", " ", "\0", "a\0b", "\ud800", "é" * 200, "x" * 300, "../../etc/passwd", "/", "//", "/dev/null",
              "/proc/self/mem", "C:\\\\x.tif", "http://127.0.0.1:9/x.tif", "/vsicurl/http://127.0.0.1:9/x.tif",
              "EPSG:4326", "+proj=longlat", "\n", "%s%n", "{}", "[]", "null"]
NASTY_NUMBERS = [0, -1, 1, 2**31, 2**63, 10**400, -(10**400), 0.5, -0.0, 1e308, -1e308, 5e-324, True, False]


def schema_strategy(schema: dict, components: dict, depth: int = 0):
    """A hypothesis strategy for JSON values of an OpenAPI/JSON schema (the subset FastAPI writes: $ref,
    type, properties/required, items, additionalProperties, anyOf, enum, bounds), with values at and past
    the schema's bounds: the backend must refuse those, not fail."""
    from hypothesis import strategies as st

    if "$ref" in schema:
        return schema_strategy(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth)
    if "anyOf" in schema:
        return st.one_of(*[schema_strategy(s, components, depth) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = schema.get("minimum", -(2**40)), schema.get("maximum", 2**40)
        return st.one_of(st.integers(low - 2, high + 2), st.sampled_from(NASTY_NUMBERS))
    if kind == "number":
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(NASTY_NUMBERS))
    if kind == "string":
        limit = schema.get("maxLength", 64)
        return st.one_of(st.text(string.printable, max_size=min(limit, 64) + 2), st.sampled_from(NASTY_TEXT),
                         st.text(max_size=8))
    if kind == "array":
        items = schema_strategy(schema.get("items", {}), components, depth + 1)
        return st.lists(items, min_size=max(0, schema.get("minItems", 0) - 1), max_size=schema.get("maxItems", 3) + 1)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {k: schema_strategy(v, components, depth + 1) for k, v in props.items()}
        extra = schema.get("additionalProperties")
        extras = (st.dictionaries(st.sampled_from(["batch_size", "cell_size", "score_threshold", "min_area_px",
                                                     "raster", "vector", "polygons", "unknown", ""]),
                                  schema_strategy(extra, components, depth + 1) if isinstance(extra, dict) else json_values(),
                                  max_size=3)
                  if extra not in (None, False) else st.just({}))

        @st.composite
        def build(draw):
            value = {}
            for key, strategy in fields.items():
                # Required keys are sometimes left out, optional ones sometimes given.
                if draw(st.integers(0, 9)) < (9 if key in required else 5):
                    value[key] = draw(strategy)
            value.update(draw(extras))
            return value

        return build()
    return json_values()


def json_values():
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=10), st.sampled_from(NASTY_TEXT + NASTY_NUMBERS))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                        max_leaves=8)


def dumps(value: Any) -> bytes:
    """JSON as a client would send it; Python's json writes 10**400 as a plain integer literal."""
    return json.dumps(value).encode("utf-8", "surrogatepass")

"""Sensors, band roles, reflectance and spectral indices (docs/contract.md §1 "Bands by role", §3).

A raster's bands are given *roles* (blue, green, red, nir, swir1, ...) by a sensor preset (Sentinel-2 L1C/L2A,
Landsat 8/9, NAIP, PlanetScope), recognised from what GDAL exposes (band descriptions such as "B04" or "nir",
band wavelengths, product metadata) or chosen by the caller. The preset also says how raw values become
reflectance (`reflectance = raw * gain + offset`). A model package that names its bands by role then runs on
any sensor that has them, and spectral indices (NDVI, NDWI, ...) are computed from reflectance by role.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from osgeo import gdal

from backend.errors import BackendError

# Every role a band can have, bluest first. A model's `input.band_roles` and an index's inputs use these names.
ROLES = ("coastal", "blue", "green1", "green", "yellow", "red", "rededge1", "rededge2", "rededge3", "nir",
         "nir08", "water_vapour", "cirrus", "swir1", "swir2")
# Wavelength windows (nm) that give a band its role when GDAL exposes its centre wavelength.
ROLE_WAVELENGTHS = (("coastal", 400, 455), ("blue", 455, 515), ("green1", 515, 540), ("green", 540, 585),
                    ("yellow", 585, 625), ("red", 625, 690), ("rededge1", 690, 720), ("rededge2", 720, 760),
                    ("rededge3", 760, 800), ("nir", 800, 900), ("water_vapour", 930, 960), ("cirrus", 1350, 1400),
                    ("swir1", 1540, 1760), ("swir2", 2050, 2350))
# Words that name a role in band descriptions (lower case, separators removed).
ROLE_WORDS = {
    "coastal": "coastal", "coastalblue": "coastal", "coastalaerosol": "coastal", "aerosol": "coastal",
    "blue": "blue", "greeni": "green1", "green1": "green1", "green": "green", "yellow": "yellow", "red": "red",
    "rededge": "rededge1", "rededge1": "rededge1", "re1": "rededge1", "rededge2": "rededge2", "re2": "rededge2",
    "rededge3": "rededge3", "re3": "rededge3", "nir": "nir", "nearinfrared": "nir", "infrared": "nir", "nir08": "nir08",
    "narrownir": "nir08", "nirnarrow": "nir08", "watervapour": "water_vapour", "watervapor": "water_vapour",
    "cirrus": "cirrus", "swir1": "swir1", "swir16": "swir1", "swir2": "swir2", "swir22": "swir2",
}


@dataclass(frozen=True)
class Sensor:
    """A sensor product's band layout: the bands in file order (their product names and roles) and how raw
    integer values become reflectance."""

    key: str
    label: str
    band_names: tuple[str, ...]
    roles: tuple[str, ...]
    gain: float
    offset: float = 0.0

    def describe(self) -> str:
        return f"{self.label}: " + ", ".join(f"{n} {r}" for n, r in zip(self.band_names, self.roles))


_S2_NAMES = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_S2_ROLES = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "water_vapour",
             "cirrus", "swir1", "swir2")
_L2A = [i for i, n in enumerate(_S2_NAMES) if n != "B10"]  # L2A drops the cirrus band
SENSORS = {s.key: s for s in (
    Sensor("sentinel2_l1c", "Sentinel-2 L1C (13 bands)", _S2_NAMES, _S2_ROLES, 1e-4),
    Sensor("sentinel2_l2a", "Sentinel-2 L2A (12 bands)", tuple(_S2_NAMES[i] for i in _L2A),
           tuple(_S2_ROLES[i] for i in _L2A), 1e-4),
    # Collection 2 Level-2 surface reflectance, SR_B1..SR_B7.
    Sensor("landsat8_9", "Landsat 8/9 OLI (7 surface-reflectance bands)",
           ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
           ("coastal", "blue", "green", "red", "nir", "swir1", "swir2"), 2.75e-5, -0.2),
    # NAIP is not calibrated: 8-bit values / 255 stand in for reflectance.
    Sensor("naip", "NAIP RGBN (4 bands)", ("R", "G", "B", "N"), ("red", "green", "blue", "nir"), 1 / 255),
    Sensor("planetscope_4", "PlanetScope 4-band surface reflectance", ("blue", "green", "red", "nir"),
           ("blue", "green", "red", "nir"), 1e-4),
    Sensor("planetscope_8", "PlanetScope 8-band surface reflectance (SuperDove)",
           ("coastal_blue", "blue", "green_i", "green", "yellow", "red", "rededge", "nir"),
           ("coastal", "blue", "green1", "green", "yellow", "red", "rededge1", "nir"), 1e-4),
)}
AUTO = "auto"
# Reflectance above this is not reflectance: the raster's scaling is not the sensor's.
MAX_REFLECTANCE = 2.0


# ---------------------------------------------------------------------------------------------- indices

def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b); NaN where a + b is 0 (no defined value)."""
    total = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a - b) / total
    out[total == 0] = np.nan
    return out


@dataclass(frozen=True)
class SpectralIndex:
    key: str
    label: str
    roles: tuple[str, ...]
    formula: str
    compute: Callable[[dict[str, np.ndarray]], np.ndarray]
    reference: str


INDICES = {i.key: i for i in (
    SpectralIndex("ndvi", "NDVI", ("nir", "red"), "(nir - red) / (nir + red)",
                  lambda r: normalized_difference(r["nir"], r["red"]), "Rouse et al. 1974"),
    SpectralIndex("ndwi", "NDWI", ("green", "nir"), "(green - nir) / (green + nir)",
                  lambda r: normalized_difference(r["green"], r["nir"]), "McFeeters 1996"),
    SpectralIndex("mndwi", "MNDWI", ("green", "swir1"), "(green - swir1) / (green + swir1)",
                  lambda r: normalized_difference(r["green"], r["swir1"]), "Xu 2006"),
    SpectralIndex("ndbi", "NDBI", ("swir1", "nir"), "(swir1 - nir) / (swir1 + nir)",
                  lambda r: normalized_difference(r["swir1"], r["nir"]), "Zha et al. 2003"),
    SpectralIndex("bsi", "BSI", ("swir1", "red", "nir", "blue"),
                  "((swir1 + red) - (nir + blue)) / ((swir1 + red) + (nir + blue))",
                  lambda r: normalized_difference(r["swir1"] + r["red"], r["nir"] + r["blue"]), "Rikimaru et al. 2002"),
)}


def unknown_indices(names) -> list[str]:
    return [n for n in names if n not in INDICES]


def index_roles(names) -> list[str]:
    """The roles the indices `names` read, in ROLES order."""
    needed = {role for n in names for role in INDICES[n].roles}
    return [r for r in ROLES if r in needed]


def compute_indices(reflectance: dict[str, np.ndarray], names) -> np.ndarray:
    """(len(names), h, w) float32 from reflectance arrays by role; NaN where a value is undefined or an input
    pixel is NaN (invalid)."""
    return np.stack([INDICES[n].compute(reflectance).astype(np.float32, copy=False) for n in names])


# ---------------------------------------------------------------------------------------------- recognition

@dataclass(frozen=True)
class BandLayout:
    """What a raster's bands hold: `roles[role] = 1-based band number`, and per band number the
    reflectance gain and offset. `source` says how it was found (for messages)."""

    sensor: str          # a SENSORS key, or "" when the roles came from band descriptions/wavelengths alone
    label: str
    roles: dict[str, int]
    gains: dict[int, float]
    offsets: dict[int, float]
    source: str

    def missing(self, roles) -> list[str]:
        return [r for r in roles if r not in self.roles]

    def bands(self, roles) -> list[int]:
        return [self.roles[r] for r in roles]

    def has(self) -> str:
        return ", ".join(r for r in ROLES if r in self.roles) or "no band of a known role"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


_PRODUCT_BAND = re.compile(r"^(?:sr_?)?b_?0?(\d{1,2}|8a)$")


def _band_texts(band: gdal.Band) -> list[str]:
    texts = [band.GetDescription() or ""]
    md = band.GetMetadata() or {}
    texts += [str(v) for k, v in md.items() if k.lower() in ("bandname", "band_name", "name", "standard_name",
                                                            "common_name", "long_name")]
    return [t for t in texts if t.strip()]


def _product_band_name(text: str) -> str | None:
    """"B04", "B4", "SR_B4", "B8A", "B4, central wavelength 665 nm" -> "4" / "8a"; None otherwise."""
    first = re.split(r"[,;(]", text.strip())[0].strip()
    match = _PRODUCT_BAND.match(first.lower().replace(" ", ""))
    return match.group(1).lstrip("0") if match else None


def _role_word(text: str) -> str | None:
    return ROLE_WORDS.get(_norm(text))


def _wavelength_nm(band: gdal.Band) -> float | None:
    md = {k.lower(): v for k, v in (band.GetMetadata() or {}).items()}
    for key in ("central_wavelength_nm", "wavelength", "central_wavelength", "wavelength_nm", "central_wavelength_um",
                "center_wavelength"):
        if key in md:
            try:
                value = float(str(md[key]).split()[0])
            except ValueError:
                continue
            unit = str(md.get("wavelength_units", md.get("wavelength_unit", ""))).lower()
            if key.endswith("_um") or unit.startswith(("micro", "um", "µm")) or value < 5:
                value *= 1000.0
            return value
    match = re.search(r"(\d{3,4}(?:\.\d+)?)\s*nm", band.GetDescription() or "")
    return float(match.group(1)) if match else None


def _role_of_wavelength(nm: float) -> str | None:
    return next((role for role, lo, hi in ROLE_WAVELENGTHS if lo <= nm < hi), None)


def _dataset_text(ds: gdal.Dataset) -> str:
    md = ds.GetMetadata() or {}
    return " ".join(f"{k}={v}" for k, v in md.items()).upper()


def _sensor_of_product_names(names: list[str], ds: gdal.Dataset, prefixed: bool) -> Sensor | None:
    """A preset from product band names ("4", "8a", ...): Sentinel-2 or Landsat, told apart by B8A, the band
    count, an SR_ prefix or the product metadata."""
    meta = _dataset_text(ds)
    landsat = prefixed or "LANDSAT" in meta
    sentinel = "8a" in names or "SENTINEL" in meta or len(names) > 7
    if landsat == sentinel:
        return None
    if sentinel:
        return SENSORS["sentinel2_l1c" if "10" in names or len(names) == 13 else "sentinel2_l2a"]
    return SENSORS["landsat8_9"]


def _preset_roles(sensor: Sensor, names: list[str]) -> list[str] | None:
    index = {n.lower().lstrip("b").lstrip("0"): r for n, r in zip(sensor.band_names, sensor.roles)}
    roles = [index.get(n) for n in names]
    return None if None in roles else roles


def _scaling(ds: gdal.Dataset, sensor: Sensor | None) -> tuple[dict[int, float], dict[int, float], str]:
    """Per band (gain, offset) to reflectance, and what they came from."""
    gains, offsets, sources = {}, {}, set()
    meta = {k.upper(): v for k, v in (ds.GetMetadata() or {}).items()}
    quantification = next((float(v) for k, v in meta.items() if "QUANTIFICATION_VALUE" in k and _number(v)), None)
    shared_offset = next((float(v) for k, v in meta.items() if k.endswith("ADD_OFFSET") and _number(v)), None)
    for number in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(number)
        scale, offset = band.GetScale(), band.GetOffset()
        band_md = {k.upper(): v for k, v in (band.GetMetadata() or {}).items()}
        band_offset = next((float(v) for k, v in band_md.items() if k.endswith("ADD_OFFSET") and _number(v)),
                           shared_offset)
        if (scale not in (None, 1.0)) or (offset not in (None, 0.0)):
            gains[number], offsets[number] = float(scale or 1.0), float(offset or 0.0)
            sources.add("the bands' scale/offset")
        elif gdal.GetDataTypeName(band.DataType).startswith("Float"):
            gains[number], offsets[number] = 1.0, 0.0
            sources.add("floating-point values taken as reflectance")
        elif quantification or band_offset is not None:
            q = quantification or 10000.0
            gains[number], offsets[number] = 1.0 / q, (band_offset or 0.0) / q
            sources.add("the product's quantification and offset")
        elif sensor is not None:
            gains[number], offsets[number] = sensor.gain, sensor.offset
            sources.add(f"{sensor.label} scaling")
        else:
            kind = gdal.GetDataTypeName(band.DataType)
            gains[number], offsets[number] = (1 / 255, 0.0) if kind == "Byte" else (1e-4, 0.0)
            sources.add("8-bit values / 255" if kind == "Byte" else "integer values / 10000")
    return gains, offsets, "; ".join(sorted(sources))


def _number(text) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def sensor_choices() -> str:
    return ", ".join(SENSORS)


def recognise(ds: gdal.Dataset, name: str, sensor: str | None = None) -> BandLayout:
    """The band layout of a raster: from the named sensor preset (`sensor`), else recognised from what GDAL
    exposes. Raises BackendError naming the raster and the presets when it cannot be told."""
    count = ds.RasterCount
    chosen = (sensor or AUTO).strip().lower()
    if chosen != AUTO:
        preset = SENSORS.get(chosen)
        if preset is None:
            raise BackendError(f"Sensor '{sensor[:60]}' is not known; choose one of {AUTO}, {sensor_choices()}.")
        if count != len(preset.band_names):
            raise BackendError(
                f"Input {name} has {count} band(s) but {preset.label} has {len(preset.band_names)} "
                f"({', '.join(preset.band_names)}); choose the sensor whose bands the raster holds, or '{AUTO}'.")
        gains, offsets, how = _scaling(ds, preset)
        return BandLayout(preset.key, preset.label, {r: i + 1 for i, r in enumerate(preset.roles)}, gains, offsets,
                          f"chosen ({how})")
    bands = [ds.GetRasterBand(i + 1) for i in range(count)]
    texts = [_band_texts(b) for b in bands]
    # 1. Product band names (B04, SR_B4, B8A) on every band.
    names = [next((n for n in map(_product_band_name, t) if n), None) for t in texts]
    if all(names) and len(set(names)) == count:
        prefixed = any(t.lower().startswith("sr_") for ts in texts for t in ts)
        preset = _sensor_of_product_names(names, ds, prefixed)
        roles = _preset_roles(preset, names) if preset else None
        if roles:
            gains, offsets, how = _scaling(ds, preset)
            exact = count == len(preset.band_names)
            label = preset.label if exact else f"{preset.label.split(' (')[0]} bands {', '.join(n.upper() for n in names)}"
            return BandLayout(preset.key if exact else "", label, {r: i + 1 for i, r in enumerate(roles)}, gains,
                              offsets, f"band names ({how})")
    # 2. Role words (blue, nir, red edge, ...) on every band.
    words = [next((w for w in map(_role_word, t) if w), None) for t in texts]
    # 3. Centre wavelengths.
    if not all(words):
        waves = [_wavelength_nm(b) for b in bands]
        if all(waves):
            words = [_role_of_wavelength(w) for w in waves]
    if all(words) and len(set(words)) == count:
        preset = next((s for s in SENSORS.values() if list(s.roles) == words), None)
        gains, offsets, how = _scaling(ds, preset)
        label = preset.label if preset else "bands " + ", ".join(words)
        return BandLayout(preset.key if preset else "", label, {r: i + 1 for i, r in enumerate(words)}, gains,
                          offsets, f"band descriptions ({how})")
    if any(texts):
        described = "; ".join(f"band {i + 1}: {', '.join(t)[:40] or 'no description'}" for i, t in enumerate(texts[:13]))
        found = f"its {count} band(s) are described as {described}, which names no sensor's bands"
    else:
        found = f"none of its {count} band(s) has a description, band name or wavelength GDAL can read"
    raise BackendError(
        f"Cannot tell which sensor {name} comes from: {found}. Choose the sensor (options.sensor; the SENSOR "
        f"parameter in QGIS): one of {sensor_choices()}.")


def require_roles(layout: BandLayout, roles, name: str, why: str) -> None:
    """Refuse a raster that lacks a role `why` needs (e.g. "MNDWI (green, swir1)")."""
    missing = layout.missing(roles)
    if missing:
        raise BackendError(f"Input {name} ({layout.label}) has no {', '.join(missing)} band, which {why} needs; it "
                           f"has {layout.has()}. Use a raster with those bands, or leave it out.")


def index_names_for(layout: BandLayout) -> list[str]:
    """The indices the raster's bands allow, in INDICES order."""
    return [k for k, i in INDICES.items() if not layout.missing(i.roles)]


def describe_index(key: str) -> str:
    index = INDICES[key]
    return f"{index.label} ({', '.join(index.roles)})"


def check_reflectance(ds: gdal.Dataset, name: str, layout: BandLayout, bands: list[int], window, sampled) -> None:
    """Refuse values that the layout's scaling turns into reflectance above MAX_REFLECTANCE (e.g. 16-bit digital
    numbers taken as 8-bit NAIP): the sensor or the scaling is wrong. `sampled(band, window)` -> (min, max)."""
    for number in bands:
        found = sampled(ds.GetRasterBand(number), window)
        if found is None:
            continue
        top = found[1] * layout.gains[number] + layout.offsets[number]
        if top > MAX_REFLECTANCE:
            raise BackendError(
                f"Input {name} band {number} has values up to {found[1]:g}, which, read as {layout.label} "
                f"({layout.source}), is reflectance {top:.4g}; reflectance is 0..1. Choose the sensor the raster "
                f"comes from (one of {sensor_choices()}), or give the bands a scale (gdal_edit.py -scale).")

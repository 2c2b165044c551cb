"""MTP's photometric distortion (official `MTP_PhotoMetricDistortion`, mmcv's PhotoMetricDistortion), on
HxWx3 RGB float arrays holding 0..255 values.

Steps, each applied with probability 1/2: brightness (+U(-32, 32)), contrast (x U(0.5, 1.5)) either second or
last (a coin picks), saturation (x U(0.5, 1.5) on HSV S), hue (+randint(-18, 18) on OpenCV's 0..180 scale).
Every brightness / contrast / saturation step ends as mmcv's `convert` does: clip to 0..255 and truncate to
uint8.

`mode="official"` also reproduces what the official pipeline does because it loads images as float32
(`to_float32=True`): until a brightness or contrast step has turned the image into uint8, the HSV steps see a
float image, for which OpenCV's HSV has S in 0..1 and H in 0..360; the saturation step's uint8 truncation then
sets S to 0 or 1 (a grey image with a few fully saturated pixels) and the hue step wraps 0..360 at 180.
About 19 % of the official training crops go grey this way. `mode="uint8"` applies mmcv's uint8 semantics
throughout (what the transform was written for); `mode="none"` leaves the image alone.
"""
from typing import Tuple

import numpy as np

MODES = ("official", "uint8", "none")
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18


def rgb_to_hsv(rgb: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's float HSV of RGB values: H in degrees [0, 360), S in [0, 1], V = max(R, G, B)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0.0)
    safe = np.where(delta > 0, delta, 1)
    h = np.where(v == r, 60 * (g - b) / safe, np.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
    h = np.where(delta > 0, h, 0.0)
    return np.where(h < 0, h + 360, h), s, v


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inverse of rgb_to_hsv (H in degrees, any real value taken modulo 360)."""
    h6 = np.mod(h, 360) / 60.0
    i = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(h.shape + (3,), dtype=np.float64)
    for k, (r, g, b) in enumerate(choices):
        sel = i == k
        out[sel, 0], out[sel, 1], out[sel, 2] = r[sel], g[sel], b[sel]
    return out


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmcv's convert: x * alpha + beta, clipped to 0..255, truncated to uint8 (kept as float here)."""
    return np.floor(np.clip(x.astype(np.float64) * alpha + beta, 0, 255))


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, mode: str = "official") -> np.ndarray:
    """image HxWx3 float (0..255) -> distorted copy (float64, 0..255). Draws from `rng` in a fixed order, so a
    seeded generator repeats the distortion."""
    if mode not in MODES:
        raise ValueError(f"photometric mode must be one of {MODES}, not {mode!r}")
    img = image.astype(np.float64)
    if mode == "none":
        return img
    # Official: float32 until the first convert; the uint8 mode starts (as mmcv intends) from uint8 pixels.
    is_uint8 = mode == "uint8"
    if is_uint8:
        img = np.floor(np.clip(img, 0, 255))

    def contrast(x, is_u8):
        if rng.integers(2):
            return _convert(x, alpha=rng.uniform(*CONTRAST_RANGE)), True
        return x, is_u8

    if rng.integers(2):
        img, is_uint8 = _convert(img, beta=rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)), True
    contrast_first = rng.integers(2) == 1
    if contrast_first:
        img, is_uint8 = contrast(img, is_uint8)
    if rng.integers(2):   # saturation
        alpha = rng.uniform(*SATURATION_RANGE)
        h, s, v = rgb_to_hsv(img)
        if is_uint8:   # 8-bit HSV: S stored as round(255 s), H as round(h / 2)
            h, s8 = np.round(h / 2) * 2, _convert(np.round(s * 255), alpha)
            img = np.round(np.clip(hsv_to_rgb(h, s8 / 255.0, v), 0, 255))
        else:          # float HSV: S in 0..1, truncated to 0 or 1 by the uint8 convert
            img = hsv_to_rgb(h, _convert(s, alpha), v)
    if rng.integers(2):   # hue
        delta = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1))
        h, s, v = rgb_to_hsv(img)
        if is_uint8:   # OpenCV 8-bit hue: 0..180 for 0..360 degrees
            h8 = (np.round(h / 2).astype(np.int64) + delta) % 180
            img = np.round(np.clip(hsv_to_rgb(h8 * 2.0, np.round(s * 255) / 255.0, v), 0, 255))
        else:          # float hue is in degrees, but the step still wraps at 180
            img = hsv_to_rgb(((h.astype(np.int64) + delta) % 180).astype(np.float64), s, v)
    if not contrast_first:
        img, is_uint8 = contrast(img, is_uint8)
    return img

"""Decoded images to the 8-bit grey or RGB a model expects, for every mode Pillow can hand us.

Pillow's own `convert("L"/"RGB")` is wrong for several modes a user's folder can hold: it drops alpha (so a
transparent pixel becomes whatever colour was stored under it, often black), and it clips 16-bit and 32-bit
values to 255 (so a 12-bit scan turns almost entirely white). `to_mode` fixes those cases and leaves the rest
to Pillow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
BACKGROUND = (255, 255, 255)  # transparent pixels become white: most transparent PNGs are drawn for white pages
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
PLAIN_MODES = ("L", "RGB", "P")  # convert without loss of meaning when they carry no transparency


def has_transparency(image: Image.Image) -> bool:
    """Alpha channel or a transparent palette entry/colour key: both need compositing, not dropping."""
    return image.mode in ALPHA_MODES or "transparency" in image.info


def is_high_bit_depth(mode: str) -> bool:
    """16-bit and 32-bit integer or float modes, which Pillow clips to 255 when converting to 8 bits."""
    return mode.startswith("I;16") or mode in ("I", "F")


def conversion_note(image: Image.Image) -> str | None:
    """How `to_mode` changes an image that is not plain L, RGB or opaque P; None when nothing special happens."""
    mode = image.mode
    if is_high_bit_depth(mode):
        if mode == "F":
            return "F (32-bit float): scaled to 8 bits by its value range ([0, 1] kept as is)"
        return f"{mode} ({'16' if mode.startswith('I;16') else '32'}-bit): scaled to 8 bits by the bit depth its values use"
    if has_transparency(image):
        what = "palette with a transparent entry" if mode == "P" else "alpha" if mode in ALPHA_MODES else "transparent colour key"
        return f"{mode} ({what}): composited on white"
    if mode == "1":
        return "1 (1-bit): black and white become 0 and 255"
    if mode == "CMYK":
        return "CMYK: converted to RGB without colour management"
    if mode not in PLAIN_MODES:
        return f"{mode}: converted to RGB by Pillow"
    return None


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Grey 8-bit image of a 16/32-bit one, scaled by the range its values really use instead of clipped at 255.

    Integers keep the bit depth of their maximum (values up to 4095 are treated as 12-bit, so 4095 -> 255), which
    keeps the relative brightness of images from one sensor; floats in [0, 1] map to [0, 255], others by min-max.
    """
    values = np.asarray(image).astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Image.new("L", image.size, 0)
    low, high = float(finite.min()), float(finite.max())
    if image.mode == "F":
        if low >= 0 and high <= 1:
            low, high = 0.0, 1.0
    else:
        low = min(0.0, low)
        high = low + float((1 << max(8, int(high - low).bit_length())) - 1)
    values = np.clip(np.nan_to_num(values, nan=low, posinf=high, neginf=low), low, high)
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def _composite_on_background(image: Image.Image) -> Image.Image:
    """RGB image with transparent pixels blended onto BACKGROUND, as a viewer would show it."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """A new 8-bit image with `channels` (1: L, 3: RGB), converted so its content survives whatever its mode."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    target = "L" if channels == 1 else "RGB"
    if is_high_bit_depth(image.mode):
        image = _scale_to_8bit(image)
    elif has_transparency(image):
        image = _composite_on_background(image)
    elif image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode == "1" else "RGB")
    return image.convert(target)

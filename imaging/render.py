"""Rendering a DICOM frame for the browser: modality and VOI LUTs (the image's own window/level),
colour, 8-bit display values, lossless PNG.

Pure functions over datasets and pixel arrays: no I/O.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array


def render_dicom_frame(ds: Dataset, index: int) -> npt.NDArray[np.uint8]:
    """Frame `index` as 8-bit display values: grayscale (rows × columns) or RGB (× 3).

    Grayscale goes through the modality transform (Rescale Slope/Intercept, or a Modality
    LUT), then the VOI transform with the image's first window (VOI LUT Function LINEAR unless
    the image says LINEAR_EXACT or SIGMOID), or the frame's min..max when it has no window;
    MONOCHROME1 is inverted so that high values are dark. Colour is passed through.
    """
    frame = pixel_array(ds, index=index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 8]
        return _to_8bit(apply_color_lut(frame, ds), int(descriptor[2]))
    if frame.ndim == 3:  # pydicom already converted YBR to RGB
        return _to_8bit(frame, int(ds.get("BitsStored") or frame.dtype.itemsize * 8))
    values = _modality_values(ds, frame, index)
    window = _window(ds, index)
    if window is None:
        display = _min_max(values)
    else:
        center, width, function = window
        display = voi_lut(values, center, width, function)
    if photometric == "MONOCHROME1":
        display = 255.0 - display
    return np.asarray(np.round(display), dtype=np.uint8)


def voi_lut(
    values: npt.NDArray[np.float64], center: float, width: float, function: str = "LINEAR"
) -> npt.NDArray[np.float64]:
    """PS3.3 C.11.2.1.2's window functions, mapping onto 0..255."""
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        scaled = (values - center) / width + 0.5
    elif width <= 1.0:  # LINEAR with width 1 is a threshold
        return np.where(values <= center - 0.5, 0.0, 255.0)
    else:  # LINEAR, the default: the half-pixel offsets are the standard's, not a typo
        scaled = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(scaled * 255.0, 0.0, 255.0)


def _modality_values(ds: Dataset, frame: npt.NDArray[Any], index: int) -> npt.NDArray[np.float64]:
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    transform = functional_group(ds, index, "PixelValueTransformationSequence")
    source = ds if "RescaleSlope" in ds or transform is None else transform
    slope = float(source.get("RescaleSlope") or 1.0)
    intercept = float(source.get("RescaleIntercept") or 0.0)
    return frame.astype(np.float64) * slope + intercept


def _window(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    frame_voi = functional_group(ds, index, "FrameVOILUTSequence")
    for source in (ds, frame_voi):
        if source is None or not source.get("WindowCenter") or not source.get("WindowWidth"):
            continue
        try:
            center = float(_first(source.WindowCenter))
            width = float(_first(source.WindowWidth))
        except (TypeError, ValueError):
            continue
        function = str(source.get("VOILUTFunction") or "LINEAR").strip().upper()
        if width > 0 and np.isfinite(center) and np.isfinite(width):
            return center, width, function
    return None


def _first(value: Any) -> Any:
    if isinstance(value, str | bytes) or not hasattr(value, "__getitem__"):
        return value
    return value[0]


def _min_max(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _to_8bit(rgb: npt.NDArray[Any], bits: int) -> npt.NDArray[np.uint8]:
    if rgb.dtype == np.uint8:
        return rgb
    top = float((1 << bits) - 1)
    return np.asarray(np.round(np.clip(rgb, 0, top) * (255.0 / top)), dtype=np.uint8)


def functional_group(ds: Dataset, index: int, name: str) -> Dataset | None:
    """Item of macro `name` for frame `index` in an enhanced (functional group) image."""
    for groups, pick in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        if not items or pick >= len(items):
            continue
        inner = items[pick].get(name)
        if inner:
            item: Dataset = inner[0]
            return item
    return None


def display_mode(img: Image.Image) -> Image.Image:
    """The image in a mode whose pixels are 8-bit display values: L, RGB or RGBA."""
    if img.mode in ("L", "RGB", "RGBA"):
        return img
    return img.convert("RGBA" if "transparency" in img.info else "RGB")


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    out = BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=6)
    return out.getvalue()

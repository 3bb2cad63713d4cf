"""Photos (PNG, JPEG) shared into a room: their metadata stripped, their pixels turned upright.

EXIF (with GPS), XMP, text chunks and comments go; the pixels are turned upright by the EXIF
orientation first, since that tag goes with the rest. What was removed is listed by name only.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Any

from PIL import Image, ImageOps, JpegImagePlugin

from imaging.burnedin import NO_HEADER_FINDINGS
from imaging.deidentified import DeidentifiedImage, Removal
from imaging.sniff import (
    DEFAULT_LIMITS,
    ImageKind,
    ImageLimits,
    ImageTooLarge,
    UnsupportedImage,
    check_decoded_size,
)


def strip_photo_metadata(
    data: bytes, kind: ImageKind, *, limits: ImageLimits = DEFAULT_LIMITS
) -> DeidentifiedImage:
    """Re-encode a PNG or JPEG with no metadata but its colour profile, upright.

    PNG is re-encoded losslessly. JPEG is re-encoded with its own quantisation tables and
    chroma subsampling, so the pixels barely change; a plain copy of the compressed data
    would be lossless but would also keep anything a parser misses (trailers, odd segments).
    """
    pillow_format = {ImageKind.PNG: "PNG", ImageKind.JPEG: "JPEG"}[kind]
    try:
        with Image.open(BytesIO(data), formats=[pillow_format]) as img:
            if img.width * img.height > limits.max_frame_pixels:
                raise ImageTooLarge("the image has too many pixels", limit=limits.max_frame_pixels)
            # What Pillow will hold once decoded, from the header alone: a few hundred
            # kilobytes of PNG or JPEG can decode to gigabytes.
            check_decoded_size(img.width * img.height * _photo_bytes_per_pixel(img), 1, limits)
            img.load()  # text chunks after the image data only show up once it is read
            found = tuple(_photo_metadata(img))
            upright = ImageOps.exif_transpose(img)
            icc = img.info.get("icc_profile")
            transparency = img.info.get("transparency")
            jpeg_options = _jpeg_options(img) if kind is ImageKind.JPEG else {}
    except (ImageTooLarge, UnsupportedImage):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("the image has too many pixels") from exc
    except Exception as exc:
        raise UnsupportedImage(f"the {kind.value.upper()} image cannot be decoded") from exc
    clean = upright.copy()
    clean.info = {}  # Pillow writes a JPEG comment from info unless told otherwise
    options: dict[str, Any] = dict(jpeg_options)
    if icc:
        options["icc_profile"] = icc
    if transparency is not None and kind is ImageKind.PNG:
        options["transparency"] = transparency
    out = BytesIO()
    clean.save(out, format=pillow_format, **options)
    return DeidentifiedImage(
        kind=kind,
        rows=clean.height,
        columns=clean.width,
        frame_count=1,
        removed=found,
        photo=out.getvalue(),
        text_check=NO_HEADER_FINDINGS,
    )


# Bytes a pixel takes in Pillow's memory by mode (3-band modes are stored 4 bytes a pixel).
_PILLOW_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def _photo_bytes_per_pixel(img: Image.Image) -> int:
    """Bytes a pixel takes once Pillow has decoded the image (4 for every mode not listed)."""
    return _PILLOW_PIXEL_BYTES.get(img.mode, 4)


def _jpeg_options(img: Image.Image) -> dict[str, Any]:
    options: dict[str, Any] = {"quality": 95}
    if isinstance(img, JpegImagePlugin.JpegImageFile) and img.quantization:
        options = {"qtables": img.quantization}
        sampling = JpegImagePlugin.get_sampling(img)
        if sampling != -1:
            options["subsampling"] = sampling
    return options


# info keys Pillow fills from structure rather than metadata; re-derived or not worth listing.
_STRUCTURAL_INFO = frozenset(
    {"icc_profile", "transparency", "dpi", "aspect", "gamma", "chromaticity", "srgb", "jfif",
     "jfif_version", "jfif_unit", "jfif_density", "adobe", "adobe_transform", "progressive",
     "progression", "interlace", "default_image", "loop", "duration", "disposal", "blend",
     "bbox"}
)  # fmt: skip


def _photo_metadata(img: Image.Image) -> Iterator[Removal]:
    """Name the metadata the re-encode drops (names only: text chunk values may identify)."""
    exif = img.getexif()
    if len(exif):
        yield Removal("EXIF", "Exif", "removed")
        if exif.get_ifd(0x8825):  # the GPS IFD
            yield Removal("EXIF", "GPSInfo", "removed")
    for key in img.info:
        if key in _STRUCTURAL_INFO or key == "exif":
            continue
        yield Removal(img.format or "image", str(key)[:64], "removed")
    for marker, payload in getattr(img, "applist", []):
        if marker.startswith("APP") and marker not in ("APP0", "APP14"):
            name = payload.split(b"\x00", 1)[0][:32].decode("latin-1")
            if name != "Exif" and not name.startswith("ICC_PROFILE"):
                yield Removal(f"JPEG {marker}", name or marker, "removed")

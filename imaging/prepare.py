"""An image made ready to store: de-identified, checked for burned-in text and rendered.

`prepare_image` is all the decoding an upload (or an instance from the PACS) needs, in one pure
call that the node runs in a memory-capped worker (`imaging.worker`); `imaging.store` encrypts
and keeps what it returns. `redact_frame` blanks an uploader's boxes on a stored frame.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
from PIL import Image

from imaging.burnedin import (
    NOT_CHECKED,
    Box,
    BurnedInText,
    HeaderFindings,
    blank,
    clean_frame,
    decide,
)
from imaging.deidentified import DeidentifiedImage
from imaging.deidentify import deidentify
from imaging.render import display_mode
from imaging.sniff import DEFAULT_LIMITS, ImageLimits
from imaging.stack import SlicePlace, slice_place

TITLE_LIMIT = 200
"""Characters of an image's title."""


def image_title(image: DeidentifiedImage) -> str:
    """A title for people: the modality and series description of a de-identified DICOM (what
    de-identification left of them), "Image" for a photo. Never a patient identifier."""
    if image.dataset is None:
        return "Image"
    parts = [
        " ".join(str(image.dataset.get(keyword, "") or "").split())
        for keyword in ("Modality", "SeriesDescription")
    ]
    title = " ".join(part for part in parts if part)
    return title[:TITLE_LIMIT] or "DICOM image"


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An upload de-identified and rendered, ready to store: what an image worker returns."""

    kind: Literal["dicom", "png", "jpeg"]
    """What was uploaded, by content."""
    frames: tuple[bytes, ...]
    """Each frame as served (PNG, or the cleaned JPEG of a photo)."""
    media_type: str
    """MIME type of each frame."""
    width: int
    """Columns in pixels."""
    height: int
    """Rows in pixels."""
    pixel_spacing_mm: tuple[float, float] | None
    """Row and column spacing in mm; None when the image has none."""
    title: str
    """See `SharedImage.title`."""
    burned_in_confirmed: bool
    """The DICOM declared burned-in identifiers and the uploader confirmed sharing it."""
    removed_tags: int
    """How many attributes or metadata items de-identification removed or replaced."""
    burned_in_text: BurnedInText = NOT_CHECKED
    """What the burned-in text check blanked, and whether the image is held."""
    place: SlicePlace | None = None
    """Where a DICOM slice lies (orders a series' slices); None for a photo."""


def prepare_image(
    data: bytes,
    *,
    uid_secret: bytes,
    confirm_burned_in: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> PreparedImage:
    """De-identify and render an upload: all the decoding an upload needs, in one pure call
    (the node runs it in a memory-capped worker, `imaging.worker`, whose output goes
    nowhere). Decoder warnings are dropped here too: pydicom's quote the values they parse."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = deidentify(
            data, uid_secret=uid_secret, confirm_burned_in=confirm_burned_in, limits=limits
        )
        if image.text_check is None:
            frames = tuple(image.render_frame(index) for index in image.frames)
            text = NOT_CHECKED
        else:
            frames, text = _without_burned_in_text(image, image.text_check)
    spacing = image.pixel_spacing
    return PreparedImage(
        kind=cast(Literal["dicom", "png", "jpeg"], image.kind.value),
        frames=frames,
        media_type=image.media_type,
        width=image.columns,
        height=image.rows,
        pixel_spacing_mm=(spacing.row_mm, spacing.column_mm) if spacing else None,
        title=image_title(image),
        burned_in_confirmed=image.burned_in_confirmed,
        removed_tags=len(image.removed),
        burned_in_text=text,
        place=slice_place(image.dataset) if image.dataset is not None else None,
    )


def _without_burned_in_text(
    image: DeidentifiedImage, header: HeaderFindings
) -> tuple[tuple[bytes, ...], BurnedInText]:
    """Every frame with device regions and readable text blanked (`imaging.burnedin`), one
    frame in memory at a time; a frame nothing was found in is kept as rendered."""
    frames: list[bytes] = []
    blanked: list[tuple[int, Box]] = []
    remains = False
    for index in image.frames:
        pixels = image.frame_pixels(index)
        boxes, still = clean_frame(pixels, header.regions)
        keep = not boxes and image.photo is not None  # a photo as cleaned, not re-encoded
        frames.append(image.render_frame(index) if keep else image.encode_frame(pixels))
        blanked += [(index, box) for box in boxes]
        remains = remains or still
    return tuple(frames), decide(header, blanked, remains)


def redact_frame(data: bytes, media_type: str, boxes: Sequence[Box]) -> bytes:
    """A stored frame (PNG or JPEG, as rendered) with `boxes` blanked, in the same format."""
    with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
        pixels = np.array(display_mode(img))
    blank(pixels, boxes)
    out = io.BytesIO()
    if media_type == "image/jpeg":
        Image.fromarray(pixels).convert("RGB").save(out, format="JPEG", quality=95)
    else:
        Image.fromarray(pixels).save(out, format="PNG", compress_level=6)
    return out.getvalue()

"""What de-identification returns: the image with nothing identifying left, and what went.

`DeidentifiedImage` is what the room may see, store and audit (frames rendered on demand);
`Removal` names each thing removed or replaced by tag and name, never by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from imaging.burnedin import HeaderFindings
from imaging.render import display_mode, encode_png, render_dicom_frame
from imaging.sniff import (
    FrameNotFound,
    ImageKind,
)


@dataclass(frozen=True, slots=True)
class Removal:
    """One thing de-identification removed or replaced: where and what, never the value."""

    where: str
    """Tag path like `(0008,1140)[0](0008,1155)`, or a metadata location like `EXIF`."""
    name: str
    """Attribute keyword or metadata name."""
    action: str
    """The action applied: X, Z, D or U (for DICOM), or `removed` (for photo metadata)."""


@dataclass(frozen=True, slots=True)
class PixelSpacing:
    """Physical size of a pixel, for measurements drawn on the image."""

    row_mm: float
    """Distance between the centres of adjacent rows, in mm."""
    column_mm: float
    """Distance between the centres of adjacent columns, in mm."""
    source: str
    """Attribute it came from: `PixelSpacing`, or `ImagerPixelSpacing` (at the detector,
    divided by the estimated radiographic magnification when the image gives one)."""


@dataclass(frozen=True)
class DeidentifiedImage:
    """A shared image with nothing identifying left: what the room may see, store and audit."""

    kind: ImageKind
    """What was uploaded."""
    rows: int
    """Height in pixels (after EXIF orientation, for photos)."""
    columns: int
    """Width in pixels."""
    frame_count: int
    """Frames (1 for photos and single-frame DICOM)."""
    removed: tuple[Removal, ...]
    """What was removed or replaced (tags and names only: safe for the audit log)."""
    pixel_spacing: PixelSpacing | None = None
    """Pixel size for measurements in mm; None when the image does not say."""
    burned_in_confirmed: bool = False
    """The DICOM declared burned-in annotation and the uploader confirmed sharing it."""
    dataset: Dataset | None = None
    """The de-identified DICOM dataset (None for photos)."""
    photo: bytes | None = None
    """The cleaned photo, PNG or JPEG as uploaded (None for DICOM)."""
    text_check: HeaderFindings | None = None
    """For an image that may carry burned-in text (`carries_burned_in_text`): what deid's
    filters read from its original header (none for a photo); None when out of scope."""

    @property
    def frames(self) -> range:
        """The addressable frame indexes."""
        return range(self.frame_count)

    @property
    def media_type(self) -> str:
        """MIME type of what `render_frame` returns."""
        return "image/jpeg" if self.kind is ImageKind.JPEG else "image/png"

    def render_frame(self, index: int = 0) -> bytes:
        """Frame `index` for the browser: a lossless PNG (or the cleaned JPEG of a photo)."""
        if not 0 <= index < self.frame_count:
            raise FrameNotFound(f"frame {index} does not exist", frames=self.frame_count)
        if self.photo is not None:
            return self.photo
        assert self.dataset is not None
        return encode_png(render_dicom_frame(self.dataset, index))

    def frame_pixels(self, index: int = 0) -> npt.NDArray[np.uint8]:
        """Frame `index` as 8-bit display values (grey, RGB or RGBA), a writable copy."""
        if not 0 <= index < self.frame_count:
            raise FrameNotFound(f"frame {index} does not exist", frames=self.frame_count)
        if self.photo is not None:
            with Image.open(BytesIO(self.photo)) as img:
                return np.array(display_mode(img))
        assert self.dataset is not None
        return np.array(render_dicom_frame(self.dataset, index))

    def encode_frame(self, pixels: npt.NDArray[np.uint8]) -> bytes:
        """Frame pixels (as `frame_pixels` gave, changed) encoded as `render_frame` would."""
        if self.kind is ImageKind.JPEG:
            out = BytesIO()
            Image.fromarray(pixels).convert("RGB").save(out, format="JPEG", quality=95)
            return out.getvalue()
        return encode_png(pixels)

    def dicom_bytes(self) -> bytes:
        """The de-identified DICOM as a Part 10 file (for storage); photos have none."""
        if self.dataset is None:
            raise ValueError("a photo has no DICOM dataset")
        out = BytesIO()
        dcmwrite(out, self.dataset, enforce_file_format=True)
        return out.getvalue()

"""What the media side needs to know of a shared image: a plain value every part may hold.

The image store (`imaging.store`) answers lookups with it, the annotation authority checks and
measures annotations against it, and the SFU hands the lookup from one to the other; none of them
imports the others for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageRef:
    """What the SFU needs to know of a shared image to check and measure annotations on it."""

    frames: int
    """Frames of the image (1 for a photo or a single-frame DICOM)."""
    pixel_spacing_mm: tuple[float, float] | None
    """Row and column spacing in mm (DICOM PixelSpacing), for length measurements; None when
    the image has no calibrated spacing."""

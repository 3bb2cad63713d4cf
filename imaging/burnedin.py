"""Burned-in text: patient details drawn into the pixels, found and blanked before anyone sees them.

Ultrasound, secondary captures, angiography, endoscopy, scanned documents and photos often carry
the patient's name, record number, birth date or the institution in their pixels, whatever the
header says (BurnedInAnnotation is often absent or wrong). Two detectors run on every frame of
such an image (`carries_burned_in_text` decides which images):

- the pixel-cleaning filters of `deid` (pydicom's de-identification project): per device
  (manufacturer, model, modality, size) the screen regions where it burns in patient details,
  and header rules that say an image probably carries text it cannot place (a screen save, a
  scanned document); they read the original header, so they run before de-identification;
- OCR with Tesseract (`tesseract-ocr`), which finds text wherever it is.

What is found is blanked (filled with black, with a margin), then the frame is read again: if
text can still be read, or the header rules flagged the image, the image is held for its
uploader to redact by hand and confirm (`BurnedInText.held`). Only codes and boxes leave here,
never the text read: it is patient data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset

MODALITIES = frozenset({"US", "IVUS", "SC", "XA", "XC", "ES", "OT", "DOC", "GM", "SM", "OP"})
"""Modalities whose images commonly carry burned-in text (ultrasound, secondary capture,
angiography, external camera, endoscopy, other, documents, microscopy, ophthalmic photos)."""
SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.6.",  # ultrasound (single and multi-frame)
    "1.2.840.10008.5.1.4.1.1.3.",  # ultrasound multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture, all kinds
    "1.2.840.10008.5.1.4.1.1.12.",  # X-ray angiography and radiofluoroscopy
    "1.2.840.10008.5.1.4.1.1.77.",  # visible light: endoscopy, microscopy, photography
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
)
"""SOP classes of those images, whatever Modality says."""
MIN_CONFIDENCE = 70.0
"""Tesseract's word confidence (0-100) from which a word counts as text: overlay text reads
at 85-96, ultrasound speckle at up to 65 (two-letter "words")."""
MARGIN = 4
"""Pixels blanked around each box found."""
_MIN_OCR_SIDE = 400
_WORD = re.compile(r"[0-9A-Za-z]")


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle of a frame, in pixels."""

    x: int
    """Left column."""
    y: int
    """Top row."""
    width: int
    """Columns."""
    height: int
    """Rows."""

    def clipped(self, columns: int, rows: int, margin: int = 0) -> Box | None:
        """This box grown by `margin` and cut to the frame; None if nothing is left."""
        x0, y0 = max(0, self.x - margin), max(0, self.y - margin)
        x1 = min(columns, self.x + self.width + margin)
        y1 = min(rows, self.y + self.height + margin)
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(x0, y0, x1 - x0, y1 - y0)


@dataclass(frozen=True, slots=True)
class HeaderFindings:
    """What the `deid` filters say from an image's original header."""

    regions: tuple[Box, ...]
    """Regions where this device burns in details, to blank on every frame."""
    reasons: tuple[str, ...]
    """Codes of why the image may carry text the regions do not cover (`deid_blacklist`,
    `deid_whole_image`); empty when the header rules see none."""


NO_HEADER_FINDINGS = HeaderFindings((), ())
"""For a photo, or an image outside `carries_burned_in_text`."""


@dataclass(frozen=True, slots=True)
class BurnedInText:
    """The decision on one image: what was blanked, and whether it is held."""

    checked: bool
    """The image was in scope and its frames were read."""
    blanked: tuple[tuple[int, Box], ...] = ()
    """(frame, box) of every region blanked: device regions and text found."""
    reasons: tuple[str, ...] = ()
    """Why the image is held: `deid_blacklist`, `deid_whole_image`, `text_remains`."""

    @property
    def held(self) -> bool:
        """Text may remain: only the uploader sees the image until they redact and confirm."""
        return bool(self.reasons)


NOT_CHECKED = BurnedInText(checked=False)
"""For images outside `carries_burned_in_text`."""


def carries_burned_in_text(ds: Dataset | None) -> bool:
    """Whether an image is one that commonly carries burned-in text: a photo (`ds` None), a
    colour image, or one of `MODALITIES` or `SOP_CLASS_PREFIXES`."""
    if ds is None:
        return True
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if modality in MODALITIES or sop_class.startswith(SOP_CLASS_PREFIXES):
        return True
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        samples = 1
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    return samples > 1 or photometric == "PALETTE COLOR"


# -- deid's filters ---------------------------------------------------------------------------


@cache
def deid_recipe() -> Any:
    """deid's default pixel filters, parsed once per process."""
    from deid.config import DeidRecipe

    return DeidRecipe()  # deid's own default: the "dicom" filters


def header_findings(ds: Dataset) -> HeaderFindings:
    """Run deid's pixel filters on the ORIGINAL (not yet de-identified) header."""
    from deid.dicom.pixels.detect import has_burned_pixels

    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not isinstance(ds, FileDataset):  # deid would take anything else for a path to read
        ds = FileDataset("", ds, file_meta=FileMetaDataset(), preamble=b"\0" * 128)
    try:
        verdict = has_burned_pixels(ds, force=True, deid=deid_recipe())
    except Exception:
        # A header the filters cannot read is one they cannot clear.
        return HeaderFindings((), ("deid_unreadable",))
    regions: list[Box] = []
    reasons: list[str] = []
    for result in verdict.get("results", []):
        group = result.get("group")
        if group == "blacklist":
            reasons.append("deid_blacklist")
        for keep, coordinates in result.get("coordinates", []):
            if keep:
                continue
            for coordinate in coordinates if isinstance(coordinates, list) else [coordinates]:
                box = _deid_box(str(coordinate), columns, rows)
                if box is None:
                    reasons.append("deid_whole_image")
                else:
                    regions.append(box)
    return HeaderFindings(tuple(dict.fromkeys(regions)), tuple(dict.fromkeys(reasons)))


def _deid_box(coordinate: str, columns: int, rows: int) -> Box | None:
    """A deid coordinate `xmin,ymin,xmax,ymax` as a box; None for `all` (or unreadable)."""
    try:
        x0, y0, x1, y1 = (int(float(v)) for v in coordinate.split(","))
    except ValueError:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0).clipped(columns or x1, rows or y1)


# -- OCR --------------------------------------------------------------------------------------


def read_text_boxes(pixels: npt.NDArray[np.uint8]) -> list[Box]:
    """Boxes of the words Tesseract reads in a frame (8-bit grey or RGB) with confidence.

    One pass in sparse-text mode (`--psm 11`: overlays are scattered words, not a page);
    Tesseract 5 reads light-on-dark lines by inverting them itself. Small frames are
    enlarged first: overlay text on them is a few pixels high.
    """
    import pytesseract

    image = Image.fromarray(pixels).convert("L")
    scale = 2 if max(image.size) < _MIN_OCR_SIDE else 1
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)
    data = pytesseract.image_to_data(image, config="--psm 11", output_type=pytesseract.Output.DICT)
    boxes: list[Box] = []
    for index, word in enumerate(data["text"]):
        if float(data["conf"][index]) < MIN_CONFIDENCE or not _is_word(word):
            continue
        boxes.append(
            Box(
                int(data["left"][index]) // scale,
                int(data["top"][index]) // scale,
                -(-int(data["width"][index]) // scale),
                -(-int(data["height"][index]) // scale),
            )
        )
    return boxes


def _is_word(text: str) -> bool:
    return len(_WORD.findall(text)) >= 2


def blank(pixels: npt.NDArray[np.uint8], boxes: Iterable[Box]) -> list[Box]:
    """Fill each box (grown by `MARGIN`) with black, in place; the boxes as blanked."""
    rows, columns = pixels.shape[:2]
    done: list[Box] = []
    for box in boxes:
        cut = box.clipped(columns, rows, MARGIN)
        if cut is not None:
            pixels[cut.y : cut.y + cut.height, cut.x : cut.x + cut.width] = 0
            done.append(cut)
    return done


def clean_frame(
    pixels: npt.NDArray[np.uint8], regions: Sequence[Box] = ()
) -> tuple[list[Box], bool]:
    """Blank the device `regions` and the text read in one frame (in place); then read it
    again. The boxes blanked, and whether text can still be read."""
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # one core per worker, as budgeted
    found = [*regions, *read_text_boxes(pixels)]
    if not found:
        return [], False
    done = blank(pixels, found)
    return done, bool(read_text_boxes(pixels))


def decide(
    header: HeaderFindings, blanked: Sequence[tuple[int, Box]], text_remains: bool
) -> BurnedInText:
    """The decision on an image once every frame went through `clean_frame`."""
    reasons = [*header.reasons, *(["text_remains"] if text_remains else [])]
    return BurnedInText(checked=True, blanked=tuple(blanked), reasons=tuple(reasons))

"""De-identification of shared images: DICOM by the PS3.15 Basic Profile, photos by stripping.

A shared image arrives as bytes. `sniff` (`imaging.sniff`) decides what it is from its content
(never its name); `deidentify` then returns a `DeidentifiedImage` (`imaging.deidentified`) that
holds nothing identifying the patient:

- DICOM is parsed with pydicom (size and frame bounds first) and de-identified by the Basic
  Application Level Confidentiality Profile of DICOM PS3.15 Annex E: every attribute of Table
  E.1-1 gets its action (`BASIC_PROFILE`, one table: `imaging.profile`), private attributes,
  curves and overlays go, instance UIDs are replaced by keyed hashes that stay consistent within
  a room, and the pixel module, modality, pixel spacing and window survive. Each frame renders to
  a lossless PNG with the image's own window/level (`imaging.render`). An image that says
  identifiers are burned into its pixels is refused unless the uploader confirms.
- PNG and JPEG lose their metadata (`imaging.photos`).

What was removed or replaced is listed by tag and name only, never by value, for the audit log.
Everything here is a pure function over bytes and datasets: no I/O, no event loop.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from imaging.burnedin import (
    carries_burned_in_text,
    header_findings,
)
from imaging.deidentified import DeidentifiedImage, PixelSpacing, Removal
from imaging.photos import strip_photo_metadata
from imaging.profile import (
    APPLIED,
    BASIC_PROFILE_EDITION,
    CURVE_GROUPS,
    OVERLAY_GROUPS,
    Action,
    profile_rule,
)
from imaging.render import functional_group, render_dicom_frame
from imaging.sniff import (
    DEFAULT_LIMITS,
    DICM_OFFSET,
    BurnedInAnnotation,
    ImageKind,
    ImageLimits,
    ImageTooLarge,
    UnsupportedImage,
    check_decoded_size,
    looks_like_bare_dataset,
    part10_transfer_syntax,
    sniff,
)

# -- UIDs -------------------------------------------------------------------------------------


def replace_uid(uid: str, secret: bytes) -> str:
    """The replacement for `uid`: HMAC-SHA256 under the room's secret, as a `2.25.` UID.

    The same UID maps to the same replacement within a room (a study's images keep referring to
    each other), differs between rooms, and cannot be reversed without the secret.
    """
    digest = hmac.new(secret, b"consilium-dicom-uid\x00" + uid.encode(), hashlib.sha256).digest()
    # 2.25 is the UUID arc (PS3.5 B.2): a 128-bit integer, at most 39 digits, fits in 64 chars.
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


# -- de-identifying a dataset -----------------------------------------------------------------


_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR: Mapping[str, Any] = {
    "AE": _DUMMY_TEXT,
    "AS": "000Y",
    "CS": _DUMMY_TEXT,
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": _DUMMY_TEXT,
    "LT": _DUMMY_TEXT,
    "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT,
    "ST": _DUMMY_TEXT,
    "UC": _DUMMY_TEXT,
    "UT": _DUMMY_TEXT,
    "UR": "urn:anonymized",
    "AT": 0,
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
}

DEIDENTIFICATION_METHOD = f"Consilium: DICOM PS3.15 E.1-1 Basic Profile ({BASIC_PROFILE_EDITION})"
"""Value of DeidentificationMethod (0012,0063) on every de-identified dataset."""


@dataclass
class _Run:
    """One de-identification pass: the room's UID secret and what was done so far."""

    secret: bytes
    removals: list[Removal] = field(default_factory=list)

    def note(self, where: str, tag: BaseTag, action: Action | str) -> None:
        self.removals.append(Removal(where, _keyword(tag), str(action)))


def _keyword(tag: BaseTag) -> str:
    if tag.is_private:
        return "Private"
    rule = profile_rule(int(tag))
    if rule is not None and "x" not in rule.tag:
        return rule.keyword
    return keyword_for_tag(tag) or "Unknown"


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def deidentify_dataset(ds: Dataset, *, uid_secret: bytes) -> tuple[Removal, ...]:
    """Apply the Basic Profile to `ds` in place; return what was removed or replaced.

    Nested sequences are walked: the table applies at every depth. Private attributes, curves
    and whole overlay groups are removed (an overlay group stripped of its data and comments,
    as the profile requires, would describe a bitmap that no longer exists). The file meta is
    rebuilt around the replaced SOP Instance UID. PatientIdentityRemoved, DeidentificationMethod
    and its code sequence (DCM 113100) record what was done.
    """
    if len(uid_secret) < 16:
        raise ValueError("the UID secret must be at least 16 bytes")
    run = _Run(uid_secret)
    _deidentify_items(ds, run, "")
    _rebuild_file_meta(ds, run)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    return tuple(run.removals)


def _deidentify_items(ds: Dataset, run: _Run, path: str) -> None:
    for tag in list(ds.keys()):
        where = path + _tag_text(tag)
        if tag.is_private or tag.group in CURVE_GROUPS or tag.group in OVERLAY_GROUPS:
            del ds[tag]
            run.note(where, tag, Action.X)
            continue
        rule = profile_rule(int(tag))
        if rule is None:
            _keep(ds, tag, run, where)
            continue
        action = APPLIED[rule.action]
        try:
            _apply(ds, tag, action, run, where)
        except Exception:  # an unreadable value: dropping it is the one safe reading
            if tag in ds:
                del ds[tag]
            action = Action.X
        run.note(where, tag, action)


def _keep(ds: Dataset, tag: BaseTag, run: _Run, where: str) -> None:
    """Keep an attribute the profile does not list; walk into it if it is a sequence.

    Reading the value also settles its VR, which a file that contradicts its own transfer
    syntax leaves unset (and pydicom then cannot write).
    """
    try:
        element = ds[tag]
    except Exception:  # an unreadable value: dropping it is the one safe reading
        del ds[tag]
        run.note(where, tag, Action.X)
        return
    if element.VR == "SQ":
        for index, item in enumerate(element.value):
            _deidentify_items(item, run, f"{where}[{index}]")


def _apply(ds: Dataset, tag: BaseTag, action: Action, run: _Run, where: str) -> None:
    if action is Action.X:
        del ds[tag]
        return
    element = ds[tag]
    vr = element.VR.split(" or ")[0]
    if action is Action.Z:
        ds[tag] = DataElement(tag, vr, Sequence() if vr == "SQ" else None)
    elif action is Action.U and vr == "SQ":
        for index, item in enumerate(element.value):
            _deidentify_items(item, run, f"{where}[{index}]")
    elif action is Action.U:
        element.value = _replaced_uids(element.value, run.secret)
    else:
        _dummy(ds, element, run)


def _replaced_uids(value: Any, secret: bytes) -> Any:
    if isinstance(value, bytes):  # an unknown tag read as UN
        value = value.decode("ascii", "replace").strip("\x00 ")
    if value is None or value == "":
        return value
    if isinstance(value, str):
        return replace_uid(value.strip("\x00 "), secret)
    return [replace_uid(str(v).strip("\x00 "), secret) for v in value]


def _dummy(ds: Dataset, element: DataElement, run: _Run) -> None:
    """Replace the element's value by one of its VR that identifies no-one.

    A sequence keeps its items but every value inside them is replaced in turn: its structure
    may be required, its content never is.
    """
    vr = element.VR.split(" or ")[0]
    if vr == "SQ":
        for item in element.value:
            for tag in list(item.keys()):
                if tag.is_private:
                    del item[tag]
                    continue
                try:
                    _dummy(item, item[tag], run)
                except Exception:
                    del item[tag]
    elif vr == "UI":
        element.value = _replaced_uids(element.value, run.secret)
    elif vr in _DUMMY_BY_VR:
        ds[element.tag] = DataElement(element.tag, vr, _DUMMY_BY_VR[vr])
    else:  # OB, OW, OF, OD, OL, OV, UN: two zero bytes are a valid dummy for every one of them
        ds[element.tag] = DataElement(element.tag, vr, b"\x00\x00")


def _rebuild_file_meta(ds: Dataset, run: _Run) -> None:
    """A fresh file meta: the old one may name the sending system (Source AE Title)."""
    old = getattr(ds, "file_meta", None)
    syntax = old.get("TransferSyntaxUID") if old is not None else None
    if syntax is None:
        implicit, _little = getattr(ds, "original_encoding", (False, True))
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if old is not None and "MediaStorageSOPInstanceUID" in old:
            run.note("(0002,0003)", Tag(0x00020003), Action.U)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta


# -- entry points -----------------------------------------------------------------------------


def deidentify(
    data: bytes,
    *,
    uid_secret: bytes,
    confirm_burned_in: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> DeidentifiedImage:
    """Sniff `data` and de-identify it: the one entry point for an uploaded image.

    `uid_secret` is the room's secret for replacing DICOM UIDs (at least 16 bytes).
    Raises `UnsupportedImage`, `ImageTooLarge` or `BurnedInAnnotation`.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLarge("the image file is too large", limit=limits.max_bytes)
    kind = sniff(data)
    if kind is ImageKind.DICOM:
        return deidentify_dicom(
            data, uid_secret=uid_secret, confirm_burned_in=confirm_burned_in, limits=limits
        )
    return strip_photo_metadata(data, kind, limits=limits)


def deidentify_dicom(
    data: bytes,
    *,
    uid_secret: bytes,
    confirm_burned_in: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> DeidentifiedImage:
    """Parse, bound, check, de-identify and test-decode a DICOM image."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge("the image file is too large", limit=limits.max_bytes)
    ds = _read_dicom(data)
    rows, columns, frames = _image_geometry(ds, limits)
    burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
    if burned_in and not confirm_burned_in:
        raise BurnedInAnnotation(
            "the image declares identifying text burned into its pixels; confirm to share it"
        )
    spacing = pixel_spacing(ds)
    # deid's device rules read manufacturer, model and the like: before they are removed.
    text_check = header_findings(ds) if carries_burned_in_text(ds) else None
    removed = deidentify_dataset(ds, uid_secret=uid_secret)
    try:  # decode now, so an undecodable image is refused at upload, not when first viewed
        render_dicom_frame(ds, 0)
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedImage(f"the pixel data cannot be decoded ({name})") from exc
    return DeidentifiedImage(
        kind=ImageKind.DICOM,
        rows=rows,
        columns=columns,
        frame_count=frames,
        removed=removed,
        pixel_spacing=spacing,
        burned_in_confirmed=burned_in,
        dataset=ds,
        text_check=text_check,
    )


def _read_dicom(data: bytes) -> Dataset:
    part10 = data[DICM_OFFSET : DICM_OFFSET + 4] == b"DICM"
    if not part10 and not looks_like_bare_dataset(data):
        raise UnsupportedImage("not a DICOM file")
    if part10 and part10_transfer_syntax(data) == DeflatedExplicitVRLittleEndian:
        # pydicom inflates the whole dataset with no bound: a zip bomb would exhaust memory.
        raise UnsupportedImage("deflated DICOM is not accepted")
    try:
        # force only for a bare dataset, and only after its first elements parsed as one.
        ds = dcmread(BytesIO(data), force=not part10)
    except Exception as exc:
        raise UnsupportedImage("the DICOM file cannot be parsed") from exc
    if "PixelData" not in ds:
        raise UnsupportedImage("the DICOM object has no image (Pixel Data) to share")
    if not part10 or "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if not little:
            raise UnsupportedImage("big-endian DICOM without file meta is not accepted")
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        )
    return ds


def _image_geometry(ds: Dataset, limits: ImageLimits) -> tuple[int, int, int]:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:
        raise UnsupportedImage("the DICOM image has no valid Rows, Columns or frame count") from exc
    if rows < 1 or columns < 1 or frames < 1:
        raise UnsupportedImage("the DICOM image is empty")
    if rows * columns > limits.max_frame_pixels:
        raise ImageTooLarge("a frame has too many pixels", limit=limits.max_frame_pixels)
    if frames > limits.max_frames:
        raise ImageTooLarge("the image has too many frames", limit=limits.max_frames)
    frame_bytes = rows * columns * _samples(ds) * _bytes_allocated(ds)
    check_decoded_size(frame_bytes, frames, limits)
    return rows, columns, frames


def _samples(ds: Dataset) -> int:
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        raise UnsupportedImage("the DICOM image has no valid Samples per Pixel") from None
    if not 1 <= samples <= 4:
        raise UnsupportedImage("the DICOM image has no valid Samples per Pixel")
    # A palette image renders to RGB.
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    return 3 if photometric == "PALETTE COLOR" else samples


def _bytes_allocated(ds: Dataset) -> int:
    try:
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError):
        raise UnsupportedImage("the DICOM image has no valid Bits Allocated") from None
    if not 1 <= bits <= 64:
        raise UnsupportedImage("the DICOM image has no valid Bits Allocated")
    # Decoders hand out whole bytes (1-bit images unpack to one byte a pixel); rendering
    # works in float64 whatever the stored depth.
    return max(8, (bits + 7) // 8 * 8) // 8


def pixel_spacing(ds: Dataset) -> PixelSpacing | None:
    """Pixel size in mm: PixelSpacing (top level or the functional groups' Pixel Measures),
    else ImagerPixelSpacing corrected by the estimated radiographic magnification."""
    measures = functional_group(ds, 0, "PixelMeasuresSequence")
    for source in (ds, measures):
        if source is not None and source.get("PixelSpacing"):
            return _spacing(source.PixelSpacing, 1.0, "PixelSpacing")
    if ds.get("ImagerPixelSpacing"):
        magnification = float(ds.get("EstimatedRadiographicMagnificationFactor") or 1.0) or 1.0
        return _spacing(ds.ImagerPixelSpacing, magnification, "ImagerPixelSpacing")
    return None


def _spacing(value: Any, magnification: float, source: str) -> PixelSpacing | None:
    try:
        row, column = (float(v) / magnification for v in value[:2])
    except (TypeError, ValueError):
        return None
    if not (row > 0 and column > 0):
        return None
    return PixelSpacing(row, column, source)

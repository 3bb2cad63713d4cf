"""Where an image shared from the PACS came from: the original UIDs of each of its frames.

De-identification replaces every UID of a shared image (`imaging.deidentify`), so the room's
copy no longer says which study, series and instance of the PACS it shows. Writing the meeting's
annotations back to the PACS (`imaging.presentation_state`) needs exactly that, so a share from
the PACS reads the original UIDs here, before de-identification, and the store keeps them in the
image's encrypted metadata record (`SharedImage.source`): never in what a client is sent.

Kept per frame of the shared image, not per image: a shared image may be one instance (its
frames are the instance's frames) or a series stacked into one image (each frame a slice, from
its own instance); an annotation's (image, frame) maps to a `SourceFrame` either way.

Pure: bytes in, values out (a header parse, the pixel data skipped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from core.errors import Conflict
from imaging.dicomweb import UID_PATTERN
from imaging.sniff import UnsupportedImage

_SOURCE_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                "NumberOfFrames"]  # fmt: skip


class NotFromPacs(Conflict):
    """The image was uploaded, not shared from the PACS: there is nothing to write back to."""

    code = "not_from_pacs"


def _uid(value: Any, what: str) -> str:
    uid = str(value or "").strip()
    if len(uid) > 64 or not UID_PATTERN.match(uid):
        raise UnsupportedImage(f"the PACS's instance has no valid {what}")
    return uid


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One frame of a shared image as the PACS knows it."""

    sop_instance_uid: str
    """The original SOPInstanceUID of the instance the frame comes from."""
    sop_class_uid: str
    """Its SOPClassUID (CT Image Storage, ...)."""
    frame_number: int
    """The frame's number in that instance, from 1 (1 for a single-frame instance)."""


@dataclass(frozen=True, slots=True)
class DicomSource:
    """The original study, series and instance of every frame of a PACS-sourced image."""

    study_uid: str
    """The original StudyInstanceUID."""
    series_uid: str
    """The original SeriesInstanceUID."""
    frames: tuple[SourceFrame, ...]
    """Frame `i` of the shared image is `frames[i]`."""

    def frame(self, index: int) -> SourceFrame | None:
        """The source of frame `index` (from 0), or None when the image has no such frame."""
        return self.frames[index] if 0 <= index < len(self.frames) else None

    def to_record(self) -> dict[str, Any]:
        """The JSON object kept in the image's (encrypted) metadata record."""
        return {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "frames": [[f.sop_instance_uid, f.sop_class_uid, f.frame_number] for f in self.frames],
        }

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> DicomSource:
        """The value `to_record` wrote."""
        frames = tuple(
            SourceFrame(str(sop), str(cls_uid), int(n)) for sop, cls_uid, n in raw["frames"]
        )
        return cls(str(raw["study_uid"]), str(raw["series_uid"]), frames)

    @classmethod
    def stacked(cls, sources: Sequence[DicomSource]) -> DicomSource:
        """The source of one image made of `sources`' frames in order (a series stacked into
        one image); `ValueError` unless they are all of one study and series."""
        if not sources:
            raise ValueError("no source to stack")
        first = sources[0]
        if any((s.study_uid, s.series_uid) != (first.study_uid, first.series_uid) for s in sources):
            raise ValueError("the stacked instances are not all of one series")
        frames: Iterable[SourceFrame] = (frame for s in sources for frame in s.frames)
        return cls(first.study_uid, first.series_uid, tuple(frames))


def read_source(data: bytes) -> DicomSource:
    """The original UIDs of a DICOM instance as the PACS sent it (`UnsupportedImage` when it
    is not DICOM or lacks them). Reads the header only: the pixel data is not decoded here."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=_SOURCE_TAGS)
    except (InvalidDicomError, ValueError, TypeError, EOFError, OSError, KeyError):
        raise UnsupportedImage("the PACS's instance is not a DICOM file") from None
    try:
        count = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        count = 1
    sop = _uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
    sop_class = _uid(ds.get("SOPClassUID"), "SOPClassUID")
    return DicomSource(
        study_uid=_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
        series_uid=_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        frames=tuple(SourceFrame(sop, sop_class, n) for n in range(1, max(1, count) + 1)),
    )

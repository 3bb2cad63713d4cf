"""What an uploaded image is, from its bytes (never its name), and the bounds it must fit.

`sniff` tells DICOM (Part 10, or a bare dataset), PNG and JPEG apart; `ImageLimits` bounds what
an upload may be and decode to, checked from headers before anything is decoded
(`check_decoded_size`); the errors an upload can meet are declared here, once, for every
imaging module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

from core.errors import BadMessage, NotFound, PayloadTooLarge

# -- errors -----------------------------------------------------------------------------------


class UnsupportedImage(BadMessage):
    """Not a DICOM, PNG or JPEG image we can read (judged by content), or not decodable."""

    code = "unsupported_image"


class BurnedInAnnotation(BadMessage):
    """The DICOM declares identifiers burned into its pixels; the uploader has to confirm."""

    code = "burned_in_annotation"


class ImageTooLarge(PayloadTooLarge):
    """The image exceeds a bound of `ImageLimits` (bytes, pixels per frame, frames)."""

    code = "image_too_large"


class FrameNotFound(NotFound):
    """A frame index outside the image's frames."""

    code = "frame_not_found"


# -- bounds and kinds -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Bounds on one shared image, checked before anything is decoded."""

    max_bytes: int = 256 * 1024 * 1024
    """Size of the uploaded file."""
    max_frame_pixels: int = 64 * 1024 * 1024
    """Rows × columns of one frame (a decompression-bomb guard for photos as well)."""
    max_frames: int = 2000
    """Frames of a multi-frame DICOM (a whole CT series fits)."""
    max_decoded_bytes: int = 512 * 1024 * 1024
    """Decoded pixel data of the whole image (rows × columns × frames × samples × bits), read
    from the header before any pixel is decoded: a small compressed file may declare gigabytes."""
    max_frame_bytes: int = 192 * 1024 * 1024
    """Decoded pixel data of one frame, the unit rendering works on (it holds a few copies):
    a 48-megapixel photo fits, a 64-megapixel RGBA one does not."""


DEFAULT_LIMITS = ImageLimits()
"""The bounds used when the caller gives none."""


class ImageKind(StrEnum):
    """What an uploaded file is, by content."""

    DICOM = "dicom"
    PNG = "png"
    JPEG = "jpeg"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
DICM_OFFSET = 128
# Two-letter VRs whose explicit-VR header has a 4-byte length after 2 reserved bytes.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
     b"SH", b"SL", b"SS", b"ST", b"SV", b"TM", b"UI", b"UL", b"US", b"UV"}
)  # fmt: skip


def sniff(data: bytes) -> ImageKind:
    """What `data` is, from its bytes alone; `UnsupportedImage` for anything else.

    DICOM is either a Part 10 file ("DICM" after the 128-byte preamble) or a bare little-endian
    dataset whose first elements parse as group 0008 elements (older modalities and some PACS
    exports write those).
    """
    if data.startswith(_PNG_SIGNATURE):
        return ImageKind.PNG
    if data.startswith(_JPEG_SIGNATURE):
        return ImageKind.JPEG
    if data[DICM_OFFSET : DICM_OFFSET + 4] == b"DICM":
        return ImageKind.DICOM
    if looks_like_bare_dataset(data):
        return ImageKind.DICOM
    raise UnsupportedImage("not a DICOM, PNG or JPEG image")


def looks_like_bare_dataset(data: bytes, elements: int = 4) -> bool:
    """Whether the first elements parse as an implicit- or explicit-VR little-endian dataset.

    Every composite image IOD starts with group 0008 (character set, image type, SOP class), so
    the first tag must be in it, tags must ascend and each length must fit inside the data.
    """
    offset, previous = 0, -1
    for count in range(elements):
        if offset == len(data) and count > 0:
            return True
        if offset + 8 > len(data):
            return False
        group, element = struct.unpack_from("<HH", data, offset)
        tag = group << 16 | element
        if tag <= previous or (count == 0 and group != 0x0008):
            return False
        vr = data[offset + 4 : offset + 6]
        if vr in _SHORT_VRS:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8
        elif vr in _LONG_VRS:
            if offset + 12 > len(data):
                return False
            (length,) = struct.unpack_from("<L", data, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<L", data, offset + 4)
            offset += 8
        if length == 0xFFFFFFFF:  # an undefined-length sequence: the headers so far were sound
            return count > 0
        offset += length
        if offset > len(data):
            return False
        previous = tag
    return True


def check_decoded_size(frame_bytes: int, frames: int, limits: ImageLimits) -> None:
    """Refuse (`ImageTooLarge`) an image whose decoded pixels would pass the limits: computed
    from its header, before anything is decoded."""
    if frame_bytes > limits.max_frame_bytes:
        raise ImageTooLarge("a frame decodes to too much data", limit=limits.max_frame_bytes)
    if frame_bytes * frames > limits.max_decoded_bytes:
        raise ImageTooLarge("the image decodes to too much data", limit=limits.max_decoded_bytes)


_META_BOUND = 64 * 1024


def part10_transfer_syntax(data: bytes) -> str | None:
    """The Transfer Syntax UID (0002,0010) of a Part 10 file, found as pydicom finds it.

    pydicom reads the file meta element by element for as long as the group is 0002, whatever
    the group length (0002,0000) says, so this walks the elements the same way: a group length
    that understates the header must not hide the syntax (a deflated dataset behind it is
    inflated by pydicom with no bound). None when the meta has no such element.
    """
    offset = DICM_OFFSET + 4
    end = min(len(data), offset + _META_BOUND)
    while offset + 8 <= end:
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            return None
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS or vr not in _SHORT_VRS:
            if offset + 12 > end:
                return None
            (length,) = struct.unpack_from("<L", data, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8
        if length == 0xFFFFFFFF:
            return None
        if element == 0x0010:
            return data[offset : offset + length].rstrip(b"\x00 ").decode("ascii", "replace")
        offset += length
    return None

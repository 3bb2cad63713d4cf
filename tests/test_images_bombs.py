"""Decompression bombs: small uploads that declare or decode to far more memory than allowed.

Each crafted file is built as a stream, so the test process never holds what it declares. The
node must refuse each with a 4xx JSON error before decoding, its own memory must stay bounded
(decoding happens in memory-capped worker processes), and other uploads must go on being served.
"""

from __future__ import annotations

import io
import resource
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from imaging.deidentify import deidentify
from imaging.sniff import ImageLimits, ImageTooLarge, UnsupportedImage, part10_transfer_syntax
from imaging.store import prepare_image
from imaging.worker import ImageWorkers
from tests.fixtures.servers import RunningNode, node_settings, running_node
from tests.test_images import audit, fetch, jpeg_photo, meeting, upload

SECRET = b"s" * 32
MiB = 1024 * 1024


def _compressed_zeros(total: int, chunk: int, *, raw: bool) -> Iterator[bytes]:
    """`total` zero bytes deflated (raw deflate or zlib), produced piece by piece."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15 if raw else 15)
    zeros = bytes(chunk)
    for _ in range(total // chunk):
        yield packer.compress(zeros)
    yield packer.flush()


def _meta(transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    out = io.BytesIO()
    ds = Dataset()
    ds.file_meta = meta
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()  # preamble, "DICM" and the file meta: the dataset is empty


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW"):
        return struct.pack("<HH2s2xL", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def deflated_bomb(pixel_bytes: int = 256 * MiB) -> bytes:
    """A Part 10 file in the Deflated syntax whose group length (0002,0000) ends before the
    Transfer Syntax UID, and whose dataset inflates to `pixel_bytes` of Pixel Data."""
    meta = _meta(DeflatedExplicitVRLittleEndian)
    # Understate the group length so that it stops before (0002,0010).
    at = meta.index(b"\x02\x00\x10\x00")
    understated = at - (132 + 12)
    meta = meta[:140] + struct.pack("<L", understated) + meta[144:]
    head = b"".join(
        [
            _element(0x0008, 0x0016, b"UI", SecondaryCaptureImageStorage.encode() + b"\x00"),
            _element(0x0028, 0x0002, b"US", struct.pack("<H", 1)),
            _element(0x0028, 0x0010, b"US", struct.pack("<H", 16384)),
            _element(0x0028, 0x0011, b"US", struct.pack("<H", 16384)),
            _element(0x0028, 0x0100, b"US", struct.pack("<H", 8)),
            struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", pixel_bytes),
        ]
    )
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = [packer.compress(head)]
    zeros = bytes(MiB)
    body += [packer.compress(zeros) for _ in range(pixel_bytes // MiB)]
    body.append(packer.flush())
    return meta + b"".join(body)


def declared_huge_dicom(rows: int, columns: int, frames: int, bits: int = 16) -> bytes:
    """An uncompressed DICOM whose header declares `frames` frames of rows × columns, carrying
    (far fewer) real pixel bytes: only the header must be read to refuse it."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = bytes(64 * 1024)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def png_bomb(width: int = 8192, height: int = 8192) -> bytes:
    """An RGBA PNG of zeros: about a quarter of a megabyte that decodes to 256 MiB (and more
    while Pillow turns it upright and re-encodes it)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">L", len(payload)) + kind + payload + struct.pack(">L", crc)

    header = struct.pack(">LLBBBBB", width, height, 8, 6, 0, 0, 0)
    row = 1 + width * 4
    idat = b"".join(_compressed_zeros(row * height, row * 64, raw=False))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


# -- the checks, without a server ---------------------------------------------------------------


def test_the_bombs_are_small() -> None:
    assert len(deflated_bomb()) < 600 * 1024
    assert len(png_bomb()) < 300 * 1024


def test_an_understated_group_length_does_not_hide_the_deflated_syntax() -> None:
    bomb = deflated_bomb(pixel_bytes=4 * MiB)
    assert part10_transfer_syntax(bomb) == DeflatedExplicitVRLittleEndian
    with pytest.raises(UnsupportedImage, match="deflated"):
        deidentify(bomb, uid_secret=SECRET)


def test_the_decoded_size_comes_from_the_header_before_any_pixel() -> None:
    # 4096 × 4096 × 2 bytes is 32 MiB a frame; 100 frames declare 3.2 GiB.
    with pytest.raises(ImageTooLarge, match="decodes to too much"):
        deidentify(declared_huge_dicom(4096, 4096, 100), uid_secret=SECRET)
    # One frame over the per-frame bound (7200 × 7200 × 4 bytes of 32-bit samples).
    with pytest.raises(ImageTooLarge, match="a frame decodes"):
        deidentify(declared_huge_dicom(7200, 7200, 1, bits=32), uid_secret=SECRET)
    limits = ImageLimits(max_decoded_bytes=8 * MiB)
    with pytest.raises(ImageTooLarge):
        deidentify(declared_huge_dicom(1024, 1024, 5), uid_secret=SECRET, limits=limits)


def test_a_png_bomb_is_refused_from_its_header() -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLarge, match="a frame decodes"):
        deidentify(png_bomb(), uid_secret=SECRET)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 64, f"refusing the PNG bomb grew the peak by {grown_mib:.0f} MiB"


def _large_gray_png(side: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (side, side), dtype=np.uint8)
    Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def test_a_worker_that_runs_out_of_memory_fails_that_upload_only() -> None:
    workers = ImageWorkers(1, memory_bytes=24 * MiB)
    try:
        with pytest.raises(ImageTooLarge, match="more memory"):
            workers.prepare(_large_gray_png(6000), uid_secret=SECRET)  # ~100 MiB in Pillow
        prepared = workers.prepare(jpeg_photo(), uid_secret=SECRET)
        assert prepared.kind == "jpeg" and len(prepared.frames) == 1
    finally:
        workers.close()
    assert prepare_image(jpeg_photo(), uid_secret=SECRET).frames == prepared.frames


# -- on a running node --------------------------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    settings = node_settings(tmp_path / "data", media=False, max_image_bytes=2 * MiB)
    async with running_node(settings) as running:
        yield running


async def test_bombs_are_refused_and_the_node_keeps_serving(node: RunningNode) -> None:
    await meeting(node)
    bombs = {
        "deflated behind a short group length": (deflated_bomb(), 415, "unsupported_image"),
        "declared 3 GiB of frames": (declared_huge_dicom(4096, 4096, 100), 413, "image_too_large"),
        "PNG of 8192 × 8192 RGBA": (png_bomb(), 413, "image_too_large"),
    }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, (data, status, error) in bombs.items():
        got, body = await upload(node, "dr-heart", data)
        assert (got, body.get("error")) == (status, error), name
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 64, f"the node's peak memory grew by {grown_mib:.0f} MiB"
    assert [e.reason for e in audit(node, "image_share_refused")] == [
        "unsupported_image", "image_too_large", "image_too_large",
    ]  # fmt: skip
    status, shared = await upload(node, "dr-heart", jpeg_photo())
    assert status == 201
    assert (await fetch(node, "dr-chair", shared["image_id"])).status == 200

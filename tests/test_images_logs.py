"""No text from an upload reaches any log line, at any level.

Decoders report what they parse: pydicom warns (and logs) with the value of a malformed UID,
Pillow logs every EXIF tag with its value at debug level. Uploads carrying unique markers in
those places are shared and viewed with every logger at DEBUG, Python warnings routed to
logging, and the process's stdout and stderr captured (where image workers would write).
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pydicom
import pytest
from PIL import Image, PngImagePlugin
from pydicom import config

from tests.fixtures.servers import RunningNode, node_settings, running_node
from tests.test_images import CT_SMALL, fetch, meeting, photo_pixels, upload

MARKERS = (
    "MARKERSTUDY7731",
    "MARKERSERIES5521",
    "MARKERNAME4412",
    "MARKERARTIST9043",
    "MARKERCOMMENT1187",
    "MARKERPNGAUTHOR6650",
)


def marked_dicom() -> bytes:
    """A CT whose Study and Series Instance UIDs are malformed (pydicom warns, quoting them)."""
    ds = pydicom.dcmread(CT_SMALL)
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.StudyInstanceUID = "1.2.826.0.1.MARKERSTUDY7731"
        ds.SeriesInstanceUID = "1.2.826.0.1.MARKERSERIES5521"
        ds.PatientName = "MARKERNAME4412^Test"
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = mode
    return out.getvalue()


def marked_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x013B] = "MARKERARTIST9043"  # Artist
    exif[0x9286] = "MARKERCOMMENT1187"  # UserComment
    out = io.BytesIO()
    Image.fromarray(photo_pixels(64)).save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def marked_png() -> bytes:
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "MARKERPNGAUTHOR6650")
    exif = Image.Exif()
    exif[0x013B] = "MARKERARTIST9043"
    out = io.BytesIO()
    Image.fromarray(photo_pixels(64)).save(out, format="PNG", pnginfo=text, exif=exif.tobytes())
    return out.getvalue()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    async with running_node(node_settings(tmp_path / "data", media=False)) as running:
        yield running


@pytest.fixture
def warnings_logged() -> Iterator[None]:
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)


async def test_no_upload_derived_text_reaches_any_log(
    node: RunningNode,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    warnings_logged: None,
) -> None:
    uploads = [marked_dicom(), marked_jpeg(), marked_png()]
    for data in uploads:  # the markers are really in the files
        assert any(marker.encode() in data for marker in MARKERS)
    capfd.readouterr()
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    for name in ("PIL", "pydicom", "consilium", "aiohttp"):
        caplog.set_level(logging.DEBUG, logger=name)

    await meeting(node)
    for data in uploads:
        status, body = await upload(node, "dr-heart", data)
        assert status == 201, body
        assert (await fetch(node, "dr-chair", body["image_id"])).status == 200

    out, err = capfd.readouterr()
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records) + out + err
    assert caplog.records, "nothing was logged at all: the capture is not working"
    for marker in MARKERS:
        assert marker not in logged, f"{marker} reached the log"

"""Burned-in text: a name, a record number and the institution drawn into the pixels of an
ultrasound-style DICOM and of a photo are found and blanked before anyone sees the image; an
image that may still carry text is held for its uploader to redact and confirm.

Images are generated with Pillow (DejaVu Sans Bold, large enough for OCR); what the node
serves is read back with Tesseract, as an attacker would.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytesseract
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from imaging.burnedin import Box, carries_burned_in_text, header_findings
from imaging.store import prepare_image
from tests.fixtures.servers import RunningNode, next_message, node_settings, running_node
from tests.test_images import audit, bearer, ct_bytes, fetch, meeting, upload

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
NAME, MRN, INSTITUTION = "WANG Xiaoming", "MRN 40418275", "St Elsewhere Hospital"
SECRETS = ("WANG", "Xiaoming", "40418275", "Elsewhere", "Hospital")
SECRET = b"s" * 32


def _fan(width: int, height: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """An ultrasound-like sector of speckle on black."""
    rng = np.random.default_rng(3)
    pixels = np.zeros((height, width, 3), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    fan = (np.abs(xx - width / 2) < (yy + 100) * 0.7) & (yy > 90)
    fan &= (xx - width / 2) ** 2 + (yy + 100) ** 2 < (height + 50) ** 2
    pixels[fan] = rng.integers(20, 140, (int(fan.sum()), 1), dtype=np.uint8)
    return pixels


def with_text(pixels: np.ndarray[Any, np.dtype[np.uint8]], colour: tuple[int, int, int]) -> Any:
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(FONT), 26)
    draw.text((20, 12), NAME, fill=colour, font=font)
    draw.text((20, 48), MRN, fill=colour, font=font)
    draw.text((470, 12), INSTITUTION, fill=colour, font=font)
    return np.array(image)


def ultrasound(*, image_type: list[str] | None = None, frames: int = 1, **attrs: Any) -> bytes:
    """An RGB ultrasound DICOM, BurnedInAnnotation not set, the patient details in its pixels."""
    frame = with_text(_fan(800, 600), (255, 255, 255))
    ds = Dataset()
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "US"
    if image_type is not None:
        ds.ImageType = image_type
    ds.PatientName = "WANG^Xiaoming"
    ds.Rows, ds.Columns = frame.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = frame.tobytes() * frames
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def photo_with_text() -> bytes:
    """A clinical photo (dark text on a light background) as a JPEG."""
    pixels = np.full((600, 800, 3), 225, np.uint8)
    pixels[200:500, 200:600] = (190, 150, 140)  # the photographed skin
    out = io.BytesIO()
    Image.fromarray(with_text(pixels, (20, 20, 20))).save(out, format="JPEG", quality=92)
    return out.getvalue()


def readable(frame: bytes) -> str:
    with Image.open(io.BytesIO(frame)) as image:
        return str(pytesseract.image_to_string(image.convert("L"), config="--psm 11"))


def assert_no_secret(frame: bytes) -> None:
    text = readable(frame)
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} is still readable: {text!r}"


# -- the check, without a server ----------------------------------------------------------------


def test_the_generated_images_carry_readable_details() -> None:
    """The test images are fair: OCR reads every detail before the check runs."""
    with Image.open(io.BytesIO(photo_with_text())) as image:
        photo_text = pytesseract.image_to_string(image)
    for secret in SECRETS:
        assert secret in photo_text
    on_fan = Image.fromarray(with_text(_fan(800, 600), (255, 255, 255)))
    assert "40418275" in pytesseract.image_to_string(on_fan)


def test_text_burned_into_an_ultrasound_is_blanked() -> None:
    prepared = prepare_image(ultrasound(image_type=["ORIGINAL", "PRIMARY"]), uid_secret=SECRET)
    assert prepared.burned_in_text.checked and not prepared.burned_in_text.held
    assert len(prepared.burned_in_text.blanked) >= 3
    assert_no_secret(prepared.frames[0])


def test_every_frame_of_a_cine_loop_is_checked() -> None:
    prepared = prepare_image(
        ultrasound(image_type=["ORIGINAL", "PRIMARY"], frames=2), uid_secret=SECRET
    )
    assert {frame for frame, _box in prepared.burned_in_text.blanked} == {0, 1}
    for frame in prepared.frames:
        assert_no_secret(frame)


def test_text_in_a_photo_is_blanked() -> None:
    prepared = prepare_image(photo_with_text(), uid_secret=SECRET)
    assert prepared.kind == "jpeg" and prepared.burned_in_text.blanked
    assert_no_secret(prepared.frames[0])


def test_a_known_device_region_is_blanked_from_deid_filters() -> None:
    ds = Dataset()
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "US", "GE", "LOGIQ9"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = 480, 640
    findings = header_findings(ds)
    assert Box(0, 0, 640, 30) in findings.regions


def test_which_images_are_checked() -> None:
    ds = Dataset()
    for modality, checked in (("US", True), ("XA", True), ("ES", True), ("OT", True),
                              ("SC", True), ("CT", False), ("MR", False)):  # fmt: skip
        ds.Modality = modality
        assert carries_burned_in_text(ds) is checked, modality
    ds.Modality, ds.SamplesPerPixel = "MR", 3
    assert carries_burned_in_text(ds)  # any colour image
    assert carries_burned_in_text(None)  # a photo
    assert not prepare_image(ct_bytes(), uid_secret=SECRET).burned_in_text.checked


def test_a_header_the_filters_flag_holds_the_image() -> None:
    # deid's blacklist: an image with no ImageType may carry text no region names.
    prepared = prepare_image(ultrasound(), uid_secret=SECRET)
    assert prepared.burned_in_text.held
    assert "deid_blacklist" in prepared.burned_in_text.reasons


# -- over REST ------------------------------------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    settings = node_settings(tmp_path / "data", media=False, max_image_bytes=4 * 1024 * 1024)
    async with running_node(settings) as running:
        yield running


async def test_served_frames_carry_no_burned_in_details(node: RunningNode) -> None:
    await meeting(node)
    for data in (ultrasound(image_type=["ORIGINAL", "PRIMARY"]), photo_with_text()):
        status, body = await upload(node, "dr-heart", data)
        assert status == 201, body
        assert body["held"] is False and body["text_blanked"] >= 3
        served = await fetch(node, "dr-chair", body["image_id"])
        assert served.status == 200
        assert_no_secret(await served.read())
    shared = audit(node, "image_shared")
    assert [e.fields["text_blanked"] >= 3 for e in shared] == [True, True]


async def test_a_held_image_is_redacted_and_released_by_its_uploader(node: RunningNode) -> None:
    sockets = await meeting(node)
    status, held = await upload(node, "dr-heart", ultrasound())
    assert status == 202, held
    assert held["held"] is True and "deid_blacklist" in held["held_reasons"]
    image_id = held["image_id"]
    (entry,) = audit(node, "image_held")
    assert entry.sub == "dr-heart" and "deid_blacklist" in entry.fields["held_reasons"]

    # Nobody else sees it: not listed, not served, not announced, not annotatable.
    session = await node.session()
    listing_url = f"{node.url}/api/rooms/mdt-1/images"
    async with session.get(listing_url, headers=bearer(node, "dr-chair", "chair")) as listing:
        assert (await listing.json())["images"] == []
    assert (await fetch(node, "dr-chair", image_id)).status == 404
    assert node.node is not None and node.node.images.lookup("mdt-1", image_id) is None
    # The uploader does, to redact it.
    async with session.get(listing_url, headers=bearer(node, "dr-heart")) as listing:
        assert [i["image_id"] for i in (await listing.json())["images"]] == [image_id]
    assert (await fetch(node, "dr-heart", image_id)).status == 200

    release_url = f"{listing_url}/{image_id}/release"
    boxes = [{"frame": 0, "x": 0, "y": 0, "width": 800, "height": 90}]
    # Only the uploader, only with confirmation, only boxes on the image's frames.
    for sub, body, expected in (
        ("dr-chair", {"confirm": True, "boxes": boxes}, 404),
        ("dr-heart", {"confirm": False, "boxes": boxes}, 400),
        ("dr-heart", {"confirm": True, "boxes": [{**boxes[0], "frame": 3}]}, 404),
        ("dr-heart", {"confirm": True, "boxes": [{**boxes[0], "width": -1}]}, 400),
    ):
        role = "chair" if sub == "dr-chair" else "specialist"
        async with session.post(release_url, json=body, headers=bearer(node, sub, role)) as r:
            assert r.status == expected, (sub, body, await r.text())
            assert "error" in await r.json()
    async with session.post(
        release_url, json={"confirm": True, "boxes": boxes}, headers=bearer(node, "dr-heart")
    ) as released:
        assert released.status == 200
        record = await released.json()
    assert record["held"] is False
    announced = await next_message(sockets["dr-chair"], "image_shared")
    assert announced["image_id"] == image_id
    served = await fetch(node, "dr-chair", image_id)
    assert served.status == 200
    assert_no_secret(await served.read())
    (entry,) = audit(node, "image_released")
    assert entry.sub == "dr-heart" and entry.fields["redacted"] == 1
    async with session.post(
        release_url, json={"confirm": True, "boxes": []}, headers=bearer(node, "dr-heart")
    ) as again:
        assert again.status == 409 and (await again.json())["error"] == "image_not_held"

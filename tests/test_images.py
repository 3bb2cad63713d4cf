"""Shared images: upload, de-identification, encryption at rest, per-viewer serving, retention.

The store is tested on its own (no event loop); the REST API against a real in-process node,
with real HTTP and real signalling WebSockets.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from consilium.node import build_node
from core.imageref import ImageRef
from imaging.sniff import BurnedInAnnotation, UnsupportedImage
from imaging.store import ImageStore, TooManyImages, room_uid_secret
from imaging.watermark import identify, load_or_create_watermark_key
from recorder.chunked import SegmentIntegrityError
from recorder.roomkeys import RoomKeys, open_keyring
from signaling.audit import iter_entries
from signaling.auditformat import AuditEntry
from signaling.http.tasks import delete_expired_annotations, delete_expired_images
from signaling.state.records import Revocation
from tests.fixtures.servers import (
    RunningNode,
    eventually,
    next_message,
    node_settings,
    running_node,
)

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
CT_PATIENT_NAME = b"CompressedSamples^CT1"
ROW_MARKER = bytes(range(7, 7 + 3 * 64))
"""One distinctive row of RGB pixels (64 pixels) in the test photo."""


# -- test images ------------------------------------------------------------------------------


def ct_bytes(**changes: Any) -> bytes:
    """pydicom's CT_small.dcm, with some attributes changed."""
    ds = pydicom.dcmread(CT_SMALL)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def photo_pixels(size: int = 256) -> np.ndarray[Any, np.dtype[np.uint8]]:
    rng = np.random.default_rng(6)
    pixels = rng.integers(40, 200, (size, size, 3), dtype=np.uint8)
    pixels[10, :64] = np.frombuffer(ROW_MARKER, np.uint8).reshape(64, 3)
    return pixels


def png_with_gps() -> bytes:
    """An uncompressed PNG (its pixel rows appear verbatim in the file) carrying EXIF GPS."""
    image = Image.fromarray(photo_pixels())
    exif = Image.Exif()
    exif[0x010F] = "Hospital camera"
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 0.0)  # GPSLatitude
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=0, exif=exif.tobytes())
    return out.getvalue()


def jpeg_photo() -> bytes:
    out = io.BytesIO()
    Image.fromarray(photo_pixels()).save(out, format="JPEG", quality=90, comment=b"Mrs Smith")
    return out.getvalue()


# -- the store, without a server ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    keys = RoomKeys(open_keyring(tmp_path))
    return ImageStore(tmp_path, keys.key_for, max_images_per_room=3)


def test_a_shared_dicom_is_listed_rendered_and_looked_up(store: ImageStore) -> None:
    record = store.share("mdt-1", ct_bytes(), shared_by_participant="pid-1")
    assert record.kind == "dicom" and record.frames == 1
    assert (record.width, record.height) == (128, 128)
    assert record.title == "CT" and record.removed_tags > 0
    assert record.pixel_spacing_mm is not None
    assert store.list("mdt-1") == [record]
    data, media_type = store.frame("mdt-1", record.image_id, 0)
    assert media_type == "image/png" and data.startswith(b"\x89PNG")
    assert store.lookup("mdt-1", record.image_id) == ImageRef(1, record.pixel_spacing_mm)
    assert store.lookup("mdt-2", record.image_id) is None
    assert store.lookup("mdt-1", "../../keys") is None


def test_uids_are_replaced_consistently_within_a_room(tmp_path: Path) -> None:
    keys = RoomKeys(open_keyring(tmp_path))
    one = room_uid_secret(keys.key_for("mdt-1"), "mdt-1")
    assert one == room_uid_secret(keys.key_for("mdt-1"), "mdt-1")
    assert one != room_uid_secret(keys.key_for("mdt-2"), "mdt-2")


def test_burned_in_dicom_needs_confirmation(store: ImageStore) -> None:
    data = ct_bytes(BurnedInAnnotation="YES")
    with pytest.raises(BurnedInAnnotation):
        store.share("mdt-1", data, shared_by_participant="pid-1")
    assert store.list("mdt-1") == []
    record = store.share("mdt-1", data, shared_by_participant="pid-1", confirm_burned_in=True)
    assert record.burned_in_confirmed


def test_a_refused_upload_leaves_nothing_behind(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedImage):
        store.share("mdt-1", b"%PDF-1.7 not an image", shared_by_participant="pid-1")
    images = tmp_path / "rooms" / "mdt-1" / "images"
    assert not images.exists() or not any(images.iterdir())


def test_a_room_holds_a_bounded_number_of_images(store: ImageStore) -> None:
    for _ in range(3):
        store.share("mdt-1", jpeg_photo(), shared_by_participant="pid-1")
    with pytest.raises(TooManyImages):
        store.share("mdt-1", jpeg_photo(), shared_by_participant="pid-1")
    store.share("mdt-2", jpeg_photo(), shared_by_participant="pid-1")  # other rooms unaffected


def test_images_survive_a_new_store_and_keep_sharing_order(tmp_path: Path) -> None:
    keys = RoomKeys(open_keyring(tmp_path))
    first = ImageStore(tmp_path, keys.key_for)
    shared = [
        first.share("mdt-1", data, shared_by_participant="p") for data in (jpeg_photo(), ct_bytes())
    ]
    again = ImageStore(tmp_path, RoomKeys(open_keyring(tmp_path)).key_for)
    assert again.list("mdt-1") == shared
    ct_id = shared[1].image_id
    assert again.frame("mdt-1", ct_id, 0) == first.frame("mdt-1", ct_id, 0)


def test_a_frame_moved_to_another_image_does_not_decrypt(store: ImageStore, tmp_path: Path) -> None:
    a = store.share("mdt-1", jpeg_photo(), shared_by_participant="p")
    b = store.share("mdt-1", png_with_gps(), shared_by_participant="p")
    images = tmp_path / "rooms" / "mdt-1" / "images"
    shutil.copy(images / a.image_id / "frame-000000.seg", images / b.image_id / "frame-000000.seg")
    with pytest.raises(SegmentIntegrityError):
        store.frame("mdt-1", b.image_id, 0)


def test_a_damaged_image_does_not_hide_the_others(tmp_path: Path) -> None:
    keys = RoomKeys(open_keyring(tmp_path))
    first = ImageStore(tmp_path, keys.key_for)
    damaged = first.share("mdt-1", jpeg_photo(), shared_by_participant="p")
    intact = first.share("mdt-1", png_with_gps(), shared_by_participant="p")
    meta = tmp_path / "rooms" / "mdt-1" / "images" / damaged.image_id / "meta.seg"
    meta.write_bytes(meta.read_bytes()[:-1])
    assert ImageStore(tmp_path, keys.key_for).list("mdt-1") == [intact]


def test_delete_room_removes_only_that_rooms_images(store: ImageStore, tmp_path: Path) -> None:
    gone = store.share("mdt-1", jpeg_photo(), shared_by_participant="p")
    kept = store.share("mdt-2", jpeg_photo(), shared_by_participant="p")
    assert store.delete_room("mdt-1") == [gone.image_id]
    assert store.list("mdt-1") == [] and store.lookup("mdt-1", gone.image_id) is None
    assert not (tmp_path / "rooms" / "mdt-1").exists()
    assert store.list("mdt-2") == [kept]
    assert (tmp_path / "keyring").exists()  # the room's key is not shredded


def test_expired_images_are_deleted(store: ImageStore) -> None:
    old = store.share("mdt-1", jpeg_photo(), shared_by_participant="p")
    cutoff = old.shared_at + 0.001
    new = store.share("mdt-1", jpeg_photo(), shared_by_participant="p")
    assert new.shared_at >= cutoff
    assert store.delete_expired(cutoff) == {"mdt-1": [old.image_id]}
    assert store.list("mdt-1") == [new]


# -- the REST API on a running node -------------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    settings = node_settings(tmp_path / "data", media=False, max_image_bytes=512 * 1024)
    async with running_node(settings) as running:
        yield running


def bearer(node: RunningNode, sub: str, role: str = "specialist", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.token(sub, role, **claims)}"}


def upload_form(data: bytes, *, confirm: bool = False, filename: str = "x.bin") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    if confirm:
        form.add_field("confirm_burned_in", "true")
    return form


async def upload(
    node: RunningNode, sub: str, data: bytes, *, room: str = "mdt-1", confirm: bool = False,
    role: str = "specialist",
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    session = await node.session()
    async with session.post(
        f"{node.url}/api/rooms/{room}/images",
        data=upload_form(data, confirm=confirm),
        headers=bearer(node, sub, role, rooms=[room]),
    ) as response:
        return response.status, await response.json()


async def fetch(
    node: RunningNode, sub: str, image_id: str, *, room: str = "mdt-1", **query: str
) -> aiohttp.ClientResponse:
    session = await node.session()
    response = await session.get(
        f"{node.url}/api/rooms/{room}/images/{image_id}",
        params=query,
        headers=bearer(node, sub, rooms=[room]),
    )
    await response.read()
    return response


async def meeting(node: RunningNode) -> dict[str, aiohttp.ClientWebSocketResponse]:
    """A chair and a specialist joined in mdt-1."""
    chair, joined = await node.join("dr-chair", "chair")
    assert joined["type"] == "joined"
    heart, joined = await node.join("dr-heart", "specialist")
    assert joined["type"] == "joined"
    return {"dr-chair": chair, "dr-heart": heart}


def audit(node: RunningNode, action: str) -> list[AuditEntry]:
    return list(iter_entries(node.data_dir / "audit", action=action))


async def test_a_shared_dicom_reaches_everyone_and_is_served_watermarked(
    node: RunningNode,
) -> None:
    sockets = await meeting(node)
    status, body = await upload(node, "dr-heart", ct_bytes())
    assert status == 201, body
    assert set(body) == {"image_id", "kind", "frames", "width", "height", "pixel_spacing_mm",
                         "shared_by", "title", "burned_in_confirmed", "held", "held_reasons",
                         "text_blanked", "slice_order", "frames_pending"}  # fmt: skip
    assert body["slice_order"] == [] and body["frames_pending"] == 0  # an upload: not a stack
    assert body["held"] is False and body["text_blanked"] == 0  # a CT: not an OCR candidate
    assert body["kind"] == "dicom" and body["frames"] == 1 and body["title"] == "CT"
    assert len(body["pixel_spacing_mm"]) == 2 and body["burned_in_confirmed"] is False
    for ws in sockets.values():  # the uploader's own connection too
        shared = await next_message(ws, "image_shared")
        # Fields at their default (null spacing, not confirmed) are left out on the WebSocket.
        defaults = {"pixel_spacing_mm": None, "burned_in_confirmed": False, "slice_order": [],
                    "frames_pending": 0}  # fmt: skip
        announced = {**defaults, **{k: v for k, v in shared.items() if k != "type"}}
        assert announced == {k: v for k, v in body.items() if k in announced}
        assert set(body) - set(announced) == {"held", "held_reasons", "text_blanked"}

    session = await node.session()
    async with session.get(
        f"{node.url}/api/rooms/mdt-1/images", headers=bearer(node, "dr-chair", "chair")
    ) as response:
        assert response.status == 200
        assert await response.json() == {"images": [body]}

    response = await fetch(node, "dr-chair", body["image_id"], frame="0")
    assert response.status == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Cache-Control"] == "no-store"
    mark = identify(await response.read(), load_or_create_watermark_key(node.data_dir))
    assert mark is not None and (mark.viewer, mark.room) == ("dr-chair", "mdt-1")

    (shared_entry,) = audit(node, "image_shared")
    assert shared_entry.sub == "dr-heart" and shared_entry.room == "mdt-1"
    assert shared_entry.fields["image"] == body["image_id"]
    assert shared_entry.fields["kind"] == "dicom" and shared_entry.fields["frames"] == 1
    assert shared_entry.fields["removed_tags"] > 0
    assert shared_entry.fields["burned_in_confirmed"] is False
    (viewed,) = audit(node, "image_viewed")
    assert (viewed.sub, viewed.fields["image"], viewed.fields["frame"]) == (
        "dr-chair", body["image_id"], 0,
    )  # fmt: skip


async def test_photos_lose_their_metadata_and_keep_their_format(node: RunningNode) -> None:
    await meeting(node)
    status, png = await upload(node, "dr-heart", png_with_gps())
    assert status == 201 and png["kind"] == "png" and png["title"] == "Image"
    assert png["pixel_spacing_mm"] is None and (png["width"], png["height"]) == (256, 256)
    status, jpeg = await upload(node, "dr-heart", jpeg_photo())
    assert status == 201 and jpeg["kind"] == "jpeg"

    served_png = await fetch(node, "dr-heart", png["image_id"])
    assert served_png.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(await served_png.read())) as image:
        assert not image.getexif() and "exif" not in image.info
    served_jpeg = await fetch(node, "dr-chair", jpeg["image_id"])
    assert served_jpeg.headers["Content-Type"] == "image/jpeg"
    data = await served_jpeg.read()
    assert b"Mrs Smith" not in data
    mark = identify(data, load_or_create_watermark_key(node.data_dir))
    assert mark is not None and mark.viewer == "dr-chair"


async def test_export_fetch_is_audited_as_an_export(node: RunningNode) -> None:
    await meeting(node)
    _, body = await upload(node, "dr-heart", jpeg_photo())
    for _ in range(2):
        assert (await fetch(node, "dr-chair", body["image_id"])).status == 200
    response = await fetch(node, "dr-chair", body["image_id"], purpose="export")
    assert response.status == 200
    assert len(audit(node, "image_viewed")) == 2
    (exported,) = audit(node, "image_exported")
    assert exported.sub == "dr-chair" and exported.fields["image"] == body["image_id"]
    assert (await fetch(node, "dr-chair", body["image_id"], purpose="print")).status == 400


async def test_trainee_cannot_share_images(node: RunningNode) -> None:
    await meeting(node)
    _ws, joined = await node.join("dr-young", "trainee")
    assert joined["type"] == "joined" and "share_image" not in joined["permissions"]
    status, body = await upload(node, "dr-young", jpeg_photo(), role="trainee")
    assert status == 403 and body["error"] == "not_allowed"
    assert any(e.sub == "dr-young" and e.fields.get("requested") == "share_image"
               for e in audit(node, "api_refused"))  # fmt: skip
    assert audit(node, "image_shared") == []


async def test_only_current_participants_see_the_images(node: RunningNode) -> None:
    await meeting(node)
    _, body = await upload(node, "dr-heart", jpeg_photo())
    image_id = body["image_id"]
    # Granted the room by their token, but not in it.
    response = await fetch(node, "dr-outsider", image_id)
    assert response.status == 403 and (await response.json())["error"] == "not_allowed"
    status, refused = await upload(node, "dr-outsider", jpeg_photo())
    assert status == 403 and refused["error"] == "not_allowed"
    session = await node.session()
    async with session.get(
        f"{node.url}/api/rooms/mdt-1/images", headers=bearer(node, "dr-outsider")
    ) as listing:
        assert listing.status == 403
    # Once they leave, a former participant is refused too.
    heart_ws = (await node.join("dr-gone", "specialist"))[0]
    assert (await fetch(node, "dr-gone", image_id)).status == 200
    await heart_ws.close()
    node_state = node.node
    assert node_state is not None

    async def left() -> bool:
        return await node_state.rooms.current_participant("mdt-1", "dr-gone") is None

    await eventually(left)
    assert (await fetch(node, "dr-gone", image_id)).status == 403
    # No token at all.
    async with session.get(f"{node.url}/api/rooms/mdt-1/images/{image_id}") as anonymous:
        assert anonymous.status == 401
        assert (await anonymous.json())["error"] == "not_authenticated"
    assert any(e.reason == "not_a_participant" for e in audit(node, "api_refused"))


# The same `sub` as a participant who is in the room, on a token the join would refuse.
SAME_SUB_REFUSED = {
    "no_role": ({"role": ""}, "unknown_role"),
    "no_room_grant": ({"rooms": []}, "room_not_granted"),
    "another_room_only": ({"rooms": ["mdt-2"]}, "room_not_granted"),
    "no_second_factor": ({"amr": ["pwd"]}, "mfa_required"),
    "another_department": ({"depts": ["oncology"]}, "department_not_permitted"),
    "archivist": ({"role": "archivist"}, "separation_of_duties"),
    "admin": ({"role": "admin"}, "separation_of_duties"),
    "auditor": ({"role": "auditor"}, "separation_of_duties"),
}


@pytest.mark.parametrize("case", sorted(SAME_SUB_REFUSED))
async def test_every_image_route_decides_like_the_join(node: RunningNode, case: str) -> None:
    """Being in the room is not enough: each request's own token must pass the join's policy
    check (role, second factor, room grant, department), or it is refused and audited."""
    await meeting(node)
    _, body = await upload(node, "dr-heart", jpeg_photo())
    changes, reason = SAME_SUB_REFUSED[case]
    claims: dict[str, Any] = {"rooms": ["mdt-1"], "role": "specialist", **changes}
    role = claims.pop("role")
    headers = bearer(node, "dr-heart", role, **claims)
    session = await node.session()
    base = f"{node.url}/api/rooms/mdt-1/images"
    requests = [
        session.get(base, headers=headers),
        session.get(f"{base}/{body['image_id']}", headers=headers),
        session.post(base, data=upload_form(jpeg_photo()), headers=headers),
    ]
    for request in requests:
        async with request as response:
            assert response.status == 403, (case, response.url)
            assert response.content_type == "application/json"
            refusal = await response.json()
            assert refusal["error"] == "not_allowed" and "images" not in refusal
    refused = [e for e in audit(node, "api_refused") if e.sub == "dr-heart"]
    assert len(refused) == 3 and all(e.reason.startswith(reason) for e in refused), refused
    assert all(e.room == "mdt-1" for e in refused)
    assert audit(node, "image_viewed") == [] and len(audit(node, "image_shared")) == 1


async def test_a_revoked_token_of_a_participant_reads_no_image(node: RunningNode) -> None:
    await meeting(node)
    _, body = await upload(node, "dr-heart", jpeg_photo())
    token = node.token("dr-heart", "specialist")
    assert node.node is not None
    identity = await node.node.verifier.verify(token)
    revocation = Revocation("jti", identity.jti, "lost laptop", "it-admin", time.time())
    await node.node.store.revoke(revocation)
    session = await node.session()
    async with session.get(
        f"{node.url}/api/rooms/mdt-1/images/{body['image_id']}",
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 401 and (await response.json())["error"] == "not_authenticated"
    assert any(e.reason == "revoked_jti" for e in audit(node, "api_refused"))


async def test_a_participant_waiting_in_the_lobby_cannot_fetch(node: RunningNode) -> None:
    _ws, answer = await node.join("dr-early", "specialist", room="mdt-9")
    assert answer["type"] == "lobby"
    response = await fetch(node, "dr-early", "A" * 22, room="mdt-9")
    assert response.status == 403


async def test_an_image_of_another_room_is_not_found(node: RunningNode) -> None:
    await meeting(node)
    _, body = await upload(node, "dr-heart", jpeg_photo())
    _chair2, joined = await node.join("dr-chair2", "chair", room="mdt-2")
    assert joined["type"] == "joined"
    response = await fetch(node, "dr-chair2", body["image_id"], room="mdt-2")
    assert response.status == 404 and (await response.json())["error"] == "unknown_image"
    assert (await fetch(node, "dr-chair", body["image_id"], frame="3")).status == 404
    assert (await fetch(node, "dr-chair", body["image_id"], frame="x")).status == 400
    assert (await fetch(node, "dr-chair", "..%2F..%2Fkeys")).status in (403, 404)


async def test_a_too_large_upload_is_refused_and_the_server_carries_on(node: RunningNode) -> None:
    await meeting(node)
    big = ct_bytes() + os.urandom(600 * 1024)
    status, body = await upload(node, "dr-heart", big)
    assert status == 413 and body["error"] == "image_too_large"
    # The declared length alone is not trusted: a chunked body is bounded while it streams.
    session = await node.session()

    async def chunks() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
        for _ in range(12):
            yield os.urandom(64 * 1024)

    async with session.post(
        f"{node.url}/api/rooms/mdt-1/images",
        data=chunks(),
        headers={**bearer(node, "dr-heart"), "Content-Type": "multipart/form-data; boundary=b"},
    ) as response:
        assert response.status == 413
    status, body = await upload(node, "dr-heart", jpeg_photo())
    assert status == 201
    assert [e.reason for e in audit(node, "image_share_refused")] == ["image_too_large"] * 2


async def test_bad_uploads_get_json_errors(node: RunningNode) -> None:
    await meeting(node)
    status, body = await upload(node, "dr-heart", b"%PDF-1.7 a report")
    assert status == 415 and body["error"] == "unsupported_image"
    session = await node.session()
    async with session.post(
        f"{node.url}/api/rooms/mdt-1/images", json={"file": "x"}, headers=bearer(node, "dr-heart")
    ) as response:
        assert response.status == 400 and (await response.json())["error"] == "bad_message"
    form = aiohttp.FormData()
    form.add_field("note", "no file here")
    async with session.post(
        f"{node.url}/api/rooms/mdt-1/images", data=form, headers=bearer(node, "dr-heart")
    ) as response:
        assert response.status == 400
    async with session.post(
        f"{node.url}/api/rooms/mdt-1/images",
        data=b"--zz\r\ngarbage",
        headers={**bearer(node, "dr-heart"), "Content-Type": "multipart/form-data; boundary=b"},
    ) as response:
        assert response.status == 400
    assert (await upload(node, "dr-heart", jpeg_photo()))[0] == 201


async def test_burned_in_annotation_is_refused_until_confirmed(node: RunningNode) -> None:
    await meeting(node)
    data = ct_bytes(BurnedInAnnotation="YES")
    status, body = await upload(node, "dr-heart", data)
    assert status == 422 and body["error"] == "burned_in_annotation"
    (refused,) = audit(node, "image_share_refused")
    assert refused.reason == "burned_in_annotation" and refused.sub == "dr-heart"
    status, body = await upload(node, "dr-heart", data, confirm=True)
    assert status == 201 and body["burned_in_confirmed"] is True
    (shared,) = audit(node, "image_shared")
    assert shared.fields["burned_in_confirmed"] is True


async def test_nothing_identifying_is_written_in_the_clear(node: RunningNode) -> None:
    await meeting(node)
    for data in (ct_bytes(), png_with_gps(), jpeg_photo()):
        assert (await upload(node, "dr-heart", data))[0] == 201
    assert node.node is not None
    images = node.node.images
    served, _ = images.frame("mdt-1", images.list("mdt-1")[1].image_id, 0)
    forbidden = [CT_PATIENT_NAME, ROW_MARKER, b"\x89PNG\r\n\x1a\n", b"DICM", served[200:264]]
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for needle in forbidden:
                assert needle not in content, f"{needle[:24]!r} found in {path}"


async def test_images_are_served_after_a_restart(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data", media=False)
    async with running_node(settings) as first:
        await meeting(first)
        _, body = await upload(first, "dr-heart", ct_bytes())
    async with running_node(node_settings(tmp_path / "data", media=False)) as second:
        await meeting(second)
        session = await second.session()
        async with session.get(
            f"{second.url}/api/rooms/mdt-1/images", headers=bearer(second, "dr-heart")
        ) as response:
            assert (await response.json())["images"] == [body]
        response = await fetch(second, "dr-heart", body["image_id"])
        assert response.status == 200 and response.headers["Content-Type"] == "image/png"


async def test_retention_deletes_expired_images(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data", media=False, image_retention_days=1e-9)
    async with running_node(settings) as node:
        assert node.node is not None
        await node.node.retention_swept.wait()  # the sweep at start must not race this one
        await meeting(node)
        _, body = await upload(node, "dr-heart", jpeg_photo())
        assert await delete_expired_images(node.node) == {"mdt-1": [body["image_id"]]}
        assert (await fetch(node, "dr-heart", body["image_id"])).status == 404
        assert not (node.data_dir / "rooms" / "mdt-1" / "images").exists()
        (deleted,) = audit(node, "images_deleted")
        assert deleted.room == "mdt-1" and deleted.fields["images"] == [body["image_id"]]
        assert deleted.reason == "retention"


async def test_a_starting_node_applies_retention(tmp_path: Path) -> None:
    async with running_node(node_settings(tmp_path / "data", media=False)) as first:
        await meeting(first)
        _, body = await upload(first, "dr-heart", jpeg_photo())
    settings = node_settings(tmp_path / "data", media=False, image_retention_days=1e-9)
    async with running_node(settings) as second:
        await eventually(lambda: audit(second, "images_deleted"))
        assert second.node is not None
        assert second.node.images.list("mdt-1") == []
        assert audit(second, "images_deleted")[0].fields["images"] == [body["image_id"]]


def test_the_sfu_looks_up_shared_images(tmp_path: Path) -> None:
    node = build_node(node_settings(tmp_path / "data"))
    assert node.rooms.media is not None
    lookup = node.rooms.media.settings.image_info
    assert lookup is not None
    record = node.images.share("mdt-1", ct_bytes(), shared_by_participant="p")
    assert lookup("mdt-1", record.image_id) == ImageRef(1, record.pixel_spacing_mm)
    assert lookup("mdt-1", "nope-nope-nope-nope") is None
    node.audit.close()


async def test_retention_deletes_old_annotation_logs_but_not_a_live_room(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data", annotation_retention_days=1.0)
    async with running_node(settings) as node:
        assert node.node is not None and node.node.rooms.media is not None
        await node.node.retention_swept.wait()  # the sweep at start must not race this one
        rooms = node.data_dir / "rooms"
        old, recent, live = (rooms / name / "annotations.log" for name in ("old", "new", "live"))
        for path in (old, recent, live):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"sealed records")
        two_days_ago = time.time() - 2 * 86400
        os.utime(old, (two_days_ago, two_days_ago))
        os.utime(live, (two_days_ago, two_days_ago))
        node.node.rooms.media.room("live")  # in session on this node
        assert await delete_expired_annotations(node.node) == ["old"]
        assert not old.exists() and recent.exists() and live.exists()
        (deleted,) = audit(node, "annotations_deleted")
        assert deleted.room == "old" and deleted.reason == "retention"

"""Images from a real PACS: Orthanc with its DICOMweb plugin (tests/fixtures/orthanc.py), a real
in-process node, real HTTP and signalling WebSockets. Search from a room, share a series into
it through the upload's path, refusals, and a PACS that is down while the room goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imaging.watermark import identify, load_or_create_watermark_key
from signaling.audit import iter_entries
from signaling.auditformat import AuditEntry
from tests.fixtures.orthanc import USER, CtSeries, OrthancServer, ct_series, start_orthanc
from tests.fixtures.servers import (
    RunningNode,
    next_message,
    node_settings,
    running_node,
)


def pacs_settings(tmp_path: Path, pacs_url: str, password_file: Path, **more: Any) -> Any:
    return node_settings(tmp_path / "data", media=False, pacs_url=pacs_url, pacs_username=USER,
                         pacs_password_file=str(password_file), **more)  # fmt: skip


@pytest.fixture
async def node(tmp_path: Path, orthanc: OrthancServer) -> AsyncIterator[RunningNode]:
    settings = pacs_settings(tmp_path, orthanc.dicomweb_url, orthanc.password_file)
    async with running_node(settings) as running:
        yield running


def bearer(node: RunningNode, sub: str, role: str, room: str = "mdt-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {node.token(sub, role, rooms=[room])}"}


async def post(
    node: RunningNode, sub: str, role: str, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    session = await node.session()
    async with session.post(
        f"{node.url}/api/rooms/mdt-1/pacs/{path}", json=body, headers=bearer(node, sub, role)
    ) as response:
        return response.status, await response.json()


async def meeting(node: RunningNode) -> dict[str, aiohttp.ClientWebSocketResponse]:
    """A chair and a radiologist joined in mdt-1."""
    chair, joined = await node.join("dr-chair", "chair")
    assert joined["type"] == "joined"
    radiologist, joined = await node.join("dr-rad", "radiologist")
    assert joined["type"] == "joined"
    return {"dr-chair": chair, "dr-rad": radiologist}


def audit(node: RunningNode, action: str) -> list[AuditEntry]:
    return list(iter_entries(node.data_dir / "audit", action=action))


def jane(orthanc: OrthancServer) -> CtSeries:
    return next(s for s in orthanc.loaded if s.patient_id == "PAT-0001")


async def test_search_by_patient_id_accession_and_date(
    node: RunningNode, orthanc: OrthancServer
) -> None:
    await meeting(node)
    series = jane(orthanc)
    status, found = await post(node, "dr-rad", "radiologist", "search", {"patient_id": "PAT-0001"})
    assert status == 200, found
    (study,) = found["studies"]
    assert study["study_uid"] == series.study_uid
    assert (study["patient_name"], study["accession"], study["study_date"]) == (
        "Doe^Jane", "ACC-1001", "2026-11-30",
    )  # fmt: skip
    assert study["modalities"] == ["CT"] and study["instances"] == 5

    status, found = await post(node, "dr-rad", "radiologist", "search", {"accession": "ACC-2002"})
    assert status == 200 and [s["patient_id"] for s in found["studies"]] == ["PAT-0002"]

    in_range = {"patient_id": "PAT-0001", "date_from": "2026-11-01", "date_to": "2026-11-30"}
    out_of_range = {"patient_id": "PAT-0001", "date_from": "2026-12-01"}
    assert len((await post(node, "dr-rad", "radiologist", "search", in_range))[1]["studies"]) == 1
    assert (await post(node, "dr-rad", "radiologist", "search", out_of_range))[1]["studies"] == []
    other = {"patient_id": "PAT-0001", "modality": "MR"}
    assert (await post(node, "dr-rad", "radiologist", "search", other))[1]["studies"] == []

    status, listed = await post(node, "dr-rad", "radiologist", "series",
                                {"study_uid": series.study_uid})  # fmt: skip
    assert status == 200
    assert [(s["series_uid"], s["instances"], s["modality"]) for s in listed["series"]] == [
        (series.series_uid, 5, "CT")
    ]

    status, error = await post(node, "dr-rad", "radiologist", "search", {"date_from": "2026-01-01"})
    assert status == 400 and error["error"] == "bad_message"

    searched = audit(node, "pacs_searched")
    assert len(searched) == 5
    assert searched[0].fields["criteria"] == ["patient_id"] and searched[0].fields["results"] == 1
    raw = b"".join(p.read_bytes() for p in (node.data_dir / "audit").rglob("*") if p.is_file())
    for phi in (b"PAT-0001", b"Doe^Jane", b"ACC-2002", series.study_uid.encode()):
        assert phi not in raw


async def test_a_shared_series_reaches_everyone_de_identified_and_watermarked(
    node: RunningNode, orthanc: OrthancServer
) -> None:
    sockets = await meeting(node)
    series = jane(orthanc)
    uids = {"study_uid": series.study_uid, "series_uid": series.series_uid}
    status, started = await post(node, "dr-rad", "radiologist", "shares", uids)
    assert status == 202, started
    assert started["total"] == 5 and started["state"] == "running"

    for sub, ws in sockets.items():
        images: list[dict[str, Any]] = []
        last: dict[str, Any] = {}
        while last.get("state") not in ("done", "failed"):
            message = await next_message(ws, timeout=30)
            if message["type"] == "image_shared":
                images.append(message)
            elif message["type"] == "pacs_share_progress":
                assert message["share_id"] == started["share_id"]
                last = message
        assert last["state"] == "done" and last["shared"] == 5 and last["total"] == 5, last
        assert len(images) == 5
        for image in images:
            assert image["kind"] == "dicom" and image["frames"] == 1
            assert image["width"] == 256 and image["pixel_spacing_mm"] == [0.7, 0.7]
            text = repr(image) + repr(last)
            for phi in ("Doe", "Jane", "PAT-0001", "ACC-1001", series.series_uid):
                assert phi not in text, f"{phi} announced to {sub}"

        # What a viewer gets is watermarked for them, like an uploaded image.
        session = await node.session()
        async with session.get(
            f"{node.url}/api/rooms/mdt-1/images/{images[0]['image_id']}",
            headers=bearer(node, sub, "chair" if sub == "dr-chair" else "radiologist"),
        ) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/png"
            mark = identify(await response.read(), load_or_create_watermark_key(node.data_dir))
        assert mark is not None and (mark.viewer, mark.room) == (sub, "mdt-1")

    # The upload's path: de-identified (tags removed, nothing identifying in what is stored).
    shared = audit(node, "image_shared")
    assert len(shared) == 5 and all(e.fields["removed_tags"] > 0 for e in shared)
    assert node.node is not None
    for record in node.node.images.list("mdt-1"):
        assert "Doe" not in record.title and record.uploader == "dr-rad"
    (finished,) = audit(node, "pacs_share_finished")
    assert (finished.fields["shared"], finished.fields["skipped"]) == (5, 0)
    (started_entry,) = audit(node, "pacs_share_started")
    assert started_entry.fields["total"] == 5 and len(started_entry.fields["series_sha256"]) == 32
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for phi in (b"Doe^Jane", b"PAT-0001", series.series_uid.encode()):
                assert phi not in content, f"{phi!r} in {path}"


@pytest.mark.parametrize("role", ["trainee", "nurse"])
async def test_a_role_that_may_not_search_is_refused(
    node: RunningNode, orthanc: OrthancServer, role: str
) -> None:
    await meeting(node)
    _ws, joined = await node.join("someone", role)
    assert joined["type"] == "joined"
    series = jane(orthanc)
    for path, body in (
        ("search", {"patient_id": "PAT-0001"}),
        ("series", {"study_uid": series.study_uid}),
        ("shares", {"study_uid": series.study_uid, "series_uid": series.series_uid}),
    ):
        status, error = await post(node, "someone", role, path, body)
        assert status == 403 and error["error"] == "not_allowed", (path, error)
    assert not audit(node, "pacs_searched") and not audit(node, "pacs_share_started")
    assert len(audit(node, "api_refused")) == 3
    session = await node.session()
    async with session.get(
        f"{node.url}/api/rooms/mdt-1/pacs", headers=bearer(node, "someone", role)
    ) as response:
        assert await response.json() == {"configured": True, "allowed": False}


async def test_someone_not_in_the_room_cannot_search(node: RunningNode) -> None:
    await meeting(node)
    status, error = await post(node, "dr-away", "radiologist", "search", {"patient_id": "PAT-0001"})
    assert status == 403 and error["error"] == "not_allowed"


async def test_a_pacs_that_is_down_gets_a_clear_error_and_the_room_goes_on(
    tmp_path: Path,
) -> None:
    pacs = start_orthanc(tmp_path / "orthanc-down")
    password = pacs.password_file
    pacs.stop()
    async with running_node(pacs_settings(tmp_path, pacs.dicomweb_url, password)) as node:
        sockets = await meeting(node)
        status, error = await post(node, "dr-rad", "radiologist", "search",
                                   {"patient_id": "PAT-0001"})  # fmt: skip
        assert status == 503 and error["error"] == "pacs_unavailable"
        assert "cannot be reached" in error["message"]
        status, error = await post(node, "dr-rad", "radiologist", "shares",
                                   {"study_uid": "1.2.3", "series_uid": "1.2.3.4"})  # fmt: skip
        assert status == 503 and error["error"] == "pacs_unavailable"
        (failed,) = audit(node, "pacs_search_failed")
        assert failed.reason == "pacs_unavailable"
        assert audit(node, "pacs_share_refused")[0].reason == "pacs_unavailable"
        # The meeting carries on: signalling answers, the others still hear of changes.
        await sockets["dr-chair"].send_json({"type": "ping", "id": 7})
        assert (await next_message(sockets["dr-chair"], "pong"))["id"] == 7
        _late, joined = await node.join("dr-late", "specialist")
        assert joined["type"] == "joined"
        assert (await next_message(sockets["dr-rad"], "participant_joined"))["participant"]


async def test_wrong_pacs_credentials_are_a_clear_error(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    async with running_node(pacs_settings(tmp_path, orthanc.dicomweb_url, wrong)) as node:
        await meeting(node)
        status, error = await post(node, "dr-rad", "radiologist", "search",
                                   {"patient_id": "PAT-0001"})  # fmt: skip
        assert status == 503 and error["error"] == "pacs_unavailable"
        assert "credentials" in error["message"]


async def test_a_node_without_a_pacs_says_so(dev_node: RunningNode) -> None:
    await meeting(dev_node)
    session = await dev_node.session()
    async with session.get(
        f"{dev_node.url}/api/rooms/mdt-1/pacs", headers=bearer(dev_node, "dr-rad", "radiologist")
    ) as response:
        assert await response.json() == {"configured": False, "allowed": False}
    status, error = await post(dev_node, "dr-rad", "radiologist", "search", {"patient_id": "P"})
    assert status == 503 and error["error"] == "pacs_not_configured"


async def test_a_series_beyond_the_share_bound_or_the_rooms_is_refused_whole(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    series = jane(orthanc)
    uids = {"study_uid": series.study_uid, "series_uid": series.series_uid}
    cases = [({"pacs_max_instances": 4}, 413, "too_large"),
             ({"max_images_per_room": 4}, 429, "too_many_images")]  # fmt: skip
    for bound, http_status, code in cases:
        settings = pacs_settings(tmp_path / code, orthanc.dicomweb_url, orthanc.password_file,
                                 **bound)  # fmt: skip
        async with running_node(settings) as node:
            await meeting(node)
            status, error = await post(node, "dr-rad", "radiologist", "shares", uids)
            assert (status, error["error"], error["limit"]) == (http_status, code, 4)
            assert audit(node, "pacs_share_refused")[0].reason == code
            assert node.node is not None and node.node.images.list("mdt-1") == []


async def test_a_whole_study_is_shared_when_no_series_is_named(
    node: RunningNode, orthanc: OrthancServer
) -> None:
    sockets = await meeting(node)
    other = next(s for s in orthanc.loaded if s.patient_id == "PAT-0002")
    status, started = await post(node, "dr-rad", "radiologist", "shares",
                                 {"study_uid": other.study_uid})  # fmt: skip
    assert status == 202 and started["total"] == 3
    ws = sockets["dr-chair"]
    while (message := await next_message(ws, "pacs_share_progress", timeout=30))["state"] == (
        "running"
    ):
        pass
    assert (message["state"], message["shared"]) == ("done", 3)


async def test_a_pacs_that_dies_during_a_share_fails_it_and_keeps_what_arrived(
    tmp_path: Path,
) -> None:
    pacs = start_orthanc(tmp_path / "orthanc-dying")
    try:
        series = pacs.store(*ct_series(60, size=512))
        settings = pacs_settings(tmp_path, pacs.dicomweb_url, pacs.password_file)
        async with running_node(settings) as node:
            sockets = await meeting(node)
            uids = {"study_uid": series.study_uid, "series_uid": series.series_uid}
            status, _ = await post(node, "dr-rad", "radiologist", "shares", uids)
            assert status == 202
            await next_message(sockets["dr-chair"], "image_shared", timeout=30)
            pacs.proc.kill()  # the PACS crashes mid-series
            while (message := await next_message(sockets["dr-chair"], "pacs_share_progress",
                                                 timeout=60))["state"] == "running":  # fmt: skip
                pass
            assert message["state"] == "failed" and message["error"] == "pacs_unavailable"
            assert 1 <= message["shared"] < 60
            assert node.node is not None
            assert len(node.node.images.list("mdt-1")) == message["shared"]
            (failed,) = audit(node, "pacs_share_failed")
            assert failed.reason == "pacs_unavailable"
            assert failed.fields["shared"] == message["shared"]
            # The meeting goes on.
            await sockets["dr-rad"].send_json({"type": "ping", "id": 3})
            assert (await next_message(sockets["dr-rad"], "pong"))["id"] == 3
    finally:
        pacs.stop()

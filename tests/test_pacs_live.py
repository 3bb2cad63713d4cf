"""Images from a real PACS: Orthanc with its DICOMweb plugin (tests/fixtures/orthanc.py), a real
in-process node, real HTTP and signalling WebSockets. Search from a room, share a series into
it through the upload's path as ONE stacked image (slices uploaded to Orthanc shuffled end up in
anatomical order, the first viewable while the rest stream in), cancel, refusals, and a PACS
that is down or dies while the room goes on."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pydicom
import pytest
from aiohttp import web
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

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


async def until_share_ends(
    ws: aiohttp.ClientWebSocketResponse, share_id: str, timeout: float = 60
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every `image_shared` until the share's last `pacs_share_progress`, and that one."""
    images: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    while last.get("state") not in ("done", "failed"):
        message = await next_message(ws, timeout=timeout)
        if message["type"] == "image_shared":
            images.append(message)
        elif message["type"] == "pacs_share_progress":
            assert message["share_id"] == share_id
            last = message
    return images, last


def store_shuffled(
    pacs: OrthancServer, slices: int, size: int, patient_id: str, *, with_report: bool = False
) -> CtSeries:
    """A CT series loaded into the PACS in a shuffled order (as a modality's sends may be);
    `with_report`: plus a structured report in the same series (an instance with no image)."""
    info, instances = ct_series(slices, size=size, patient_id=patient_id)
    shuffled = list(instances)
    if with_report:
        shuffled.append(report_in(info))
    random.Random(slices).shuffle(shuffled)
    return pacs.store(info, iter(shuffled))


def report_in(series: CtSeries) -> bytes:
    """A Basic Text SR of the series' patient, filed in the series: DICOM, but no image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName = series.patient_id, series.patient_name
    ds.StudyInstanceUID, ds.SeriesInstanceUID = series.study_uid, series.series_uid
    ds.AccessionNumber, ds.StudyDate = series.accession, series.study_date
    ds.Modality = "CT"
    ds.InstanceNumber = 999
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def bright_row(png: bytes) -> int:
    """Each test slice has a bright row at its InstanceNumber (5 mm along z per number)."""
    with Image.open(io.BytesIO(png)) as img:
        return int(np.asarray(img.convert("L"), dtype=np.float64).mean(axis=1).argmax())


async def get_frame(node: RunningNode, image_id: str, frame: int) -> tuple[int, bytes]:
    session = await node.session()
    async with session.get(
        f"{node.url}/api/rooms/mdt-1/images/{image_id}",
        params={"frame": str(frame)},
        headers=bearer(node, "dr-chair", "chair"),
    ) as response:
        return response.status, await response.read()


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
        images, last = await until_share_ends(ws, started["share_id"])
        assert last["state"] == "done" and last["shared"] == 5 and last["total"] == 5, last
        # One series, one image: announced as it grew, the last time complete.
        assert {image["image_id"] for image in images} == set(last["images"])
        assert len(last["images"]) == 1 and last.get("skipped", 0) == 0
        final = images[-1]
        assert final["frames"] == 5 and final.get("frames_pending", 0) == 0
        assert sorted(final["slice_order"]) == [0, 1, 2, 3, 4]
        for image in images:
            assert image["kind"] == "dicom" and 1 <= image["frames"] <= 5
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

    # The upload's path for every slice: de-identified (tags removed, nothing identifying in
    # what is stored), each audited.
    shared = audit(node, "image_shared")
    assert len(shared) == 5 and all(e.fields["removed_tags"] > 0 for e in shared)
    assert [e.fields["frames"] for e in shared] == [1, 2, 3, 4, 5]
    assert node.node is not None
    (record,) = node.node.images.list("mdt-1")
    assert "Doe" not in record.title and record.uploader == "dr-rad" and record.frames == 5
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
    cases = [({"pacs_max_instances": 4}, 413, "too_large", 4),
             ({"max_images_per_room": 1}, 429, "too_many_images", 1),
             ({}, 413, "too_large", 4)]  # fmt: skip
    for bound, http_status, code, limit in cases:
        settings = pacs_settings(tmp_path / f"{code}-{limit}", orthanc.dicomweb_url,
                                 orthanc.password_file, **bound)  # fmt: skip
        async with running_node(settings) as node:
            sockets = await meeting(node)
            assert node.node is not None
            if code == "too_many_images":
                # The room holds one image already: the 5-slice series would be a second.
                other = next(s for s in orthanc.loaded if s.patient_id == "PAT-0002")
                status, started = await post(node, "dr-rad", "radiologist", "shares",
                                             {"study_uid": other.study_uid})  # fmt: skip
                assert status == 202
                await until_share_ends(sockets["dr-chair"], started["share_id"])
            if not bound:  # a series of more slices than one image may hold frames
                images = node.node.images
                images.limits = replace(images.limits, max_frames=4)
            held = node.node.images.list("mdt-1")
            status, error = await post(node, "dr-rad", "radiologist", "shares", uids)
            assert (status, error["error"], error["limit"]) == (http_status, code, limit)
            assert audit(node, "pacs_share_refused")[0].reason == code
            assert node.node.images.list("mdt-1") == held


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
            # One image, consistent: the slices that arrived, none pending any more.
            (image,) = node.node.images.list("mdt-1")
            assert (image.frames, image.frames_pending) == (message["shared"], 0)
            assert sorted(image.slice_order) == list(range(image.frames))
            assert message["images"] == [image.image_id]
            (failed,) = audit(node, "pacs_share_failed")
            assert failed.reason == "pacs_unavailable"
            assert failed.fields["shared"] == message["shared"]
            # The meeting goes on.
            await sockets["dr-rad"].send_json({"type": "ping", "id": 3})
            assert (await next_message(sockets["dr-rad"], "pong"))["id"] == 3
    finally:
        pacs.stop()


async def test_a_shuffled_series_streams_in_as_one_image_in_anatomical_order(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    series = store_shuffled(orthanc, 60, 512, "PAT-0003", with_report=True)
    async with running_node(
        pacs_settings(tmp_path, orthanc.dicomweb_url, orthanc.password_file)
    ) as node:
        sockets = await meeting(node)
        uids = {"study_uid": series.study_uid, "series_uid": series.series_uid}
        status, started = await post(node, "dr-rad", "radiologist", "shares", uids)
        assert status == 202 and started["total"] == 61
        ws = sockets["dr-chair"]
        first = await next_message(ws, "image_shared", timeout=30)
        assert first["frames"] == 1 and first["slice_order"] == [0]
        assert first["frames_pending"] == 60  # the PACS counted the report among them
        # The first slice is there for everyone while the rest are on their way.
        status, png = await get_frame(node, first["image_id"], 0)
        assert status == 200
        status, _ = await get_frame(node, first["image_id"], 59)
        assert status == 404  # not yet arrived: no such frame (yet)
        images, last = await until_share_ends(ws, started["share_id"])
        assert any(image["frames"] < 60 for image in images), "the rest did not stream in"
        assert (last["state"], last["shared"], last["images"]) == ("done", 60, [first["image_id"]])
        # The report is left out, and the room is told why; the series is whole without it.
        assert (last["skipped"], last["skipped_reasons"]) == (1, ["unsupported_image"])
        # Paced: far fewer updates than slices (a few a second at most).
        assert len(images) < 60
        final = images[-1]
        assert final["frames"] == 60 and final.get("frames_pending", 0) == 0
        assert node.node is not None
        assert [r.image_id for r in node.node.images.list("mdt-1")] == [first["image_id"]]
        # Frame 0 is still the slice that was served first; scrolling slice_order walks the
        # slices along z, though they came from the PACS in another order.
        order = final["slice_order"]
        assert order != list(range(60)), "the PACS sent them in order: nothing was sorted"
        rows = {}
        for frame in (*order[:3], *order[-3:], 0):
            status, body = await get_frame(node, first["image_id"], frame)
            assert status == 200
            rows[frame] = bright_row(body)
        assert rows[0] == bright_row(png)
        assert [rows[f] for f in order[:3]] == [1, 2, 3]
        assert [rows[f] for f in order[-3:]] == [58, 59, 60]


class HeldRetrieve:
    """A forwarder in front of the real Orthanc that passes each answer's first `open_bytes`
    and holds the rest until `release()`: the share is then surely still running when the test
    acts on it (a quiet machine shares a 50-slice series before a DELETE could reach it)."""

    def __init__(self, dicomweb_url: str, open_bytes: int) -> None:
        parsed = urlsplit(dicomweb_url)
        self.upstream = f"{parsed.scheme}://{parsed.netloc}"
        self.path = parsed.path
        self.open_bytes = open_bytes
        self.released = asyncio.Event()
        self.url = ""
        """The DICOMweb root to give the node (set by `start`)."""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{self.path}"

    def release(self) -> None:
        self.released.set()

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("authorization", "accept")
        }
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            if "Content-Type" in upstream.headers:
                response.headers["Content-Type"] = upstream.headers["Content-Type"]
            await response.prepare(request)
            sent = 0
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                if sent >= self.open_bytes:
                    await self.released.wait()
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
            return response


async def test_the_sharer_cancels_and_the_room_keeps_what_arrived(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    series = store_shuffled(orthanc, 50, 512, "PAT-0004")
    held = HeldRetrieve(orthanc.dicomweb_url, open_bytes=3 * 512 * 512 * 2)
    await held.start()
    try:
        await _cancel_a_share(tmp_path, orthanc, held, series)
    finally:
        await held.stop()


async def _cancel_a_share(
    tmp_path: Path, orthanc: OrthancServer, held: HeldRetrieve, series: CtSeries
) -> None:
    # The held answer stalls the node's read until `release()`: on a loaded machine the steps
    # before it may take longer than the PACS read timeout (30 s), which would end the share
    # as failed before the sharer's click (CI saw a 404 so, once, loaded).
    settings = pacs_settings(tmp_path, held.url, orthanc.password_file, pacs_timeout_s=300.0)
    async with running_node(settings) as node:
        sockets = await meeting(node)
        uids = {"study_uid": series.study_uid, "series_uid": series.series_uid}
        status, started = await post(node, "dr-rad", "radiologist", "shares", uids)
        assert status == 202
        await next_message(sockets["dr-chair"], "image_shared", timeout=30)
        session = await node.session()
        path = f"{node.url}/api/rooms/mdt-1/pacs/shares/{started['share_id']}"
        # Only the sharer may stop it.
        async with session.delete(path, headers=bearer(node, "dr-chair", "chair")) as response:
            assert response.status == 403
        for click in range(2):  # a second click while it ends changes nothing
            async with session.delete(
                path, headers=bearer(node, "dr-rad", "radiologist")
            ) as response:
                # The second finds it ending (202), or ended already (200: done; CI, loaded,
                # once saw the cancellation finish between the two).
                answer = (response.status, (await response.json())["state"])
                assert answer == (202, "cancelling") or (click and answer == (200, "cancelled"))
        held.release()  # the rest of the series would now come: the share must not take it
        images, last = await until_share_ends(sockets["dr-chair"], started["share_id"])
        assert (last["state"], last["error"]) == ("failed", "cancelled")
        assert 1 <= last["shared"] < 50
        final = images[-1]
        assert final["frames"] == last["shared"] and final.get("frames_pending", 0) == 0
        assert node.node is not None
        (image,) = node.node.images.list("mdt-1")
        assert (image.frames, image.frames_pending) == (last["shared"], 0)
        (failed,) = audit(node, "pacs_share_failed")
        assert failed.reason == "cancelled"
        assert len(audit(node, "pacs_share_cancelled")) == 1
        async with session.delete(path, headers=bearer(node, "dr-rad", "radiologist")) as response:
            assert (response.status, (await response.json())["state"]) == (200, "cancelled")
        async with session.delete(path, headers=bearer(node, "dr-chair", "chair")) as response:
            assert response.status == 403, "still the sharer's alone"
        other = f"{node.url}/api/rooms/mdt-1/pacs/shares/no-such-share"
        async with session.delete(other, headers=bearer(node, "dr-rad", "radiologist")) as response:
            assert response.status == 404


async def test_a_study_of_two_series_becomes_two_stacked_images(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    chest, chest_slices = ct_series(4, size=64, patient_id="PAT-0005")
    _abdomen, abdomen_slices = ct_series(3, size=96, patient_id="PAT-0005")
    for data in chest_slices:
        orthanc.store_instance(data)
    for data in abdomen_slices:  # the second series, filed in the first one's study
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID = chest.study_uid
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        orthanc.store_instance(out.getvalue())
    async with running_node(
        pacs_settings(tmp_path, orthanc.dicomweb_url, orthanc.password_file, max_images_per_room=2)
    ) as node:
        sockets = await meeting(node)
        status, started = await post(node, "dr-rad", "radiologist", "shares",
                                     {"study_uid": chest.study_uid})  # fmt: skip
        assert status == 202 and started["total"] == 7
        images, last = await until_share_ends(sockets["dr-chair"], started["share_id"])
        assert (last["state"], last["shared"], len(last["images"])) == ("done", 7, 2)
        final = {image["image_id"]: image for image in images}
        assert sorted((i["frames"], i["width"]) for i in final.values()) == [(3, 96), (4, 64)]
        assert all(not i.get("frames_pending") for i in final.values())
        assert node.node is not None and len(node.node.images.list("mdt-1")) == 2

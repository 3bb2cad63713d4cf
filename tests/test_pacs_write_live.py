"""The meeting's annotations written back to a real PACS: Orthanc with its DICOMweb plugin
(tests/fixtures/orthanc.py), a real node with its SFU, real aiortc participants drawing over the
room's data channel. A series is shared from Orthanc, shapes are drawn on it, the chair saves
them, and the presentation state is read back from Orthanc (QIDO-RS, WADO-RS): on the original
instances, with the shapes, in the chair's name. And the refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from bot.testsource import ReplayAudioTrack, ReplayVideoTrack
from imaging.dicomweb import MultipartRelated, multipart_boundary
from signaling.audit import iter_entries
from signaling.auditformat import AuditEntry
from tests.fixtures.media import Participant
from tests.fixtures.orthanc import USER, OrthancServer
from tests.fixtures.servers import RunningNode, eventually, node_settings, running_node

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


@pytest.fixture
async def node(tmp_path: Path, orthanc: OrthancServer) -> AsyncIterator[RunningNode]:
    settings = node_settings(tmp_path / "data", ice_host_addresses=["127.0.0.1"],
                             pacs_url=orthanc.dicomweb_url, pacs_username=USER,
                             pacs_password_file=str(orthanc.password_file))  # fmt: skip
    async with running_node(settings) as running:
        yield running


PEOPLE = {
    "dr-chair": ("chair", {"name": "Dr Gregory House", "org": "St Elsewhere Hospital",
                           "extra": {"family_name": "House", "given_name": "Gregory"}}),
    "dr-rad": ("radiologist", {"name": "Dr Lisa Cuddy"}),
    "dr-onc": ("specialist", {"name": "Dr James Wilson"}),
}  # fmt: skip


async def join(node: RunningNode, sub: str) -> Participant:
    """Join mdt-1 over /ws and publish (the data channels ride on the publish session)."""
    role, claims = PEOPLE[sub]
    ws, joined = await node.join(sub, role, **claims)
    assert joined["type"] == "joined", joined
    person = Participant(ws, joined, [ReplayAudioTrack(), ReplayVideoTrack()])
    await person.client.publish()
    await person.client.sync()
    return person


async def api(
    node: RunningNode, sub: str, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    role, claims = PEOPLE[sub]
    headers = {"Authorization": f"Bearer {node.token(sub, role, rooms=['mdt-1'], **claims)}"}
    session = await node.session()
    async with session.post(f"{node.url}/api/rooms/mdt-1/{path}", json=body,
                            headers=headers) as response:  # fmt: skip
        return response.status, await response.json()


def audit(node: RunningNode, action: str) -> list[AuditEntry]:
    return list(iter_entries(node.data_dir / "audit", action=action))


def orthanc_get(orthanc: OrthancServer, path: str, accept: str) -> tuple[bytes, str]:
    return orthanc._request(path, accept=accept)  # the fixture's own authenticated GET


def presentation_states(orthanc: OrthancServer, study_uid: str) -> list[Dataset]:
    """Every GSPS of the study, found by QIDO-RS and read by WADO-RS."""
    body, _type = orthanc_get(orthanc, f"/dicom-web/studies/{study_uid}/series?Modality=PR",
                              "application/dicom+json")  # fmt: skip
    states = []
    for series in json.loads(body or b"[]"):
        series_uid = series["0020000E"]["Value"][0]
        data, content_type = orthanc_get(
            orthanc, f"/dicom-web/studies/{study_uid}/series/{series_uid}",
            'multipart/related; type="application/dicom"',
        )  # fmt: skip
        parser = MultipartRelated(multipart_boundary(content_type), max_part_bytes=len(data))
        states += [dcmread(BytesIO(part)) for part in parser.feed(data)]
    return states


async def share_series(node: RunningNode, orthanc: OrthancServer, who: Participant) -> Any:
    """The radiologist shares Doe^Jane's CT series; the images as announced once it is done."""
    series = next(s for s in orthanc.loaded if s.patient_id == "PAT-0001")
    status, started = await api(
        node,
        "dr-rad",
        "pacs/shares",
        {"study_uid": series.study_uid, "series_uid": series.series_uid},
    )
    assert status == 202, started  # fmt: skip

    def done() -> bool:
        return any(m["type"] == "pacs_share_progress" and m["state"] == "done"
                   for m in who.messages)  # fmt: skip

    await eventually(done, timeout=60)
    return series, [m for m in who.messages if m["type"] == "image_shared"]


def draw(person: Participant, image_id: str, frame: int, shape: dict[str, Any]) -> None:
    person.client.send_json("consilium-reliable", {
        "type": "op", "image_id": image_id, "frame": frame,
        "op": {"kind": "add", "shape": shape},
    })  # fmt: skip


def drawn(person: Participant) -> set[str]:
    events = [m for m in person.client.received() if m["type"] == "event"]
    return {
        m["op"]["shape"]["id"] for m in events if m["kind"] == "op" and m["op"]["kind"] == "add"
    }


async def test_annotations_drawn_in_the_meeting_are_stored_in_the_pacs_on_the_originals(
    node: RunningNode, orthanc: OrthancServer
) -> None:
    chair = await join(node, "dr-chair")
    rad = await join(node, "dr-rad")
    try:
        series, images = await share_series(node, orthanc, rad)
        assert images
        # Shape-agnostic: one image per slice, or a series stacked as one image's frames.
        image = images[0]
        last = image["frames"] - 1
        draw(
            rad,
            image["image_id"],
            0,
            {"id": "a1", "type": "arrow", "points": [[20, 30], [120, 140]], "color": "#ff0000"},
        )
        draw(
            rad,
            image["image_id"],
            0,
            {"id": "e1", "type": "ellipse", "points": [[50, 60], [150, 100]], "color": "#00ff00"},
        )
        draw(
            chair,
            image["image_id"],
            last,
            {
                "id": "t1",
                "type": "text",
                "points": [[40, 40]],
                "text": "Nodule, RUL",
                "color": "#ffff00",
            },
        )
        draw(chair, image["image_id"], last, {"id": "m1", "type": "measure",
                                              "points": [[10, 10], [40, 50]]})  # fmt: skip
        await eventually(lambda: drawn(chair) >= {"a1", "e1", "t1", "m1"}, timeout=10)

        status, stored = await api(node, "dr-chair", "pacs/annotations",
                                   {"image_id": image["image_id"]})  # fmt: skip
        assert status == 201, stored
        # One graphic annotation per instance, frame and colour: red (arrow and measurement)
        # and green on frame 0, yellow and red on the last (the same frame when it is 0).
        assert stored == {"state": "stored", "shapes": 4, "annotations": 4 if last else 3,
                          "states": 1}  # fmt: skip
        assert not any(series.study_uid in str(v) for v in stored.values())

        states = await asyncio.to_thread(presentation_states, orthanc, series.study_uid)
        (state,) = [s for s in states if s.ContentCreatorName == "House^Gregory"]
        assert state.SOPClassUID == GSPS and state.Modality == "PR"
        assert state.StudyInstanceUID == series.study_uid
        assert state.SeriesInstanceUID != series.series_uid  # its own series
        assert (state.PatientID, str(state.PatientName)) == ("PAT-0001", "Doe^Jane")
        assert str(state.ContentCreatorName) == "House^Gregory"
        assert state.InstitutionName == "St Elsewhere Hospital"
        assert "MDT annotations" in state.ContentDescription

        # The original instances of the frames drawn on, as the PACS knows them.
        instances = orthanc.retrieve_series(series.study_uid, series.series_uid)
        originals = {dcmread(BytesIO(instance)).SOPInstanceUID for instance in instances}
        assert node.node is not None
        source = node.node.images.info("mdt-1", image["image_id"]).source
        assert source is not None and source.series_uid == series.series_uid
        expected = {source.frames[0].sop_instance_uid, source.frames[last].sop_instance_uid}
        assert expected <= originals
        (referenced_series,) = state.ReferencedSeriesSequence
        assert referenced_series.SeriesInstanceUID == series.series_uid
        assert {r.ReferencedSOPInstanceUID for r in referenced_series.ReferencedImageSequence} == (
            expected
        )
        graphics, texts = [], []
        for annotation in state.GraphicAnnotationSequence:
            assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID in expected
            graphics += [g.GraphicType for g in annotation.get("GraphicObjectSequence", [])]
            texts += [t.UnformattedTextValue for t in annotation.get("TextObjectSequence", [])]
        assert sorted(graphics) == ["ELLIPSE", "POLYLINE", "POLYLINE"]  # arrow, measure
        assert sorted(texts) == ["35.0 mm", "Nodule, RUL"]  # 50 px at 0.7 mm

        (entry,) = audit(node, "pacs_store")
        assert entry.outcome == "allow" and entry.fields["shapes"] == 4
        raw = b"".join(p.read_bytes() for p in (node.data_dir / "audit").rglob("*") if p.is_file())
        for phi in (b"PAT-0001", b"Doe^Jane", series.study_uid.encode(), b"House^Gregory"):
            assert phi not in raw
    finally:
        await chair.close()
        await rad.close()


async def test_write_back_refuses_what_it_cannot_do_with_a_typed_error(
    node: RunningNode, orthanc: OrthancServer
) -> None:
    chair = await join(node, "dr-chair")
    rad = await join(node, "dr-rad")
    onc = await join(node, "dr-onc")
    try:
        series, images = await share_series(node, orthanc, rad)
        image_id = images[0]["image_id"]
        before = await asyncio.to_thread(presentation_states, orthanc, series.study_uid)
        # Nothing drawn yet.
        status, error = await api(node, "dr-chair", "pacs/annotations", {"image_id": image_id})
        assert (status, error["error"]) == (409, "no_annotations"), error
        draw(rad, image_id, 0, {"id": "l1", "type": "line", "points": [[1, 1], [9, 9]]})
        await eventually(lambda: "l1" in drawn(chair), timeout=10)
        # A specialist may draw but not write to the PACS (pacs_write: chair, radiologist).
        status, error = await api(node, "dr-onc", "pacs/annotations", {"image_id": image_id})
        assert (status, error["error"]) == (403, "not_allowed"), error
        # An uploaded image has no original in the PACS.
        upload = await upload_ct(node)
        draw(rad, upload, 0, {"id": "l2", "type": "line", "points": [[1, 1], [9, 9]]})
        await eventually(lambda: "l2" in drawn(chair), timeout=10)
        status, error = await api(node, "dr-rad", "pacs/annotations", {"image_id": upload})
        assert (status, error["error"]) == (409, "not_from_pacs"), error
        status, error = await api(node, "dr-rad", "pacs/annotations", {"image_id": "../x"})
        assert (status, error["error"]) == (400, "bad_message"), error
        # Nothing reached the PACS (the module's Orthanc may hold another test's); every
        # refusal is audited.
        after = await asyncio.to_thread(presentation_states, orthanc, series.study_uid)
        assert len(after) == len(before)
        reasons = sorted(e.reason or "" for e in audit(node, "pacs_store"))
        assert reasons == ["no_annotations", "not_from_pacs"]
        assert all(e.outcome == "deny" for e in audit(node, "pacs_store"))
        # ...and then the radiologist's own save goes through.
        status, stored = await api(node, "dr-rad", "pacs/annotations", {"image_id": image_id})
        assert status == 201 and stored["shapes"] == 1, stored
        after = await asyncio.to_thread(presentation_states, orthanc, series.study_uid)
        assert len(after) == len(before) + 1
    finally:
        for person in (chair, rad, onc):
            await person.close()


async def upload_ct(node: RunningNode) -> str:
    """An upload (not from the PACS) by the radiologist: its image id."""
    import aiohttp
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    assert isinstance(path, str)
    form = aiohttp.FormData()
    data = await asyncio.to_thread(Path(path).read_bytes)
    form.add_field("file", data, filename="ct.dcm",
                   content_type="application/dicom")  # fmt: skip
    role, claims = PEOPLE["dr-rad"]
    headers = {"Authorization": f"Bearer {node.token('dr-rad', role, rooms=['mdt-1'], **claims)}"}
    session = await node.session()
    async with session.post(f"{node.url}/api/rooms/mdt-1/images", data=form,
                            headers=headers) as response:  # fmt: skip
        body = await response.json()
        assert response.status == 201, body
        return str(body["image_id"])


async def test_without_a_pacs_the_write_back_says_so(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data", media=False)
    async with running_node(settings) as plain:
        _ws, joined = await plain.join("dr-chair", "chair", **PEOPLE["dr-chair"][1])
        assert joined["type"] == "joined"
        status, error = await api(plain, "dr-chair", "pacs/annotations",
                                  {"image_id": "A" * 22})  # fmt: skip
        assert (status, error["error"]) == (503, "pacs_not_configured"), error

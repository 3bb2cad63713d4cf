"""The node-to-node events: typed, and the same JSON objects the untyped dicts were."""

from __future__ import annotations

import json

import msgspec
import pytest

from signaling import cluster


def test_every_event_round_trips_through_its_json_object() -> None:
    events: list[cluster.NodeEvent | cluster.Revoked] = [
        cluster.RoomMessage(room="mdt-1", to="admitters", msg='{"type":"knock"}'),
        cluster.CloseConnection(room="mdt-1", pid="p-1", code=4409, reason="replaced"),
        cluster.Admitted(room="mdt-1", pid="p-1", by="chair-1"),
        cluster.MuteMedia(room="mdt-1", pid="p-1", kind="both"),
        cluster.MediaRequest(node="node-b", op="leave", pid="p-1", origin="node-a"),
        cluster.MediaOut(node="node-a", pid="p-1", msg={"type": "answer", "sdp": "v=0"}),
        cluster.RoomOpened(room="mdt-1"),
        cluster.Revoked(revocation={"kind": "sub", "value": "dr-li"}),
    ]
    for event in events:
        wire = json.loads(json.dumps(cluster.to_wire(event)))
        assert cluster.from_wire(wire) == event


# What a node of the version before published (and still reads), field for field.
PREVIOUS_VERSION = [
    {"k": "room", "room": "mdt-1", "to": "all", "exclude": None, "msg": "{}"},
    {"k": "close", "room": "mdt-1", "pid": "p-1", "code": 4403, "reason": "denied"},
    {"k": "admit", "room": "mdt-1", "pid": "p-1", "by": "chair-1"},
    {"k": "mute", "room": "mdt-1", "pid": "p-1", "kind": "audio"},
    {"k": "room_opened", "room": "mdt-1"},
    {"type": "state.revoked", "revocation": {"kind": "jti", "value": "t-1", "reason": "",
                                             "by": "admin", "at": 1.0, "expires_at": None}},
    {"k": "media", "node": "node-b", "op": "join", "room": "mdt-1", "permissions": ["admit"],
     "audio_muted": False, "video_muted": False, "user": "dr-li", "name": "Dr Li",
     "role": "chair", "depts": ["cardiology"], "org": "city", "pid": "p-1", "origin": "node-a"},
    {"k": "media", "node": "node-b", "op": "candidate", "pc": "publish", "candidate": "",
     "sdp_mid": None, "sdp_mline_index": 0, "pid": "p-1", "origin": "node-a"},
    {"k": "media", "node": "node-b", "op": "rec", "action": "hello", "fields": {},
     "pid": "p-1", "origin": "node-a"},
    {"k": "media_out", "node": "node-a", "pid": "p-1", "msg": {"type": "tracks", "tracks": []}},
]  # fmt: skip


@pytest.mark.parametrize("wire", PREVIOUS_VERSION, ids=lambda w: str(w.get("k", w.get("type"))))
def test_events_of_the_previous_version_decode_and_encode_to_the_same_bytes(
    wire: dict[str, object],
) -> None:
    event = cluster.from_wire(wire)
    assert event is not None
    # The store sends json.dumps of the object: the same bytes as the dict of before.
    assert json.dumps(cluster.to_wire(event)) == json.dumps(wire)


def test_absent_media_fields_stay_absent_and_none_stays_none() -> None:
    request = cluster.MediaRequest(
        node="node-b", op="candidate", pid="p-1", origin="node-a", pc="publish", candidate="",
        sdp_mid=None, sdp_mline_index=None,
    )  # fmt: skip
    wire = cluster.to_wire(request)
    assert wire["sdp_mid"] is None and "sdp" not in wire and "room" not in wire


def test_unknown_kinds_are_ignored_and_malformed_known_ones_refused() -> None:
    assert cluster.from_wire({"k": "from_a_newer_version", "x": 1}) is None
    assert cluster.from_wire({"type": "test"}) is None
    with pytest.raises(msgspec.ValidationError):
        cluster.from_wire({"k": "close", "room": "mdt-1", "pid": "p-1", "code": "x", "reason": ""})
    with pytest.raises(msgspec.ValidationError):
        cluster.from_wire({"k": "admit", "room": "mdt-1"})


def test_every_event_says_what_it_asks_of_a_node() -> None:
    for cls in cluster.ALL_EVENTS:
        assert cls.__doc__ and len(cls.__doc__) > 40, cls.__name__

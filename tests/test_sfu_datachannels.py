"""The annotation op's straight line without a network or an event loop: a participant's
`DataChannels` → the room's `AnnotationRelay` → `RoomAnnotations` → deliveries → the recipients'
channels and the room's sinks. Channels are stand-ins that keep what is sent on them."""

from __future__ import annotations

import json
from typing import Any

from annotations.messages import LOSSY, RELIABLE
from annotations.room import RoomAnnotations
from sfu.datachannels import AnnotationRelay, DataChannels
from sfu.server import MediaSettings

ANNOTATE = frozenset({"annotate"})


class Channel:
    """Stands in for an open RTCDataChannel: keeps what the SFU sends on it."""

    readyState = "open"

    def __init__(self, label: str) -> None:
        self.label = label
        self.sent: list[dict[str, Any]] = []

    def send(self, message: str) -> None:
        self.sent.append(json.loads(message))


class Sink:
    """Keeps the data-channel messages a recording would store."""

    def __init__(self) -> None:
        self.data: list[tuple[str, str, str]] = []

    def on_data(self, room_id: str, participant_id: str, label: str, message: str) -> None:
        self.data.append((room_id, participant_id, label))


def _room(*names: str, sink: Sink | None = None) -> tuple[AnnotationRelay, dict[str, Any]]:
    annotations = RoomAnnotations("mdt-1", MediaSettings(), clock=lambda: 100.0)
    relay = AnnotationRelay("mdt-1", annotations, [sink] if sink else [])  # type: ignore[list-item]
    people: dict[str, Any] = {}
    for name in names:
        channels = DataChannels(name, ANNOTATE, relay, lambda code, message, request: None)
        channels.channels = {RELIABLE: Channel(RELIABLE), LOSSY: Channel(LOSSY)}  # type: ignore[dict-item]
        relay.join(channels, user=f"user-{name}")
        people[name] = channels
    return relay, people


def _sent(channels: DataChannels, label: str = RELIABLE) -> list[dict[str, Any]]:
    return channels.channels[label].sent  # type: ignore[attr-defined, no-any-return]


def _say(relay: AnnotationRelay, sender: DataChannels, message: dict[str, Any]) -> None:
    relay.receive(sender, RELIABLE, json.dumps(message))


def test_stamped_events_reach_only_participants_that_synced() -> None:
    sink = Sink()
    relay, p = _room("a", "b", "c", sink=sink)
    for name in ("a", "b"):
        _say(relay, p[name], {"type": "sync"})
    assert p["a"].synced and p["b"].synced and not p["c"].synced
    _say(relay, p["a"], {"type": "chat", "client_id": "m1", "text": "hello"})
    assert [m["type"] for m in _sent(p["a"])] == ["snapshot", "event"]
    assert _sent(p["b"])[-1]["text"] == "hello" and _sent(p["b"])[-1]["author"] == "a"
    assert _sent(p["c"]) == [], "no events before its snapshot: no gap, no duplicate"
    assert sink.data == [("mdt-1", "a", RELIABLE)], "the recording gets each stamped event once"
    _say(relay, p["c"], {"type": "sync"})
    snapshot = _sent(p["c"])[0]
    assert snapshot["type"] == "snapshot" and [c["text"] for c in snapshot["chat"]] == ["hello"]


def test_a_refused_message_is_answered_to_its_sender_only() -> None:
    relay, p = _room("a", "b")
    for name in ("a", "b"):
        _say(relay, p[name], {"type": "sync"})
    relay.receive(p["a"], RELIABLE, "{not json")
    assert _sent(p["a"])[-1]["type"] == "error"
    assert [m["type"] for m in _sent(p["b"])] == ["snapshot"]


def test_pointer_positions_go_to_the_others_on_the_lossy_channel() -> None:
    relay, p = _room("a", "b", "c")
    pointer = {"type": "pointer", "image_id": "ct", "frame": 0, "x": 1.0, "y": 2.0}
    relay.receive(p["a"], LOSSY, json.dumps(pointer))
    assert _sent(p["b"], LOSSY) == _sent(p["c"], LOSSY) == [{**pointer, "from": "a"}]
    assert _sent(p["a"], LOSSY) == []
    relay.receive(p["a"], LOSSY, json.dumps({**pointer, "x": "left"}))
    assert _sent(p["a"])[-1]["code"] == "bad_message", "a malformed pointer is answered reliably"


def test_a_participant_who_left_receives_nothing_more() -> None:
    relay, p = _room("a", "b")
    for name in ("a", "b"):
        _say(relay, p[name], {"type": "sync"})
    relay.leave("b")
    relay.forget("b")
    _say(relay, p["a"], {"type": "chat", "client_id": "m2", "text": "after"})
    assert [m["type"] for m in _sent(p["b"])] == ["snapshot"]
    assert _sent(p["a"])[-1]["text"] == "after"

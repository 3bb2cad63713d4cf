"""The SFU's notifications: typed, and the same dicts (key for key, in order) on the wire."""

from __future__ import annotations

import json

import msgspec
import pytest

from core.codes import ErrorCode
from sfu import events


def _wire(event: events.Notification) -> str:
    """How a notification crosses to another node inside `cluster.MediaOut`."""
    return json.dumps(msgspec.to_builtins(event))


def test_subscribe_offer_is_the_dict_it_always_was() -> None:
    event = events.SubscribeOffer(pc="subscribe", sdp="v=0\r\n")
    assert _wire(event) == json.dumps({"type": "offer", "pc": "subscribe", "sdp": "v=0\r\n"})


def test_publish_answer_is_the_dict_it_always_was() -> None:
    event = events.PublishAnswer(pc="publish", sdp="v=0\r\n")
    assert _wire(event) == json.dumps({"type": "answer", "pc": "publish", "sdp": "v=0\r\n"})


def test_tracks_carry_each_transceiver_in_the_old_key_order() -> None:
    track = events.SubscribedTrack(
        mid="3", participant_id="p-1", kind="video", track_id="t-1", source="screen"
    )
    expected = {
        "type": "tracks",
        "tracks": [
            {"mid": "3", "participant_id": "p-1", "kind": "video", "track_id": "t-1",
             "source": "screen"},
        ],
    }  # fmt: skip
    assert _wire(events.Tracks(tracks=[track])) == json.dumps(expected)


def test_a_refusal_carries_its_code_as_the_plain_string() -> None:
    event = events.MediaRefused(
        code=ErrorCode.MEDIA_FAILED, message="the publish media session failed", request="publish"
    )
    expected = {
        "type": "error",
        "code": "media_failed",
        "message": "the publish media session failed",
        "request": "publish",
    }
    assert _wire(event) == json.dumps(expected)


def test_a_notification_read_back_on_another_node_is_the_same_event() -> None:
    sent: list[events.Notification] = [
        events.SubscribeOffer(pc="subscribe", sdp="v=0"),
        events.PublishAnswer(pc="publish", sdp="v=0"),
        events.Tracks(tracks=[]),
        events.MediaRefused(code=ErrorCode.CODEC_UNSUPPORTED, message="no VP8", request="offer"),
    ]
    for event in sent:
        back = msgspec.convert(msgspec.to_builtins(event), events.Notification)
        assert back == event


def test_an_unknown_error_code_is_refused_when_read_back() -> None:
    raw = {"type": "error", "code": "no_such_code", "message": "", "request": ""}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, events.Notification)


def test_media_reconnecting_is_participant_reconnecting_said_by_the_sfu() -> None:
    event = events.MediaReconnecting(participant_id="p-1", reconnecting=True)
    expected = {"type": "participant_reconnecting", "participant_id": "p-1",
                "reconnecting": True, "media": True}  # fmt: skip
    assert _wire(event) == json.dumps(expected)
    assert msgspec.convert(msgspec.to_builtins(event), events.Notification) == event

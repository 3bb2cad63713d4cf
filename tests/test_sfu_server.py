"""The SFU's door for a recording: a sink is attached to a room's media and detached again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.media.track import TrackInfo
from sfu.events import Notification
from sfu.ice import IceSettings, uninstall
from sfu.server import MediaServer, MediaSettings


class CountingSink:
    """A sink that only remembers what it was handed."""

    def __init__(self) -> None:
        self.tracks: list[str] = []
        self.data: list[str] = []

    def on_track(self, track: TrackInfo) -> None:
        self.tracks.append(track.track_id)

    def on_rtp(self, track: TrackInfo, packet: bytes, arrival_ms: int, keyframe: bool) -> bool:
        return False

    def on_track_ended(self, track: TrackInfo) -> None:
        pass

    def on_data(self, room_id: str, participant_id: str, label: str, message: str) -> None:
        self.data.append(message)


@pytest.fixture
def server() -> Iterator[MediaServer]:
    def notify(participant_id: str, event: Notification) -> None:
        pass

    sfu = MediaServer(MediaSettings(ice=IceSettings(host_addresses=("127.0.0.1",))), notify)
    yield sfu
    uninstall()


def test_a_sink_attached_before_anyone_joins_is_the_rooms(server: MediaServer) -> None:
    sink = CountingSink()
    server.attach_sink("mdt-1", sink)
    assert server.rooms["mdt-1"].sinks == [sink]


def test_a_sink_attached_twice_receives_each_packet_once(server: MediaServer) -> None:
    sink = CountingSink()
    server.attach_sink("mdt-1", sink)
    server.attach_sink("mdt-1", sink)
    assert server.rooms["mdt-1"].sinks == [sink]


def test_the_data_channel_relay_sees_the_attached_sink(server: MediaServer) -> None:
    # The relay and the publishers hold the room's list itself: attaching must not replace it.
    sink = CountingSink()
    room = server.room("mdt-1")
    server.attach_sink("mdt-1", sink)
    assert room.relay.sinks is room.sinks
    assert sink in room.relay.sinks


def test_a_detached_sink_is_handed_nothing_more(server: MediaServer) -> None:
    first, second = CountingSink(), CountingSink()
    server.attach_sink("mdt-1", first)
    server.attach_sink("mdt-1", second)
    server.detach_sink("mdt-1", first)
    assert server.rooms["mdt-1"].sinks == [second]


def test_detaching_from_a_room_that_is_gone_does_nothing(server: MediaServer) -> None:
    server.detach_sink("mdt-9", CountingSink())
    assert "mdt-9" not in server.rooms

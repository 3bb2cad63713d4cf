"""The room is told who speaks: real aiortc peers send Opus with the audio level header extension
(aiortc writes it from each frame's samples), the SFU's detector decides, everyone hears of it."""

from __future__ import annotations

import math
from typing import Any

import msgspec
from aiortc.mediastreams import AudioStreamTrack
from av import AudioFrame

from sfu.events import Notification
from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import eventually

_TONE = [int(8000 * math.sin(2 * math.pi * 440 * n / 8000)) for n in range(160)]
_WORD = b"".join(sample.to_bytes(2, "little", signed=True) for sample in _TONE)
"""20 ms of a 440 Hz tone at about -12 dBov (8 kHz mono, s16): what a word sounds like here."""


class Voice(AudioStreamTrack):
    """A microphone that is silent, or talks: words with a short pause every 300 ms."""

    def __init__(self) -> None:
        super().__init__()
        self.talking = False

    async def recv(self) -> AudioFrame:  # type: ignore[override]
        frame = await super().recv()
        assert isinstance(frame, AudioFrame) and frame.pts is not None
        in_pause = (frame.pts / 8000) % 0.3 < 0.06
        if self.talking and not in_pause:
            frame.planes[0].update(_WORD)
        return frame


def _speakers(told: list[tuple[str, dict[str, Any]]], participant_id: str) -> list[str | None]:
    return [m["participant_id"] for who, m in told if who == participant_id]


async def test_the_room_is_told_who_speaks_and_when_the_other_takes_over(
    media: MediaHarness,
) -> None:
    told: list[tuple[str, dict[str, Any]]] = []
    deliver = media.server.notify

    def notify(participant_id: str, event: Notification) -> None:
        message = msgspec.to_builtins(event)
        if message["type"] == "active_speaker":
            told.append((participant_id, message))
        deliver(participant_id, event)

    media.server.notify = notify
    alice_voice, bob_voice = Voice(), Voice()
    await media.join("alice", [alice_voice])
    await media.join("bob", [bob_voice])
    await media.join("carol", [])  # listens only
    await eventually(lambda: media.server.stats()["received_packets"] > 100, timeout=20)
    assert not told  # a silent room has no speaker

    alice_voice.talking = True
    await eventually(lambda: _speakers(told, "carol") == ["alice"], timeout=10)
    assert _speakers(told, "bob") == ["alice"] and _speakers(told, "alice") == ["alice"]
    await media.join("dave", [])  # a newcomer is told who speaks, once
    await eventually(lambda: _speakers(told, "dave") == ["alice"], timeout=5)

    alice_voice.talking = False
    bob_voice.talking = True
    await eventually(lambda: _speakers(told, "carol") == ["alice", "bob"], timeout=10)
    await eventually(lambda: _speakers(told, "alice") == ["alice", "bob"], timeout=2)
    await eventually(lambda: _speakers(told, "dave") == ["alice", "bob"], timeout=2)
    assert media.server.rooms["mdt-1"].speakers.speaker == "bob"
    assert not media.errors

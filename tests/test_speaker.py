"""The dominant speaker detector (sfu.speaker): pure, levels and `now` in, decisions out."""

from __future__ import annotations

import json
import random

import msgspec

from sfu.events import ActiveSpeaker
from sfu.speaker import DominantSpeaker
from signaling import protocol

PACKET = 0.02
"""One Opus packet per 20 ms, as browsers send."""

QUIET = 100
"""A quiet room's level (-100 dBov): the pauses between words."""


def speech(t: float) -> int:
    """A talker's level at `t`: words at -30 dBov with a short pause every 300 ms."""
    return QUIET if (t % 0.3) < 0.06 else 30


class Room:
    """Feeds a detector 20 ms packets from several microphones and records its decisions."""

    def __init__(self) -> None:
        self.detector = DominantSpeaker()
        self.now = 0.0
        self.changes: list[tuple[float, str | None]] = []

    def run(self, seconds: float, **levels: object) -> None:
        """For `seconds`, each named participant sends a level per packet: an int, or a
        function of the time."""
        end = self.now + seconds
        while self.now < end:
            for participant, level in levels.items():
                value = level(self.now) if callable(level) else level
                assert isinstance(value, int)
                self.detector.hear(participant, value, self.now)
            if self.detector.tick(self.now):
                self.changes.append((self.now, self.detector.speaker))
            self.now += PACKET

    @property
    def speaker(self) -> str | None:
        return self.detector.speaker


def test_a_steady_talker_becomes_the_speaker() -> None:
    room = Room()
    room.run(3.0, alice=speech, bob=QUIET)
    assert room.speaker == "alice"
    assert room.changes[0][0] < 1.6  # within about a second of talking
    assert len(room.changes) == 1


def test_a_silent_room_has_no_speaker_and_keeps_the_last_one() -> None:
    room = Room()
    room.run(2.0, alice=QUIET, bob=127)
    assert room.speaker is None
    room.run(2.0, alice=speech, bob=127)
    room.run(5.0, alice=QUIET, bob=127)
    assert room.speaker == "alice"


def test_a_cough_does_not_switch() -> None:
    room = Room()
    room.run(3.0, alice=speech, bob=QUIET)
    # Bob coughs loudly for 300 ms while Alice goes on talking, and again during her pause.
    room.run(0.3, alice=speech, bob=10)
    room.run(1.0, alice=speech, bob=QUIET)
    room.run(0.3, alice=QUIET, bob=10)
    room.run(2.0, alice=QUIET, bob=QUIET)
    # Alice has been silent for two seconds: still, a cough is too short to take over.
    room.run(0.4, alice=QUIET, bob=10)
    room.run(2.0, alice=QUIET, bob=QUIET)
    assert room.speaker == "alice"
    assert [who for _, who in room.changes] == ["alice"]


def test_background_noise_on_one_microphone_does_not_win() -> None:
    rng = random.Random(7)
    room = Room()

    def ward_noise(t: float) -> int:
        return 45 + rng.randint(-3, 3)  # loud, steady: a fan, a corridor

    room.run(4.0, alice=QUIET, bob=ward_noise)
    assert room.speaker is None
    room.run(3.0, alice=speech, bob=ward_noise)
    room.run(5.0, alice=QUIET, bob=ward_noise)
    assert room.speaker == "alice"


def test_the_speaker_switches_within_a_second_and_a_half_when_the_other_talks() -> None:
    room = Room()
    room.run(3.0, alice=speech, bob=QUIET)
    started = room.now
    room.run(3.0, alice=QUIET, bob=speech)
    assert room.speaker == "bob"
    switched_at = room.changes[-1][0]
    assert switched_at - started <= 1.5


def test_a_steady_speaker_is_not_interrupted_by_an_equal_voice() -> None:
    room = Room()
    room.run(3.0, alice=speech, bob=QUIET)
    room.run(3.0, alice=speech, bob=speech)
    assert [who for _, who in room.changes] == ["alice"]


def test_the_speaker_leaving_hands_over_to_the_most_active_or_clears() -> None:
    room = Room()
    room.run(3.0, alice=speech, bob=QUIET, carol=QUIET)
    room.run(0.6, alice=speech, bob=speech, carol=QUIET)  # Bob starts, not yet the speaker
    assert room.speaker == "alice"
    assert room.detector.forget("alice")
    assert room.speaker == "bob"
    assert not room.detector.forget("carol")  # not the speaker: nothing changes
    assert room.speaker == "bob"
    assert room.detector.forget("bob")
    assert room.speaker is None


def test_a_muted_publisher_is_forgotten_and_the_others_decide() -> None:
    room = Room()
    room.run(3.0, alice=speech, bob=QUIET)
    # The chair mutes Alice: the room forgets her and no longer feeds her packets.
    assert room.detector.forget("alice")
    assert room.speaker is None
    room.run(3.0, bob=speech)
    assert room.speaker == "bob"


def test_with_the_voice_activity_bit_only_voiced_packets_count() -> None:
    room = Room()
    # Bob's sender sets the V bit on speech only; his loud unvoiced sound (a door) is ignored.
    room.run(1.0, alice=QUIET, bob=0x80 | QUIET)
    room.run(3.0, alice=QUIET, bob=20)
    assert room.speaker is None
    room.run(3.0, alice=QUIET, bob=lambda t: speech(t) | 0x80)
    assert room.speaker == "bob"


def test_nobody_speaking_crosses_the_wire_as_null() -> None:
    # Across nodes (cluster.MediaOut) the event is its plain dict; to the client, the message.
    assert msgspec.to_builtins(ActiveSpeaker(participant_id=None)) == {
        "type": "active_speaker",
        "participant_id": None,
    }
    text = protocol.encode(protocol.ActiveSpeaker(participant_id=None))
    assert json.loads(text) == {"type": "active_speaker", "participant_id": None}

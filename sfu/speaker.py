"""Who is speaking in a room: the dominant speaker, decided from the audio level header extension.

Pure: levels and `now` in, a decision out; no socket, no clock. `sfu.room` feeds it the level of
every audio packet its publishers send (`urn:ietf:params:rtp-hdrext:ssrc-audio-level`, RFC 6464:
one byte, the voice-activity bit and the level in -dBov, 0 loudest, 127 silence) and asks for a
decision on each interval tick; a changed decision goes to the room as `events.ActiveSpeaker`.

The approach is Jitsi's dominant speaker identification (after Volfin & Cohen, "Dominant speaker
identification for multipoint videoconferencing", 2013), reduced to what the level byte allows:

- per packet, only a counter: is this level well above the participant's noise floor (cheap: it
  runs on every audio packet of every publisher);
- per interval (the immediate time scale, `SpeakerSettings.interval`), the share of the
  participant's packets that were active, and a new noise floor: it follows the interval's
  quietest packet down at once and rises slowly, so a fan or a noisy ward stays at the floor and
  counts for nothing, while the pauses between words keep a talker's floor low;
- over a window of intervals (the medium time scale, about a second), the participant's recent
  activity: the mean of those shares;
- a challenger replaces the dominant speaker only after leading for `lead_ticks` intervals in a
  row (about a second): its own interval active, and its recent activity clearly above the
  speaker's (`lead_ratio`). A cough is one or two intervals and does not switch; a silent room
  keeps the last speaker.

When a participant's simulcast layers come, the room's current speaker (`DominantSpeaker.speaker`)
is what a layer selector reads to give the speaker the high layer and the strip the low one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

_SILENCE = 127
"""The quietest level the extension can carry (-127 dBov)."""


@dataclass(frozen=True, slots=True)
class SpeakerSettings:
    """How the dominant speaker is decided."""

    interval: float = 0.3
    """Seconds per interval: levels are aggregated over it, and decisions taken at its end."""
    margin_db: float = 12.0
    """How far above the participant's noise floor a level must be to count as speech."""
    floor_rise_db_per_s: float = 1.0
    """How fast a noise floor creeps up when the quietest level stays above it (a steady noise
    is learnt in seconds; speech has pauses that pull the floor back down)."""
    window: int = 3
    """Intervals of recent activity compared between challenger and speaker (~0.9 s)."""
    active_share: float = 0.3
    """Share of an interval's packets above the floor for the interval to count as speech."""
    lead_ticks: int = 3
    """Intervals in a row a challenger must lead before it becomes the speaker (~1 s)."""
    lead_ratio: float = 1.5
    """How many times the speaker's recent activity the challenger's must be, to lead."""


class _Voice:
    """One participant's microphone as the detector sees it."""

    __slots__ = ("active", "floor", "heard", "history", "lead", "quietest", "uses_vad")

    def __init__(self, window: int) -> None:
        self.heard = 0
        """Packets in the current interval."""
        self.active = 0
        """Of those, packets well above the noise floor."""
        self.quietest = _SILENCE + 1
        """The current interval's quietest packet's loudness (127 - level); above 127: none."""
        self.floor: float | None = None
        """The noise floor, as loudness (127 - level); None until the first interval ends."""
        self.history: deque[float] = deque(maxlen=window)
        """Share of active packets in each of the last intervals (the newest last)."""
        self.lead = 0
        """Intervals in a row this participant has led the speaker."""
        self.uses_vad = False
        """The sender sets the voice-activity bit (then a packet without it is not speech)."""

    def recent(self) -> float:
        """Recent activity: the mean share of active packets over the window."""
        return sum(self.history) / (self.history.maxlen or 1)


class DominantSpeaker:
    """One room's dominant speaker, decided from its publishers' audio levels with hysteresis."""

    def __init__(self, settings: SpeakerSettings | None = None) -> None:
        self.settings = settings or SpeakerSettings()
        self.speaker: str | None = None
        """The room's dominant speaker (participant id), or None before anyone has spoken."""
        self._voices: dict[str, _Voice] = {}
        self._next_tick: float | None = None

    def hear(self, participant_id: str, level: int, now: float) -> bool:
        """One audio packet's level byte (V bit and -dBov) from a participant. True when an
        interval has ended by `now`: call `tick` for the decision."""
        # Hot path, per received audio packet: watched by bench/forwarding.py.
        voice = self._voices.get(participant_id)
        if voice is None:
            voice = self._voices[participant_id] = _Voice(self.settings.window)
        loudness = _SILENCE - (level & 0x7F)
        voice.heard += 1
        if loudness < voice.quietest:
            voice.quietest = loudness
        vad = level & 0x80
        if vad:
            voice.uses_vad = True
        floor = voice.floor
        if (
            floor is not None
            and loudness > floor + self.settings.margin_db
            and (vad or not voice.uses_vad)
        ):
            voice.active += 1
        if self._next_tick is None:
            self._next_tick = now + self.settings.interval
        return now >= self._next_tick

    def forget(self, participant_id: str) -> bool:
        """A participant stopped publishing audio (left, unpublished, muted): they are no longer a
        candidate. If they were the speaker, the most active other participant takes over (or
        nobody). True when the speaker changed."""
        self._voices.pop(participant_id, None)
        if self.speaker != participant_id:
            return False
        ranked = sorted(self._voices.items(), key=lambda item: item[1].recent(), reverse=True)
        self.speaker = ranked[0][0] if ranked and ranked[0][1].recent() > 0 else None
        for voice in self._voices.values():
            voice.lead = 0
        return True

    def tick(self, now: float) -> bool:
        """End the interval if it is due at `now` and decide. True when the speaker changed."""
        if self._next_tick is None or now < self._next_tick:
            return False
        settings = self.settings
        # A late tick (no packets for a while) still counts as one interval: silence between.
        self._next_tick = max(self._next_tick + settings.interval, now)
        for voice in self._voices.values():
            self._close_interval(voice)
        return self._decide()

    def _close_interval(self, voice: _Voice) -> None:
        settings = self.settings
        share = voice.active / voice.heard if voice.heard else 0.0
        voice.history.append(share)
        if voice.heard:
            quietest = float(voice.quietest)
            if voice.floor is None or quietest < voice.floor:
                voice.floor = quietest
            else:
                rise = settings.floor_rise_db_per_s * settings.interval
                voice.floor = min(quietest, voice.floor + rise)
        voice.heard = voice.active = 0
        voice.quietest = _SILENCE + 1

    def _decide(self) -> bool:
        settings = self.settings
        current = self._voices.get(self.speaker) if self.speaker is not None else None
        bar = current.recent() if current is not None else 0.0
        best: str | None = None
        best_recent = 0.0
        for participant_id, voice in self._voices.items():
            if participant_id == self.speaker:
                voice.lead = 0
                continue
            recent = voice.recent()
            speaking_now = bool(voice.history) and voice.history[-1] >= settings.active_share
            if speaking_now and recent > 0 and recent >= bar * settings.lead_ratio:
                voice.lead += 1
            else:
                voice.lead = 0
            if voice.lead >= settings.lead_ticks and recent > best_recent:
                best, best_recent = participant_id, recent
        if best is None:
            return False
        self.speaker = best
        for voice in self._voices.values():
            voice.lead = 0
        return True

"""What `consilium bot` reports: per subscribe track, per bot, and over many bots (`--json`).

The keys of `BotReport.as_dict` and `aggregate` are what `consilium bot --json` prints: scripts and
the load tests read them, so they are a contract.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class TrackReport:
    """What arrived on one subscribe transceiver."""

    mid: str
    """The transceiver's media id in the subscribe session."""
    kind: str
    """`audio` or `video`."""
    participant_id: str = ""
    """Whose media it carried last (from the `tracks` message)."""
    frames_decoded: int = 0
    """Video frames or audio frames decoded (0 with `decode` off)."""
    packets_received: int = 0
    """RTP packets received (aiortc inbound-rtp `packetsReceived`), over the measured window
    when there is one (`--measure-after`)."""
    packets_lost: int = 0
    """RTP packets lost (aiortc inbound-rtp `packetsLost`; negative with duplicates), over the
    measured window when there is one."""
    jitter_ms: float = 0.0
    """Interarrival jitter (RFC 3550), in milliseconds."""
    frames_received: int = 0
    """Video frames whose last packet arrived over the measured window, decoded or not
    (`bot.frames`)."""
    fps: float = 0.0
    """`frames_received` per second of the window."""
    freezes: int = 0
    """Gaps of more than 0.5 s between received video frames over the window."""
    frozen_s: float = 0.0
    """Their total length, in seconds."""


@dataclass(slots=True)
class BotReport:
    """What one bot did and received."""

    bot: str
    """The bot's label."""
    participant_id: str = ""
    """Participant id the server gave it (empty if it never joined)."""
    joined: bool = False
    """Whether it got `joined`."""
    error: str = ""
    """Why it failed (empty when it did not)."""
    close_code: int | None = None
    """WebSocket close code, when the server closed the connection."""
    seconds_in_room: float = 0.0
    """Time from `joined` to the end of the run."""
    frames_decoded: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    """Frames decoded per kind, over all subscribe tracks."""
    packets_received: int = 0
    """RTP packets received over all subscribe tracks."""
    packets_lost: int = 0
    """RTP packets lost over all subscribe tracks."""
    window_s: float = 0.0
    """Length of the measured window the received figures cover (from `--measure-after`
    seconds after the start, or from the join, to the end)."""
    ping_rtt_ms: list[float] = field(default_factory=list)
    """Round-trip time of each answered `ping`, in milliseconds."""
    tracks: list[TrackReport] = field(default_factory=list)
    """Per subscribe transceiver."""

    @property
    def ok(self) -> bool:
        """Joined and did not fail."""
        return self.joined and not self.error

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {"ok": self.ok, **asdict(self)}

    def summary(self) -> str:
        """One line for a person to read."""
        if not self.ok:
            return f"{self.bot}: FAILED: {self.error}"
        rtt = f", ping {statistics.mean(self.ping_rtt_ms):.1f} ms" if self.ping_rtt_ms else ""
        jitter = max((t.jitter_ms for t in self.tracks), default=0.0)
        return (
            f"{self.bot} ({self.participant_id}): {self.seconds_in_room:.0f} s in the room, "
            f"{len(self.tracks)} tracks, {self.frames_decoded['video']} video and "
            f"{self.frames_decoded['audio']} audio frames decoded, {self.packets_received} "
            f"packets ({self.packets_lost} lost), jitter up to {jitter:.1f} ms{rtt}"
        )


def aggregate(reports: Sequence[BotReport]) -> dict[str, Any]:
    """One summary of many bots, for `--count N --json`."""
    errors: dict[str, int] = {}
    for report in reports:
        if not report.ok:
            errors[report.error] = errors.get(report.error, 0) + 1
    joined = [r for r in reports if r.joined]
    rtts = [rtt for r in reports for rtt in r.ping_rtt_ms]
    return {
        "bots": len(reports),
        "ok": sum(r.ok for r in reports),
        "failed": sum(not r.ok for r in reports),
        "errors": errors,
        "frames_decoded": {
            kind: sum(r.frames_decoded[kind] for r in reports) for kind in ("audio", "video")
        },
        "video_frames_decoded_min": min((r.frames_decoded["video"] for r in joined), default=0),
        "tracks_min": min((len(r.tracks) for r in joined), default=0),
        "packets_received": sum(r.packets_received for r in reports),
        "packets_lost": sum(r.packets_lost for r in reports),
        "jitter_ms_max": max((t.jitter_ms for r in reports for t in r.tracks), default=0.0),
        "ping_rtt_ms_mean": statistics.mean(rtts) if rtts else None,
        "ping_rtt_ms_max": max(rtts, default=None),
        "window_s_min": min((r.window_s for r in joined), default=0.0),
        "video_fps": [t.fps for r in joined for t in r.tracks if t.kind == "video"],
        "freezes": sum(t.freezes for r in reports for t in r.tracks),
        "frozen_s": round(sum(t.frozen_s for r in reports for t in r.tracks), 3),
        "video_s": round(sum(r.window_s for r in joined for t in r.tracks if t.kind == "video"), 3),
    }

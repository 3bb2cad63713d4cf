"""Pausing video a subscriber's link cannot carry at all, least important first.

Design note (issue 15, part 4). Layer choice gives every shown camera at least its lowest layer
("a small picture beats a frozen one"). On a link narrower than the lowest layers of every
camera and the audio together (four cameras and four microphones on a 500 kbps hotel link:
about 600 kbps on the wire), that rule makes things worse for everyone: the queue at the
bottleneck overflows, a third of the packets are lost, retransmissions and keyframe requests
add to the load, and every picture freezes. What mature SFUs do then (LiveKit pauses the
lowest-priority tracks of a congested subscriber and tells its client; mediasoup's consumer
priorities decide who keeps a layer) is done here too: `PauseControl` pauses whole cameras for
that one subscriber, the least important first, until the rest fits, and says which; its page
shows those tiles as paused for its own connection (their owners are not told: nothing is
wrong with them).

- Paused when the link says so twice, for `PAUSE_AFTER_S`: the loss over the last windows
  (smoothed) is above `OVER_LOSS` (what arrives through an overfull queue), and the lowest
  layers of the cameras still sent, with their packets' overhead, do not fit the video budget
  the downlink estimate leaves. Random loss on a link that carries everything (the 800 kbps,
  5 % loss test link) pauses nothing: its smoothed loss stays near 5 %, a burst of it passes.
- Importance: the active speaker's camera, then the larger tile, then the order of the slots.
  One camera is always kept.
- Resumed most important first, as many as the budget holds (their lowest layers with the
  resumed ones inside `UP_HEADROOM` of it: one at a time while the estimate climbs, all at
  once when a probe found the link back), when the loss is not high (under `CLEAR_LOSS`: a
  link with random loss is not held paused for it) and `resume_after_s` has passed since the
  last pause or resume. A resume followed by a pause within
  `FAILED_RESUME_S` failed: the wait doubles (up to `RESUME_AFTER_MAX_S`), so a link that
  cannot carry one more camera is not flooded every few seconds; a resume that held for
  `FAILED_RESUME_S`, or a pause that does not follow a resume, resets it (the link came back:
  the cameras still paused follow every `RESUME_AFTER_S` as the estimate climbs, not one per
  doubled wait).

Pure: budgets, candidates and `now` in, the paused set out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sfu.layer_choice import UP_HEADROOM

OVER_LOSS = 0.2
"""Smoothed loss above this: the link is over capacity (random loss on a link that carries
everything stays well under it; the start probes' burst on a narrow link may reach it, hence
`START_GRACE_S`)."""
PAUSE_AFTER_S = 0.5
"""How long the link must be over capacity before cameras are paused (two layer choices)."""
START_GRACE_S = 5.0
"""Nothing is paused this soon after the first decision (the subscriber's start: its estimate
is the start value, its start probes may cost a burst of loss)."""
CLEAR_LOSS = 0.10
"""Smoothed loss under this lets a paused camera resume."""
WIRE_OVERHEAD = 1.15
"""A layer's measured bitrate (payload) times this is what it takes on the wire (RTP, SRTP,
UDP, IP headers on packets of a few hundred bytes)."""
RESUME_AFTER_S = 3.0
"""The least wait after a pause, or between two resumes."""
RESUME_AFTER_MAX_S = 30.0
"""The longest wait, after resumes that failed."""
FAILED_RESUME_S = 5.0
"""A pause this soon after a resume says the resume failed."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A camera that may be paused: `key` names its slot, `lowest_bps` is the bitrate of its
    lowest layer being sent (0: not measured yet), `priority` orders them (higher: kept
    longer)."""

    key: int
    lowest_bps: int
    priority: tuple[int, ...]


class PauseControl:
    """Which of one subscriber's cameras are paused for its link."""

    __slots__ = ("_changed_at", "_over_since", "_paused_at", "_resumed_at", "_started_at",
                 "paused", "pauses", "resume_after_s")  # fmt: skip

    def __init__(self) -> None:
        self.paused: set[int] = set()
        """The keys of the cameras paused now."""
        self.resume_after_s = RESUME_AFTER_S
        """The wait before the next resume."""
        self._changed_at = float("-inf")
        self._resumed_at = float("-inf")
        self._paused_at = float("-inf")
        self._over_since: float | None = None
        """Since when the link has been over capacity (None: it is not)."""
        self._started_at: float | None = None
        self.pauses = 0
        """Times cameras were paused (the node's metric counts them)."""

    def decide(
        self, now: float, video_bps: int | None, candidates: Sequence[Candidate], loss: float
    ) -> set[int]:
        """The cameras to pause now. `video_bps`: what the downlink estimate leaves for these
        cameras (None: no estimate yet, nothing is paused); `loss`: the smoothed loss. The
        first call starts the subscriber's `START_GRACE_S`."""
        self.paused &= {candidate.key for candidate in candidates}
        if self._started_at is None:
            self._started_at = now
        if video_bps is None or now - self._started_at < START_GRACE_S:
            self.paused.clear()
            return self.paused
        if self._resumed_at > self._paused_at and now - self._resumed_at >= FAILED_RESUME_S:
            self.resume_after_s = RESUME_AFTER_S  # the last resume held: the link carries it
        ordered = sorted(candidates, key=lambda c: c.priority, reverse=True)
        kept = [c for c in ordered if c.key not in self.paused]
        over = loss > OVER_LOSS and len(kept) > 1 and _need(kept) > video_bps
        if not over:
            self._over_since = None
        elif self._over_since is None:
            self._over_since = now
        if over and self._over_since is not None and now - self._over_since >= PAUSE_AFTER_S:
            self._over_since = None
            while len(kept) > 1 and _need(kept) > video_bps:
                self.paused.add(kept.pop().key)
            self.pauses += 1
            self._paused_at = now
            failed = now - self._resumed_at < FAILED_RESUME_S
            self.resume_after_s = (
                min(self.resume_after_s * 2, RESUME_AFTER_MAX_S) if failed else RESUME_AFTER_S
            )
            self._changed_at = now
        elif self.paused and loss < CLEAR_LOSS and now - self._changed_at >= self.resume_after_s:
            for candidate in (c for c in ordered if c.key in self.paused):
                if _need([*kept, candidate]) > video_bps * UP_HEADROOM:
                    break
                kept.append(candidate)
                self.paused.discard(candidate.key)
                self._resumed_at = self._changed_at = now
        return self.paused


def _need(candidates: Sequence[Candidate]) -> float:
    return sum(candidate.lowest_bps for candidate in candidates) * WIRE_OVERHEAD

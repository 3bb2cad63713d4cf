"""A subscriber's retransmission budget: which lost packets are worth sending again.

Measured in a 10-person room: the node resent every packet anyone reported missing, without
limit, and resent more than it forwarded; the resends then crowded out the fresh packets on the
same congested link, which caused more loss and more NACKs. A resend is worth its bytes only when
it can still be played, has not just been sent, and leaves the link to the fresh media. So each
subscriber answers a NACK for a packet only when all of these hold:

- in time: the packet arrived at the SFU less than `max_age_s` ago, less half the subscriber's
  round trip when known (measured from its receiver reports, `sfu.round_trip`; the resend still
  has that one-way trip to make): older than that, the receiver's jitter buffer has given up on
  it and the bytes are wasted;
- not again so soon: this subscriber was not sent this packet within the last round trip (or
  `repeat_interval_s` while the round trip is unknown): the first resend may still be on its way;
- within its share: the bytes resent to this subscriber over the last second stay within
  `share` of the bytes forwarded to it over that second (a sliding second).

Pure: `now` (seconds of the monotonic clock) and the counters are passed in; no clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

WINDOW_S = 1.0
"""The sliding window the bandwidth share is measured over."""
MIN_BURST_BYTES = 4 * 1200
"""Resent bytes allowed in a window whatever was forwarded in it (a few packets): a subscriber
whose stream just started may still get its first losses repaired."""
MIN_REPEAT_S = 0.02
"""Least time between two resends of one packet to a subscriber, however short its round trip:
a receiver on a LAN (a round trip of a millisecond) may repeat its NACK every few milliseconds
while the first resend is still in its jitter buffer's hands."""
_FORGET_AFTER = 512
"""Remembered (stream, sequence) resends beyond which the stale ones are forgotten."""


class Refusal(StrEnum):
    """Why a lost packet was not resent (a label of `consilium_sfu_retransmissions_refused`)."""

    TOO_LATE = "too_late"
    """It can no longer arrive in time to be played."""
    REPEATED = "repeated"
    """It was resent to this subscriber less than a round trip ago."""
    BUDGET = "budget"
    """This subscriber's share of resent bytes over the last second is used up."""
    GONE = "gone"
    """The SFU no longer holds it (asked of the publisher instead)."""


@dataclass(slots=True)
class RetransmitBudget:
    """One subscriber's allowance of resent packets (see the module docstring)."""

    share: float = 0.25
    """Most resent bytes, as a share of the bytes forwarded to the subscriber, per sliding
    second; 0 resends nothing (but the `MIN_BURST_BYTES`)."""
    max_age_s: float = 0.4
    """The playout budget: a packet older than this (since it reached the SFU) is not resent."""
    repeat_interval_s: float = 0.1
    """Least time between two resends of one packet to this subscriber while its round trip is
    unknown."""
    rtt_s: float | None = None
    """The subscriber's round-trip time, when measured (`sfu.round_trip`, from the echo of our
    sender reports in its receiver reports; None until the first: no time allowed for the
    resend's way, `repeat_interval_s` between repeats)."""
    refused: dict[Refusal, int] = field(default_factory=lambda: dict.fromkeys(Refusal, 0))
    """Lost packets not resent, by reason."""
    resent: int = 0
    """Packets resent."""
    _resent_at: dict[int, float] = field(default_factory=dict)
    """When each (stream, sequence) key was last resent to this subscriber."""
    _resent_bytes: deque[tuple[float, int]] = field(default_factory=deque)
    """(time, bytes) of each resend within the window."""
    _resent_in_window: int = 0
    _forwarded: deque[tuple[float, int]] = field(default_factory=deque)
    """(time, forwarded byte counter) samples, the oldest at or before the window's start."""

    def allow(
        self, key: int, arrived_at: float, size: int, forwarded_bytes: int, now: float
    ) -> Refusal | None:
        """Whether to resend one packet now: None yes (and counted as resent), else why not.

        `key`: the packet's identity for this subscriber (its stream and sequence number);
        `arrived_at`: when it reached the SFU; `size`: its bytes; `forwarded_bytes`: all bytes
        forwarded to this subscriber so far (a counter that only grows).
        """
        rtt = self.rtt_s
        if now - arrived_at + (rtt * 0.5 if rtt is not None else 0.0) > self.max_age_s:
            return self._refuse(Refusal.TOO_LATE)
        last = self._resent_at.get(key)
        interval = max(rtt, MIN_REPEAT_S) if rtt is not None else self.repeat_interval_s
        if last is not None and now - last < interval:
            return self._refuse(Refusal.REPEATED)
        self.observe(forwarded_bytes, now)
        forwarded = self._forwarded_in_window(forwarded_bytes, now)
        allowance = max(MIN_BURST_BYTES, self.share * forwarded)
        if self._resent_in_window + size > allowance:
            return self._refuse(Refusal.BUDGET)
        self._resent_bytes.append((now, size))
        self._resent_in_window += size
        self._resent_at[key] = now
        if len(self._resent_at) > _FORGET_AFTER:
            horizon = max(interval, self.max_age_s)
            self._resent_at = {k: t for k, t in self._resent_at.items() if now - t < horizon}
        self.resent += 1
        return None

    def gone(self) -> None:
        """Count a lost packet the SFU no longer holds."""
        self._refuse(Refusal.GONE)

    def _refuse(self, reason: Refusal) -> Refusal:
        self.refused[reason] += 1
        return reason

    def observe(self, forwarded_bytes: int, now: float) -> None:
        """Sample the bytes forwarded to this subscriber so far (at each of its RTCP packets,
        so that the window's forwarded bytes are known when a NACK comes); drop what left the
        window."""
        start = now - WINDOW_S
        resent = self._resent_bytes
        while resent and resent[0][0] <= start:
            self._resent_in_window -= resent.popleft()[1]
        samples = self._forwarded
        if samples and samples[-1][0] == now:
            return
        samples.append((now, forwarded_bytes))
        # Keep one sample at or before the window's start: the counter's value there.
        while len(samples) > 1 and samples[1][0] <= start:
            samples.popleft()

    def _forwarded_in_window(self, forwarded_bytes: int, now: float) -> float:
        """Bytes forwarded over the last second: measured from the oldest sample, scaled to a
        second when that sample is older (the average rate since then) or the history is
        shorter (what has been forwarded since the first sample)."""
        since, counter = self._forwarded[0]
        elapsed = now - since
        forwarded = forwarded_bytes - counter
        if elapsed > WINDOW_S:
            return forwarded * WINDOW_S / elapsed
        return float(forwarded)

"""A subscriber's round-trip time, from the echo of our sender reports in its receiver reports.

RFC 3550 6.4.1: a receiver report block carries LSR (the middle 32 bits of the NTP timestamp of
the latest sender report received on that stream) and DLSR (how long, in 1/65536 s, the receiver
held it before reporting). The sender knows when it sent that report, so the round trip is the
report's arrival less that send time less DLSR. The SFU forwards each publisher's sender reports
to the subscribers (lip sync), with the publisher's NTP time in them, not the SFU's: so the round
trip is measured against when the SFU sent each one (kept here by stream and LSR), never against
an NTP clock. Every subscriber's slots share one transport, so one estimate per subscriber.

What reads it: the subscriber's retransmission budget (`sfu.retransmit`): whether a resend can
still arrive in time (half the round trip is the resend's way there), and how long before the
same packet may be resent; and the node's `round_trip_ms` metric.

Pure: `now` (seconds of the monotonic clock) is passed in; no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

SENT_MEMORY = 64
"""Sender reports remembered per subscriber (a few seconds' worth for every slot it has): a
receiver report echoes the latest one on its stream."""
MAX_RTT_S = 10.0
"""Longer samples are discarded: an echo of a report we no longer mean (or a clock fault)."""
SMOOTHING = 1 / 8
"""Weight of each new sample in the smoothed round trip (RFC 6298's alpha for SRTT)."""
RTT_BUCKETS_MS = (25, 50, 100, 200, 400, 800)
"""Bounds of the node's `round_trip_ms_bucket` metric."""


class RoundTrip:
    """One subscriber's round trip: the sender reports sent to it, the echoes that come back."""

    __slots__ = ("_sent", "rtt_s", "samples")

    def __init__(self) -> None:
        self._sent: dict[tuple[int, int], float] = {}
        """When each sender report was sent, by (stream SSRC, its LSR value)."""
        self.rtt_s: float | None = None
        """The smoothed round trip in seconds (None: not measured yet)."""
        self.samples = 0
        """Round-trip samples taken."""

    def sender_report_sent(self, ssrc: int, ntp: int, now: float) -> None:
        """A sender report stamped `ntp` (64-bit NTP time) was sent on stream `ssrc` at `now`."""
        sent = self._sent
        sent[ssrc, (ntp >> 16) & 0xFFFFFFFF] = now
        if len(sent) > SENT_MEMORY:
            del sent[next(iter(sent))]  # the oldest (dicts keep insertion order)

    def on_report(self, ssrc: int, lsr: int, dlsr: int, now: float) -> float | None:
        """A report block on stream `ssrc` echoing `lsr` after `dlsr` (1/65536 s) arrived at
        `now`: the smoothed round trip after it (None: still unknown). A block with no sender
        report to echo (LSR 0), or echoing one we do not remember, measures nothing."""
        sent_at = self._sent.get((ssrc, lsr)) if lsr else None
        if sent_at is None:
            return self.rtt_s
        sample = now - sent_at - dlsr / 65536
        if sample > MAX_RTT_S:
            return self.rtt_s
        sample = max(sample, 0.0)  # DLSR rounding on a fast link
        self.samples += 1
        rtt = self.rtt_s
        self.rtt_s = sample if rtt is None else rtt + SMOOTHING * (sample - rtt)
        return self.rtt_s


def round_trip_buckets(round_trips: Iterable[float | None]) -> dict[str, int]:
    """The node's `round_trip_ms_bucket{le="..."}`: how many subscribers' round trips are at
    most each bound now (cumulative, as Prometheus buckets; subscribers not measured yet are
    left out), with their sum and count."""
    known = [rtt * 1000 for rtt in round_trips if rtt is not None]
    buckets = {
        f'round_trip_ms_bucket{{le="{bound}"}}': sum(1 for ms in known if ms <= bound)
        for bound in RTT_BUCKETS_MS
    }
    buckets['round_trip_ms_bucket{le="+Inf"}'] = len(known)
    buckets["round_trip_ms_sum"] = round(sum(known))
    buckets["round_trip_ms_count"] = len(known)
    return buckets

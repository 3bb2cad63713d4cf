"""Media bounded by time: how long packets waited in the node, and dropping those that waited
too long.

Measured with the machine's CPU taken by other work: forwarding delivered packets 1-5 s late,
after they had waited in the socket's receive queue for the event loop to come round. Video that
late is useless to a live meeting (the receiver has long given up on it, or plays it as a burst
seconds behind the speaker's voice), and forwarding it costs the CPU that is already short. So
the time a media datagram waited between reaching the node (the kernel's receive timestamp) and
being taken for forwarding is measured, and past `max_ms` its RTP is marked late: live
subscribers do not get it (nor a resend of it), and the video's publisher is asked for a
keyframe (at the usual rate), so pictures resume from fresh media instead of from repaired stale
ones. A recording still stores every late packet (`sfu.forwarder.PublishedTrack.forward`): it is
not played live, and a packet missing from it would be missing for good (measured when the bound
dropped late media before the recorder saw it: an exported audio stream of a node loaded by the
browser tests lacked 6 packets).

Pure: the waiting time is measured by `sfu.socket_receive` and passed in; no clock, no socket.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

BUCKETS_MS: tuple[int, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
"""Upper bounds (ms) of the waiting-time histogram, as Prometheus `le` buckets (a last bucket
holds everything longer)."""


@dataclass(slots=True)
class QueueDelay:
    """The node's media waiting times, and the bound past which RTP is dropped."""

    max_ms: int = 250
    """Longest a media datagram may wait before it is forwarded to live subscribers; 0: no
    bound (measured only)."""
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))
    """Media (SRTP and SRTCP) datagrams per waiting-time bucket (`BUCKETS_MS`, then longer)."""
    dropped: int = 0
    """RTP datagrams kept from live subscribers for waiting longer than `max_ms` (a recording
    still gets them)."""

    def fresh(self, waited_ms: int) -> bool:
        """Whether RTP that waited `waited_ms` may still be forwarded to live subscribers."""
        return not self.max_ms or waited_ms <= self.max_ms

    def record(self, waited_ms: int, datagrams: int) -> None:
        """Count `datagrams` media datagrams taken after waiting `waited_ms`."""
        self.counts[bisect_left(BUCKETS_MS, waited_ms)] += datagrams

    def drop(self) -> None:
        """Count one RTP datagram kept from live subscribers for waiting too long."""
        self.dropped += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(`le` label, datagrams that waited at most that long) per bucket, ending with
        `+Inf`: the Prometheus histogram's buckets."""
        out = []
        total = 0
        for bound, count in zip((*map(str, BUCKETS_MS), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


def percentile_ms(buckets: list[tuple[float, int]], share: float) -> float | None:
    """The `share` percentile (0.95: p95) of a histogram given as cumulative (upper bound ms,
    count) pairs, as the upper bound of the bucket it falls in; None without samples. For
    readers of /metrics (the benchmark), over the difference of two readings."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    wanted = share * buckets[-1][1]
    for bound, count in buckets:
        if count >= wanted:
            return bound
    return buckets[-1][0]

"""What an impaired link does to each datagram, decided without I/O (sans-IO).

`ImpairedDirection.admit(size, now)` answers, for one datagram entering one direction of a link,
whether it is lost and otherwise when it arrives: the caller (`nettest.udp_proxy`, or a test with
a made-up clock) holds the datagram until then. Randomness comes from a `random.Random` the caller
seeds, so a run can be repeated datagram for datagram.

The model, in the order a datagram meets it (netem's order):
1. random loss, each datagram independently with probability `loss`;
2. the rate limit: the link sends one datagram at a time at `rate_kbps`, the others wait in a
   queue; a datagram that would wait more than `queue_ms` is dropped (a router's tail drop), so a
   sender above the rate sees loss and a growing delay, as on a real bottleneck;
3. propagation delay: `delay_ms` plus a uniform jitter in ±`jitter_ms`, drawn per datagram, so
   datagrams closer together than the jitter arrive reordered.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Impairment:
    """One direction of a link: `Impairment(loss=0.05, delay_ms=50, jitter_ms=30, rate_kbps=800)`
    is half of "5% loss, 100 ms RTT, 30 ms jitter, 800 kbps"."""

    loss: float = 0.0
    """Probability that a datagram is lost, 0..1."""
    delay_ms: float = 0.0
    """Mean one-way delay added to every datagram."""
    jitter_ms: float = 0.0
    """Each datagram's delay is `delay_ms` plus a uniform draw in ±`jitter_ms` (never below 0)."""
    rate_kbps: float | None = None
    """Link rate in kbit/s (datagram sizes as sent, no header overhead); None: unlimited."""
    queue_ms: float = 200.0
    """Longest wait in the rate limit's queue; a datagram that would wait longer is dropped."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss {self.loss} is not a probability")
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.queue_ms < 0:
            raise ValueError("delay_ms, jitter_ms and queue_ms cannot be negative")
        if self.rate_kbps is not None and self.rate_kbps <= 0:
            raise ValueError(f"rate_kbps {self.rate_kbps} must be positive (or None: unlimited)")


CLEAN = Impairment()
"""A link that does nothing to datagrams."""


def link(
    *,
    loss: float = 0.0,
    rtt_ms: float = 0.0,
    jitter_ms: float = 0.0,
    down_kbps: float | None = None,
    up_kbps: float | None = None,
) -> tuple[Impairment, Impairment]:
    """A link as people describe it, as its (up, down) directions: `link(loss=0.05, rtt_ms=100,
    jitter_ms=30, down_kbps=800)` is "5% loss, 100 ms RTT, 30 ms jitter, 800 kbps down". Loss and
    jitter apply in each direction; the round trip is split evenly between them."""
    up = Impairment(loss=loss, delay_ms=rtt_ms / 2, jitter_ms=jitter_ms, rate_kbps=up_kbps)
    down = Impairment(loss=loss, delay_ms=rtt_ms / 2, jitter_ms=jitter_ms, rate_kbps=down_kbps)
    return up, down


@dataclass(slots=True)
class DirectionCounters:
    """What one direction of a link did so far."""

    offered: int = 0
    """Datagrams that entered the link."""
    offered_bytes: int = 0
    """Their bytes."""
    lost: int = 0
    """Dropped by random loss."""
    overflowed: int = 0
    """Dropped because the rate limit's queue was full (waited more than `queue_ms`)."""
    passed: int = 0
    """Sent on, each at its arrival time."""
    passed_bytes: int = 0
    """Their bytes."""
    max_queue_ms: float = 0.0
    """Longest wait in the rate limit's queue of a datagram that passed."""

    @property
    def dropped(self) -> int:
        """Datagrams lost either way."""
        return self.lost + self.overflowed


class ImpairedDirection:
    """One direction of an impaired link: per datagram, lost or the time it arrives."""

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.impairment = impairment
        self.rng = rng
        self.counters = DirectionCounters()
        self._link_free_at = float("-inf")
        """When the rate-limited link has sent everything queued so far."""

    def admit(self, size: int, now: float) -> float | None:
        """A datagram of `size` bytes enters at `now` (seconds): when it arrives (same clock),
        or None when the link drops it."""
        impairment, counters = self.impairment, self.counters
        counters.offered += 1
        counters.offered_bytes += size
        if impairment.loss and self.rng.random() < impairment.loss:
            counters.lost += 1
            return None
        leaves = now
        if impairment.rate_kbps is not None:
            starts = max(now, self._link_free_at)
            waited_ms = (starts - now) * 1000
            if waited_ms > impairment.queue_ms:
                counters.overflowed += 1
                return None
            counters.max_queue_ms = max(counters.max_queue_ms, waited_ms)
            leaves = starts + size * 8 / (impairment.rate_kbps * 1000)
            self._link_free_at = leaves
        delay_ms = impairment.delay_ms
        if impairment.jitter_ms:
            delay_ms += self.rng.uniform(-impairment.jitter_ms, impairment.jitter_ms)
        counters.passed += 1
        counters.passed_bytes += size
        return leaves + max(0.0, delay_ms) / 1000

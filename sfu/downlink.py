"""A subscriber's downlink: how many bits per second its link can take now (send-side estimation).

Design note (issue 15, part 4). The SFU numbers every packet it sends a subscriber in one
transport-wide sequence (`SentPackets`, stamped by the transport hook as the packet leaves:
media, RTX and audio alike) and keeps when it sent each and how big it was. The subscriber's
browser reports when each arrived (transport-cc feedback, `sfu.twcc.read_transport_feedback`).
`DownlinkEstimator` turns the two into an estimate the way Chromium's GCC does (as LiveKit and
mediasoup do on their send side), in three parts:

- delay: packets sent within 5 ms are a group; between groups, how much longer the arrivals were
  spread than the sends is the one-way delay gradient. Its running sum, smoothed, is fitted with
  a line over the last 20 groups (`Trendline`); a slope above an adaptive threshold for more than
  10 ms is overuse: a queue is building at a bottleneck. Overuse cuts the estimate to 0.85x what
  the subscriber acknowledged receiving (`ACKED_WINDOW_US`); then the estimate holds, and grows
  again (8 %/s, additively near the last link capacity seen) while the delay stays normal, and
  never stays below what was acknowledged without a queue or loss (what arrived so, the link
  carries: a link that recovers is seen as soon as the media through it grows).
- loss: over each window of `LOSS_WINDOW_PACKETS` packets, more than 10 % lost sets the estimate
  to 0.85x what was acknowledged (what arrives through a lossy link is what it carries; not
  compounded, as a sender that adapts could: the SFU cannot slow its publishers down, so the
  loss goes on and a compounded cut would sink to nothing); 2-10 % holds it (no increase);
  below 2 % lets it grow. Random loss on an idle link therefore holds the estimate.
- the subscriber's REMB, when it sends one, caps the result.

Application-limited: the SFU sends what publishers send, so growth is held to `ACKED_HEADROOM`
times what was acknowledged (libwebrtc's rule for an application-limited sender: a link is
shown to carry what was sent, not more); the hold limits growth only, it never pulls an
estimate down. What lifts the estimate above it is a probe (`sfu.probing`): padding sent on top
of the media for a few tens of milliseconds at a target rate, the feedback on that stretch of
the transport-wide sequence measured (`probes`, a `ProbeBitrateEstimator`); a result above the
estimate sets it at once (`on_probe`), as libwebrtc's delay-based estimator takes a probe's.
Before any feedback the estimate is the start value the subscriber gives (300 kbps: the lowest
layers, so a narrow link is not flooded at join), which the start probes correct within ~1 s.

(Before probing, layer "trials" let the estimate double after 3 s of calm while a track was held
below its tile's layer. They are gone: a trial moved the whole media stream up for seconds to
learn what a 50 ms probe learns, flooded a link that could not carry it, and waited up to 30 s
after failures; a probe that fails costs a few tens of milliseconds of queue.)

Hysteresis: `estimate_bps` (what layer choice reads) moves only when the estimate differs from
it by more than `REPORT_STEP`; the rate control itself holds after every decrease.

Pure: packets, feedback and `now` in, an estimate out; no socket, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from core.media.rtp import Unwrapper
from sfu.probing import ProbeBitrateEstimator, ProbeResult
from sfu.twcc import SUBSCRIBER_EXTENSION_ID, FeedbackReport

HISTORY = 4096
"""Packets whose send time and size are kept (a power of two): ~4 s at 10 Mbps, far more than
feedback takes to come back."""
_HISTORY_MASK = HISTORY - 1
PACKET_OVERHEAD_BYTES = 38
"""Bytes a packet takes on the wire beyond its RTP bytes: the SRTP tag (10), UDP and IPv4 (28)."""

GROUP_US = 5_000
"""Packets sent within this of a group's first are one group (GCC's burst length)."""
BURST_US = 5_000
"""A packet arriving this soon after its group's last, with less delay, joins the group (a
burst the network or the receiver's socket handed over at once)."""
TRENDLINE_WINDOW = 20
"""Groups the delay trend is fitted over."""
SMOOTHING = 0.9
"""Weight of the past in the smoothed accumulated delay."""
TREND_GAIN = 4.0
"""GCC's threshold gain: the slope is multiplied by it (and by the groups seen, up to 60)."""
OVERUSE_US = 10_000
"""How long the trend must stay above the threshold to be overuse."""
THRESHOLD_INITIAL_MS = 12.5
THRESHOLD_RANGE_MS = (6.0, 600.0)
THRESHOLD_UP, THRESHOLD_DOWN = 0.0087, 0.039
"""How fast the adaptive threshold follows the trend up and down (per ms, GCC's values)."""

DECREASE = 0.85
"""Overuse: the estimate becomes this much of what was acknowledged."""
INCREASE_PER_S = 0.08
"""Normal delay, far from the last capacity seen: multiplicative growth per second."""
RESPONSE_S = 0.3
"""Additive growth near the capacity: about a packet per frame per this long (GCC: RTT + 100 ms)."""
ACKED_HEADROOM = 1.5
"""The estimate grows to at most this much of what was acknowledged (probes go beyond)."""
ACKED_WINDOW_US = 750_000
"""What was acknowledged: bytes received over this window of arrival times."""
ACKED_MIN_SPAN_US = 400_000
"""Arrivals spanning less than this measure no rate yet."""
LOSS_WINDOW_PACKETS = 60
"""Packets reported before the loss fraction is judged (fewer would make 5 % loss look like
10 %)."""
LOSS_HIGH, LOSS_LOW = 0.10, 0.02
"""Above: decrease; below: increase allowed; between: hold."""
REPORT_STEP = 0.05
"""`estimate_bps` follows the estimate only when it moved by more than this fraction."""
MIN_BPS, MAX_BPS = 30_000, 50_000_000
ESTIMATE_BUCKETS_KBPS = (300, 600, 1000, 2000, 4000)
"""Bounds of the node's `downlink_estimate_kbps_bucket` metric (layer-sized steps)."""


class SentPackets:
    """One subscriber transport's transport-wide numbering: the next sequence number, and the send
    time and size of the last `HISTORY` packets."""

    __slots__ = ("_entries", "extension_id", "next_sequence")

    def __init__(
        self, first_sequence: int = 1, extension_id: int = SUBSCRIBER_EXTENSION_ID
    ) -> None:
        self.extension_id = extension_id
        """The transport-wide sequence number's header extension id on this transport."""
        self.next_sequence = first_sequence & 0xFFFF
        """The transport-wide sequence number the next packet gets."""
        self._entries: list[int] = [-1] * HISTORY
        """Per packet, one int (one store on the hot path): send time in us above bit 32, size
        in bits 16-31, its sequence number below (so an overwritten entry is not mistaken for
        the packet asked about); -1: none."""

    def stamp(self, size: int, now_us: int) -> int:
        """Number a packet of `size` RTP bytes leaving at `now_us`; returns its sequence number."""
        # Hot path, per packet sent to a subscriber: watched by bench/forwarding.py.
        sequence = self.next_sequence
        self.next_sequence = (sequence + 1) & 0xFFFF
        self._entries[sequence & _HISTORY_MASK] = now_us << 32 | (size & 0xFFFF) << 16 | sequence
        return sequence

    def lookup(self, sequence: int) -> tuple[int, int] | None:
        """When the packet with this sequence number left (us) and its size on the wire (bytes);
        None when it is no longer (or never was) kept."""
        entry = self._entries[sequence & _HISTORY_MASK]
        if entry < 0 or entry & 0xFFFF != sequence:
            return None
        return entry >> 32, (entry >> 16 & 0xFFFF) + PACKET_OVERHEAD_BYTES


@dataclass(slots=True)
class _Group:
    """Packets sent within `GROUP_US` of each other, as they arrived."""

    first_sent_us: int
    last_sent_us: int
    first_arrival_us: int
    last_arrival_us: int


class Trendline:
    """GCC's overuse detector: the trend of the one-way delay gradient against an adaptive
    threshold. `update` takes one group's delay gradient; `usage` is the verdict."""

    __slots__ = ("_accumulated", "_deltas", "_first_arrival_ms", "_last_trend", "_over_count",
                 "_over_us", "_points", "_smoothed", "threshold_ms", "usage")  # fmt: skip

    def __init__(self) -> None:
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._points: deque[tuple[float, float]] = deque(maxlen=TRENDLINE_WINDOW)
        self._first_arrival_ms: float | None = None
        self._deltas = 0
        self._last_trend = 0.0
        self._over_us = -1
        self._over_count = 0
        self.threshold_ms = THRESHOLD_INITIAL_MS
        """The adaptive threshold the modified trend is compared with."""
        self.usage = "normal"
        """`normal`, `overusing` (a queue builds) or `underusing` (a queue drains)."""

    def update(self, gradient_ms: float, arrival_us: int, interval_us: int) -> str:
        """One group's delay gradient (arrival spread minus send spread, ms), the group's arrival
        and the time since the group before; returns the usage."""
        if self._first_arrival_ms is None:
            self._first_arrival_ms = arrival_us / 1000
        self._deltas = min(self._deltas + 1, 1000)
        self._accumulated += gradient_ms
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._accumulated
        self._points.append((arrival_us / 1000 - self._first_arrival_ms, self._smoothed))
        trend = self._last_trend
        if len(self._points) == TRENDLINE_WINDOW:
            trend = _slope(self._points)
        self._detect(trend, interval_us)
        return self.usage

    def _detect(self, trend: float, interval_us: int) -> None:
        modified = min(self._deltas, 60) * trend * TREND_GAIN
        if modified > self.threshold_ms:
            self._over_us = interval_us // 2 if self._over_us < 0 else self._over_us + interval_us
            self._over_count += 1
            if self._over_us > OVERUSE_US and self._over_count > 1 and trend >= self._last_trend:
                self._over_us = 0
                self._over_count = 0
                self.usage = "overusing"
        elif modified < -self.threshold_ms:
            self._over_us = -1
            self.usage = "underusing"
        else:
            self._over_us = -1
            self.usage = "normal"
        self._last_trend = trend
        self._adapt(modified, interval_us)

    def _adapt(self, modified: float, interval_us: int) -> None:
        size = abs(modified)
        if size > self.threshold_ms + 15.0:
            return  # a spike (a route change, a stall): not what the threshold should learn
        rate = THRESHOLD_DOWN if size < self.threshold_ms else THRESHOLD_UP
        step_ms = min(interval_us / 1000, 100.0)
        low, high = THRESHOLD_RANGE_MS
        self.threshold_ms = min(max(self.threshold_ms + rate * (size - self.threshold_ms)
                                    * step_ms, low), high)  # fmt: skip


def _slope(points: deque[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in points)
    denominator = sum((x - mean_x) ** 2 for x, _ in points)
    return numerator / denominator if denominator else 0.0


class AckedBitrate:
    """What the subscriber acknowledged receiving: bytes over the last `ACKED_WINDOW_US` of
    arrival times."""

    __slots__ = ("_arrivals", "_bytes", "_latest_us")

    def __init__(self) -> None:
        self._arrivals: deque[tuple[int, int]] = deque()
        self._bytes = 0
        self._latest_us = 0

    def add(self, arrival_us: int, size: int) -> None:
        """A packet of `size` bytes arrived (arrivals in any order; the window follows the
        latest)."""
        if not self._arrivals or arrival_us > self._latest_us:
            self._latest_us = arrival_us
        self._arrivals.append((arrival_us, size))
        self._bytes += size
        while self._arrivals[0][0] < self._latest_us - ACKED_WINDOW_US:
            self._bytes -= self._arrivals.popleft()[1]

    def bps(self) -> int | None:
        """The rate; None until the arrivals span `ACKED_MIN_SPAN_US`."""
        if len(self._arrivals) < 2:
            return None
        span = self._latest_us - self._arrivals[0][0]
        if span < ACKED_MIN_SPAN_US:
            return None
        return self._bytes * 8 * 1_000_000 // max(span, ACKED_WINDOW_US // 2)


class DownlinkEstimator:
    """One subscriber's downlink estimate, from its transport feedback on the packets in `sent`
    (and its REMB, if any), raised by probes (`probes`, `on_probe`)."""

    def __init__(self, sent: SentPackets, start_bps: int | None = None) -> None:
        self.sent = sent
        self._unwrapper = Unwrapper(16)
        self._highest: int | None = None
        """Highest extended sequence number reported so far (a packet reported again is not
        counted twice)."""
        self._group: _Group | None = None
        self._previous: _Group | None = None
        self.trendline = Trendline()
        self.acked = AckedBitrate()
        self._estimate: float | None = start_bps
        self._state = "increase"
        self._capacity_bps: float | None = None
        """The acknowledged rate when overuse was last seen: near it, growth is additive."""
        self._last_update: float | None = None
        self._window_lost = 0
        self._window_reported = 0
        self._loss_hold = False
        self.loss_fraction = 0.0
        """The last loss window's fraction lost."""
        self.smoothed_loss = 0.0
        """The loss windows' fractions, smoothed (half the last window, half the past): what
        pausing a camera is judged on (`sfu.pausing`)."""
        self.remb_bps: int | None = None
        """The subscriber's latest REMB (None: it sends none)."""
        self.estimate_bps: int | None = start_bps
        """The downlink estimate layer choice reads (bits per second; None: none yet, and no
        start value given). Follows the estimate with hysteresis (`REPORT_STEP`)."""
        self.overuses = 0
        """Times overuse was detected."""
        self.probes = ProbeBitrateEstimator()
        """The probe clusters sent on this transport awaiting their feedback (`sfu.probing`)."""
        self.probe_raises = 0
        """Times a probe's result raised the estimate."""
        self.remb_grant: int | None = None
        """While a subscriber without transport feedback climbs (`sfu.probing.RembClimb`): the
        estimate its REMB is taken to be at least."""

    @property
    def measured(self) -> bool:
        """Whether the estimate comes from the subscriber (its transport feedback or REMB), not
        only from the start value."""
        return self._last_update is not None or self.remb_bps is not None

    @property
    def remb_only(self) -> bool:
        """Whether the subscriber sends REMB and (so far) no transport feedback."""
        return self._last_update is None and self.remb_bps is not None

    def forget_start(self) -> None:
        """No transport feedback will come (the subscriber's answer took no transport-cc):
        drop the start value, which nothing could correct; REMB alone, or no estimate."""
        if self._last_update is None:
            self._estimate = None
            self.estimate_bps = None
            self._report()

    def on_probe(self, result: ProbeResult) -> bool:
        """A probe cluster's result: one above the estimate sets it (the link carried that
        much); a failed one, or one below, changes nothing. Returns whether it raised."""
        if result.bps is None or (self._estimate is not None and result.bps <= self._estimate):
            return False
        self._estimate = min(float(result.bps), MAX_BPS)
        if result.saturated:
            self._capacity_bps = result.bps  # measured at the link's limit: grow gently past it
        self.probe_raises += 1
        self._report()
        return True

    def on_remb(self, bitrate: int) -> None:
        """The subscriber's receiver-estimated maximum bitrate: a cap on the estimate."""
        self.remb_bps = bitrate if bitrate > 0 else None
        self._report()

    def grant(self, bps: int | None) -> None:
        """A REMB-only subscriber's climb (`sfu.probing.RembClimb`) grants `bps` (None: ends):
        without transport feedback, the estimate is at least that meanwhile."""
        if bps != self.remb_grant:
            self.remb_grant = bps
            if bps is None and self._last_update is None and self.remb_bps is not None:
                self.estimate_bps = self.remb_bps  # back to what the receiver says at once
            self._report()

    def on_feedback(self, report: FeedbackReport, now: float) -> int | None:
        """One transport feedback packet from the subscriber, received at `now` (seconds of a
        monotonic clock); returns `estimate_bps`."""
        usage = self.trendline.usage
        overused = False
        probes = self.probes if self.probes.open else None
        for sequence, arrival_us in zip(report.sequences, report.arrivals_us, strict=True):
            extended = self._unwrapper.unwrap(sequence)
            if self._highest is not None and extended <= self._highest:
                continue  # reported before
            self._highest = extended
            sent = self.sent.lookup(sequence)
            if sent is None:
                continue
            self._window_reported += 1
            sent_us, size = sent
            if probes is not None:
                probes.on_packet(sequence, sent_us, size, arrival_us)
            if arrival_us is None:
                self._window_lost += 1
                continue
            self.acked.add(arrival_us, size)
            usage = self._arrived(sent_us, arrival_us) or usage
            if usage == "overusing" and self.probes.sheltered(sent_us):
                usage = "normal"  # the queue a probe built: it drains by itself
            overused |= usage == "overusing"
        self._judge_loss()
        self._control("overusing" if overused else usage, now)
        if probes is not None:
            probes.judge(now)
        return self.estimate_bps

    def _arrived(self, sent_us: int, arrival_us: int) -> str | None:
        """Group one arrival; when it starts a new group, feed the delay gradient between the two
        groups before it to the trendline and return the usage."""
        group = self._group
        if group is None:
            self._group = _Group(sent_us, sent_us, arrival_us, arrival_us)
            return None
        if sent_us < group.first_sent_us:
            return None  # sent before this group began: reordered past it, ignored
        if sent_us - group.first_sent_us <= GROUP_US or self._in_burst(group, sent_us, arrival_us):
            group.last_sent_us = max(group.last_sent_us, sent_us)
            group.last_arrival_us = max(group.last_arrival_us, arrival_us)
            return None
        previous, self._previous = self._previous, group
        self._group = _Group(sent_us, sent_us, arrival_us, arrival_us)
        if previous is None:
            return None
        send_delta = group.last_sent_us - previous.last_sent_us
        arrival_delta = group.last_arrival_us - previous.last_arrival_us
        gradient_ms = (arrival_delta - send_delta) / 1000
        return self.trendline.update(gradient_ms, group.last_arrival_us, max(arrival_delta, 0))

    @staticmethod
    def _in_burst(group: _Group, sent_us: int, arrival_us: int) -> bool:
        arrival_delta = arrival_us - group.last_arrival_us
        propagation = arrival_delta - (sent_us - group.last_sent_us)
        return (
            0 <= arrival_delta < BURST_US
            and propagation < 0
            and arrival_us - group.first_arrival_us < 100_000
        )

    def _judge_loss(self) -> None:
        if self._window_reported < LOSS_WINDOW_PACKETS:
            return
        self.loss_fraction = self._window_lost / self._window_reported
        self.smoothed_loss = (self.smoothed_loss + self.loss_fraction) / 2
        self._window_lost = self._window_reported = 0
        acked = self.acked.bps()
        self._loss_hold = self.loss_fraction >= LOSS_LOW
        if self.loss_fraction > LOSS_HIGH and acked is not None:
            # What arrives through a lossy link is what it carries: the estimate follows it (up
            # or down, not compounded: the SFU cannot slow its publishers down to stop the loss).
            self._estimate = DECREASE * acked
            self._state = "hold"

    def _control(self, usage: str, now: float) -> None:
        """GCC's rate control (AIMD), driven by the delay usage, gated by loss."""
        acked = self.acked.bps()
        if acked is None:
            return
        elapsed = 0.0 if self._last_update is None else min(max(now - self._last_update, 0), 1)
        self._last_update = now
        estimate = self._estimate
        if estimate is None:
            estimate = acked * ACKED_HEADROOM
        if usage == "overusing":
            self.overuses += 1
            estimate = min(estimate, DECREASE * acked)
            self._capacity_bps = acked
            self._state = "decrease"
        elif usage == "underusing":
            self._state = "hold"  # a queue drains: wait for it to empty before growing
        else:
            if self._state != "increase":
                self._state = "hold" if self._state == "decrease" else "increase"
            elif not self._loss_hold:
                # What just arrived without a queue or loss, the link demonstrably carries; it
                # grows to at most `ACKED_HEADROOM` of that (a limit on growth only: an estimate
                # a probe set above it stays until a queue or loss says otherwise).
                ceiling = acked * ACKED_HEADROOM + 10_000
                if estimate < ceiling:
                    estimate = min(self._grown(estimate, elapsed), ceiling)
                estimate = max(estimate, acked)
                if self._capacity_bps is not None and acked > 1.5 * self._capacity_bps:
                    self._capacity_bps = None  # the link is not what it was: grow fast again
        self._estimate = min(max(estimate, MIN_BPS), MAX_BPS)
        self._report()

    def _grown(self, estimate: float, elapsed: float) -> float:
        capacity = self._capacity_bps
        if capacity is not None and estimate < capacity * 1.5:
            packets_per_frame = max(1.0, estimate / 30 / (1200 * 8))
            return estimate + packets_per_frame * 1200 * 8 / RESPONSE_S * elapsed
        return estimate * (1 + INCREASE_PER_S) ** elapsed

    def _report(self) -> None:
        """Move `estimate_bps` if the estimate (capped by REMB; REMB alone while there is no
        transport feedback: a receiver that sends REMB and no feedback, as aiortc does, is not
        held at the start value) left its band."""
        estimate = self._estimate
        if self._last_update is None and self.remb_bps is not None:
            estimate = None  # no transport feedback yet: the start value yields to a REMB
        candidates = [v for v in (estimate, self.remb_bps) if v is not None]
        if not candidates:
            return
        value = min(candidates)
        if self.remb_grant is not None and self._last_update is None:
            value = max(value, self.remb_grant)  # a REMB-only subscriber's climb
        reported = self.estimate_bps
        if reported is None or abs(value - reported) > REPORT_STEP * reported:
            self.estimate_bps = int(value)


def estimate_buckets(estimates: Iterable[int | None]) -> dict[str, int]:
    """The node's `downlink_estimate_kbps_bucket{le="..."}`: how many subscribers' estimates are
    at most each bound now (cumulative, as Prometheus buckets; subscribers with no estimate are
    left out), with their sum and count (one subscriber: the sum is its estimate)."""
    known = [bps for bps in estimates if bps is not None]
    buckets = {
        f'downlink_estimate_kbps_bucket{{le="{bound}"}}': sum(1 for bps in known
                                                              if bps <= bound * 1000)
        for bound in ESTIMATE_BUCKETS_KBPS
    }  # fmt: skip
    buckets['downlink_estimate_kbps_bucket{le="+Inf"}'] = len(known)
    buckets["downlink_estimate_kbps_sum"] = sum(known) // 1000
    buckets["downlink_estimate_kbps_count"] = len(known)
    return buckets

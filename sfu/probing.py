"""Bandwidth probing of a subscriber's downlink: when to probe, and what a probe showed.

Design note (issue 15, part 4). The downlink estimate (`sfu.downlink`) can only be shown what
the link carried: the SFU sends what publishers send, and an estimate grows at most to 1.5x
what was acknowledged. A subscriber held on a low layer would never be shown that a higher one
fits. Probing is how libwebrtc's send side answers that (modules/congestion_controller/goog_cc:
`ProbeController` decides, the pacer sends a "probe cluster", `ProbeBitrateEstimator` reads the
cluster's feedback; mediasoup runs the same code behind its `TransportCongestionControlClient`
and sends the cluster on its probation stream): for a few tens of milliseconds, padding is sent
on top of the media so the whole transport runs at a target rate, every packet numbered in the
transport-wide sequence, and the feedback on that stretch of the sequence tells whether the link
carried it.

- `ProbeController` (when, and at what rate): at start, a cluster at 3x the start estimate
  (900 kbps); after a result that did not saturate the link (what was sent arrived as fast:
  libwebrtc asks for 0.7x the target, but a busy event loop may pace a cluster below it), a
  further cluster at 2x the result while the subscriber's tiles need more (libwebrtc's
  exponential start sends 3x and 6x at once; here 6x waits for 3x to succeed, so a narrow link
  at join takes one 50 ms burst at 3x, not one at 6x too: a 1.8 Mbps burst into a 500 kbps
  link queues ~170 ms, enough to overflow a short router queue); later, whenever layer choice
  holds a track below what its tile wants for lack of budget (libwebrtc probes in
  application-limited periods the same way), one cluster at what the tiles need (at most
  twice the estimate), at most every `WANT_EVERY_S`, twice as seldom after each failure (up
  to `WANT_EVERY_MAX_S`) so a link that is really narrow is not pushed at every tick. And
  after a large drop (the estimate under 2/3 of its highest in the last `DROP_WINDOW_S`) while
  tracks are held down, one cluster at 0.85x that highest at once (libwebrtc's probe after a
  large drop in an application-limited period): a delay spike that was the relay's or a
  burst of keyframes, not the link's, cut the estimate to what the media used; the probe
  restores it in a round trip instead of the climb taking seconds. A real drop fails it.
- `ProbeBitrateEstimator` (what a cluster showed): a cluster is the stretch of transport-wide
  sequence numbers from its first padding packet to its last (the media sent meanwhile is in
  it, as libwebrtc's pacer tags media sent while a cluster is active). Once every packet of
  the stretch is reported: fewer than 80 % arrived → failed; the send rate (bytes less the last
  sent, over the send span) and the receive rate (bytes less the first arrived, over the
  arrival span), each span under a second; a receive rate over twice the send rate is not
  believed (unless every packet arrived: then the link carried the send rate; arrivals through
  a TURN relay to a busy browser come bunched, which libwebrtc's rule would throw away); the
  result is the lesser of the two, or 0.95x the receive rate when it is under
  0.9x the send rate (the link was saturated: what came through is its capacity).

A result above the estimate raises it at once (`DownlinkEstimator.on_probe`); a failed probe is
ignored (clusters are short and rare, so a failed one costs at most a few tens of milliseconds
of queue). Pure: `now` in, clusters and results out; the padding is sent by `sfu.probe_send`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

START_BPS = 300_000
"""A subscriber's estimate before any feedback (libwebrtc's start bitrate): its lowest layers,
so a narrow link is not flooded at join; the start probes find the real capacity in ~1 s."""
START_SCALE = 3.0
"""The start cluster's target, times the start estimate (libwebrtc: 3x, and 6x at once)."""
FURTHER_SCALE = 2.0
"""A cluster that succeeded is followed by one at this many times its result."""
NEED_MARGIN = 1.1
"""A probe for what the tiles need aims this much above it (a probe measures a little under
what it sent)."""
WANT_EVERY_S = 2.0
"""Between probes while a track is held below its tile's layer, after a success."""
WANT_EVERY_MAX_S = 8.0
"""The longest wait between such probes, after failed ones."""
DROP_WINDOW_S = 5.0
"""A drop is judged against the highest estimate this far back."""
DROP_BELOW = 0.66
"""An estimate under this share of that highest is a large drop."""
DROP_PROBE_SCALE = 0.85
"""After a large drop, the probe aims at this share of the highest."""
LOSSY = 0.10
"""A loss fraction above this (the estimator's "decrease" level) says the link is over its
capacity now: no probe is sent (a cluster into a full queue only adds loss to the media's)."""
DROP_CLEAN_LOSS = 0.02
"""A drop is probed only when loss is under this: a drop that came with loss was the link."""
MAX_TARGET_BPS = 20_000_000
"""No cluster aims higher."""
CLUSTER_S = 0.05
"""How long a cluster's padding is paced over (libwebrtc: at least 15 ms; 50 ms here: an event
loop's timers and a relayed path's bunching blur anything shorter)."""
CLUSTER_MIN_PACKETS = 5
"""A cluster sends at least this many padding packets (libwebrtc's minimum)."""
RESULT_WITHIN_S = 1.5
"""A cluster whose feedback is not all in by this long after it began is judged on what is."""
PROBE_QUEUE_S = 0.5
"""After a cluster, how long the queue it may have built on a narrow link takes to drain and
the delay trend to settle (its groups are a packet apart at low rates, tens of ms each): the
delay detector's overuse on packets sent meanwhile is the probe's, not a cut (a failed probe
must not lower the estimate)."""
MIN_RECEIVED = 0.8
"""A cluster with fewer of its packets arrived than this share failed (loss in the cluster)."""
MAX_SPAN_US = 1_000_000
MAX_VALID_RATIO = 2.0
UNSATURATED = 0.9
SATURATED_UTILISATION = 0.95


@dataclass(frozen=True, slots=True)
class ProbeCluster:
    """One probe: the transport run at `target_bps` for `duration_s`."""

    cluster_id: int
    target_bps: int
    duration_s: float = CLUSTER_S
    min_packets: int = CLUSTER_MIN_PACKETS


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a cluster showed: `bps` is the rate the link carried (None: the probe failed)."""

    cluster: ProbeCluster
    bps: int | None
    saturated: bool = False
    """The receive rate fell short of the send rate: `bps` is the link's capacity."""
    send_bps: int | None = None
    """The cluster's measured send rate (None: not measured)."""
    receive_bps: int | None = None
    """Its measured receive rate (None: not measured)."""
    packets: int = 0
    """Packets in its stretch of the transport-wide sequence (padding and media)."""
    received: int = 0
    """Of those, reported arrived."""


class ProbeController:
    """When a subscriber's downlink is probed, and at what rate."""

    __slots__ = ("_drop_probed", "_further_bps", "_next_id", "_pending", "_recent", "_started",
                 "_want_at", "_want_every_s", "failed", "sent", "start_bps",
                 "succeeded")  # fmt: skip

    def __init__(self, start_bps: int = START_BPS) -> None:
        self.start_bps = start_bps
        """The estimate the start clusters scale."""
        self._started = False
        self._next_id = 1
        self._pending: dict[int, tuple[ProbeCluster, float]] = {}
        """Clusters sent and awaiting their result, with when they were asked for."""
        self._further_bps: int | None = None
        """A further cluster's target, asked for by a success."""
        self._want_at = 0.0
        self._want_every_s = WANT_EVERY_S
        self._recent: deque[tuple[float, int]] = deque()
        """(when, estimate) at each call over the last `DROP_WINDOW_S`."""
        self._drop_probed: int | None = None
        """The highest estimate a drop below it was last probed for (once per drop)."""
        self.sent = 0
        """Clusters asked for."""
        self.succeeded = 0
        """Clusters the link carried unsaturated."""
        self.failed = 0
        """Clusters that failed (loss, too few packets, no feedback, or a result well short)."""

    def process(
        self, now: float, estimate_bps: int | None, needed_bps: int | None, wanting: bool,
        loss_fraction: float = 0.0, *, confirming: bool = False,
    ) -> list[ProbeCluster]:  # fmt: skip
        """The clusters to send now. `estimate_bps`: the downlink estimate; `needed_bps`: what
        the subscriber's tiles need for the layers they want (None: not known yet);
        `wanting`: layer choice holds a track below its tile's layer for lack of budget;
        `loss_fraction`: the share of packets lost in the estimator's last loss window;
        `confirming`: a step down the estimate asks for is held until a probe says whether the
        link still carries the layer (`layer_choice.confirm_down`): probed as after a large
        drop, whatever its size."""
        for cluster, at in list(self._pending.values()):
            if now - at > RESULT_WITHIN_S + 0.5:  # never judged: the feedback did not come
                self.on_result(ProbeResult(cluster, None), now)
        if not self._started:
            self._started = True
            target = int(self.start_bps * START_SCALE)
            if needed_bps:
                target = min(target, int(needed_bps * NEED_MARGIN))
            return [self._cluster(target, now)]
        if estimate_bps is None:
            return []
        recent = self._recent
        recent.append((now, estimate_bps))
        while recent[0][0] < now - DROP_WINDOW_S:
            recent.popleft()
        if self._pending or loss_fraction > LOSSY:
            return []
        highest = max(bps for _, bps in recent)
        dropped = wanting and estimate_bps < DROP_BELOW * highest
        if (
            (dropped or (confirming and estimate_bps < highest))
            and self._drop_probed != highest
            and loss_fraction < DROP_CLEAN_LOSS
        ):  # a drop while tracks are held down, without loss: was it the link?
            self._drop_probed = highest
            return [self._cluster(int(DROP_PROBE_SCALE * highest), now)]
        further, self._further_bps = self._further_bps, None
        if further is not None and needed_bps is not None and needed_bps > estimate_bps:
            return [self._cluster(min(further, int(needed_bps * NEED_MARGIN)), now)]
        if not wanting or needed_bps is None or now < self._want_at:
            return []
        target = max(min(2 * estimate_bps, int(needed_bps * NEED_MARGIN)), int(1.2 * estimate_bps))
        return [self._cluster(target, now)]

    def on_result(self, result: ProbeResult, now: float) -> None:
        """A cluster's result (`ProbeBitrateEstimator.take_results`)."""
        cluster = result.cluster
        if self._pending.pop(cluster.cluster_id, None) is None:
            return
        if result.bps is not None and not result.saturated:
            # The link carried what was sent (its send rate: a busy event loop may pace a
            # cluster below its target, so the result, not the target, is what was shown).
            self.succeeded += 1
            self._want_every_s = WANT_EVERY_S
            self._further_bps = min(int(FURTHER_SCALE * result.bps), MAX_TARGET_BPS)
        else:
            self.failed += 1
            self._want_every_s = min(self._want_every_s * 2, WANT_EVERY_MAX_S)
        self._want_at = now + self._want_every_s

    def _cluster(self, target_bps: int, now: float) -> ProbeCluster:
        cluster = ProbeCluster(self._next_id, min(target_bps, MAX_TARGET_BPS))
        self._next_id += 1
        self._pending[cluster.cluster_id] = (cluster, now)
        self.sent += 1
        return cluster


@dataclass(slots=True)
class _Stretch:
    """A cluster's stretch of the transport-wide sequence, and the feedback on it so far."""

    cluster: ProbeCluster
    first: int
    began_at: float
    length: int | None = None
    """Sequence numbers in the stretch (None: the cluster is still being sent)."""
    reported: int = 0
    received: list[tuple[int, int, int]] = field(default_factory=list)
    """(sent us, arrival us, bytes on the wire) of each packet that arrived."""


class ProbeBitrateEstimator:
    """What each probe cluster showed, from the transport feedback on its packets."""

    __slots__ = ("_results", "_shelter_us", "_stretches")

    def __init__(self) -> None:
        self._stretches: list[_Stretch] = []
        self._results: list[ProbeResult] = []
        self._shelter_us = (0, -1)
        """Send times (us) whose queue is a probe's own: from the latest cluster's start to
        `PROBE_QUEUE_S` after its end."""

    def sheltered(self, sent_us: int) -> bool:
        """Whether a packet sent at `sent_us` met a queue the latest probe built (the delay
        detector's overuse then is the probe's doing, not the media's: not a cut)."""
        start, end = self._shelter_us
        return start <= sent_us <= end

    @property
    def open(self) -> bool:
        """Whether any cluster awaits feedback (the feedback loop's fast check)."""
        return bool(self._stretches)

    def begin(self, cluster: ProbeCluster, first_sequence: int, now: float) -> None:
        """The cluster's first padding packet got transport-wide number `first_sequence`."""
        self._stretches.append(_Stretch(cluster, first_sequence & 0xFFFF, now))
        end = now + cluster.duration_s + PROBE_QUEUE_S
        self._shelter_us = (int(now * 1_000_000), int(end * 1_000_000))

    def end(self, cluster: ProbeCluster, last_sequence: int) -> None:
        """The cluster's last padding packet got `last_sequence` (inclusive)."""
        for stretch in self._stretches:
            if stretch.cluster is cluster:
                stretch.length = ((last_sequence - stretch.first) & 0xFFFF) + 1

    def abandon(self, cluster: ProbeCluster) -> None:
        """The cluster could not be sent (the transport went away): it failed."""
        self._stretches = [s for s in self._stretches if s.cluster is not cluster]
        self._results.append(ProbeResult(cluster, None))

    def on_packet(self, sequence: int, sent_us: int, size: int, arrival_us: int | None) -> None:
        """Feedback on one packet (each reported once, as `DownlinkEstimator` reads it)."""
        for stretch in self._stretches:
            offset = (sequence - stretch.first) & 0xFFFF
            if offset >= 0x8000 or (stretch.length is not None and offset >= stretch.length):
                continue
            stretch.reported += 1
            if arrival_us is not None:
                stretch.received.append((sent_us, arrival_us, size))

    def judge(self, now: float) -> None:
        """Judge every cluster whose feedback is all in (or overdue)."""
        remaining = []
        for stretch in self._stretches:
            complete = stretch.length is not None and stretch.reported >= stretch.length
            if complete or now - stretch.began_at > RESULT_WITHIN_S:
                self._results.append(_judged(stretch))
            else:
                remaining.append(stretch)
        self._stretches = remaining

    def take_results(self) -> list[ProbeResult]:
        """The results judged since the last call."""
        results, self._results = self._results, []
        return results


def _judged(stretch: _Stretch) -> ProbeResult:
    cluster = stretch.cluster
    received = stretch.received
    expected = stretch.length if stretch.length is not None else stretch.reported
    failed = ProbeResult(cluster, None, packets=expected, received=len(received))
    if len(received) < max(MIN_RECEIVED * expected, MIN_RECEIVED * cluster.min_packets, 2):
        return failed
    by_send = sorted(received)
    send_span = by_send[-1][0] - by_send[0][0]
    by_arrival = sorted(received, key=lambda packet: packet[1])
    arrival_span = by_arrival[-1][1] - by_arrival[0][1]
    if not (0 < send_span <= MAX_SPAN_US and 0 < arrival_span <= MAX_SPAN_US):
        return failed
    total = sum(size for _, _, size in received)
    send_bps = int((total - by_send[-1][2]) * 8_000_000 / send_span)
    receive_bps = int((total - by_arrival[0][2]) * 8_000_000 / arrival_span)
    measured = replace(failed, send_bps=send_bps, receive_bps=receive_bps)
    if receive_bps > MAX_VALID_RATIO * send_bps:
        # Arrivals bunched (libwebrtc rejects these): behind a TURN relay and a busy receiver
        # they come in bursts. Every packet arrived, though: the link carried the send rate.
        return replace(measured, bps=send_bps) if len(received) >= expected else measured
    if receive_bps < UNSATURATED * send_bps:
        return replace(measured, bps=int(SATURATED_UTILISATION * receive_bps), saturated=True)
    return replace(measured, bps=min(send_bps, receive_bps))


CLIMB_HEADROOM = 1.3
"""A REMB at least this many times what the SFU sends the subscriber is the receiver's estimate
held by what it gets (application-limited), not by its link."""
CLIMB_EVERY_S = 4.0
"""Between climbs, after a success (and after the subscriber's start)."""
CLIMB_EVERY_MAX_S = 32.0
"""The longest wait, after failed climbs."""
CLIMB_FELL = 0.95
"""A REMB under this share of the one before during a climb: the receiver saw overuse."""
CLIMB_MAX_S = 30.0
"""A climb ends after this long whatever its REMB does."""


class RembClimb:
    """Climbing for a subscriber that sends REMB and no transport feedback (aiortc, older
    clients): probes cannot be measured there (their feedback is what measures them), and a
    receive-side estimator with little to receive is held by it: aiortc's grows at most to 1.5x
    what arrives, and after an overuse (a burst of keyframes at a layer switch) it restarts from
    0.85x that. Held on a thumbnail's layer, such a subscriber would never be shown a larger
    tile's. So, while layer choice holds a track below its tile's layer and the REMB is
    application-limited (`CLIMB_HEADROOM`), the SFU grants what the tiles need for a climb:
    the estimate layer choice reads is at least the grant, and the receiver's estimator, now
    given more, grows towards it (8 %/s in libwebrtc's and aiortc's rate control). The climb
    ends when the REMB reaches the grant (success), or falls (`CLIMB_FELL`: the receiver saw a
    queue or loss: failed, and the next climb waits twice as long, up to `CLIMB_EVERY_MAX_S`),
    or after `CLIMB_MAX_S`. Pure: REMBs and `now` in, a grant out."""

    __slots__ = ("_began_at", "_every_s", "_last_remb", "_next_at", "climbs", "failed",
                 "granted_bps")  # fmt: skip

    def __init__(self) -> None:
        self.granted_bps: int | None = None
        """The estimate granted for the climb under way (None: none)."""
        self._began_at = 0.0
        self._last_remb: int | None = None
        self._next_at: float | None = None
        self._every_s = CLIMB_EVERY_S
        self.climbs = 0
        """Climbs begun."""
        self.failed = 0
        """Climbs that ended with the REMB falling."""

    def on_remb(self, remb_bps: int, now: float) -> None:
        """The subscriber's REMB."""
        last, self._last_remb = self._last_remb, remb_bps
        if self.granted_bps is None:
            return
        if last is not None and remb_bps < CLIMB_FELL * last:
            self.failed += 1
            self._every_s = min(self._every_s * 2, CLIMB_EVERY_MAX_S)
            self._end(now)
        elif remb_bps >= self.granted_bps:
            self._every_s = CLIMB_EVERY_S
            self._end(now)

    def process(
        self, now: float, sending_bps: int, needed_bps: int | None, wanting: bool
    ) -> int | None:
        """The grant now. `sending_bps`: what the SFU sends the subscriber; `needed_bps`,
        `wanting`: as for `ProbeController.process`."""
        if self._next_at is None:
            self._next_at = now + CLIMB_EVERY_S  # its first REMBs first
        if self.granted_bps is not None and now - self._began_at > CLIMB_MAX_S:
            self._end(now)
        remb = self._last_remb
        if (
            self.granted_bps is None and wanting and needed_bps and remb and sending_bps
            and remb >= CLIMB_HEADROOM * sending_bps and needed_bps > remb
            and now >= self._next_at
        ):  # fmt: skip
            self.granted_bps = needed_bps
            self._began_at = now
            self.climbs += 1
        return self.granted_bps

    def _end(self, now: float) -> None:
        self.granted_bps = None
        self._next_at = now + self._every_s


def probe_counts(controllers: Iterable[ProbeController]) -> dict[str, int]:
    """The node's probe metrics over its subscribers now: clusters sent, those that showed the
    link carried them, those that failed (a node whose probes mostly fail serves narrow links;
    one that sends many per subscriber has tiles held below their layers)."""
    sent = succeeded = failed = 0
    for control in controllers:
        sent += control.sent
        succeeded += control.succeeded
        failed += control.failed
    return {
        "downlink_probes_sent": sent,
        "downlink_probes_succeeded": succeeded,
        "downlink_probes_failed": failed,
    }

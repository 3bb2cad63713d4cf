"""The downlink estimator (`sfu.downlink`) on synthetic traces: media paced at a bitrate through
nettest's impaired link model (the same one the proxy in the live tests uses), reported back by
the real feedback builder every 100 ms and read by the real parser, as a subscriber's browser
would. No event loop: time is simulated."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from nettest.impairment import ImpairedDirection, Impairment
from sfu.downlink import DownlinkEstimator, SentPackets, Trendline, estimate_buckets
from sfu.probing import START_BPS, ProbeCluster, ProbeController
from sfu.twcc import TransportFeedback, read_transport_feedback

PACKET_BYTES = 1_150
PADDING_PACKET_BYTES = 275
"""A probe packet's RTP bytes: header, extension block, 255 bytes of padding (`sfu.probe_send`)."""
FEEDBACK_EVERY_S = 0.1
ONE_WAY_S = 0.025
"""Added by the link model in each direction (the feedback's way back included)."""


@dataclass
class Trace:
    """What the estimator said over a simulated call: (time, estimate_bps) per feedback."""

    estimates: list[tuple[float, int | None]] = field(default_factory=list)
    estimator: DownlinkEstimator | None = None
    controller: ProbeController | None = None
    direction: ImpairedDirection | None = None
    dropped_by: list[tuple[float, int]] = field(default_factory=list)
    """(time, datagrams the link dropped so far), per feedback."""

    def at(self, when: float) -> int | None:
        """The estimate reported last at or before `when`."""
        found = None
        for time, bps in self.estimates:
            if time > when:
                break
            found = bps
        return found

    def between(self, start: float, end: float) -> list[int]:
        return [bps for time, bps in self.estimates if start <= time <= end and bps is not None]

    def first_below(self, bps: int, after: float) -> float | None:
        """When the estimate first fell below `bps` after `after`."""
        return next(
            (time for time, value in self.estimates
             if time >= after and value is not None and value < bps),
            None,
        )  # fmt: skip


def simulate(
    seconds: float,
    send_bps: Callable[[float], float],
    link_kbps: Callable[[float], float | None],
    *,
    loss: float = 0.0,
    seed: int = 15,
    frames: bool = False,
    needed_bps: int | None = None,
) -> Trace:
    """Send paced media at `send_bps(t)` (or, with `frames`, 30 frames a second, each frame's
    packets back to back) over a link whose rate is `link_kbps(t)`; feed the estimator.

    `needed_bps`: probe as the subscriber does (`sfu.probing`): the estimate starts at
    `START_BPS`, and at each feedback (the SFU's tick) the controller is asked for clusters,
    whose padding is paced into the link like `sfu.probe_send` does, while the tiles need that
    much and the media sent is less (layer choice holds a track down)."""
    rng = random.Random(seed)
    sent = SentPackets()
    probing = needed_bps is not None
    estimator = DownlinkEstimator(sent, start_bps=START_BPS if probing else None)
    controller = ProbeController() if probing else None
    builder = TransportFeedback()
    direction = ImpairedDirection(Impairment(loss=loss, delay_ms=ONE_WAY_S * 1000), rng)
    trace = Trace(estimator=estimator, controller=controller, direction=direction)
    arrivals: list[tuple[float, int]] = []  # (arrival s, transport sequence), unsorted
    padding: list[tuple[float, ProbeCluster, bool, bool]] = []  # (when, cluster, first, last)
    now = 0.0
    next_feedback = FEEDBACK_EVERY_S

    def send(size: int, sent_at: float) -> int:
        sequence = sent.stamp(size, int(sent_at * 1_000_000))
        arrival = direction.admit(size + 38, sent_at)
        if arrival is not None:
            arrivals.append((arrival, sequence))
        return sequence

    while now < seconds:
        rate = link_kbps(now)
        direction.impairment = Impairment(
            loss=loss, delay_ms=ONE_WAY_S * 1000, rate_kbps=rate, queue_ms=200
        )
        if frames:
            count = max(1, round(send_bps(now) / 30 / 8 / PACKET_BYTES))
            times = [now + index * 0.0002 for index in range(count)]
            now += 1 / 30
        else:
            times = [now]
            now += PACKET_BYTES * 8 / send_bps(now)
        for sent_at in times:
            while padding and padding[0][0] <= sent_at:
                when, cluster, first, last = padding.pop(0)
                sequence = send(PADDING_PACKET_BYTES, when)
                if first:
                    estimator.probes.begin(cluster, sequence, when)
                if last:
                    estimator.probes.end(cluster, sequence)
            send(PACKET_BYTES, sent_at)
        while next_feedback <= now:
            # The receiver reports what arrived by now, in arrival order.
            due = sorted(a for a in arrivals if a[0] <= next_feedback)
            arrivals = [a for a in arrivals if a[0] > next_feedback]
            for arrival, sequence in due:
                builder.record(sequence, int(arrival * 1000))
            for packet in builder.build(1, 2, int(next_feedback * 1000)):
                for report in read_transport_feedback(packet):
                    estimator.on_feedback(report, next_feedback + ONE_WAY_S)
            trace.estimates.append((next_feedback, estimator.estimate_bps))
            trace.dropped_by.append((next_feedback, direction.counters.dropped))
            if controller is not None:
                for result in estimator.probes.take_results():
                    estimator.on_probe(result)
                    controller.on_result(result, next_feedback)
                estimate = estimator.estimate_bps
                wanting = estimate is not None and needed_bps is not None and (
                    send_bps(now) < needed_bps and estimate < needed_bps
                )  # fmt: skip
                for cluster in controller.process(next_feedback, estimate, needed_bps, wanting):
                    padding.extend(paced(cluster, padding[-1][0] if padding else now,
                                         send_bps(now)))  # fmt: skip
            next_feedback += FEEDBACK_EVERY_S
    return trace


def paced(
    cluster: ProbeCluster, start: float, media_bps: float
) -> list[tuple[float, ProbeCluster, bool, bool]]:
    """A cluster's padding packets, evenly paced from `start` as `sfu.probe_send` paces them
    (the padding fills the target above the media)."""
    padding_bps = max(cluster.target_bps - media_bps, cluster.target_bps / 2)
    count = max(
        cluster.min_packets,
        round(padding_bps * cluster.duration_s / 8 / (PADDING_PACKET_BYTES + 38)),
    )
    gap = cluster.duration_s / count
    return [
        (start + index * gap, cluster, index == 0, index == count - 1) for index in range(count)
    ]


def constant(value: float | None) -> Callable[[float], float | None]:
    return lambda _t: value


def test_no_estimate_before_the_feedback_spans_enough_time() -> None:
    trace = simulate(0.25, constant(1_500_000), constant(None))  # type: ignore[arg-type]
    assert trace.at(0.2) is None


def test_a_clean_link_keeps_the_estimate_at_or_above_what_is_sent() -> None:
    trace = simulate(10, constant(1_500_000), constant(None))  # type: ignore[arg-type]
    after = trace.between(1, 10)
    assert min(after) >= 1_400_000, trace.estimates
    assert max(after) <= 1.5 * 1_600_000, "no probing: never far above what was sent"


def test_a_wide_bottleneck_with_frame_bursts_does_not_look_like_overuse() -> None:
    trace = simulate(10, constant(1_500_000), constant(3_000), frames=True)  # type: ignore[arg-type]
    assert min(trace.between(1, 10)) >= 1_400_000, trace.estimates


def test_a_drop_from_3_mbps_to_500_kbps_is_seen_within_a_second_and_a_half() -> None:
    """The issue's aim: the downlink drops from 3 Mbps to 500 kbps while 1.5 Mbps is sent."""
    trace = simulate(
        14,
        constant(1_500_000),
        lambda t: 3_000 if t < 8 else 500,  # type: ignore[arg-type]
    )
    assert min(trace.between(2, 8)) >= 1_400_000, trace.estimates
    below = trace.first_below(500_000, after=8)
    assert below is not None and below - 8 <= 1.5, trace.estimates
    settled = trace.between(10, 14)
    assert max(settled) < 500_000, "it stays below while the link is overloaded"
    assert min(settled) > 250_000, "near the link's rate, not sunk to nothing"
    print("after the drop:", [(round(t, 1), bps) for t, bps in trace.estimates if 7.5 < t < 10])


def test_frame_bursts_into_a_drop_are_seen_too() -> None:
    trace = simulate(
        12, constant(1_500_000), lambda t: 3_000 if t < 6 else 500,  # type: ignore[arg-type]
        frames=True,
    )  # fmt: skip
    below = trace.first_below(500_000, after=6)
    assert below is not None and below - 6 <= 1.5, trace.estimates


def test_random_loss_without_congestion_holds_the_estimate() -> None:
    trace = simulate(12, constant(1_500_000), constant(None), loss=0.05)  # type: ignore[arg-type]
    assert min(trace.between(2, 12)) >= 1_300_000, trace.estimates


def test_heavy_random_loss_lowers_the_estimate_to_what_arrives() -> None:
    trace = simulate(8, constant(1_500_000), constant(None), loss=0.25)  # type: ignore[arg-type]
    settled = trace.between(4, 8)
    assert max(settled) < 1_300_000, trace.estimates
    assert min(settled) > 700_000, "what arrived less half the loss, not compounded to nothing"


def test_a_link_that_recovers_is_seen_once_media_through_it_grows() -> None:
    trace = simulate(
        20,
        constant(1_500_000),
        lambda t: 500 if 5 <= t < 10 else 3_000,  # type: ignore[arg-type]
    )
    assert max(trace.between(7, 10)) < 600_000
    assert min(trace.between(14, 20)) >= 1_300_000, trace.estimates


def test_start_probes_find_a_clean_link_within_a_second_or_two() -> None:
    """A subscriber joins a clean 10 Mbps link receiving its lowest layers (400 kbps) while its
    tiles would take 3 Mbps: from the 300 kbps start, the start probes (0.9, 1.8 Mbps) and a
    further one lift the estimate to what the tiles need within two seconds, and it stays."""
    trace = simulate(8, constant(400_000), constant(10_000), needed_bps=3_000_000)  # type: ignore[arg-type]
    assert trace.at(0.1) == START_BPS, "the start value before any feedback"
    reached = next(time for time, bps in trace.estimates if bps and bps >= 3_000_000)
    assert reached <= 2.0, trace.estimates
    assert min(trace.between(reached, 8)) >= 2_800_000, trace.estimates
    assert trace.controller is not None and trace.controller.succeeded >= 2


def test_start_probes_on_a_narrow_link_find_its_capacity_without_flooding_it() -> None:
    """A 500 kbps link, 250 kbps of media (the lowest layers the start value allows): the start
    probes saturate it for a few tens of milliseconds, measure it near its capacity, and lose
    nothing (the link's queue takes a 50 ms burst); the estimate settles near 500 kbps."""
    trace = simulate(10, constant(250_000), constant(500), needed_bps=3_000_000)  # type: ignore[arg-type]
    assert trace.direction is not None and trace.direction.counters.dropped == 0
    settled = trace.between(2, 10)
    assert max(settled) <= 650_000, trace.estimates
    assert min(settled) >= 380_000, "near the capacity the probes measured"


def test_a_subscriber_held_on_a_low_layer_climbs_back_by_probes_when_the_link_returns() -> None:
    """500 kbps for 6 s, then a clean 5 Mbps: probes while a tile wants more (every 2 s, less
    often after failures) find the returned link within a few seconds; a tile that wants
    nothing more is not probed beyond the start."""
    trace = simulate(
        16, constant(300_000), lambda t: 500 if t < 6 else 5_000,  # type: ignore[arg-type]
        needed_bps=2_500_000,
    )  # fmt: skip
    assert max(trace.between(2, 6)) <= 700_000, trace.estimates
    back = next(time for time, bps in trace.estimates if time > 6 and bps and bps >= 2_500_000)
    assert back - 6 <= 9.0, trace.estimates  # the wait between probes backed off to 8 s
    content = simulate(8, constant(300_000), constant(5_000), needed_bps=300_000)  # type: ignore[arg-type]
    assert content.controller is not None and content.controller.sent == 1, "the start probe only"


def test_no_probe_raises_the_estimate_on_a_link_that_keeps_losing_packets() -> None:
    """5 % random loss on a link barely wider than what arrives: probes there fail or measure
    the link's capacity, so the estimate does not climb far past what the link carries."""
    lossy = simulate(20, constant(600_000), constant(800), loss=0.05, needed_bps=3_000_000)  # type: ignore[arg-type]
    assert max(lossy.between(5, 20)) < 1_000_000, lossy.estimates


def test_a_drop_is_seen_as_fast_with_probing() -> None:
    """The switch aim with probing on: 3 Mbps reached from the start, then 500 kbps."""
    trace = simulate(
        14, constant(1_500_000), lambda t: 3_000 if t < 8 else 500,  # type: ignore[arg-type]
        needed_bps=2_500_000,
    )  # fmt: skip
    below = trace.first_below(500_000, after=8)
    assert below is not None and below - 8 <= 1.5, trace.estimates


def test_the_estimate_does_not_oscillate_on_a_steady_link() -> None:
    trace = simulate(20, constant(1_000_000), constant(None))  # type: ignore[arg-type]
    steady = trace.between(3, 20)
    changes = sum(1 for a, b in itertools.pairwise(steady) if a != b)
    assert changes <= 3, steady


def test_remb_caps_the_estimate() -> None:
    trace = simulate(3, constant(1_500_000), constant(None))  # type: ignore[arg-type]
    estimator = trace.estimator
    assert estimator is not None
    estimator.on_remb(400_000)
    assert estimator.estimate_bps == 400_000
    estimator.on_remb(0)
    assert estimator.estimate_bps is not None and estimator.estimate_bps > 1_000_000


def test_a_growing_queue_is_overuse_and_a_steady_delay_is_not() -> None:
    trendline = Trendline()
    for group in range(40):  # 5 ms apart, each 2 ms later than the one before
        trendline.update(2.0, group * 5_000, 5_000)
    assert trendline.usage == "overusing"
    steady = Trendline()
    for group in range(40):
        steady.update(0.5 if group % 2 else -0.5, group * 5_000, 5_000)
    assert steady.usage == "normal"


def test_sent_packets_number_one_transport_and_wrap() -> None:
    sent = SentPackets(first_sequence=65_535)
    assert [sent.stamp(100, 1_000), sent.stamp(200, 2_000)] == [65_535, 0]
    assert sent.lookup(0) == (2_000, 238)
    assert sent.lookup(1) is None, "never sent"
    for index in range(5000):
        sent.stamp(100, index)
    assert sent.lookup(65_535) is None, "overwritten, not mistaken"


def test_feedback_on_unknown_or_repeated_packets_changes_nothing() -> None:
    trace = simulate(3, constant(1_000_000), constant(None))  # type: ignore[arg-type]
    estimator = trace.estimator
    assert estimator is not None
    before = estimator.estimate_bps
    builder = TransportFeedback()
    for sequence in range(10):
        builder.record((estimator.sent.next_sequence + 3000 + sequence) & 0xFFFF, 9_000_000)
    for packet in builder.build(1, 2, 9_000_000):
        for report in read_transport_feedback(packet):
            estimator.on_feedback(report, 3.5)
    assert estimator.estimate_bps == before


def test_the_metric_counts_subscribers_by_estimate() -> None:
    buckets = estimate_buckets([250_000, 1_500_000, None, 9_000_000])
    assert buckets['downlink_estimate_kbps_bucket{le="300"}'] == 1
    assert buckets['downlink_estimate_kbps_bucket{le="2000"}'] == 2
    assert buckets['downlink_estimate_kbps_bucket{le="4000"}'] == 2
    assert buckets['downlink_estimate_kbps_bucket{le="+Inf"}'] == 3
    assert buckets["downlink_estimate_kbps_sum"] == 10_750
    assert buckets["downlink_estimate_kbps_count"] == 3

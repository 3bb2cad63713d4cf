"""Probing (`sfu.probing`, `sfu.probe_send.padding_packet`): the cluster estimator on synthetic
feedback (read through the real transport-cc builder and parser and the real downlink
estimator), the controller's decisions, and the padding packets themselves. No event loop."""

from __future__ import annotations

import pytest

from core.media.rtp import TRANSPORT_CC_OFFSET, ExtensionIds, extension_block, parse_header
from sfu.downlink import DownlinkEstimator, SentPackets
from sfu.forwarder import OutboundSlot
from sfu.layer_choice import LayerState, choose_layer
from sfu.probe_send import padding_packet, probe_slot
from sfu.probing import (
    START_BPS,
    WANT_EVERY_MAX_S,
    WANT_EVERY_S,
    ProbeBitrateEstimator,
    ProbeCluster,
    ProbeController,
    ProbeResult,
    RembClimb,
)
from sfu.twcc import TransportFeedback, read_transport_feedback

WIRE_BYTES = 313
"""A padding packet on the wire: 275 RTP bytes and the 38 of SRTP, UDP and IP."""


def run_cluster(
    send_bps: int, link_bps: int | None, *, packets: int = 20, lost: set[int] | None = None
) -> ProbeResult:
    """Send one cluster of `packets` padding packets paced at `send_bps` through a link of
    `link_bps` (None: unlimited), report the arrivals back as a browser does, and return what
    the estimator judged."""
    sent = SentPackets(first_sequence=65_530)  # across the wrap
    estimator = DownlinkEstimator(sent, start_bps=START_BPS)
    cluster = ProbeCluster(1, send_bps)
    builder = TransportFeedback()
    link_free_us = 0
    first = last = 0
    for index in range(packets):
        sent_us = 1_000_000 + index * WIRE_BYTES * 8 * 1_000_000 // send_bps
        sequence = sent.stamp(WIRE_BYTES - 38, sent_us)
        if index == 0:
            estimator.probes.begin(cluster, sequence, sent_us / 1e6)
            first = sequence
        last = sequence
        if lost is not None and index in lost:
            continue
        leaves = sent_us
        if link_bps is not None:
            leaves = max(sent_us, link_free_us) + WIRE_BYTES * 8 * 1_000_000 // link_bps
            link_free_us = leaves
        builder.record(sequence, (leaves + 20_000) // 1000)  # one way: 20 ms, in ms
    estimator.probes.end(cluster, last)
    assert (last - first) & 0xFFFF == packets - 1
    for packet in builder.build(1, 2, 2_000):
        for report in read_transport_feedback(packet):
            estimator.on_feedback(report, 2.0)
    results = estimator.probes.take_results()
    assert len(results) == 1 and results[0].cluster is cluster
    return results[0]


def test_a_clean_link_carries_the_cluster_rate() -> None:
    result = run_cluster(2_000_000, None)
    assert result.bps is not None and 1_700_000 <= result.bps <= 2_300_000, result
    assert not result.saturated


def test_a_capped_link_is_measured_near_its_cap() -> None:
    """Sent at 3 Mbps through a 1 Mbps bottleneck: the arrivals spread at 1 Mbps, and the
    result is 0.95x that (the link was saturated)."""
    result = run_cluster(3_000_000, 1_000_000)
    assert result.saturated
    assert result.bps is not None and 850_000 <= result.bps <= 1_050_000, result


def test_loss_in_the_cluster_fails_it() -> None:
    assert run_cluster(2_000_000, None, lost={2, 5, 8, 11, 14}).bps is None
    assert run_cluster(2_000_000, None, lost={7}).bps is not None, "one loss in 20 is fine"


def test_a_cluster_whose_feedback_never_comes_is_judged_failed_when_overdue() -> None:
    probes = ProbeBitrateEstimator()
    cluster = ProbeCluster(1, 1_000_000)
    probes.begin(cluster, 10, 5.0)
    probes.end(cluster, 19)
    probes.judge(5.5)
    assert probes.take_results() == []
    probes.judge(7.0)
    assert probes.take_results() == [ProbeResult(cluster, None, packets=10, received=0)]


def test_a_result_above_the_estimate_raises_it_and_one_below_does_not() -> None:
    estimator = DownlinkEstimator(SentPackets(), start_bps=START_BPS)
    cluster = ProbeCluster(1, 900_000)
    assert estimator.on_probe(ProbeResult(cluster, 850_000))
    assert estimator.estimate_bps == 850_000
    assert not estimator.on_probe(ProbeResult(cluster, 400_000))
    assert not estimator.on_probe(ProbeResult(cluster, None))
    assert estimator.estimate_bps == 850_000


def test_the_start_sequence_climbs_exponentially_while_the_tiles_need_more() -> None:
    control = ProbeController()
    first = control.process(0.0, START_BPS, 5_000_000, wanting=True)
    assert [c.target_bps for c in first] == [3 * START_BPS]
    assert control.process(0.1, START_BPS, 5_000_000, wanting=True) == [], "one at a time"
    control.on_result(ProbeResult(first[0], 880_000), 0.2)
    second = control.process(0.2, 880_000, 5_000_000, wanting=True)
    assert [c.target_bps for c in second] == [1_760_000]
    control.on_result(ProbeResult(second[0], 1_700_000), 0.4)
    third = control.process(0.4, 1_700_000, 2_000_000, wanting=True)
    assert [c.target_bps for c in third] == [2_200_000], "capped at what the tiles need"
    control.on_result(ProbeResult(third[0], 2_150_000), 0.6)
    assert control.process(0.6, 2_150_000, 2_000_000, wanting=False) == []
    assert control.process(30.0, 2_150_000, 2_000_000, wanting=False) == [], "nothing wanted"


def test_a_saturated_start_stops_the_climb_and_failures_back_off() -> None:
    control = ProbeController()
    (start,) = control.process(0.0, START_BPS, 3_000_000, wanting=True)
    control.on_result(ProbeResult(start, 475_000, saturated=True), 0.3)
    assert control.failed == 1
    assert control.process(0.4, 475_000, 3_000_000, wanting=True) == [], "no further probe"
    waits = []
    now = 0.3
    for _ in range(5):
        later = now + 0.1
        while not (clusters := control.process(later, 475_000, 3_000_000, wanting=True)):
            later += 0.1
        waits.append(round(later - now, 1))
        (cluster,) = clusters
        assert cluster.target_bps == 950_000, "twice the estimate, under what is needed"
        control.on_result(ProbeResult(cluster, None), later)
        now = later
    assert waits[0] == pytest.approx(2 * WANT_EVERY_S, abs=0.11)
    assert waits[-1] == pytest.approx(WANT_EVERY_MAX_S, abs=0.11)


def test_a_probe_whose_result_never_comes_counts_as_failed() -> None:
    control = ProbeController()
    control.process(0.0, START_BPS, 3_000_000, wanting=True)
    assert control.process(1.0, START_BPS, 3_000_000, wanting=True) == []
    control.process(2.5, START_BPS, 3_000_000, wanting=True)
    assert control.failed == 1


def test_a_padding_packet_is_padding_only_and_numbered_by_the_transport() -> None:
    ids = ExtensionIds(mid=1, transport_cc=5)
    block = extension_block(ids, b"0", None, None)
    packet = padding_packet(
        ssrc=0x1234, payload_type=97, sequence=65_535, timestamp=90_000, extensions=block,
        padding=255,
    )  # fmt: skip
    header = parse_header(packet)
    assert packet[0] == 0xB0, "version 2, padding and extension bits, no CSRC"
    assert (header.payload_type, header.sequence, header.ssrc) == (97, 65_535, 0x1234)
    assert header.payload_start == header.payload_end, "no payload, no original sequence"
    assert len(packet) - header.payload_end == 255 and packet[-1] == 255
    # Where the transport writes the transport-wide number (`srtp_send.rtp_sender`'s check).
    assert packet[TRANSPORT_CC_OFFSET - 1] == 5 << 4 | 1 and packet[0] & 0x1F == 0x10
    with pytest.raises(ValueError):
        padding_packet(ssrc=1, payload_type=97, sequence=1, timestamp=1, extensions=b"",
                       padding=256)  # fmt: skip


def test_a_large_drop_while_tracks_are_held_down_is_probed_once_at_once() -> None:
    """The estimate falls from 3 Mbps to 1 Mbps (a delay spike cut it to what the media used):
    one probe at 0.85x the highest of the last 5 s, without waiting for the usual interval;
    not again for the same drop; none when no track is held down."""
    control = ProbeController()
    (start,) = control.process(0.0, START_BPS, 4_000_000, wanting=True)
    control.on_result(ProbeResult(start, 3_000_000, saturated=True), 0.2)  # no further probe
    assert control.process(0.4, 3_000_000, 4_000_000, wanting=False) == []
    assert control.process(1.0, 1_000_000, 4_000_000, wanting=False) == [], "nothing held down"
    (after_drop,) = control.process(1.2, 1_000_000, 4_000_000, wanting=True)
    assert after_drop.target_bps == 2_550_000
    control.on_result(ProbeResult(after_drop, 900_000, saturated=True), 1.4)
    assert control.process(1.6, 1_000_000, 4_000_000, wanting=True) == [], "once per drop"


def test_a_small_cut_that_would_cost_a_layer_is_probed_at_once_when_confirming() -> None:
    """The delay detector cut 1.4 Mbps to 1.2 Mbps, under the top layer's budget: not a
    large drop, but layer choice holds the step down (`confirm_down`) and asks whether the
    link still carries it: one probe at once, at 0.85x the highest; not for a lossy link."""
    control = ProbeController()
    (start,) = control.process(0.0, START_BPS, 1_300_000, wanting=True)
    control.on_result(ProbeResult(start, 1_400_000, saturated=True), 0.2)
    assert control.process(0.4, 1_400_000, 1_300_000, wanting=False) == []
    assert control.process(1.0, 1_200_000, 1_300_000, wanting=True) == [], "not a large drop"
    lossy = control.process(1.1, 1_200_000, 1_300_000, True, 0.05, confirming=True)
    assert lossy == [], "a cut that came with loss was the link"
    (confirm,) = control.process(1.2, 1_200_000, 1_300_000, wanting=True, confirming=True)
    assert confirm.target_bps == 1_190_000
    control.on_result(ProbeResult(confirm, 1_350_000), 1.5)


def test_a_link_losing_what_it_gets_is_not_probed() -> None:
    """Over 10 % lost: the link is over capacity now, a cluster would only add to the loss
    (a 500 kbps link with the lowest layers of four cameras); a drop that came with loss was the
    link, not a delay spike: not probed either. The link clearing lets the probes go again."""
    control = ProbeController()
    (start,) = control.process(0.0, START_BPS, 4_000_000, wanting=True)
    control.on_result(ProbeResult(start, 3_000_000, saturated=True), 0.2)
    assert control.process(0.4, 3_000_000, 4_000_000, wanting=False) == []
    assert control.process(1.0, 500_000, 4_000_000, wanting=True, loss_fraction=0.3) == []
    assert control.process(1.2, 500_000, 4_000_000, wanting=True, loss_fraction=0.05) == [], (
        "a drop with loss is not probed"
    )
    for now in (3.0, 6.0, 10.0):
        assert control.process(now, 500_000, 4_000_000, wanting=True, loss_fraction=0.2) == []
    (cluster,) = control.process(10.2, 500_000, 4_000_000, wanting=True, loss_fraction=0.0)
    assert cluster.target_bps == 1_000_000, "the usual probe for what the tiles need"


def test_the_start_value_yields_to_a_remb_when_no_transport_feedback_comes() -> None:
    """A receiver that sends REMB and no transport feedback (aiortc) is not held at 300 kbps;
    until either comes, the estimate is the start value, and not counted as measured."""
    estimator = DownlinkEstimator(SentPackets(), start_bps=START_BPS)
    assert estimator.estimate_bps == START_BPS and not estimator.measured
    estimator.on_remb(2_500_000)
    assert estimator.estimate_bps == 2_500_000 and estimator.measured


def test_probes_go_only_on_a_slot_that_carries_video() -> None:
    """Padding on an idle or hidden slot's RTX stream would make the browser report an inbound
    stream for it (a tile with no frames): probes take a slot that is sending."""

    def slot(**fields: object) -> OutboundSlot:
        made = OutboundSlot(subscriber_id="s", kind="video", send_rtp=lambda _d: True,
                            send_rtcp=lambda _d: True, ready=True, rtx_ssrc=7,
                            rtx_payload_type=97, ext_ids=ExtensionIds(transport_cc=5))  # fmt: skip
        for name, value in fields.items():
            setattr(made, name, value)
        return made

    idle = slot()
    track = object()
    hidden = slot(source=track, started=True, hidden=True)
    waiting = slot(source=track, started=False)
    sending = slot(source=track, started=True)
    assert probe_slot([idle, hidden, waiting]) is None
    assert probe_slot([idle, hidden, waiting, sending]) is sending


def test_a_layer_not_yet_measured_is_not_climbed_to_on_a_budget() -> None:
    """A publisher that just started: its layers are sent but their bitrates not measured yet.
    A subscriber with a budget (the start estimate) gets the lowest, not the top layer's
    keyframe; with no estimate at all, the tile's layer as before."""
    layers = [LayerState(width=w, height=w * 9 // 16, last_packet_at=9.9) for w in (160, 320, 640)]
    assert choose_layer(layers, tile=(640, 360), budget_bps=260_000, current=None, now=10.0) == 0
    assert choose_layer(layers, tile=(640, 360), budget_bps=None, current=None, now=10.0) == 2
    assert choose_layer(layers, tile=(640, 360), budget_bps=260_000, current=1, now=10.0) == 1


def test_a_remb_only_subscriber_held_by_what_it_gets_climbs_to_what_its_tiles_need() -> None:
    """aiortc's REMB is at most 1.5x what arrives: on a thumbnail's 90 kbps it says ~137 kbps.
    Held below a tile's layer with a REMB well above what it is sent, the SFU grants what the
    tiles need; the climb ends when the REMB gets there, and a REMB that falls (the receiver saw
    overuse) ends it at once, the next one waiting twice as long."""
    climb = RembClimb()
    assert climb.process(0.0, 90_000, 900_000, wanting=True) is None, "its first REMBs first"
    climb.on_remb(137_000, 1.0)
    assert climb.process(2.0, 90_000, 900_000, wanting=True) is None, "not before 4 s"
    assert climb.process(4.5, 90_000, 900_000, wanting=False) is None, "nothing wanted"
    assert climb.process(4.5, 120_000, 900_000, wanting=True) is None, "held by its link"
    assert climb.process(4.5, 90_000, 900_000, wanting=True) == 900_000
    climb.on_remb(148_000, 5.5)  # growing: the receiver gets more and says so
    assert climb.process(6.0, 600_000, 900_000, wanting=True) == 900_000
    climb.on_remb(950_000, 20.0)
    assert climb.granted_bps is None and climb.failed == 0, "it reached the grant"
    assert climb.process(20.5, 600_000, 2_000_000, wanting=True) is None, "waits 4 s again"
    assert climb.process(24.5, 600_000, 2_000_000, wanting=True) == 2_000_000
    climb.on_remb(800_000, 25.0)  # fell: overuse at the receiver
    assert climb.granted_bps is None and climb.failed == 1
    assert climb.process(32.5, 600_000, 2_000_000, wanting=True) is None, "8 s after a failure"
    assert climb.process(33.5, 600_000, 2_000_000, wanting=True) == 2_000_000
    assert climb.process(64.0, 600_000, 2_000_000, wanting=True) is None, "ends after 30 s"


def test_a_climb_grant_lifts_a_remb_only_estimate_and_yields_when_it_ends() -> None:
    estimator = DownlinkEstimator(SentPackets(), start_bps=START_BPS)
    estimator.forget_start()
    estimator.on_remb(137_000)
    assert estimator.remb_only and estimator.estimate_bps == 137_000
    estimator.grant(900_000)
    assert estimator.estimate_bps == 900_000
    estimator.on_remb(300_000)
    assert estimator.estimate_bps == 900_000, "the receiver's estimate grows towards it"
    estimator.grant(None)
    assert estimator.estimate_bps == 300_000

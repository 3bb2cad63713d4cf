"""A subscriber's round trip from the echo of our sender reports (sfu/round_trip.py, RFC 3550
6.4.1), and what reads it: the retransmission budget. Pure: `now` handed in, no event loop."""

from __future__ import annotations

from random import Random

from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

from sfu.feedback import Loss, read_feedback
from sfu.forwarder import OutboundSlot
from sfu.retransmit import Refusal, RetransmitBudget
from sfu.round_trip import MAX_RTT_S, SENT_MEMORY, RoundTrip, round_trip_buckets

NTP = 0x1122_3344_5566_7788
LSR = 0x3344_5566


def test_the_round_trip_is_the_echo_less_the_time_the_receiver_held_the_report() -> None:
    rtt = RoundTrip()
    rtt.sender_report_sent(ssrc=7, ntp=NTP, now=100.0)
    # Held 0.25 s by the receiver, back 0.35 s after it was sent: 0.1 s on the wire both ways.
    assert rtt.on_report(7, LSR, dlsr=65536 // 4, now=100.35) == 100.35 - 100.0 - 0.25
    assert rtt.samples == 1


def test_the_round_trip_is_smoothed_over_samples() -> None:
    rtt = RoundTrip()
    rtt.sender_report_sent(7, NTP, now=10.0)
    first = rtt.on_report(7, LSR, 0, now=10.1)
    assert first is not None and abs(first - 0.1) < 1e-9
    rtt.sender_report_sent(7, NTP + (1 << 32), now=11.0)
    second = rtt.on_report(7, LSR + (1 << 16), 0, now=11.9)  # one slow sample: 0.9 s
    assert second is not None and abs(second - (0.1 + (0.9 - 0.1) / 8)) < 1e-9


def test_a_block_without_a_sender_report_or_with_an_unknown_one_measures_nothing() -> None:
    rtt = RoundTrip()
    assert rtt.on_report(7, 0, 0, now=5.0) is None, "LSR 0: no sender report received yet"
    rtt.sender_report_sent(7, NTP, now=4.0)
    assert rtt.on_report(8, LSR, 0, now=5.0) is None, "another stream's echo"
    assert rtt.on_report(7, LSR + 1, 0, now=5.0) is None, "a report we never sent"
    assert rtt.on_report(7, LSR, 0, now=4.0 + MAX_RTT_S + 1) is None, "far too late: discarded"
    assert rtt.samples == 0


def test_dlsr_rounding_never_makes_the_round_trip_negative() -> None:
    rtt = RoundTrip()
    rtt.sender_report_sent(7, NTP, now=1.0)
    assert rtt.on_report(7, LSR, dlsr=65536, now=1.99999) == 0.0


def test_only_the_latest_sender_reports_are_remembered() -> None:
    rtt = RoundTrip()
    for n in range(SENT_MEMORY + 1):
        rtt.sender_report_sent(7, NTP + (n << 16), now=float(n))
    assert rtt.on_report(7, LSR, 0, now=100.0) is None, "the oldest was forgotten"
    assert rtt.on_report(7, LSR + SENT_MEMORY, 0, now=SENT_MEMORY + 0.05) is not None


def test_receiver_report_blocks_carry_their_echo() -> None:
    block = RtcpReceiverInfo(ssrc=7, fraction_lost=3, packets_lost=1, highest_sequence=9,
                             jitter=0, lsr=LSR, dlsr=1234)  # fmt: skip
    packet = bytes(RtcpRrPacket(ssrc=1, reports=[block]))
    assert read_feedback(packet) == [Loss(7, 3, LSR, 1234)]


def test_a_slot_tells_its_subscribers_round_trip_of_each_sender_report_it_sends() -> None:
    sent: list[bytes] = []
    rtt = RoundTrip()
    slot = OutboundSlot("sub", "audio", send_rtp=lambda b: True,
                        send_rtcp=lambda b: sent.append(b) or True, ssrc=42, ready=True,
                        started=True, rng=Random(1), round_trip=rtt)  # fmt: skip
    slot.sender_report(NTP, 48000, now=3.0)
    assert sent, "the SR is forwarded"
    assert rtt.on_report(42, LSR, 0, now=3.08) is not None and rtt.rtt_s is not None
    assert abs(rtt.rtt_s - 0.08) < 1e-9


def test_a_measured_round_trip_refuses_a_resend_that_would_arrive_too_late() -> None:
    budget = RetransmitBudget(max_age_s=0.4)
    # 0.3 s old: in time on an unmeasured (or short) link ...
    assert budget.allow(1, arrived_at=9.7, size=1000, forwarded_bytes=100_000, now=10.0) is None
    # ... but not with 0.3 s round trip: the resend needs another 0.15 s to get there.
    budget.rtt_s = 0.3
    refused = budget.allow(2, arrived_at=9.7, size=1000, forwarded_bytes=100_000, now=10.0)
    assert refused is Refusal.TOO_LATE


def test_the_node_metric_counts_subscribers_by_round_trip() -> None:
    buckets = round_trip_buckets([0.02, 0.09, None, 0.5])
    assert buckets['round_trip_ms_bucket{le="25"}'] == 1
    assert buckets['round_trip_ms_bucket{le="100"}'] == 2
    assert buckets['round_trip_ms_bucket{le="800"}'] == 3
    assert buckets['round_trip_ms_bucket{le="+Inf"}'] == 3
    assert (buckets["round_trip_ms_sum"], buckets["round_trip_ms_count"]) == (610, 3)

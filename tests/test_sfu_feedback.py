"""RTCP feedback as decisions, from compound packets as bytes (built with aiortc's RTCP classes,
as a browser would send them): keyframe requests, retransmissions, REMB, loss, sender reports.
No event loop."""

from __future__ import annotations

import pytest
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    pack_remb_fci,
)

from sfu.feedback import (
    BitrateEstimate,
    KeyframeRequest,
    Loss,
    Retransmit,
    SenderReport,
    read_feedback,
)

SUBSCRIBER = 1  # browsers send feedback from SSRC 1 when they send no media


def _report(ssrc: int, fraction_lost: int) -> RtcpReceiverInfo:
    return RtcpReceiverInfo(ssrc=ssrc, fraction_lost=fraction_lost, packets_lost=3,
                            highest_sequence=1000, jitter=0, lsr=0, dlsr=0)  # fmt: skip


def test_a_pli_asks_for_a_keyframe_on_the_ssrc_it_names() -> None:
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=SUBSCRIBER, media_ssrc=777)
    assert read_feedback(bytes(pli)) == [KeyframeRequest(777)]


def test_each_fir_entry_asks_for_a_keyframe() -> None:
    fci = (777).to_bytes(4, "big") + bytes([5, 0, 0, 0]) + (888).to_bytes(4, "big") + bytes(4)
    fir = RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=SUBSCRIBER, media_ssrc=0, fci=fci)
    assert read_feedback(bytes(fir)) == [KeyframeRequest(777), KeyframeRequest(888)]


def test_a_nack_asks_to_retransmit_the_lost_sequences() -> None:
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=SUBSCRIBER, media_ssrc=777)
    nack.lost = [100, 101, 103, 117, 200]  # the bitmask form and a second entry
    assert read_feedback(bytes(nack)) == [Retransmit(777, (100, 101, 103, 117, 200))]


def test_a_remb_gives_the_estimate_for_each_ssrc_it_covers() -> None:
    remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=SUBSCRIBER, media_ssrc=0,
                          fci=pack_remb_fci(1_250_000, [777, 779]))  # fmt: skip
    [estimate] = read_feedback(bytes(remb))
    assert isinstance(estimate, BitrateEstimate) and estimate.ssrcs == (777, 779)
    assert abs(estimate.bitrate - 1_250_000) / 1_250_000 < 0.001  # mantissa and exponent


def test_a_receiver_report_gives_the_loss_of_each_stream() -> None:
    rr = RtcpRrPacket(ssrc=SUBSCRIBER, reports=[_report(777, 64), _report(779, 0)])
    assert read_feedback(bytes(rr)) == [Loss(777, 64), Loss(779, 0)]


def test_a_sender_report_gives_the_clock_mapping() -> None:
    sr = RtcpSrPacket(ssrc=1234, sender_info=RtcpSenderInfo(
        ntp_timestamp=0xE000_0000_8000_0000, rtp_timestamp=90_000, packet_count=10,
        octet_count=1000))  # fmt: skip
    assert read_feedback(bytes(sr)) == [SenderReport(1234, 0xE000_0000_8000_0000, 90_000)]


def test_a_compound_packet_gives_its_requests_in_order_and_skips_the_rest() -> None:
    compound = (
        bytes(RtcpRrPacket(ssrc=SUBSCRIBER, reports=[_report(777, 12)]))
        + bytes(RtcpByePacket(sources=[SUBSCRIBER]))
        + bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=SUBSCRIBER, media_ssrc=0, fci=b"JUNKJUNK"))
        + bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=SUBSCRIBER, media_ssrc=777))
    )
    # The BYE is not acted on; a REMB whose FCI does not parse is skipped, not fatal.
    assert read_feedback(compound) == [Loss(777, 12), KeyframeRequest(777)]


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\xce\x00",  # shorter than an RTCP header
        b"\x81\xce\x00\x09" + bytes(8),  # length beyond the data
        b"\x41\xc9\x00\x01" + bytes(4),  # RTCP version 1
    ],
)
def test_malformed_rtcp_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        read_feedback(data)

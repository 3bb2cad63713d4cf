"""The transport feedback parser (`sfu.twcc.read_transport_feedback`): what a subscriber's browser
reports back, read against the builder's output, the draft's chunk examples, packets written by
hand, and malformed input; and the subscribe offer's transport-cc lines."""

from __future__ import annotations

import random
import struct

import pytest

from core.media.rtp import TRANSPORT_CC_URI
from sfu.twcc import (
    FeedbackReport,
    TransportFeedback,
    accepted_transport_cc,
    offer_transport_cc,
    parse_transport_feedback,
    read_transport_cc_offers,
    read_transport_feedback,
    split_transport_feedback,
)


def feedback_packet(base: int, count: int, reference: int, chunks: bytes, deltas: bytes) -> bytes:
    """A transport feedback packet written by hand (padded to 32 bits with RTCP padding)."""
    body = chunks + deltas
    padding = -len(body) % 4
    tail = bytes(padding - 1) + bytes([padding]) if padding else b""
    words = (20 + len(body) + padding) // 4 - 1
    first = 0x80 | (0x20 if padding else 0) | 15
    return (
        struct.pack("!BBHIIHHI", first, 205, words, 1, 2, base, count, reference << 8 | 7)
        + body
        + tail
    )


def received(report: FeedbackReport) -> dict[int, int]:
    return {
        sequence: arrival
        for sequence, arrival in zip(report.sequences, report.arrivals_us, strict=True)
        if arrival is not None
    }


def test_the_drafts_run_length_example_reads_as_221_losses() -> None:
    packet = feedback_packet(100, 221, 0, bytes([0x00, 0xDD]), b"")
    (report,) = read_transport_feedback(packet)
    assert report.sequences == [(100 + n) & 0xFFFF for n in range(221)]
    assert report.arrivals_us == [None] * 221
    assert report.feedback_count == 7


def test_the_drafts_one_bit_vector_example_reads_symbol_by_symbol() -> None:
    # 0x9F1C: lost, received x5, lost x3, received x3, lost x2 (draft 3.1.4, example 1)
    packet = feedback_packet(0, 14, 1, bytes([0x9F, 0x1C]), bytes(range(1, 9)))
    (report,) = read_transport_feedback(packet)
    got = received(report)
    assert sorted(got) == [1, 2, 3, 4, 5, 9, 10, 11]
    # 64 ms reference, then each small delta in 250 us steps, accumulated
    assert got[1] == 64_000 + 250 and got[2] == 64_000 + 750 and got[11] == 64_000 + 36 * 250


def test_a_two_bit_vector_carries_a_negative_large_delta() -> None:
    # 0xD480: small, small, lost, large
    deltas = bytes([160, 4]) + struct.pack("!h", -4)
    packet = feedback_packet(10, 4, 15, struct.pack("!H", 0xD480), deltas)
    (report,) = read_transport_feedback(packet)
    assert report.arrivals_us == [1_000_000, 1_001_000, None, 1_000_000]


def test_the_builders_packets_read_back_exactly() -> None:
    rng = random.Random(15)
    builder = TransportFeedback()
    arrivals: dict[int, int] = {}
    now = 10_000
    for sequence in range(65_000, 65_000 + 1500):  # wraps at 65,536
        if rng.random() < 0.08:
            continue
        now += rng.choice((0, 1, 2, 30, 70))
        arrival = now - rng.choice((0, 0, 0, 5))  # some reordered in time
        arrivals[sequence & 0xFFFF] = arrival * 1000
        builder.record(sequence & 0xFFFF, arrival)
    packets = builder.build(1, 2, now)
    assert len(packets) > 1
    compound = b"".join(packets)
    reports = read_transport_feedback(compound)
    assert len(reports) == len(packets)
    got: dict[int, int] = {}
    lost = set()
    for report in reports:
        got.update(received(report))
        lost |= {s for s, a in zip(report.sequences, report.arrivals_us, strict=True) if a is None}
    assert got == arrivals
    assert not lost & set(arrivals)
    assert lost == {s & 0xFFFF for s in range(65_000, 66_500)} - set(arrivals)


def test_other_rtcp_in_the_compound_is_skipped() -> None:
    receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 9)
    nack = struct.pack("!BBHIIHH", 0x81, 205, 3, 1, 2, 5, 0)
    feedback = feedback_packet(3, 1, 0, struct.pack("!H", 0x2001), bytes([4]))
    reports = read_transport_feedback(receiver_report + nack + feedback)
    assert [report.sequences for report in reports] == [[3]]
    assert reports[0].arrivals_us == [1000]


@pytest.mark.parametrize(
    "packet",
    [
        # statuses say 20 packets received, one delta byte present
        feedback_packet(0, 20, 0, struct.pack("!H", 0x2014), bytes([1])),
        # a second status chunk promised, absent
        feedback_packet(0, 30, 0, struct.pack("!H", 0x2014), bytes(20)),
        # a length longer than the packet
        feedback_packet(0, 1, 0, struct.pack("!H", 0x2001), bytes([1]))[:-4],
        # the reserved symbol (3)
        feedback_packet(0, 1, 0, struct.pack("!H", 0x6001), bytes(4)),
        # shorter than its header
        struct.pack("!BBH", 0x8F, 205, 1) + bytes(4),
    ],
)
def test_malformed_feedback_is_refused(packet: bytes) -> None:
    with pytest.raises(ValueError):
        read_transport_feedback(packet)


def test_bad_padding_is_refused() -> None:
    packet = bytearray(feedback_packet(0, 1, 0, struct.pack("!H", 0x2001), bytes([1])))
    packet[-1] = 200
    with pytest.raises(ValueError):
        parse_transport_feedback(bytes(packet))


AIORTC_OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96", "a=mid:0", "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=rtpmap:96 opus/48000/2",
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98", "a=mid:1",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=rtpmap:97 VP8/90000", "a=rtcp-fb:97 nack", "a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=97",
    "",
])  # fmt: skip


def test_the_subscribe_offer_proposes_transport_cc_in_every_media_section() -> None:
    offer = offer_transport_cc(AIORTC_OFFER)
    proposed = read_transport_cc_offers(offer)
    assert proposed["0"].extension_id == proposed["1"].extension_id == 5
    assert proposed["0"].payload_types == {96}
    assert proposed["1"].payload_types == {97}, "RTX carries no feedback"
    assert offer.endswith("\r\n") and offer.count(f"a=extmap:5 {TRANSPORT_CC_URI}") == 2
    assert offer_transport_cc(offer) == offer, "a taken id is left alone"


def test_an_answer_accepts_transport_cc_by_echoing_the_extension() -> None:
    answer = offer_transport_cc(AIORTC_OFFER).replace(f"a=extmap:5 {TRANSPORT_CC_URI}\r\n", "", 1)
    assert accepted_transport_cc(answer) == {"1": 5}
    assert accepted_transport_cc(AIORTC_OFFER) == {}


# Transport feedback a real Chromium (156, subscribing through coturn on a 500 kbps link) sent
# the SFU, captured from tests/test_sfu_downlink_browser.py. Chromium pads with the P bit set
# (aiortc's RTCP parser refuses those: `split_transport_feedback` takes them out first).
CHROMIUM_FEEDBACK = [
    # P bit, 3 bytes of padding: three received, a run-length chunk, three small deltas
    "afcd0006fa17fa175a471a4e000100030759d20020037e6527000003",
    "afcd0005fa17fa177082b57a08ba0001075a6c962001aa01",
    "afcd0006fa17fa177082b57a07bd0016075a5c8684108040d3556c01",
    "afcd0007fa17fa175a471a4e04d8000f075a2e56a1c1200129101a5c2e000002",
    "afcd000cfa17fa175a471a4e017300630759fb22a0008820800c861e0019b018c140b5000000000000010000000016"
    "184f130c01",
    # no P bit: Chromium's zero padding inside the length
    "8fcd0007fa17fa175a471a4e02490016075a042ba300b8c0d401040100010100",
    "8fcd0007fa17fa175a471a4e03bc0021075a1d4580308003d0104e551115500d",
]


def test_chromiums_padded_feedback_is_read_by_hand() -> None:
    (report,) = read_transport_feedback(bytes.fromhex(CHROMIUM_FEEDBACK[0]))
    reference_us = 0x0759D2 * 64_000
    assert report.sequences == [1, 2, 3]
    assert report.arrivals_us == [reference_us + 126 * 250, reference_us + 227 * 250,
                                  reference_us + 266 * 250]  # fmt: skip
    assert report.feedback_count == 0


@pytest.mark.parametrize("hex_packet", CHROMIUM_FEEDBACK)
def test_chromiums_feedback_parses_and_rebuilds_the_same(hex_packet: str) -> None:
    """Each captured packet, fed back through our builder (same arrivals, in ms where Chromium
    used 250 us steps), reports the same packets received and lost."""
    (report,) = read_transport_feedback(bytes.fromhex(hex_packet))
    assert len(report.sequences) == len(report.arrivals_us) > 0
    received_by_chromium = [s for s, a in zip(report.sequences, report.arrivals_us, strict=True)
                            if a is not None]  # fmt: skip
    assert received_by_chromium, "every feedback reports at least one arrival"
    builder = TransportFeedback()
    builder.record(report.sequences[0] - 1 & 0xFFFF, 0)  # the window starts before this one
    builder.build(1, 2, 0)
    for sequence, arrival in zip(report.sequences, report.arrivals_us, strict=True):
        if arrival is not None:
            builder.record(sequence, arrival // 1000)
    (rebuilt,) = read_transport_feedback(b"".join(builder.build(1, 2, 0)))
    assert rebuilt.sequences == report.sequences
    assert [a is None for a in rebuilt.arrivals_us] == [a is None for a in report.arrivals_us]


def test_feedback_is_taken_out_of_a_compound_and_the_rest_kept() -> None:
    receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 9)
    nack = struct.pack("!BBHIIHH", 0x81, 205, 3, 1, 2, 5, 0)
    padded = bytes.fromhex(CHROMIUM_FEEDBACK[0])
    reports, rest = split_transport_feedback(receiver_report + padded + nack)
    assert len(reports) == 1 and rest == receiver_report + nack
    assert split_transport_feedback(receiver_report) == ([], receiver_report)

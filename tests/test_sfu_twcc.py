"""sfu.twcc: transport-cc feedback built from recorded arrivals, checked byte for byte against
the draft's examples (draft-holmer-rmcat-transport-wide-cc-extensions-01 section 3.1) and hand
computed packets, and round-tripped through an independent parser written here from the draft."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from sfu.twcc import (
    FEEDBACK_INTERVAL_MS,
    LARGE_DELTA,
    MAX_STATUSES,
    NOT_RECEIVED,
    PACKETS_PER_FEEDBACK,
    SMALL_DELTA,
    TransportFeedback,
    encode_chunks,
    read_transport_cc_offers,
)

TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


@dataclass
class Parsed:
    sender_ssrc: int
    media_ssrc: int
    base: int
    count: int
    reference: int
    feedback_count: int
    statuses: list[int]
    arrivals_us: dict[int, int]
    """Extended-from-base sequence number (base + i, not wrapped) -> arrival in microseconds."""


def parse_feedback(data: bytes) -> Parsed:
    """A transport feedback parser written from the draft, independent of sfu.twcc."""
    first, packet_type, words = struct.unpack_from("!BBH", data)
    assert first >> 6 == 2 and first & 0x1F == 15 and packet_type == 205
    assert (words + 1) * 4 == len(data)
    end = len(data) - (data[-1] if first & 0x20 else 0)
    sender, media, base, count, reference_and_count = struct.unpack_from("!IIHHI", data, 4)
    reference = reference_and_count >> 8
    if reference & 0x800000:
        reference -= 1 << 24
    position = 20
    statuses: list[int] = []
    while len(statuses) < count:
        (chunk,) = struct.unpack_from("!H", data, position)
        position += 2
        if chunk >> 15 == 0:
            statuses += [(chunk >> 13) & 0x3] * (chunk & 0x1FFF)
        elif (chunk >> 14) & 1 == 0:
            statuses += [(chunk >> (13 - i)) & 1 for i in range(14)]
        else:
            statuses += [(chunk >> (12 - 2 * i)) & 3 for i in range(7)]
    statuses = statuses[:count]
    time_us = reference * 64_000
    arrivals: dict[int, int] = {}
    for offset, status in enumerate(statuses):
        if status == 1:
            time_us += data[position] * 250
            position += 1
        elif status == 2:
            (delta,) = struct.unpack_from("!h", data, position)
            time_us += delta * 250
            position += 2
        else:
            continue
        arrivals[base + offset] = time_us
    assert position <= end, "deltas run into the padding"
    return Parsed(sender, media, base, count, reference, reference_and_count & 0xFF, statuses,
                  arrivals)  # fmt: skip


# The draft's chunk examples (3.1.3 example 1, 3.1.4 example 1) and the two-bit form.


def test_a_long_run_of_losses_is_the_drafts_run_length_example() -> None:
    assert encode_chunks([NOT_RECEIVED] * 221) == bytes([0x00, 0xDD])


def test_a_mixed_run_is_the_drafts_one_bit_vector_example() -> None:
    symbols = [0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    assert encode_chunks(symbols) == bytes([0x9F, 0x1C])


def test_a_large_delta_needs_the_two_bit_vector() -> None:
    # 1 1 | 00 10 01 01 01 00 00: lost, large, small x3, lost x2
    assert encode_chunks([0, 2, 1, 1, 1, 0, 0]) == struct.pack("!H", 0xC950)


def test_received_runs_are_run_length_chunks() -> None:
    assert encode_chunks([SMALL_DELTA] * 24) == struct.pack("!H", 0x2018)
    assert encode_chunks([LARGE_DELTA] * 14) == struct.pack("!H", 0x400E)


def test_a_run_longer_than_13_bits_is_split() -> None:
    chunks = encode_chunks([NOT_RECEIVED] * 9000)
    assert chunks == struct.pack("!HH", 0x1FFF, 9000 - 0x1FFF)


def test_a_full_packet_is_built_as_computed_by_hand() -> None:
    feedback = TransportFeedback()
    feedback.record(10, 1000)
    feedback.record(11, 1001)
    feedback.record(13, 1000)  # reordered in time: a negative delta
    (packet,) = feedback.build(sender_ssrc=1, media_ssrc=2, now_ms=1001)
    expected = (
        bytes([0xAF, 205, 0x00, 0x06])  # V=2, P, FMT=15; RTPFB; 7 words
        + struct.pack("!II", 1, 2)
        + struct.pack("!HH", 10, 4)  # base 10, four statuses (12 lost)
        + bytes([0x00, 0x00, 0x0F, 0x00])  # reference 15 x 64 ms = 960 ms, feedback #0
        + struct.pack("!H", 0xD480)  # two-bit vector: small small lost large
        + bytes([160, 4])  # 40 ms after the reference, then 1 ms
        + struct.pack("!h", -4)  # 1 ms earlier
        + bytes([0x00, 0x02])  # RTCP padding: two bytes
    )
    assert packet == expected
    assert feedback.sent == 1


def test_feedback_round_trips_through_the_parser() -> None:
    feedback = TransportFeedback()
    for sequence, arrival in ((5, 2000), (6, 2003), (8, 2070), (7, 2069)):
        feedback.record(sequence, arrival)
    (packet,) = feedback.build(7, 9, now_ms=2070)
    parsed = parse_feedback(packet)
    assert (parsed.sender_ssrc, parsed.media_ssrc, parsed.base, parsed.count) == (7, 9, 5, 4)
    assert parsed.arrivals_us == {5: 2_000_000, 6: 2_003_000, 7: 2_069_000, 8: 2_070_000}


def test_sequence_numbers_wrap_within_one_feedback() -> None:
    feedback = TransportFeedback()
    for offset, sequence in enumerate((65534, 65535, 0, 1)):
        feedback.record(sequence, 500 + offset)
    (packet,) = feedback.build(1, 2, now_ms=510)
    parsed = parse_feedback(packet)
    assert parsed.base == 65534 and parsed.count == 4
    assert parsed.statuses == [SMALL_DELTA] * 4


def test_the_next_feedback_starts_after_the_last_and_reports_a_loss_at_its_start() -> None:
    feedback = TransportFeedback()
    for sequence in (1, 2, 3):
        feedback.record(sequence, 100 + sequence)
    feedback.build(1, 2, now_ms=110)
    feedback.record(5, 200)  # 4 was lost
    (packet,) = feedback.build(1, 2, now_ms=210)
    parsed = parse_feedback(packet)
    assert parsed.base == 4
    assert parsed.statuses == [NOT_RECEIVED, SMALL_DELTA]
    assert parsed.feedback_count == 1


def test_a_packet_older_than_the_last_feedback_is_not_reported_again() -> None:
    feedback = TransportFeedback()
    for sequence in (1, 2, 4):
        feedback.record(sequence, 100 + sequence)
    (first,) = feedback.build(1, 2, now_ms=110)
    assert parse_feedback(first).statuses == [SMALL_DELTA, SMALL_DELTA, NOT_RECEIVED, SMALL_DELTA]
    feedback.record(3, 120)  # too late: reported lost already
    feedback.record(5, 121)
    (second,) = feedback.build(1, 2, now_ms=130)
    parsed = parse_feedback(second)
    assert parsed.base == 5 and parsed.count == 1
    assert feedback.late == 1


def test_a_duplicate_counts_once_with_its_first_arrival() -> None:
    feedback = TransportFeedback()
    feedback.record(1, 100)
    feedback.record(1, 140)
    feedback.record(2, 101)
    (packet,) = feedback.build(1, 2, now_ms=150)
    assert parse_feedback(packet).arrivals_us == {1: 100_000, 2: 101_000}


def test_pending_counts_what_no_feedback_covered_yet() -> None:
    feedback = TransportFeedback()
    feedback.record(1, 10)
    feedback.record(2, 11)
    assert feedback.pending == 2
    feedback.build(1, 2, now_ms=20)
    assert feedback.pending == 0


def test_nothing_new_builds_nothing() -> None:
    feedback = TransportFeedback()
    assert feedback.build(1, 2, now_ms=0) == []
    feedback.record(1, 10)
    feedback.build(1, 2, now_ms=20)
    assert feedback.build(1, 2, now_ms=40) == []
    assert feedback.sent == 1


def test_a_gap_longer_than_a_large_delta_starts_a_new_packet() -> None:
    feedback = TransportFeedback()
    feedback.record(1, 1_000)
    feedback.record(2, 10_000)  # 9 s later: beyond the signed 16-bit delta of 250 us units
    first, second = feedback.build(1, 2, now_ms=10_000)
    assert parse_feedback(first).arrivals_us == {1: 1_000_000}
    assert parse_feedback(second).arrivals_us == {2: 10_000_000}
    assert parse_feedback(second).feedback_count == 1


def test_many_packets_are_split_into_contiguous_feedback() -> None:
    feedback = TransportFeedback()
    total = MAX_STATUSES * 2 + 17
    for sequence in range(total):
        feedback.record(sequence, 5_000 + sequence // 3)
    packets = feedback.build(1, 2, now_ms=6_000)
    parsed = [parse_feedback(p) for p in packets]
    assert len(packets) == 3
    assert all(len(p) <= 1200 for p in packets)
    assert [p.base for p in parsed] == [0, MAX_STATUSES, 2 * MAX_STATUSES]
    assert sum(p.count for p in parsed) == total


def test_a_loss_run_longer_than_a_packet_is_skipped_not_looped_on() -> None:
    feedback = TransportFeedback()
    feedback.record(1, 100)
    feedback.record(1 + MAX_STATUSES + 10, 101)
    first, second = feedback.build(1, 2, now_ms=110)
    assert parse_feedback(first).statuses == [SMALL_DELTA]
    assert parse_feedback(second).base == 1 + MAX_STATUSES + 10


def test_feedback_is_due_after_the_interval_or_enough_packets() -> None:
    feedback = TransportFeedback()
    assert not feedback.record(0, 1_000)
    assert not feedback.record(1, 1_000 + FEEDBACK_INTERVAL_MS - 1)
    assert feedback.record(2, 1_000 + FEEDBACK_INTERVAL_MS)
    feedback.build(1, 2, now_ms=1_000 + FEEDBACK_INTERVAL_MS)
    due = [feedback.record(3 + i, 1_150) for i in range(PACKETS_PER_FEEDBACK)]
    assert due == [False] * (PACKETS_PER_FEEDBACK - 1) + [True]


def test_random_loss_reordering_and_wrap_round_trip() -> None:
    rng = random.Random(15)
    feedback = TransportFeedback()
    sent = {}
    reported: dict[int, int] = {}
    losses = set()
    clock = 10_000
    sequence = 65_000  # wraps during the test
    first_sequence = sequence
    for _ in range(40):
        batch = []
        for _ in range(rng.randint(0, 60)):
            clock += rng.choice((0, 1, 2, 5, 70, 300))
            if rng.random() < 0.05:
                losses.add(sequence)
            else:
                batch.append((sequence, clock))
            sequence += 1
        tail = batch[-5:]  # a little reordering at the end of each batch
        rng.shuffle(tail)
        batch[-5:] = tail
        for number, arrival in batch:
            feedback.record(number & 0xFFFF, arrival)
            sent[number] = arrival
        packets = feedback.build(1, 2, now_ms=clock)
        for packet in packets:
            parsed = parse_feedback(packet)
            base = first_sequence + ((parsed.base - first_sequence) & 0xFFFF)
            for number, arrival_us in parsed.arrivals_us.items():
                reported[base + number - parsed.base] = arrival_us
    assert sequence > 65_536
    assert reported == {n: a * 1000 for n, a in sent.items()}
    assert not set(reported) & losses


def test_chromium_offer_is_read() -> None:
    sdp = "\r\n".join([
        "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0",
        f"a=extmap:3 {TWCC_URI}", "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=mid:1",
        f"a=extmap:3/sendonly {TWCC_URI}", "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 goog-remb", "a=rtcp-fb:96 transport-cc", "a=rtcp-fb:96 nack",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=mid:2", "",
    ])  # fmt: skip
    offers = read_transport_cc_offers(sdp)
    assert set(offers) == {"0", "1"}
    assert offers["1"].extension_id == 3
    assert offers["1"].offers_feedback(96) and not offers["1"].offers_feedback(97)
    assert offers["0"].offers_feedback(111)


def test_an_offer_without_transport_cc_reads_as_nothing() -> None:
    sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtcp-fb:96 goog-remb\r\n"
    assert read_transport_cc_offers(sdp) == {}

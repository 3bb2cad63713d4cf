"""The sink's segment rules, with no files, no thread and no clock: when a video stream starts,
when a gap asks for a keyframe, when a buffer goes to the writer and when segments close."""

from __future__ import annotations

from recorder.manifest import RECORD_HEADER
from recorder.rotation import SegmentClock, StreamBuffer


def test_a_video_stream_waits_for_its_first_keyframe_and_counts_what_it_drops() -> None:
    video = StreamBuffer("track-0", video=True)
    assert video.admit_video(100, keyframe=False) == (False, True)
    assert video.admit_video(101, keyframe=False) == (False, True)
    assert video.before_keyframe == 2
    assert video.admit_video(102, keyframe=True) == (True, False)
    assert video.admit_video(103, keyframe=False) == (True, False)
    assert video.before_keyframe == 2


def test_a_gap_in_the_sequence_numbers_asks_for_a_keyframe_but_a_late_packet_does_not() -> None:
    video = StreamBuffer("track-0", video=True)
    video.admit_video(10, keyframe=True)
    assert video.admit_video(13, keyframe=False) == (True, True)  # 11 and 12 lost
    assert video.admit_video(12, keyframe=False) == (True, False)  # late: kept, no new gap
    assert video.admit_video(14, keyframe=False) == (True, False)


def test_sequence_numbers_wrap_without_a_false_gap() -> None:
    video = StreamBuffer("track-0", video=True)
    video.admit_video(0xFFFF, keyframe=True)
    assert video.admit_video(0, keyframe=False) == (True, False)


def test_a_video_recorded_again_restarts_at_a_keyframe_and_audio_never_waits() -> None:
    video = StreamBuffer("track-0", video=True)
    video.admit_video(1, keyframe=True)
    video.await_keyframe()
    assert video.admit_video(2, keyframe=False) == (False, True)
    audio = StreamBuffer("track-1")
    audio.await_keyframe()
    assert not audio.awaiting_keyframe


def test_records_are_buffered_then_handed_off_then_the_segment_closes_at_its_size() -> None:
    stream = StreamBuffer("track-1")
    packet = bytes(100)
    record = RECORD_HEADER.size + len(packet)
    assert stream.append(5, packet, segment_bytes=10 * record, handoff_bytes=3 * record) == "keep"
    assert stream.append(6, packet, segment_bytes=10 * record, handoff_bytes=3 * record) == "keep"
    assert stream.append(7, packet, 10 * record, handoff_bytes=3 * record) == "hand_off"
    taken = stream.take()
    assert taken is not None
    payload, records = taken
    assert records == 3 and len(payload) == 3 * record
    assert RECORD_HEADER.unpack_from(payload) == (5, len(packet))
    assert (stream.first_ms, stream.last_ms) == (5, 7)
    assert stream.take() is None
    steps = [stream.append(8 + n, packet, 10 * record, 100 * record) for n in range(7)]
    assert steps == ["keep"] * 6 + ["close"]
    assert stream.end_segment() is True
    assert stream.end_segment() is False


def test_segments_close_together_on_each_period_and_a_case_marker_restarts_it() -> None:
    clock = SegmentClock(10_000)
    assert not clock.due(9_999)
    assert clock.due(10_250)
    assert clock.next_boundary == 20_000
    assert not clock.due(19_999)
    assert clock.due(45_000)  # a quiet spell: the next boundary is the next period's
    assert clock.next_boundary == 50_000
    clock.restart(47_000)
    assert not clock.due(56_999)
    assert clock.due(57_000)

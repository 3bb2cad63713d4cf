"""Video frames counted from RTP without decoding (bot.frames, pure): what a load test's
subscriber reports as frames per second and freezes."""

from __future__ import annotations

import pytest

from bot.frames import FREEZE_GAP_S, ReceivedFrames


def _stream(frames: ReceivedFrames, times: list[float], first_ts: int = 0) -> None:
    """A frame of two packets (the last one marked) arriving at each time."""
    for i, at in enumerate(times):
        frames.on_packet(False, first_ts + i * 3000, at)
        frames.on_packet(True, first_ts + i * 3000, at)


def test_thirty_frames_a_second_without_a_freeze() -> None:
    frames = ReceivedFrames()
    frames.begin(10.0)
    _stream(frames, [10.0 + i / 30 for i in range(1, 61)])
    figures = frames.figures(12.0)
    assert figures.frames == 60 and figures.fps == pytest.approx(30.0)
    assert figures.freezes == 0 and figures.frozen_s == 0.0


def test_nothing_counts_before_the_window() -> None:
    frames = ReceivedFrames()
    _stream(frames, [1.0, 1.1, 1.2])
    assert frames.figures(2.0).frames == 0
    frames.begin(2.0)
    _stream(frames, [2.1, 2.2], first_ts=90000)
    assert frames.figures(2.3).frames == 2


def test_a_resent_last_packet_is_not_a_second_frame() -> None:
    frames = ReceivedFrames()
    frames.begin(0.0)
    frames.on_packet(True, 3000, 0.1)
    frames.on_packet(True, 3000, 0.2)  # the repair of a packet reported lost
    assert frames.figures(0.3).frames == 1


def test_a_gap_over_half_a_second_is_a_freeze() -> None:
    frames = ReceivedFrames()
    frames.begin(0.0)
    _stream(frames, [0.1, 0.2, 0.2 + FREEZE_GAP_S + 0.3, 1.1])
    figures = frames.figures(1.2)
    assert figures.freezes == 1 and figures.frozen_s == pytest.approx(FREEZE_GAP_S + 0.3)


def test_a_stream_that_stops_is_frozen_to_the_end_of_the_window() -> None:
    frames = ReceivedFrames()
    frames.begin(0.0)
    _stream(frames, [0.1, 0.2])
    figures = frames.figures(3.2)
    assert figures.freezes == 1 and figures.frozen_s == pytest.approx(3.0)
    assert ReceivedFrames().figures(1.0).frames == 0, "no window: nothing"


def test_a_stream_that_never_starts_is_one_long_freeze() -> None:
    frames = ReceivedFrames()
    frames.begin(5.0)
    figures = frames.figures(8.0)
    assert figures.frames == 0 and figures.fps == 0.0
    assert figures.freezes == 1 and figures.frozen_s == pytest.approx(3.0)

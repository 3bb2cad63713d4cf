"""`consilium bot`'s options for room benchmarks: picture size and bitrate, per-process names,
and the measured window's figures in the report (no network: the parser and the report)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from bot.command import add_bot_parser, bot_tokens
from bot.report import BotReport, TrackReport, aggregate


class Issuer:
    """Mints a readable token: its subject and name."""

    def mint(self, **claims: Any) -> str:
        return f"{claims['sub']}|{claims['name']}"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bot_parser(parser.add_subparsers(), mint=lambda data_dir: Issuer())
    return parser.parse_args(["bot", "--room", "mdt-1", *argv])


def test_each_process_mints_its_own_identities() -> None:
    assert bot_tokens(_parse("--count", "2", "--prefix", "p1")) == ["p1-0|P1 0", "p1-1|P1 1"]
    assert bot_tokens(_parse("--count", "2")) == ["bot-0|Bot 0", "bot-1|Bot 1"]


def test_the_picture_is_given_as_width_x_height(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--video-size", "320x240", "--video-bitrate", "300000")
    assert args.video_size == (320, 240) and args.video_bitrate == 300_000
    assert _parse().video_size == (640, 480)
    for bad in ("320", "321x240", "0x240", "axb"):
        with pytest.raises(SystemExit):
            _parse("--video-size", bad)
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_many_bots_report_every_subscriptions_frame_rate_and_freezes() -> None:
    def bot(name: str, fps: list[float], freezes: int) -> BotReport:
        tracks = [
            TrackReport(mid=str(i), kind="video", fps=rate, freezes=freezes, frozen_s=0.6 * freezes)
            for i, rate in enumerate(fps)
        ]
        tracks.append(TrackReport(mid="9", kind="audio", packets_received=100, packets_lost=1))
        return BotReport(bot=name, joined=True, window_s=10.0, tracks=tracks)

    line = aggregate([bot("a", [29.5, 30.0], 0), bot("b", [12.0, 28.0], 2)])
    assert sorted(line["video_fps"]) == [12.0, 28.0, 29.5, 30.0]
    assert line["freezes"] == 4 and line["frozen_s"] == pytest.approx(2.4)
    assert line["window_s_min"] == 10.0 and line["video_s"] == 40.0

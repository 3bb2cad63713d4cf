"""The SFU's real-time figures reach /metrics' counters, and its settings reach the mechanisms."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sfu import socket_receive
from sfu.ice import uninstall
from sfu.server import MediaServer, MediaSettings


@pytest.fixture
def server() -> Iterator[MediaServer]:
    saved = socket_receive.queue_delay.max_ms
    yield MediaServer(MediaSettings(max_delay_s=0.1), lambda participant, message: None)
    socket_receive.queue_delay.max_ms = saved
    uninstall()


def test_the_time_bound_follows_the_settings(server: MediaServer) -> None:
    assert socket_receive.queue_delay.max_ms == 100


def test_stats_name_the_real_time_counters(server: MediaServer) -> None:
    stats = server.stats()
    for reason in ("too_late", "repeated", "budget", "gone"):
        assert stats[f'retransmissions_refused{{reason="{reason}"}}'] == 0
    assert 'queue_delay_ms_bucket{le="250"}' in stats
    assert 'queue_delay_ms_bucket{le="+Inf"}' in stats
    for name in ("late_dropped_packets", "socket_receive_buffer_bytes", "retransmitted_packets"):
        assert name in stats

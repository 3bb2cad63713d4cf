"""Media bounded by time: the waiting-time histogram and bound (sfu.queue_delay, pure), and the
socket hook that measures the wait from the kernel's receive timestamp (real loopback sockets)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from aioice.ice import StunProtocol

from sfu import aiortc_hooks as hooks
from sfu.queue_delay import QueueDelay, percentile_ms
from tests.fixtures.servers import eventually


def test_rtp_that_waited_past_the_bound_is_not_fresh() -> None:
    delay = QueueDelay(max_ms=250)
    assert delay.fresh(0) and delay.fresh(250)
    assert not delay.fresh(251)


def test_without_a_bound_everything_is_fresh() -> None:
    assert QueueDelay(max_ms=0).fresh(5000)


def test_waiting_times_form_a_cumulative_histogram() -> None:
    delay = QueueDelay()
    delay.record(0, 90)
    delay.record(30, 5)
    delay.record(3000, 5)
    buckets = dict(delay.cumulative())
    assert buckets["1"] == 90
    assert buckets["25"] == 90 and buckets["50"] == 95
    assert buckets["2500"] == 95 and buckets["5000"] == 100 and buckets["+Inf"] == 100


def test_p95_is_read_back_from_the_buckets() -> None:
    delay = QueueDelay()
    delay.record(0, 90)
    delay.record(30, 6)
    delay.record(3000, 4)
    buckets = [(float(b) if b != "+Inf" else float("inf"), n) for b, n in delay.cumulative()]
    assert percentile_ms(buckets, 0.95) == 50.0
    assert percentile_ms(buckets, 0.5) == 1.0
    assert percentile_ms([(1.0, 0), (float("inf"), 0)], 0.95) is None


# -- the socket hook -------------------------------------------------------------------------


@pytest.fixture
def bound() -> Iterator[QueueDelay]:
    """The process's queue delay with a 50 ms bound, put back afterwards."""
    saved = hooks.queue_delay.max_ms
    hooks.queue_delay.max_ms = 50
    yield hooks.queue_delay
    hooks.queue_delay.max_ms = saved


async def test_datagrams_that_waited_past_the_bound_are_dropped_not_forwarded(
    bound: QueueDelay,
) -> None:
    loop = asyncio.get_running_loop()
    forwarded: list[bytes] = []
    late: list[bytes] = []
    receiver = SimpleNamespace(
        _consilium_media=lambda data, component: forwarded.append(data),
        _consilium_late=late.append,
        data_received=lambda data, component: None,
        protocol_lost=lambda protocol: None,
    )
    hooks._install_datagram_shortcut()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(receiver), local_addr=("127.0.0.1", 0)
    )
    protocol.local_candidate = SimpleNamespace(component=1)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = [bytes([0x80, 96, 0, n]) + bytes(1200) for n in range(4)]
    rtcp = bytes([0x80, 200]) + bytes(50)
    dropped_before = bound.dropped
    try:
        address = transport.get_extra_info("sockname")
        sender.sendto(rtp[0], address)  # the first turns the socket's timestamps on
        await eventually(lambda: len(forwarded) == 1, timeout=5)
        for data in [rtp[1], rtcp, rtp[2]]:
            sender.sendto(data, address)
        time.sleep(0.15)  # the event loop is busy elsewhere: they wait in the socket
        await eventually(lambda: len(late) == 2, timeout=5)
        assert late == [rtp[1], rtp[2]]
        assert forwarded == [rtp[0], rtcp], "RTCP still goes through (feedback is not media)"
        assert bound.dropped - dropped_before == 2
        sender.sendto(rtp[3], address)
        await eventually(lambda: len(forwarded) == 3, timeout=5)
        assert forwarded[-1] == rtp[3], "fresh media flows again"
    finally:
        sender.close()
        transport.close()


def test_dropping_late_rtp_asks_its_publisher_for_one_keyframe() -> None:
    from aiortc.rtcdtlstransport import State
    from aiortc.rtp import RTCP_PSFB_PLI, RtcpPacket, RtcpPsfbPacket

    sent: list[bytes] = []
    protocol = StunProtocol.__new__(StunProtocol)  # a socket's protocol, without a loop
    protocol.transport = SimpleNamespace(  # type: ignore[assignment]
        _sock=None, sendto=lambda data, addr: sent.append(data)
    )
    pair = SimpleNamespace(protocol=protocol, remote_addr=("127.0.0.1", 9))
    connection = SimpleNamespace(data_received=lambda data, component: None, _nominated={1: pair})
    dtls = SimpleNamespace(
        _state=State.CONNECTED, _tx_srtp=SimpleNamespace(protect_rtcp=lambda data: data),
        transport=SimpleNamespace(_connection=connection),
    )  # fmt: skip
    hooks.hook_transport(dtls, None, None)  # type: ignore[arg-type]
    late = connection._consilium_late  # type: ignore[attr-defined]

    def rtp(ssrc: int, seq: int) -> bytes:
        return bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big")

    for seq in range(5):  # a late burst of one video stream: one request (rate-limited)
        late(rtp(42, seq))
    late(rtp(43, 0))
    plis = [p for data in sent for p in RtcpPacket.parse(data)]
    assert all(isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI for p in plis)
    assert [p.media_ssrc for p in plis] == [42, 43]  # type: ignore[union-attr]


async def test_the_fresh_tail_of_a_drained_backlog_is_forwarded(bound: QueueDelay) -> None:
    loop = asyncio.get_running_loop()
    forwarded: list[bytes] = []
    late: list[bytes] = []
    receiver = SimpleNamespace(
        _consilium_media=lambda data, component: forwarded.append(data),
        _consilium_late=late.append,
        data_received=lambda data, component: None,
        protocol_lost=lambda protocol: None,
    )
    hooks._install_datagram_shortcut()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(receiver), local_addr=("127.0.0.1", 0)
    )
    protocol.local_candidate = SimpleNamespace(component=1)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = [bytes([0x80, 96, 0, n]) + bytes(100) for n in range(13)]
    try:
        address = transport.get_extra_info("sockname")
        sender.sendto(rtp[0], address)  # the first turns the socket's timestamps on
        await eventually(lambda: len(forwarded) == 1, timeout=5)
        sender.sendto(rtp[1], address)
        time.sleep(0.15)  # rtp[1] waits past the bound; the rest arrive just before the read
        for data in rtp[2:]:
            sender.sendto(data, address)
        await eventually(lambda: len(late) + len(forwarded) == 13, timeout=5)
        # Dropped with the first until the wait is measured again (every 8th queued datagram).
        assert late == rtp[1 : 1 + hooks.RECHECK_LATE_EVERY]
        assert forwarded == [rtp[0], *rtp[1 + hooks.RECHECK_LATE_EVERY :]]
    finally:
        sender.close()
        transport.close()

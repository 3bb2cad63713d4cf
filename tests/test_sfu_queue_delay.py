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
from sfu import socket_receive
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
    saved = socket_receive.queue_delay.max_ms
    socket_receive.queue_delay.max_ms = 50
    yield socket_receive.queue_delay
    socket_receive.queue_delay.max_ms = saved


class _Receiver(SimpleNamespace):
    """An ICE connection as the socket hook sees it: media handed on as (datagram, late)."""

    def __init__(self) -> None:
        handed: list[tuple[bytes, bool]] = []
        super().__init__(
            handed=handed,
            _consilium_media=lambda data, component, late=False: handed.append((data, late)),
            data_received=lambda data, component: None,
            protocol_lost=lambda protocol: None,
        )


async def _listening(receiver: _Receiver) -> tuple[asyncio.DatagramTransport, tuple[str, int]]:
    socket_receive.install_datagram_shortcut()
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: StunProtocol(receiver), local_addr=("127.0.0.1", 0)
    )
    protocol.local_candidate = SimpleNamespace(component=1)
    return transport, transport.get_extra_info("sockname")


async def test_datagrams_that_waited_past_the_bound_are_handed_on_marked_late(
    bound: QueueDelay,
) -> None:
    receiver = _Receiver()
    transport, address = await _listening(receiver)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = [bytes([0x80, 96, 0, n]) + bytes(1200) for n in range(4)]
    rtcp = bytes([0x80, 200]) + bytes(50)
    dropped_before = bound.dropped
    try:
        sender.sendto(rtp[0], address)  # the first turns the socket's timestamps on
        await eventually(lambda: len(receiver.handed) == 1, timeout=5)
        for data in [rtp[1], rtcp, rtp[2]]:
            sender.sendto(data, address)
        time.sleep(0.15)  # the event loop is busy elsewhere: they wait in the socket
        await eventually(lambda: len(receiver.handed) == 4, timeout=5)
        # Every datagram still reaches the transport (a recording must get it); the late RTP
        # is marked so that the forwarder keeps it from live subscribers. RTCP is never late.
        assert receiver.handed == [(rtp[0], False), (rtp[1], True), (rtcp, False), (rtp[2], True)]
        assert bound.dropped - dropped_before == 2
        sender.sendto(rtp[3], address)
        await eventually(lambda: len(receiver.handed) == 5, timeout=5)
        assert receiver.handed[-1] == (rtp[3], False), "fresh media flows again"
    finally:
        sender.close()
        transport.close()


async def test_the_fresh_tail_of_a_drained_backlog_is_not_marked_late(bound: QueueDelay) -> None:
    receiver = _Receiver()
    transport, address = await _listening(receiver)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = [bytes([0x80, 96, 0, n]) + bytes(100) for n in range(13)]
    try:
        sender.sendto(rtp[0], address)  # the first turns the socket's timestamps on
        await eventually(lambda: len(receiver.handed) == 1, timeout=5)
        sender.sendto(rtp[1], address)
        time.sleep(0.15)  # rtp[1] waits past the bound; the rest arrive just before the read
        for data in rtp[2:]:
            sender.sendto(data, address)
        await eventually(lambda: len(receiver.handed) == 13, timeout=5)
        assert [data for data, _ in receiver.handed] == rtp
        # Late with the first until the wait is measured again (every 8th queued datagram).
        late = [data for data, late in receiver.handed if late]
        assert late == rtp[1 : 1 + socket_receive.RECHECK_LATE_EVERY]
    finally:
        sender.close()
        transport.close()


async def test_the_transport_hook_passes_lateness_to_the_rtp_handler() -> None:
    from aiortc.rtcdtlstransport import State

    handed: list[tuple[bytes, int, bool]] = []
    connection = SimpleNamespace(data_received=lambda data, component: None, _nominated={})
    session = SimpleNamespace(_srtp=None, _cdata=b"", _buffer=bytearray(0))
    dtls = SimpleNamespace(
        _state=State.CONNECTED, _rx_srtp=session,
        transport=SimpleNamespace(_connection=connection),
    )  # fmt: skip
    hooks.hook_transport(dtls, lambda data, ms, late: handed.append((data, ms, late)), None)  # type: ignore[arg-type]
    # aiortc's own path (no socket timestamp) is never late.
    await dtls._handle_rtp_data(b"\x80\x60rtp", 0)
    assert [(data, late) for data, _, late in handed] == [(b"\x80\x60rtp", False)]

"""The impaired link of the tests and benchmarks (nettest/): loss, delay, jitter and rate as asked,
repeatably from a seed; and the UDP proxy that applies them between real sockets."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from typing import cast

import pytest

from nettest.impairment import ImpairedDirection, Impairment, link
from nettest.tcp_proxy import ImpairedTcpProxy
from nettest.udp_proxy import ImpairedUdpProxy

PACKET = 1200
"""Bytes of a video-sized RTP datagram."""


def direction(seed: int = 7, **impairment: float) -> ImpairedDirection:
    return ImpairedDirection(Impairment(**impairment), random.Random(seed))


def test_loss_drops_the_asked_fraction_and_repeats_from_the_seed() -> None:
    link = direction(loss=0.05)
    fates = [link.admit(PACKET, now=i * 0.001) is None for i in range(20_000)]
    assert 0.045 <= sum(fates) / len(fates) <= 0.055
    assert link.counters.lost == sum(fates) and link.counters.passed == len(fates) - sum(fates)
    again = direction(loss=0.05)
    assert [again.admit(PACKET, now=i * 0.001) is None for i in range(20_000)] == fates
    other_seed = direction(seed=8, loss=0.05)
    assert [other_seed.admit(PACKET, now=i * 0.001) is None for i in range(20_000)] != fates


def test_a_clean_link_delivers_everything_at_once() -> None:
    link = direction()
    assert [link.admit(PACKET, now=t) for t in (0.0, 0.5, 0.5)] == [0.0, 0.5, 0.5]
    assert link.counters.dropped == 0


def test_delay_is_added_to_every_datagram() -> None:
    link = direction(delay_ms=50)
    assert [link.admit(PACKET, now=t) for t in (1.0, 1.01, 2.0)] == pytest.approx(
        [1.05, 1.06, 2.05]
    )


def test_jitter_spreads_delay_around_the_mean_and_reorders_close_datagrams() -> None:
    link = direction(delay_ms=50, jitter_ms=30)
    sent = [i * 0.005 for i in range(1000)]  # one every 5 ms, as a video burst
    arrivals = [link.admit(PACKET, now=t) for t in sent]
    delays_ms = [(a - t) * 1000 for a, t in zip(arrivals, sent, strict=True) if a is not None]
    assert min(delays_ms) >= 20 - 1e-9 and max(delays_ms) <= 80 + 1e-9
    assert 47 <= sum(delays_ms) / len(delays_ms) <= 53
    order = sorted(range(len(arrivals)), key=lambda i: arrivals[i])
    assert order != list(range(len(arrivals))), "30 ms of jitter on 5 ms gaps must reorder"
    # Without jitter the same traffic keeps its order.
    steady = direction(delay_ms=50)
    steady_arrivals = [steady.admit(PACKET, now=t) for t in sent]
    assert steady_arrivals == sorted(steady_arrivals)


def test_rate_limit_holds_over_a_second_of_traffic_above_it() -> None:
    # 2 Mbit/s offered for one second into an 800 kbit/s link.
    link = direction(rate_kbps=800, queue_ms=200)
    gap = PACKET * 8 / 2_000_000
    arrivals = [link.admit(PACKET, now=i * gap) for i in range(int(1 / gap))]
    passed = [a for a in arrivals if a is not None]
    # What arrives in the first second is what 800 kbit/s carries (one datagram of slack), and
    # the link is kept busy: the excess waits, then is dropped at the queue's limit.
    in_first_second = sum(PACKET for a in passed if a <= 1.0)
    assert 0.97 * 100_000 <= in_first_second <= 100_000 + PACKET
    assert link.counters.overflowed > 0 and link.counters.lost == 0
    assert 190 <= link.counters.max_queue_ms <= 200
    spacing = [b - a for a, b in itertools.pairwise(passed)]
    assert min(spacing) == pytest.approx(PACKET * 8 / 800_000)


def test_traffic_under_the_rate_is_not_delayed_by_it() -> None:
    link = direction(rate_kbps=800)
    # 400 kbit/s offered: each datagram is on the wire for 12 ms, and they are 24 ms apart.
    arrivals = [link.admit(PACKET, now=i * 0.024) for i in range(100)]
    assert [a - i * 0.024 for i, a in enumerate(arrivals)] == pytest.approx([0.012] * 100)
    assert link.counters.dropped == 0 and link.counters.max_queue_ms == 0


def test_a_link_described_in_words_splits_the_round_trip_between_its_directions() -> None:
    up, down = link(loss=0.05, rtt_ms=100, jitter_ms=30, down_kbps=800)
    assert down == Impairment(loss=0.05, delay_ms=50, jitter_ms=30, rate_kbps=800)
    assert up == Impairment(loss=0.05, delay_ms=50, jitter_ms=30, rate_kbps=None)


def test_impairment_refuses_impossible_links() -> None:
    for bad in ({"loss": 1.5}, {"delay_ms": -1}, {"rate_kbps": 0}):
        with pytest.raises(ValueError):
            Impairment(**bad)


# -- the proxy between real sockets ------------------------------------------------------------


class Echo(asyncio.DatagramProtocol):
    """A UDP server that sends every datagram back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.transport.sendto(data, addr)


async def round_trips(proxy_port: int, count: int, gap_s: float = 0.002) -> list[float]:
    """Send `count` numbered datagrams through the proxy to the echo; each answer's RTT (s)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", proxy_port))
    sent: dict[int, float] = {}
    rtts: list[float] = []
    try:
        for i in range(count):
            sent[i] = time.monotonic()
            await loop.sock_sendall(sock, i.to_bytes(4, "big") + bytes(96))
            await asyncio.sleep(gap_s)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.3)
            except TimeoutError:
                break
            rtts.append(time.monotonic() - sent[int.from_bytes(data[:4], "big")])
    finally:
        sock.close()
    return rtts


async def test_proxy_delays_both_ways_and_counts_what_it_drops() -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    server = echo.get_extra_info("sockname")
    proxy = await ImpairedUdpProxy(
        server, up=Impairment(delay_ms=40), down=Impairment(delay_ms=40, loss=0.3), seed=1
    ).start()
    try:
        rtts = await round_trips(proxy.port, 100)
        # 80 ms of round trip added; 30% of the answers lost on the way down.
        assert min(rtts) >= 0.079
        assert 50 <= len(rtts) <= 90
        up, down = proxy.counters["up"], proxy.counters["down"]
        assert up.offered == up.passed == 100
        assert down.offered == 100 and down.lost == 100 - len(rtts)
    finally:
        proxy.close()
        echo.close()


async def echo_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TCP server that sends every byte back, and ends when the client does."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_tcp_proxy_delays_and_paces_a_stream_without_reordering_it() -> None:
    server = await asyncio.start_server(echo_tcp, "127.0.0.1", 0)
    address = server.sockets[0].getsockname()[:2]
    # 1 Mbit/s down with 30 ms of jitter: 64 kB echoed back takes >= 0.5 s, in order.
    proxy = await ImpairedTcpProxy(
        address,
        up=Impairment(delay_ms=40),
        down=Impairment(delay_ms=40, jitter_ms=30, rate_kbps=1000),
    ).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        assert time.monotonic() - started >= 0.08 - 0.002  # 40 ms each way, at least
        payload = bytes(range(256)) * 256
        started = time.monotonic()
        writer.write(payload)
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), 10)
        elapsed = time.monotonic() - started
        assert echoed == payload
        assert 0.5 <= elapsed <= 3.0, elapsed
        down = proxy.counters["down"]
        assert down.passed_bytes == len(payload) + 1 and down.dropped == 0
        writer.close()
    finally:
        await proxy.close()
        server.close()


def test_tcp_proxy_refuses_loss() -> None:
    with pytest.raises(ValueError, match="cannot lose bytes"):
        ImpairedTcpProxy(("127.0.0.1", 9), down=Impairment(loss=0.05))

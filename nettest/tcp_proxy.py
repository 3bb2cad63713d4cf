"""An impaired TCP link on loopback: a relay in front of one TCP server (in the tests, coturn's
TURN/TCP or TURNS port) that delays and rate-limits each direction of every connection.

A byte stream cannot lose or reorder bytes, so of `nettest.impairment` only the delay, the jitter
(bytes keep their order: a chunk never arrives before the one read before it) and the rate apply;
an `Impairment` with `loss` is refused here rather than silently ignored. (On a real link TCP
turns loss into retransmission delay; measure loss over UDP.) The rate limit does not drop: the
proxy stops reading a direction while more than `window_ms` of it waits for the link, so the
sender feels backpressure as from a slow link, and nothing piles up in the proxy.

Like the UDP proxy, all connections of one direction share one link: give each impaired person
their own proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random

from nettest.impairment import CLEAN, DirectionCounters, ImpairedDirection, Impairment

Address = tuple[str, int]
CHUNK = 4096
_TICK_S = 1e-6
"""Bytes read at a time: the unit the link delays (33 ms at 1 Mbit/s)."""


class ImpairedTcpProxy:
    """A TCP relay to `server` whose two directions are delayed and rate-limited."""

    def __init__(
        self,
        server: Address,
        *,
        up: Impairment = CLEAN,
        down: Impairment = CLEAN,
        seed: int | str = 0,
        host: str = "127.0.0.1",
        window_ms: float = 50.0,
    ) -> None:
        for name, impairment in (("up", up), ("down", down)):
            if impairment.loss:
                raise ValueError(f"{name}: a TCP stream cannot lose bytes; impair UDP for loss")
        self.server = server
        self.host = host
        self.window_ms = window_ms
        # No queue limit: backpressure (see _pump) keeps the queue within window_ms instead.
        self.up = ImpairedDirection(
            dataclasses.replace(up, queue_ms=math.inf), random.Random(f"{seed}/up")
        )
        self.down = ImpairedDirection(
            dataclasses.replace(down, queue_ms=math.inf), random.Random(f"{seed}/down")
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port clients connect to (after `start`)."""
        assert self._server is not None, "start() the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def counters(self) -> dict[str, DirectionCounters]:
        """`{"up": ..., "down": ...}`: what each direction did so far (a chunk counts as one)."""
        return {"up": self.up.counters, "down": self.down.counters}

    async def start(self) -> ImpairedTcpProxy:
        """Listen on a free port of `host`."""
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        return self

    async def close(self) -> None:
        """Stop listening and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                server_reader, server_writer = await asyncio.open_connection(*self.server)
            except OSError:
                writer.close()
                return
            ends = await asyncio.gather(
                self._pump(reader, server_writer, self.up),
                self._pump(server_reader, writer, self.down),
            )
            # Both ways ended: close both sockets once the last chunk has been written.
            await asyncio.sleep(max(0.0, max(ends) - asyncio.get_running_loop().time()))
            for end in (writer, server_writer):
                end.close()
        finally:
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: ImpairedDirection,
    ) -> float:
        """Carry one direction: each chunk written when the link delivers it, in order; when
        (loop time) the last one is delivered."""
        loop = asyncio.get_running_loop()
        impairment = direction.impairment
        longest_delay_s = (impairment.delay_ms + impairment.jitter_ms) / 1000
        delivered_by = loop.time()
        try:
            while data := await reader.read(CHUNK):
                now = loop.time()
                arrives = direction.admit(len(data), now)
                assert arrives is not None  # no loss, no queue limit
                # Strictly later than the chunk before: the loop runs timers due at the same
                # moment in no promised order, and a stream's bytes must stay in order.
                delivered_by = max(arrives, delivered_by + _TICK_S)
                loop.call_at(delivered_by, _write, writer, data)
                # Backpressure: the time this chunk waits for the link itself, beyond a window.
                queued_s = delivered_by - now - longest_delay_s
                if queued_s > self.window_ms / 1000:
                    await asyncio.sleep(queued_s - self.window_ms / 1000)
        except (ConnectionError, OSError):
            pass
        finally:
            # The other side hears the end after the last chunk has arrived.
            delivered_by += _TICK_S
            loop.call_at(delivered_by, _finish, writer)
        return delivered_by


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)


def _finish(writer: asyncio.StreamWriter) -> None:
    if writer.is_closing():
        return
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()
            return
    writer.close()

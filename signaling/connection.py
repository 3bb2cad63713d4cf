"""One client's signalling WebSocket: its identity, state, rate bucket and outbound queue."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from enum import Enum
from typing import Any

from aiohttp import web

from core.ratelimit import TokenBucket
from signaling.identity import Identity
from signaling.resume import ReplayBuffer

log = logging.getLogger("consilium.connection")

CLOSE_HANDSHAKE_S = 2.0
"""How long a close waits for the client's close frame before dropping the TCP connection.

aiohttp waits 10 s by default. Nothing of the room waits for it (the clean-up runs first), but
a client that never answers, or never reads, must not hold a socket and a task for 10 s.
"""


class DropReason(Enum):
    """Why the server itself ended a connection that did nothing wrong by protocol."""

    SLOW_CONSUMER = "slow_consumer"
    """Its outbound queue was full: it does not read what the server sends (4408)."""


class ConnectionState(Enum):
    """Where a connection is in its life."""

    NEW = "new"
    """Upgraded, no `join` yet."""
    WAITING = "waiting"
    """In the lobby (waiting for admission or for the room to open)."""
    JOINED = "joined"
    """In the room."""
    CLOSED = "closed"
    """Closed or closing; nothing more is sent."""


class Connection:
    """A signalling connection and what the server knows of it."""

    __slots__ = (
        "bucket",
        "closer",
        "closing",
        "dropped",
        "ending",
        "held_since",
        "identity",
        "max_outbox",
        "media_node",
        "outbox",
        "participant_id",
        "peer",
        "permissions",
        "replay",
        "resume_token",
        "room_id",
        "state",
        "transport",
        "waiting_reason",
        "withheld",
        "writer",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        peer: str,
        bucket: TokenBucket,
        max_outbox: int,
        transport: asyncio.Transport | None = None,
    ):
        self.ws = ws
        self.transport = transport
        """The TCP transport under `ws`: aborted when a close cannot complete."""
        self.peer = peer
        self.bucket = bucket
        self.max_outbox = max_outbox
        self.state = ConnectionState.NEW
        self.closing = False
        self.closer: asyncio.Task[None] | None = None
        """A close running as its own task (`close_soon`)."""
        self.ending: tuple[int, str] | None = None
        """The close code and reason the handler closes with, after its clean-up (`finish`)."""
        self.dropped: DropReason | None = None
        """Set when the server dropped the connection for a reason of its own."""
        self.identity: Identity | None = None
        self.room_id: str = ""
        self.participant_id: str = ""
        self.permissions: frozenset[str] = frozenset()
        self.waiting_reason: str = ""
        self.media_node: str = ""
        """The node hosting this participant's media (empty: no media)."""
        self.replay: ReplayBuffer | None = None
        """The messages sent since `joined`, numbered and kept for a resume (None: not joined,
        or the node holds no participants)."""
        self.resume_token: str = ""
        """The secret a `resume` of this participant must carry (`joined.resume_token`)."""
        self.held_since: float | None = None
        """Monotonic time the socket was lost and the participant held for a resume (None: the
        socket is live). Messages are then kept in `replay` only."""
        self.withheld: list[str] | None = None
        """Messages kept back until this participant's `joined` is out (another node's
        participant taken over here: the room and the SFU talk to them before it), or None."""
        # Created at the first message: most participants idle with nothing queued.
        self.outbox: deque[str] | None = None
        self.writer: asyncio.Task[Any] | None = None

    def send(self, text: str) -> None:
        """Queue one message (numbered and kept for a resume once joined); a client that cannot
        keep up is dropped (4408)."""
        if self.withheld is not None:
            self.withheld.append(text)
            return
        if self.replay is not None:
            self.replay.record(text)
            if self.held_since is not None:
                return
        self.write(text)

    def write(self, text: str) -> None:
        """Queue one message as it is (unnumbered: `resumed`, and the replay after it)."""
        if self.closing or self.ending is not None:
            return
        if self.outbox is None:
            self.outbox = deque()
        elif len(self.outbox) >= self.max_outbox:
            log.warning("slow client dropped", extra={"participant": self.participant_id})
            self.dropped = DropReason.SLOW_CONSUMER
            # What is queued would never be read: drop it, and the writer stuck behind it.
            self.outbox.clear()
            if self.writer is not None:
                self.writer.cancel()
            self.close_soon(4408, "too slow to receive")
            return
        self.outbox.append(text)
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._drain())

    def adopt(self, held: Connection) -> None:
        """Take over the participant of `held` (a `resume`): who they are, where, and what was
        sent to them; `held` keeps its socket (closed by its own handler) and nothing else."""
        self.identity = held.identity
        self.room_id = held.room_id
        self.participant_id = held.participant_id
        self.permissions = held.permissions
        self.media_node = held.media_node
        self.replay, held.replay = held.replay, None
        self.resume_token = held.resume_token
        self.state = ConnectionState.JOINED
        held.state = ConnectionState.CLOSED

    async def _drain(self) -> None:
        outbox = self.outbox
        assert outbox is not None
        try:
            while outbox:
                await self.ws.send_str(outbox.popleft())
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            # The peer went away (the receive loop notices and cleans up), or it was dropped.
            outbox.clear()
        finally:
            self.writer = None
            if not outbox:
                self.outbox = None

    def finish(self, code: int, reason: str) -> None:
        """Note that the connection ends (e.g. `leave`): nothing more is queued, and the handler
        closes with `code` once the room's clean-up has run (`ending`)."""
        if self.ending is None:
            self.ending = (code, reason)

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued, then close with `code`; safe to call twice or from any task.

        Bounded in time: a client that does not answer the close (or does not read) has its
        TCP connection aborted after `CLOSE_HANDSHAKE_S`.
        """
        if self.closing:
            return
        self.closing = True
        writer = self.writer
        if writer is not None:
            # `wait`, not `wait_for`: a writer cancelled (a slow client dropped) raises nothing.
            await asyncio.wait({writer}, timeout=CLOSE_HANDSHAKE_S)
        try:
            await asyncio.wait_for(
                self.ws.close(code=code, message=reason.encode()[:120]), CLOSE_HANDSHAKE_S
            )
        except Exception:
            log.debug("close did not complete", exc_info=True)
        finally:
            # Still open, or closing gracefully (which waits for the client to read what is
            # buffered, and it won't): drop it.
            transport = self.transport
            if transport is not None and (
                not transport.is_closing() or transport.get_write_buffer_size()
            ):
                transport.abort()

    def close_soon(self, code: int, reason: str) -> None:
        """Close from synchronous code, or without waiting (the close runs as its own task)."""
        if self.closing or self.closer is not None:
            return
        task = asyncio.get_running_loop().create_task(self.close(code, reason))
        self.closer = task
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def end(self) -> None:
        """The handler's last step, after the room's clean-up: close with `ending`, or see a
        close already under way (`close_soon`) through, so that its code is the one sent."""
        if self.closer is not None:
            await asyncio.wait({self.closer})
        elif self.ending is not None:
            await self.close(*self.ending)


_background: set[asyncio.Task[Any]] = set()

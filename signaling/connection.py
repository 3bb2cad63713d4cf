"""One client's signalling WebSocket: its identity, state, rate bucket and outbound queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from enum import Enum
from typing import Any

from aiohttp import web

from .identity import Identity
from .ratelimit import TokenBucket

log = logging.getLogger("consilium.connection")


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


class ConsiliumWebSocket(web.WebSocketResponse):
    """aiohttp's WebSocket, with an oversized message closed as 4400 like any bad message.

    aiohttp rejects a frame over `max_msg_size` from its header (before buffering it) and
    closes with 1009; our protocol documents one code for every bad message.
    """

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        """Close, mapping 1009 (message too big) to 4400."""
        if code == 1009:
            code, message = 4400, b"message too large"
        return await super().close(code=code, message=message, drain=drain)


class Connection:
    """A signalling connection and what the server knows of it."""

    __slots__ = (
        "bucket",
        "closing",
        "identity",
        "max_outbox",
        "media_node",
        "outbox",
        "participant_id",
        "peer",
        "permissions",
        "room_id",
        "state",
        "waiting_reason",
        "writer",
        "ws",
    )

    def __init__(self, ws: web.WebSocketResponse, peer: str, bucket: TokenBucket, max_outbox: int):
        self.ws = ws
        self.peer = peer
        self.bucket = bucket
        self.max_outbox = max_outbox
        self.state = ConnectionState.NEW
        self.closing = False
        self.identity: Identity | None = None
        self.room_id: str = ""
        self.participant_id: str = ""
        self.permissions: frozenset[str] = frozenset()
        self.waiting_reason: str = ""
        self.media_node: str = ""
        """The node hosting this participant's media (empty: no media)."""
        # Created at the first message: most participants idle with nothing queued.
        self.outbox: deque[str] | None = None
        self.writer: asyncio.Task[Any] | None = None

    def send(self, text: str) -> None:
        """Queue one message; a client that cannot keep up is dropped (4408)."""
        if self.closing:
            return
        if self.outbox is None:
            self.outbox = deque()
        elif len(self.outbox) >= self.max_outbox:
            log.warning("slow client dropped", extra={"participant": self.participant_id})
            self.close_soon(4408, "too slow to receive")
            return
        self.outbox.append(text)
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        outbox = self.outbox
        assert outbox is not None
        try:
            while outbox:
                await self.ws.send_str(outbox.popleft())
        except (ConnectionError, RuntimeError):
            # The peer went away; the receive loop notices and cleans up.
            outbox.clear()
        finally:
            self.writer = None
            if not outbox:
                self.outbox = None

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued, then close with `code`; safe to call twice or from any task."""
        if self.closing:
            return
        self.closing = True
        writer = self.writer
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), timeout=2.0)
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=reason.encode()[:120])

    def close_soon(self, code: int, reason: str) -> None:
        """Close from synchronous code (the close runs as its own task)."""
        if self.closing:
            return
        task = asyncio.get_running_loop().create_task(self.close(code, reason))
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task[Any]] = set()

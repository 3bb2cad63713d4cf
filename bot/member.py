"""A participant joined over the signalling WebSocket, with its aiortc media client: what the
tests and the benchmarks drive a meeting with (`consilium bot` has its own, `bot.runner`).

It keeps every message it was sent (`messages`), hands the media ones to its `MediaClient`,
and comes back as a client does when its signalling connection is lost (`resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack

from bot.client import MediaClient

MEDIA_MESSAGES = frozenset({"offer", "answer", "tracks", "media_moved"})
"""The signalling messages its media client handles."""


class Member:
    """A participant joined over the WebSocket (`joined`: the server's `joined` message), with
    its media client publishing `tracks` (`track_factory`: the tracks of each new publish
    session, after a `media_moved` or a takeover)."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        joined: dict[str, Any],
        tracks: list[MediaStreamTrack],
        *,
        track_factory: Callable[[], list[MediaStreamTrack]] | None = None,
        decode: bool = True,
    ) -> None:
        self.ws = ws
        self.joined = joined
        self.messages: list[dict[str, Any]] = []
        self.client = MediaClient(self._send, tracks, decode=decode, track_factory=track_factory)
        self.reader = asyncio.ensure_future(self._read())

    @property
    def participant_id(self) -> str:
        return str(self.joined["participant_id"])

    async def _send(self, message: dict[str, Any]) -> None:
        # Sent on a connection its node closed (killed, or drained) are lost, as a browser's.
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await self.ws.send_json(message)

    def received(self, message: dict[str, Any]) -> None:
        """Each message as it arrives, before its media client has it (for subclasses)."""

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            self.messages.append(data)
            self.received(data)
            if data["type"] in MEDIA_MESSAGES:
                await self.client.handle(data)

    async def resume(self, http: aiohttp.ClientSession, url: str, token: str) -> dict[str, Any]:
        """Their signalling connection is gone (its node died): resume on the node at `url`,
        as a client does (docs/protocol.md, `resume`), on a new WebSocket. Returns the
        `resumed` answer; after one with `replayed` false (another node took them over), the
        new `joined` is theirs and their media sessions are opened again
        (`MediaClient.renew`). Raises RuntimeError when the resume is refused."""
        ws = await http.ws_connect(url.replace("http", "ws", 1) + "/ws")
        await ws.send_json({
            "type": "resume", "token": token, "participant_id": self.participant_id,
            "resume_token": self.joined["resume_token"], "last_seq": len(self.messages),
        })  # fmt: skip
        resumed = json.loads((await ws.receive(timeout=15)).data)
        if resumed["type"] != "resumed":
            await ws.close()
            raise RuntimeError(f"resume refused: {resumed} (close code {ws.close_code})")
        self.ws = ws
        if resumed.get("replayed", True) is False:
            joined = json.loads((await ws.receive(timeout=10)).data)
            if joined["type"] != "joined":
                raise RuntimeError(f"taken over, then {joined} instead of joined")
            self.joined = joined
        # Renewed first: the new sessions must be there for the offers that follow.
        await self.client.handle(resumed)
        self.reader = asyncio.ensure_future(self._read())
        return dict(resumed)

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        await self.client.close()
        with contextlib.suppress(Exception):
            await self.ws.close()

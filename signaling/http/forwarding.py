"""Archive requests reach the node holding the recording, whichever node they arrive at.

A recording is written to the disk of the node whose SFU hosted the room; behind a load balancer
an archivist's request may arrive at any node. Each node says in the shared state where other
nodes reach it (`node_url`) and which recordings it holds (at start, every minute, and as each
recording opens). A node asked for a recording it does not hold:

1. authenticates the caller itself (token or session, DPoP binding, revocation): the token
   never leaves it;
2. forwards the request to the holder with the caller's verified identity, signed with a key
   derived from the cluster's shared secret (`cluster_key_file`): method, path and query, the
   body's hash, the holder's node id, a timestamp and a nonce, so a forwarded request cannot be
   altered, sent to another node, or replayed;
3. streams the holder's answer back as it comes (Range reads, exports, bundles).

The holder checks that signature (`verify`) and treats the identity as its own authentication
would: revocation and the policy are decided there, and its audit log records the access.
`GET /api/recordings` lists every live node's recordings (`list_everywhere`), saying which
nodes did not answer. The holder gone (its heartbeat ran out, or it does not answer): 503 with a
JSON body naming it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import AuthenticationError, ConfigError, Unavailable
from signaling.dpop import SeenProofs
from signaling.identity import Identity

log = logging.getLogger("consilium.forwarding")

FORWARDED_HEADER = "X-Consilium-Forwarded"
"""The forwarded caller: base64url of a JSON object (identity, nodes, time, nonce, body hash)."""
SIGNATURE_HEADER = "X-Consilium-Forwarded-Signature"
"""base64url of HMAC-SHA256 over the method, the path with its query, and `FORWARDED_HEADER`."""
MAX_SKEW_S = 30.0
"""A forwarded request older (or further ahead) than this is refused."""
MIN_KEY_BYTES = 32
"""The least a cluster secret may hold."""
ANNOUNCE_EVERY_S = 60.0
"""How often a node says again which recordings it holds (a Redis restarted empty forgets)."""
MAX_FORWARDED_BODY = 1024 * 1024
"""The largest request body forwarded (the archive's are small JSON objects)."""
_REQUEST_HEADERS = ("Range", "If-Range", "Accept", "Content-Type")
"""The caller's headers the holder gets; never Authorization, Cookie or DPoP."""
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "server", "date",
}  # fmt: skip


def load_cluster_key(path: Path) -> bytes:
    """The key that signs forwarded requests, derived (HKDF-SHA256) from the cluster's shared
    secret in `path`; ConfigError if it cannot be read or is too short."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cluster_key_file {path}: cannot read it ({exc})") from None
    if len(secret) < MIN_KEY_BYTES:
        raise ConfigError(
            f"cluster_key_file {path}: holds {len(secret)} bytes, at least {MIN_KEY_BYTES} needed "
            "(e.g. head -c 32 /dev/urandom > FILE)"
        )
    return HKDF(
        hashes.SHA256(), length=32, salt=None, info=b"consilium/archive-forwarding/1"
    ).derive(secret)


@dataclass(frozen=True)
class ForwardedCaller:
    """Who asked, as the node that authenticated them vouches."""

    identity: Identity
    """The caller, as verified there."""
    origin: str
    """The node id that authenticated them and forwarded the request."""
    auth_time: float | None
    """When a session's user last signed in (for step-up); None for a bearer token."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def identity_json(identity: Identity) -> dict[str, Any]:
    """An identity as JSON (tuples as lists)."""
    return {
        f.name: list(v) if isinstance(v := getattr(identity, f.name), tuple) else v
        for f in dataclasses.fields(identity)
    }


def identity_from_json(raw: dict[str, Any]) -> Identity:
    """The identity `identity_json` wrote; ValueError if it is not one."""
    names = {f.name for f in dataclasses.fields(Identity)}
    if not isinstance(raw, dict) or set(raw) - names or not {"sub", "jti", "role"} <= set(raw):
        raise ValueError("not an identity")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    if not all(isinstance(values[k], str) for k in ("sub", "jti", "role")):
        raise ValueError("not an identity")
    return Identity(**values)


def _mac(key: bytes, method: str, path_qs: str, header: str) -> bytes:
    message = f"{method.upper()}\n{path_qs}\n{header}".encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def sign(
    key: bytes,
    method: str,
    path_qs: str,
    body: bytes,
    caller: ForwardedCaller,
    target: str,
    now: float,
) -> dict[str, str]:
    """The headers that forward a request for `caller` to node `target`."""
    claims = {
        "v": 1,
        "identity": identity_json(caller.identity),
        "auth_time": caller.auth_time,
        "from": caller.origin,
        "to": target,
        "ts": now,
        "nonce": secrets.token_hex(16),
        "body": hashlib.sha256(body).hexdigest(),
    }
    header = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return {
        FORWARDED_HEADER: header,
        SIGNATURE_HEADER: _b64(_mac(key, method, path_qs, header)),
    }


def verify(
    key: bytes | None,
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    body: bytes,
    own_node: str,
    seen: SeenProofs,
    now: float,
) -> ForwardedCaller:
    """The caller a forwarded request vouches for; AuthenticationError (reason
    `forwarding_refused`) if it was not signed with this cluster's key, for this request, to
    this node, just now, once."""

    def refuse(why: str) -> AuthenticationError:
        return AuthenticationError(f"forwarded request refused: {why}", reason="forwarding_refused")

    if key is None:
        raise refuse("this node has no cluster_key_file")
    header = headers.get(FORWARDED_HEADER, "")
    try:
        signature = _unb64(headers.get(SIGNATURE_HEADER, ""))
    except ValueError:
        raise refuse("malformed signature") from None
    if not hmac.compare_digest(signature, _mac(key, method, path_qs, header)):
        raise refuse("bad signature")
    try:
        claims = json.loads(_unb64(header))
        identity = identity_from_json(claims["identity"])
        sent_at, to, nonce = float(claims["ts"]), str(claims["to"]), str(claims["nonce"])
        auth_time = None if claims.get("auth_time") is None else float(claims["auth_time"])
        origin, body_hash = str(claims["from"]), str(claims["body"])
    except (ValueError, KeyError, TypeError):
        raise refuse("malformed claims") from None
    if to != own_node:
        raise refuse("meant for another node")
    if abs(now - sent_at) > MAX_SKEW_S:
        raise refuse("too old (or the nodes' clocks differ)")
    if not hmac.compare_digest(body_hash, hashlib.sha256(body).hexdigest()):
        raise refuse("the body was altered")
    if not seen.first_use(f"fwd:{nonce}", now):
        raise refuse("replayed")
    return ForwardedCaller(identity, origin, auth_time)


class Forwarder:
    """This node's side of forwarding: says where it is and what it holds, sends requests to
    the holder, and checks the requests other nodes send it."""

    def __init__(
        self,
        node_id: str,
        node_url: str | None,
        key: bytes | None,
        store: Any,
        held_ids: Callable[[], list[str]],
    ) -> None:
        self.node_id = node_id
        self.node_url = node_url
        self.key = key
        """The forwarding key (`load_cluster_key`); None: no cluster secret, nothing forwarded."""
        self.store = store
        """The shared state (`StateStore`): node URLs, recording holders, live nodes."""
        self.held_ids = held_ids
        """The recordings on this node's disk (`ArchiveService.held_ids`)."""
        self.seen = SeenProofs(window_s=2 * MAX_SKEW_S)
        """Nonces of the forwarded requests accepted lately (a replay is refused)."""
        self._session: aiohttp.ClientSession | None = None

    # -- saying where this node is and what it holds --------------------------------------------

    async def announce(self) -> None:
        """Say this node's URL and every recording it holds (Unavailable: Redis out of reach)."""
        await self.store.set_node_url(self.node_id, self.node_url)
        await self.store.set_recording_holders(self.node_id, await asyncio.to_thread(self.held_ids))

    async def retire(self) -> None:
        """At a clean stop: a node holding no recordings is forgotten (a node holding some
        stays named, and the others say so while it is not running)."""
        if not await asyncio.to_thread(self.held_ids):
            await self.store.set_node_url(self.node_id, None)

    async def keep_announcing(self) -> None:
        """`announce` now and every `ANNOUNCE_EVERY_S` (a Redis that restarted empty learns it
        again), until cancelled."""
        while True:
            try:
                await self.announce()
            except Unavailable:
                log.warning("cannot say which recordings this node holds: shared state down")
            await asyncio.sleep(ANNOUNCE_EVERY_S)

    # -- sending ----------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        """The client session to the other nodes (made on first use)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,  # bytes pass through as the holder sent them
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def holder(self, recording_id: str) -> str | None:
        """The node holding `recording_id` when it is another one; None: no node says so."""
        holder = await self.store.recording_holder(recording_id)
        return None if holder in (None, self.node_id) else str(holder)

    async def url_of(self, node_id: str) -> str:
        """The URL of a live node; Unavailable (503) if it is gone or cannot be reached."""
        if self.key is None:
            raise Unavailable(
                f"the recording is held by node {node_id}; this node cannot forward to it "
                "(no cluster_key_file)",
                node=node_id,
            )
        live = await self.store.live_nodes()
        if node_id not in live:
            raise Unavailable(
                f"the node holding this recording ({node_id}) is not running", node=node_id
            )
        url = (await self.store.node_urls()).get(node_id)
        if not url:
            raise Unavailable(
                f"the node holding this recording ({node_id}) has no node_url", node=node_id
            )
        return url.rstrip("/")

    @contextlib.asynccontextmanager
    async def request(
        self,
        node_id: str,
        method: str,
        path_qs: str,
        caller: ForwardedCaller,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request to node `node_id` on behalf of `caller`; Unavailable if it does not
        answer."""
        url = await self.url_of(node_id)  # Unavailable without a key
        assert self.key is not None
        signed = sign(self.key, method, path_qs, body, caller, node_id, time.time())
        try:
            async with self.session().request(
                method, url + path_qs, data=body or None, headers={**(headers or {}), **signed},
                allow_redirects=False,
            ) as response:  # fmt: skip
                yield response
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise Unavailable(
                f"the node holding this recording ({node_id}) does not answer", node=node_id
            ) from exc

    async def forward(
        self, request: web.Request, caller: ForwardedCaller, node_id: str
    ) -> web.StreamResponse:
        """Send `request` to node `node_id` for `caller` and stream its answer back."""
        body = await request.read()
        if len(body) > MAX_FORWARDED_BODY:
            raise Unavailable("request body too large to forward")
        headers = {h: request.headers[h] for h in _REQUEST_HEADERS if h in request.headers}
        async with self.request(
            node_id, request.method, request.path_qs, caller, body, headers
        ) as upstream:
            answer = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    answer.headers.add(name, value)
            await answer.prepare(request)
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await answer.write(chunk)
            await answer.write_eof()
            return answer

    async def list_everywhere(
        self, request: web.Request, caller: ForwardedCaller
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Every other node's answer to this `GET /api/recordings` (its own recordings only),
        and the nodes that did not answer: those that are not running (stopped or lost with
        recordings on their disk) or did not answer in time."""
        if self.key is None:
            return [], []
        live = set(await self.store.live_nodes())
        urls = await self.store.node_urls()

        async def ask(node_id: str) -> list[dict[str, Any]] | None:
            if node_id not in live:
                return None
            try:
                async with self.request(node_id, "GET", request.path_qs, caller) as response:
                    if response.status != 200:
                        log.warning("node %s answered %s to a listing", node_id, response.status)
                        return None
                    return list((await response.json())["recordings"])
            except (Unavailable, ValueError, KeyError, aiohttp.ClientError) as exc:
                log.warning("node %s did not list its recordings: %s", node_id, exc)
                return None

        order = sorted(set(urls) - {self.node_id})
        answers = await asyncio.gather(*(ask(n) for n in order))
        found = [r for answer in answers if answer is not None for r in answer]
        return found, [n for n, a in zip(order, answers, strict=True) if a is None]


REQUEST_CALLER = web.RequestKey("forwarded_caller", ForwardedCaller)
"""Where the holder keeps the caller of a forwarded request it verified."""


def forwarded_caller(request: web.Request) -> ForwardedCaller | None:
    """The caller another node vouched for, on a request `forward_to_holder` verified."""
    return request.get(REQUEST_CALLER)

"""The door of the signalling WebSocket: who may open one, decided before the upgrade.

Pure (sans-IO): the caller passes the request's origin, the peer's address and `now`, and gets
`Accept` or `Refuse`; it audits and raises the refusal itself. Three checks, in this order: the
browser's origin (cross-site WebSocket hijacking), the join attempts per address per minute, and
the number of connections still waiting for their `join`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from core.errors import ConsiliumError, PolicyDenied, RateLimited
from core.ratelimit import WindowCounter


@dataclass(frozen=True, slots=True)
class Accept:
    """The connection may upgrade and send its `join`."""


ACCEPT = Accept()
"""The one `Accept` (it has no fields): `knock` allocates nothing for a connection it admits,
whose handler holds the verdict for the connection's whole life."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """The upgrade is refused with `error` (its HTTP status and message)."""

    error: ConsiliumError
    """What the client is told."""
    audit_reason: str | None = None
    """The `join_refused` entry's reason; None: not audited (a busy node is no one's fault)."""
    origin: str | None = None
    """The refused origin, for the audit entry (unscrubbed)."""


class Door:
    """Admits signalling connections: origin, join rate per address, pending-connection cap."""

    def __init__(
        self,
        *,
        allowed_origins: Collection[str],
        own_origin: str,
        join_attempts_per_min: int,
        max_pending: int,
    ) -> None:
        self.allowed_origins = frozenset(allowed_origins)
        """Origins a browser may open a connection from; empty: this node's own."""
        self.own_origin = own_origin
        """The node's public origin (`Settings.own_origin`)."""
        self.join_attempts = WindowCounter(join_attempts_per_min, 60.0)
        """Connection attempts per peer address in the last minute."""
        self.max_pending = max_pending
        """Connections that may wait for their `join` at once."""
        self.pending = 0
        """Connections upgraded and not yet joined (or refused)."""

    def origin_allowed(self, origin: str | None, address: str) -> bool:
        """Whether a browser at `origin` may connect; `address` is how the request named this
        node (`scheme://host`), also allowed when no origins are configured."""
        if origin is None:
            # Non-browser clients (bots, the CLI) send no Origin; a browser always does, which is
            # what cross-site WebSocket hijacking needs.
            return True
        allowed = set(self.allowed_origins) or {self.own_origin}
        if not self.allowed_origins:
            allowed.add(address)
        return origin.rstrip("/") in allowed

    def knock(self, *, origin: str | None, address: str, peer: str, now: float) -> Accept | Refuse:
        """Decide one upgrade request from `peer` (an attempt counts against its address)."""
        if not self.origin_allowed(origin, address):
            return Refuse(
                PolicyDenied("this origin may not open a signalling connection"),
                "origin_not_allowed",
                origin or "",
            )
        if not self.join_attempts.allow(peer, now):
            return Refuse(
                RateLimited("too many join attempts from this address; wait a minute"),
                "join_rate_limited",
            )
        if self.pending >= self.max_pending:
            return Refuse(RateLimited("too many connections are joining; try again shortly"))
        return ACCEPT

    def enter(self) -> None:
        """An accepted connection waits for its `join`."""
        self.pending += 1

    def leave(self) -> None:
        """A waiting connection joined, or was refused or closed."""
        self.pending -= 1

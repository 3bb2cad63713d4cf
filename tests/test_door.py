"""The door of the signalling WebSocket, decided with no socket and no event loop."""

from __future__ import annotations

from core.errors import PolicyDenied, RateLimited
from signaling.http.door import Accept, Door, Refuse

OWN = "https://mdt.hospital.example"


def door(allowed: tuple[str, ...] = (), per_min: int = 3, max_pending: int = 2) -> Door:
    return Door(
        allowed_origins=allowed,
        own_origin=OWN,
        join_attempts_per_min=per_min,
        max_pending=max_pending,
    )


def knock(d: Door, origin: str | None = OWN, peer: str = "10.0.0.7", now: float = 0.0):
    return d.knock(origin=origin, address="http://127.0.0.1:8443", peer=peer, now=now)


def test_a_client_without_an_origin_is_let_in() -> None:
    assert knock(door(), origin=None) == Accept()


def test_the_nodes_own_origin_and_the_address_it_was_reached_at_are_let_in() -> None:
    assert knock(door(), origin=OWN + "/") == Accept()
    assert knock(door(), origin="http://127.0.0.1:8443") == Accept()


def test_a_foreign_origin_is_refused_and_audited_with_the_origin() -> None:
    verdict = knock(door(), origin="https://evil.example")
    assert isinstance(verdict, Refuse)
    assert isinstance(verdict.error, PolicyDenied)
    assert verdict.audit_reason == "origin_not_allowed"
    assert verdict.origin == "https://evil.example"


def test_configured_origins_replace_the_nodes_own() -> None:
    d = door(allowed=("https://portal.hospital.example",))
    assert knock(d, origin="https://portal.hospital.example") == Accept()
    assert isinstance(knock(d, origin=OWN), Refuse)
    assert isinstance(knock(d, origin="http://127.0.0.1:8443"), Refuse)


def test_join_attempts_are_limited_per_address_and_refill_over_the_minute() -> None:
    d = door(per_min=3)
    assert [knock(d, now=1.0) for _ in range(3)] == [Accept()] * 3
    refused = knock(d, now=1.0)
    assert isinstance(refused, Refuse)
    assert isinstance(refused.error, RateLimited)
    assert refused.audit_reason == "join_rate_limited"
    assert knock(d, peer="10.0.0.8", now=1.0) == Accept()  # another address has its own count
    assert knock(d, now=21.0) == Accept()  # a third of the minute later: one attempt back


def test_a_refused_origin_does_not_count_as_a_join_attempt() -> None:
    d = door(per_min=1)
    assert isinstance(knock(d, origin="https://evil.example"), Refuse)
    assert knock(d) == Accept()


def test_pending_connections_are_capped_without_an_audit_entry() -> None:
    d = door(max_pending=2, per_min=100)
    d.enter()
    d.enter()
    verdict = knock(d)
    assert isinstance(verdict, Refuse)
    assert isinstance(verdict.error, RateLimited)
    assert verdict.audit_reason is None
    d.leave()
    assert knock(d) == Accept()

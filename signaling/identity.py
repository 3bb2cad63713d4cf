"""The verified identity a token carries, as the rest of the server sees it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking, taken only from a verified token's claims."""

    sub: str
    """Stable subject identifier from the identity provider."""
    jti: str
    """Token id (for revocation of one token)."""
    role: str
    """One of the policy's roles (chair, specialist, ...)."""
    name: str = ""
    """Display name (never written to the audit log)."""
    depts: tuple[str, ...] = ()
    """Departments the holder belongs to."""
    org: str = ""
    """Institution."""
    rooms: tuple[str, ...] = ()
    """Room ids the token grants."""
    amr: tuple[str, ...] = ()
    """Authentication methods (second-factor evidence)."""
    iss: str = ""
    """Issuer the token came from."""
    exp: int = 0
    """Expiry, seconds since the epoch."""
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)
    """Other claims, kept for later issues; never logged."""

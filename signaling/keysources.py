"""Where the trusted signing keys come from: a JWKS file, a JWKS URL, or the `jwks_uri` found by
OpenID Connect discovery, each with its caching and refresh.

These sources only move bytes: which entries of a JWKS become trusted keys is decided by
`signaling.tokens.trusted_keys_from_jwks` (pure), and `TokenVerifier` asks a source for keys
through the `KeySource` Protocol declared beside it. Each source hands back the same list object
for as long as the key set is unchanged, so the verifier can tell a reload by identity.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import jwt

from core.errors import ConfigError
from signaling.tokens import keys_unavailable, trusted_keys_from_jwks

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 256 * 1024
"""Bound on a JWKS or discovery document read from a file or the network."""


class _KeySet:
    """The last good JWKS document and its keys; replaced only when the document changes."""

    def __init__(self) -> None:
        self.document: object = None
        self.keys: list[jwt.PyJWK] | None = None

    def replace(self, document: object, origin: str) -> None:
        """Adopt `document` (raises ValueError if it is not a JWKS; the old set stays then)."""
        if self.keys is not None and document == self.document:
            return
        keys = trusted_keys_from_jwks(document)
        if not keys:
            log.warning("JWKS from %s has no usable signing key", origin)
        log.info("loaded %d trusted signing key(s) from %s", len(keys), origin)
        self.document, self.keys = document, keys


class JwksFile:
    """Trusted keys from a JWKS file, re-read whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        """The JWKS file."""
        self._stamp: tuple[int, int, int] | None = None
        self._set = _KeySet()

    async def keys(self, *, refresh: bool = False) -> list[jwt.PyJWK]:
        """The keys in the file as of its last change; `refresh` adds nothing for a file."""
        # A stat per verify costs microseconds, less than handing the read to a thread.
        try:
            stat = self.path.stat()
        except OSError:
            return self._last_good("cannot stat")
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp != self._stamp:
            if stat.st_size > MAX_JWKS_BYTES:
                return self._last_good("file too large")
            try:
                self._set.replace(json.loads(self.path.read_bytes()), str(self.path))
            except (OSError, ValueError, RecursionError) as error:
                # Keep the stamp unchanged so the next call tries again (e.g. after a half write).
                return self._last_good(type(error).__name__)
            self._stamp = stamp
        assert self._set.keys is not None
        return self._set.keys

    def _last_good(self, problem: str) -> list[jwt.PyJWK]:
        log.warning("JWKS file %s unusable (%s)", self.path, problem)
        if self._set.keys is None:
            raise keys_unavailable()
        return self._set.keys


SessionFactory = Callable[[], aiohttp.ClientSession]
"""Makes the aiohttp session for one fetch; the source closes it afterwards."""

_FETCH_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError, RecursionError)


def _check_fetch_url(url: str, what: str) -> None:
    """Trust anchors come over HTTPS; plain HTTP only from this host (development, tests)."""
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ConfigError(f"{what} is not a URL: {url!r}") from error
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise ConfigError(f"{what} must be an https URL (http only for localhost): {url!r}")


async def _fetch_json(url: str, session_factory: SessionFactory | None, timeout_s: float) -> object:
    """GET a JSON document of bounded size; raises one of _FETCH_ERRORS on any failure."""
    factory = session_factory or aiohttp.ClientSession
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    body = bytearray()
    async with (
        factory() as session,
        # No redirects: the keys come from exactly the configured or discovered URL.
        session.get(
            url, timeout=timeout, allow_redirects=False, headers={"Accept": "application/json"}
        ) as response,
    ):
        if response.status != 200:
            raise aiohttp.ClientResponseError(
                response.request_info, (), status=response.status, message="unexpected status"
            )
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("document too large")
    return json.loads(body)


class JwksUrl:
    """Trusted keys fetched from a JWKS URL: cached for `ttl_s`, re-fetched on request (an
    unknown `kid`) at most once per `refetch_interval_s`.

    A failed fetch keeps the last good key set (an IdP outage must not lock everyone out) and is
    retried no sooner than `refetch_interval_s` later.
    """

    def __init__(
        self,
        url: str,
        *,
        session_factory: SessionFactory | None = None,
        refetch_interval_s: float = 30.0,
        ttl_s: float = 300.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_fetch_url(url, "JWKS URL")
        if not (0 < refetch_interval_s <= ttl_s and timeout_s > 0):
            raise ConfigError(
                "JWKS timings must satisfy 0 < refetch_interval_s <= ttl_s, timeout_s > 0"
            )
        self.url = url
        """Where the JWKS is fetched from."""
        self._session_factory = session_factory
        self._refetch_interval_s = refetch_interval_s
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._set = _KeySet()
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        # One fetch at a time: a burst of tokens with a new kid causes one request, not many.
        self._lock = asyncio.Lock()

    async def keys(self, *, refresh: bool = False) -> list[jwt.PyJWK]:
        """The cached keys, fetched first if absent, older than the TTL, or `refresh` is asked
        and the last attempt is older than the refetch interval."""
        if self._due(refresh):
            async with self._lock:
                # Another task may have fetched while this one waited for the lock.
                if self._due(refresh):
                    await self._fetch()
        if self._set.keys is None:
            raise keys_unavailable()
        return self._set.keys

    def _due(self, refresh: bool) -> bool:
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self._refetch_interval_s:
            return False
        if self._fetched_at is None or refresh:
            return True
        return now - self._fetched_at >= self._ttl_s

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        try:
            document = await _fetch_json(self.url, self._session_factory, self._timeout_s)
            self._set.replace(document, self.url)
        except _FETCH_ERRORS as error:
            log.warning("fetching JWKS from %s failed: %s", self.url, type(error).__name__)
            return
        self._fetched_at = self._clock()


class OidcDiscovery:
    """Trusted keys of an OpenID Connect issuer: `<issuer>/.well-known/openid-configuration`
    names the `jwks_uri`, which is then used like `JwksUrl` (same keyword arguments).

    The discovery document must name exactly the configured issuer, else ConfigError.
    """

    def __init__(
        self,
        issuer: str,
        *,
        session_factory: SessionFactory | None = None,
        refetch_interval_s: float = 30.0,
        ttl_s: float = 300.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_fetch_url(issuer, "issuer")
        self.issuer = issuer
        """The configured issuer, compared verbatim with the discovery document's."""
        # OpenID Connect Discovery 1.0 section 4: strip a trailing "/" before appending.
        self.discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        """Where the discovery document is fetched from."""
        self._session_factory = session_factory
        self._refetch_interval_s = refetch_interval_s
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._jwks: JwksUrl | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def keys(self, *, refresh: bool = False) -> list[jwt.PyJWK]:
        """Discover the JWKS URL once, then behave as `JwksUrl.keys`."""
        if self._jwks is None:
            async with self._lock:
                if self._jwks is None:
                    self._jwks = await self._discover()
        return await self._jwks.keys(refresh=refresh)

    async def _discover(self) -> JwksUrl:
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self._refetch_interval_s:
            raise keys_unavailable()
        self._attempted_at = now
        try:
            document = await _fetch_json(self.discovery_url, self._session_factory, self._timeout_s)
        except _FETCH_ERRORS as error:
            log.warning("OIDC discovery at %s failed: %s", self.discovery_url, type(error).__name__)
            raise keys_unavailable() from error
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            named = document.get("issuer") if isinstance(document, dict) else None
            raise ConfigError(
                f"OIDC discovery at {self.discovery_url} names issuer {named!r}, "
                f"expected {self.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ConfigError(f"OIDC discovery at {self.discovery_url} has no jwks_uri")
        log.info("OIDC issuer %s publishes its keys at %s", self.issuer, jwks_uri)
        return JwksUrl(
            jwks_uri,
            session_factory=self._session_factory,
            refetch_interval_s=self._refetch_interval_s,
            ttl_s=self._ttl_s,
            timeout_s=self._timeout_s,
            clock=self._clock,
        )

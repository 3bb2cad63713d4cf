"""This node as a client of the hospital's OpenID provider: discovery, the provider's keys, the
code exchange and the ID token's signature. The rules themselves are in `signaling.oidc`.

Every failure to reach the provider is `Unavailable` (503, "try again"); every answer that
fails a check is `oidc.SignInError` (401) with its reason. Neither is ever a 500.

DPoP (RFC 9449) at the token endpoint: when the provider's discovery offers ES256 DPoP, the code
is exchanged with a proof by this node's own key (made at start, in memory only), answering the
provider's `use_dpop_nonce` once with its `DPoP-Nonce` (section 8); the provider then binds the
access token to the node. It is the node that redeems the code, so it is the node's key, not the
browser's: the browser's key binds Consilium's own session instead (`dpop_jkt` of `/auth/signin`,
`signaling.http.device_binding`). A provider that requires DPoP-bound clients works this way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from core.errors import AuthenticationError, ConfigError, Unavailable
from signaling import dpop, oidc
from signaling.keysources import JwksUrl
from signaling.settings import Settings
from signaling.tokens import read_header, select_key, verify_signature

log = logging.getLogger("consilium.signin")

MAX_DOCUMENT_BYTES = 256 * 1024
"""Largest discovery document or token response read from the provider."""

TIMEOUT_S = 5.0
"""Seconds one request to the provider may take."""

DISCOVERY_TTL_S = 3600.0
"""Seconds the discovery document is kept before it is fetched again."""


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """What this node uses of the provider's discovery document."""

    issuer: str
    """The issuer, exactly as configured (checked)."""
    authorization_endpoint: str
    """Where the browser is sent to sign in."""
    token_endpoint: str
    """Where the code is exchanged."""
    jwks_uri: str
    """The provider's signing keys."""
    end_session_endpoint: str | None
    """RP-initiated logout, if the provider offers it."""
    dpop_algorithms: tuple[str, ...] = ()
    """The DPoP proof algorithms the provider accepts (`dpop_signing_alg_values_supported`)."""


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """The provider's answer to the code exchange, as far as the sign-in needs it."""

    id_token: str
    """The signed ID token."""
    access_token: str | None
    """The access token, to check the ID token's `at_hash` against (not kept)."""
    dpop_bound: bool = False
    """The provider bound the access token to this node's DPoP key (`token_type` `DPoP`)."""


def unreachable() -> Unavailable:
    """The error for a provider that cannot be reached or answers nonsense."""
    return Unavailable(
        "the hospital's sign-in service cannot be reached; try again", reason="idp_unreachable"
    )


def claim_map_of(settings: Settings) -> oidc.ClaimMap:
    """The claim map the settings describe: a preset, single claims overridden."""
    preset = oidc.CLAIM_PRESETS[settings.oidc_claims]
    return oidc.ClaimMap(
        subject=settings.oidc_claim_subject or preset.subject,
        name=settings.oidc_claim_name or preset.name,
        roles=settings.oidc_claim_roles or preset.roles,
        departments=settings.oidc_claim_departments or preset.departments,
        organisation=preset.organisation,
        role_map=oidc.parse_role_map(settings.oidc_role_map),
        mfa_acr_values=frozenset(settings.oidc_mfa_acr_values),
    )


class OidcClient:
    """The node's OIDC relying party (confidential with a secret file, else public + PKCE)."""

    def __init__(self, settings: Settings, known_roles: Sequence[str]) -> None:
        issuer = settings.signin_issuer
        if settings.oidc_client_id is None or issuer is None:
            raise ConfigError("sign-in needs oidc_client_id and an issuer")
        self.issuer = issuer
        """The configured issuer (the discovery document and ID tokens must name it)."""
        self.client_id = settings.oidc_client_id
        """This node's client id at the provider."""
        self.client_secret = _read_secret(settings.oidc_client_secret_file)
        """The client secret (client_secret_basic); None: a public client."""
        self.redirect_uri = settings.signin_redirect_url
        """The registered redirect URI."""
        self.scopes: tuple[str, ...] = tuple(settings.oidc_scopes)
        """Scopes asked for."""
        self.claim_map = claim_map_of(settings)
        """How the ID token's claims become an Identity."""
        self.known_roles: tuple[str, ...] = tuple(known_roles)
        """The policy's roles (a provider value that is one needs no role map entry)."""
        self.leeway_s = settings.jwt_leeway_s
        """Clock skew tolerated on exp and iat."""
        self.provider_name = settings.oidc_provider_name
        """Shown on the sign-in button."""
        self._metadata: ProviderMetadata | None = None
        self._fetched_at = 0.0
        self._jwks: JwksUrl | None = None
        self._refetch_interval_s = settings.jwks_refetch_interval_s
        self._lock = asyncio.Lock()
        self._dpop_key = ec.generate_private_key(ec.SECP256R1())
        self._dpop_nonce: str | None = None

    # -- the provider's documents ---------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """The discovery document (cached for `DISCOVERY_TTL_S`); Unavailable when out of reach."""
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._fetched_at > DISCOVERY_TTL_S:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                document = await _request_json("GET", url)
                self._metadata = _metadata_from(document, self.issuer)
                self._fetched_at = time.monotonic()
                if self._jwks is None or self._jwks.url != self._metadata.jwks_uri:
                    self._jwks = JwksUrl(
                        self._metadata.jwks_uri, refetch_interval_s=self._refetch_interval_s
                    )
            return self._metadata

    async def _keys(self, *, refresh: bool) -> list[jwt.PyJWK]:
        await self.metadata()
        assert self._jwks is not None
        try:
            return await self._jwks.keys(refresh=refresh)
        except (AuthenticationError, Unavailable, ConfigError):
            raise
        except Exception:
            raise unreachable() from None

    # -- the flow -------------------------------------------------------------------------------

    async def authorization_url(self, pending: oidc.PendingSignIn) -> str:
        """Where to send the browser for this pending sign-in."""
        metadata = await self.metadata()
        return oidc.authorization_url(
            metadata.authorization_endpoint,
            pending,
            client_id=self.client_id,
            redirect_uri=self.redirect_uri,
            scopes=self.scopes,
        )

    async def exchange(self, code: str, pending: oidc.PendingSignIn) -> TokenResponse:
        """Exchange the code (with the PKCE verifier) for tokens."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": pending.code_verifier,
            "client_id": self.client_id,
        }
        headers = {}
        if self.client_secret is not None:
            headers["Authorization"] = client_secret_basic(self.client_id, self.client_secret)
        use_dpop = "ES256" in metadata.dpop_algorithms
        document: Any = None
        for _ in range(2):  # a second time only to answer use_dpop_nonce
            answer_headers: dict[str, str] = {}
            if use_dpop:
                headers[dpop.HEADER] = self._token_endpoint_proof(metadata.token_endpoint)
            document = await _request_json(
                "POST", metadata.token_endpoint, form=form, headers=headers,
                answer_headers=answer_headers,
            )  # fmt: skip
            nonce = answer_headers.get("dpop-nonce")
            if nonce:
                self._dpop_nonce = nonce[:256]
            wants_nonce = isinstance(document, dict) and document.get("error") == "use_dpop_nonce"
            if not (use_dpop and wants_nonce and nonce):
                break
        if isinstance(document, dict) and "error" in document:
            # invalid_grant: a code used twice, expired, or a verifier that does not match.
            raise oidc.SignInError(
                "the identity provider refused the code", reason="code_refused",
                provider_error=str(document["error"])[:64],
            )  # fmt: skip
        id_token = document.get("id_token") if isinstance(document, dict) else None
        if not isinstance(id_token, str):
            raise oidc.SignInError("the provider sent no ID token", reason="no_id_token")
        access = document.get("access_token")
        bound = str(document.get("token_type", "")).lower() == "dpop"
        return TokenResponse(id_token, access if isinstance(access, str) else None, bound)

    def _token_endpoint_proof(self, url: str) -> str:
        """A proof by this node's key for POST to the provider's token endpoint."""
        return dpop.make_proof(
            self._dpop_key, method="POST", url=url, now=time.time(),
            jti=base64.urlsafe_b64encode(os.urandom(18)).decode("ascii"), nonce=self._dpop_nonce,
        )  # fmt: skip

    async def verified_claims(
        self, tokens: TokenResponse, pending: oidc.PendingSignIn, *, now: float
    ) -> dict[str, Any]:
        """The ID token's claims once its signature (the provider's JWKS) and every claim check
        of `oidc.check_id_token_claims` passed."""
        try:
            header = read_header(tokens.id_token)
            keys = await self._keys(refresh=False)
            try:
                select_key(keys, header)
            except AuthenticationError:
                # A key the provider has just rotated in: look once more (rate-limited).
                keys = await self._keys(refresh=True)
            payload = verify_signature(tokens.id_token, keys)
            claims = json.loads(payload)
        except oidc.SignInError:
            raise
        except AuthenticationError as exc:
            raise oidc.SignInError(
                "the ID token's signature is not the provider's",
                reason=f"id_token_{exc.details.get('reason', 'invalid')}",
            ) from None
        except ValueError:
            raise oidc.SignInError("the ID token is malformed", reason="malformed") from None
        if not isinstance(claims, dict):
            raise oidc.SignInError("the ID token is malformed", reason="malformed")
        oidc.check_id_token_claims(
            claims,
            issuer=self.issuer,
            client_id=self.client_id,
            nonce=pending.nonce,
            algorithm=str(header["alg"]),
            access_token=tokens.access_token,
            now=now,
            leeway_s=self.leeway_s,
            max_age_s=pending.max_age_s,
        )
        return claims

    async def end_session_url(self, id_token_hint: str, post_logout: str) -> str | None:
        """The provider's logout URL for this session, or None if it has none (or is down)."""
        try:
            metadata = await self.metadata()
        except Unavailable:
            return None
        if metadata.end_session_endpoint is None:
            return None
        query = {"client_id": self.client_id, "post_logout_redirect_uri": post_logout}
        if id_token_hint:
            query["id_token_hint"] = id_token_hint
        return metadata.end_session_endpoint + "?" + urlencode(query)


def client_secret_basic(client_id: str, secret: str) -> str:
    """RFC 6749 2.3.1: HTTP Basic over the form-urlencoded id and secret."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        secret = path.read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read oidc_client_secret_file {path}: {exc}") from None
    if not secret:
        raise ConfigError(f"oidc_client_secret_file {path} is empty")
    return secret


def _metadata_from(document: object, issuer: str) -> ProviderMetadata:
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        log.error("OIDC discovery names another issuer than %s", issuer)
        raise unreachable()
    fields = ("authorization_endpoint", "token_endpoint", "jwks_uri")
    if not all(isinstance(document.get(name), str) for name in fields):
        log.error("OIDC discovery document of %s lacks an endpoint", issuer)
        raise unreachable()
    end = document.get("end_session_endpoint")
    algorithms = document.get("dpop_signing_alg_values_supported")
    return ProviderMetadata(
        issuer,
        document["authorization_endpoint"],
        document["token_endpoint"],
        document["jwks_uri"],
        end if isinstance(end, str) else None,
        tuple(a for a in algorithms if isinstance(a, str)) if isinstance(algorithms, list) else (),
    )


async def _request_json(
    method: str,
    url: str,
    *,
    form: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    answer_headers: dict[str, str] | None = None,
) -> Any:
    """One bounded request to the provider; its JSON body (also for a 400 error answer), and
    its headers (names in lower case) into `answer_headers` when given."""
    body = bytearray()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session,
            session.request(
                method, url, data=form, allow_redirects=False,
                headers={"Accept": "application/json", **(headers or {})},
            ) as response,
        ):  # fmt: skip
            if response.status not in (200, 400, 401):
                raise ValueError(f"status {response.status}")
            if answer_headers is not None:
                answer_headers.update({k.lower(): v for k, v in response.headers.items()})
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError("document too large")
        return json.loads(body)
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
        log.warning("OIDC provider request failed: %s %s", type(exc).__name__, exc)
        raise unreachable() from None

"""DPoP (RFC 9449): proofs that a request comes from the device holding a key, checked without I/O.

A DPoP proof is a JWS (`typ: dpop+jwt`) signed by the client's private key, carrying its public
key in the `jwk` header, over the request it goes with: `htm` (method), `htu` (URL without query
and fragment), `iat`, a unique `jti`, and `ath` (the access token's SHA-256) when it presents a
token. A session or token bound to a key (its RFC 7638 thumbprint, `jkt`) is honoured only with a
fresh proof signed by that key, so a copied cookie or token is useless on another machine: the
browser's key is a non-extractable WebCrypto key that script cannot read out.

Pure (sans-IO): `now` (Unix seconds) is passed in, and the replay cache (`SeenProofs`) is an
object the caller keeps. `check_proof` runs the checks of RFC 9449 section 4.3 in order; every
refusal is an `InvalidDpopProof` whose `reason` names the check. All JOSE parsing and signature
arithmetic is pyjwt's and cryptography's; `none`, HMAC and private keys are refused by
construction.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.api_jws import PyJWS

from core.errors import AuthenticationError

PROOF_TYPE = "dpop+jwt"
"""The `typ` header every DPoP proof carries (RFC 9449 section 4.2)."""

HEADER = "DPoP"
"""The HTTP request header carrying a proof, and the `Authorization` scheme of a bound token."""

ALGORITHMS: tuple[str, ...] = ("ES256", "PS256", "RS256", "EdDSA")
"""Algorithms a proof may use (asymmetric only; advertised in `WWW-Authenticate`'s `algs`).
Browsers sign with ES256 (WebCrypto ECDSA P-256)."""

MAX_PROOF_BYTES = 4096
"""A longer proof is refused before it is parsed (an EC proof is about 600 bytes)."""

PROOF_MAX_AGE_S = 60
"""Seconds a proof is accepted after its `iat` (and how long its `jti` is remembered)."""

PROOF_FUTURE_S = 5
"""Seconds a proof's `iat` may lie ahead of this node's clock (beyond the token leeway)."""

JKT_CHARS = 43
"""Length of a SHA-256 thumbprint in unpadded base64url."""

_JWK_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
"""RFC 7638 section 3.2: the required members of each key type, in lexicographic order."""

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_KTY_FOR_ALG: Mapping[str, str] = {"ES256": "EC", "PS256": "RSA", "RS256": "RSA", "EdDSA": "OKP"}

_MIN_RSA_BITS = 2048


class InvalidDpopProof(AuthenticationError):
    """A request's DPoP proof is missing or fails a check; `reason` names which (`replayed`,
    `wrong_htu`, `stale`, `wrong_key`, ...). Answered as an `AuthenticationError` (401, close
    4401) with RFC 9449's error code, which is also the `error` of its `WWW-Authenticate: DPoP`
    challenge; a WebSocket closes with the reason `invalid_dpop_proof: <reason>`."""

    code = "invalid_dpop_proof"


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK: the hash of its required members as compact
    JSON in lexicographic order, base64url. Raises ValueError for another key type."""
    members = _JWK_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise ValueError("not an EC, RSA or OKP public key")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(access_token: str) -> str:
    """The `ath` claim: base64url of the SHA-256 of the access token's ASCII."""
    return b64url(hashlib.sha256(access_token.encode("ascii", "replace")).digest())


def is_thumbprint(value: object) -> bool:
    """Whether `value` looks like a SHA-256 JWK thumbprint (43 base64url characters)."""
    return (
        isinstance(value, str)
        and len(value) == JKT_CHARS
        and all(c.isalnum() or c in "-_" for c in value)
        and value.isascii()
    )


def normalized_url(url: str) -> str:
    """A URL as `htu` is compared (RFC 9449 section 4.3, RFC 3986 section 6.2.2-6.2.3): scheme and
    host in lower case, the default port dropped, an empty path as `/`, no query or fragment."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(scheme)
    netloc = host if port is None or port == default else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", "", ""))


class SeenProofs:
    """The `jti`s of accepted proofs still inside their acceptance window (RFC 9449 section
    11.1): a proof replayed within it is refused. Bounded: past `capacity` entries the oldest
    go first (a flood of valid proofs costs the flooder its own keys' signatures)."""

    def __init__(
        self, window_s: float = PROOF_MAX_AGE_S + PROOF_FUTURE_S, capacity: int = 100_000
    ) -> None:
        self.window_s = window_s
        """Seconds a jti is remembered (a proof older than this is refused as stale anyway)."""
        self.capacity = capacity
        """Most jtis remembered at once."""
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_use(self, key: str, now: float) -> bool:
        """Record `key` (the proof's jkt and jti) at `now`; False if it was already seen."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at > now - self.window_s and len(self._seen) < self.capacity:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True, slots=True)
class Proof:
    """A proof that passed every check."""

    jkt: str
    """The RFC 7638 thumbprint of the key that signed it."""
    jti: str
    """Its unique id."""
    iat: float
    """When the client made it."""


def _refuse(reason: str, message: str) -> InvalidDpopProof:
    return InvalidDpopProof(message, reason=reason)


def _public_key_of(jwk: Mapping[str, Any], alg: str) -> Any:
    """The public key of a proof's `jwk` header, fit for `alg`; refusals name why not."""
    if _PRIVATE_MEMBERS.intersection(jwk):
        raise _refuse("private_key", "the proof's jwk holds a private key")
    if jwk.get("kty") != _KTY_FOR_ALG[alg]:
        raise _refuse("wrong_key_type", f"{alg} needs a {_KTY_FOR_ALG[alg]} key")
    # A key that says what it is for (RFC 7517 section 4.2-4.4) is used for nothing else.
    ops = jwk.get("key_ops")
    if (
        jwk.get("alg", alg) != alg
        or jwk.get("use", "sig") != "sig"
        or (ops is not None and (not isinstance(ops, list) or "verify" not in ops))
    ):
        raise _refuse("wrong_key_use", "the proof's jwk is not a key for this signature")
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise _refuse("bad_jwk", "the proof's jwk is not a usable public key") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name != "secp256r1":
        raise _refuse("wrong_key_type", "ES256 needs a P-256 key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise _refuse("weak_key", "RSA keys under 2048 bits are refused")
    return key


def check_signature(proof: str, jwk: Mapping[str, Any], alg: str) -> bytes:
    """The payload of `proof` once its signature verifies under `jwk` with `alg` (one of
    `ALGORITHMS`); `InvalidDpopProof` otherwise."""
    if alg not in ALGORITHMS:
        raise _refuse("algorithm_not_allowed", f"alg {alg!r} is not allowed for DPoP")
    key = _public_key_of(jwk, alg)
    try:
        return PyJWS().decode_complete(proof, key=key, algorithms=[alg])["payload"]
    except jwt.InvalidSignatureError:
        raise _refuse("bad_signature", "the proof's signature does not verify") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _refuse("malformed", "the proof is not a well-formed JWS") from None


def _header(proof: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(proof)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _refuse("malformed", "the proof is not a well-formed JWS") from None
    if header.get("typ") != PROOF_TYPE:
        raise _refuse("wrong_typ", f"a DPoP proof has typ {PROOF_TYPE}")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise _refuse("algorithm_not_allowed", f"alg {alg!r} is not allowed for DPoP")
    if not isinstance(header.get("jwk"), dict):
        raise _refuse("no_jwk", "the proof carries no jwk header")
    return header


def check_proof(
    proof: str | None,
    *,
    method: str,
    url: str | tuple[str, ...],
    now: float,
    seen: SeenProofs,
    access_token: str | None = None,
    expected_jkt: str | None = None,
    leeway_s: float = 0,
) -> Proof:
    """Check one request's proof (RFC 9449 section 4.3) and record its jti.

    `method` and `url`: the request as this node sees it; `url` may be several spellings of the
    one request (the configured public origin, and the address the request came to), any of
    which `htu` may name. `access_token`: the token it presents (its
    `ath` must match). `expected_jkt`: the thumbprint of the key the session or token is bound
    to. Raises `InvalidDpopProof` with the failing check as `reason`.
    """
    if not proof:
        raise _refuse("missing", "bound to a device key: a DPoP proof by that key is required")
    if len(proof) > MAX_PROOF_BYTES or not proof.isascii():
        raise _refuse("malformed", "the proof is too long or not ASCII")
    header = _header(proof)
    jwk = header["jwk"]
    payload = check_signature(proof, jwk, header["alg"])
    try:
        claims = json.loads(payload)
    except ValueError:
        claims = None
    if not isinstance(claims, dict):
        raise _refuse("malformed", "the proof's payload is not a JSON object")
    jti, htm, htu, iat = (claims.get(k) for k in ("jti", "htm", "htu", "iat"))
    if not isinstance(jti, str) or not 8 <= len(jti) <= 256:
        raise _refuse("missing_claim", "the proof needs a jti")
    if not isinstance(htm, str) or not isinstance(htu, str):
        raise _refuse("missing_claim", "the proof needs htm and htu")
    if not isinstance(iat, (int, float)) or isinstance(iat, bool):
        raise _refuse("missing_claim", "the proof needs a numeric iat")
    if htm != method.upper():
        raise _refuse("wrong_htm", f"the proof is for {htm[:16]!r}, not {method.upper()}")
    urls = (url,) if isinstance(url, str) else url
    if not normalized_url(htu) or normalized_url(htu) not in {normalized_url(u) for u in urls}:
        raise _refuse("wrong_htu", "the proof is for another URL")
    if iat > now + PROOF_FUTURE_S + leeway_s:
        raise _refuse("future", "the proof is dated in the future (check the device's clock)")
    if iat < now - PROOF_MAX_AGE_S - leeway_s:
        raise _refuse("stale", "the proof is too old; make a fresh one for each request")
    if access_token is not None:
        if claims.get("ath") != access_token_hash(access_token):
            raise _refuse("wrong_ath", "the proof is not for this access token")
    jkt = jwk_thumbprint(jwk)
    if expected_jkt is not None and jkt != expected_jkt:
        raise _refuse("wrong_key", "the proof is signed by another key than the one bound")
    if not seen.first_use(f"{jkt}:{jti}", now):
        raise _refuse("replayed", "this proof was already used")
    return Proof(jkt, jti, float(iat))


def confirmation_jkt(claims: Mapping[str, Any]) -> str | None:
    """The key a token is bound to (`cnf.jkt`, RFC 9449 section 6.1), or None when unbound.
    Raises `InvalidDpopProof` for a `cnf.jkt` that is not a thumbprint."""
    cnf = claims.get("cnf")
    if not isinstance(cnf, Mapping) or "jkt" not in cnf:
        return None
    if not is_thumbprint(cnf["jkt"]):
        raise _refuse("bad_cnf", "the token's cnf.jkt is not a JWK thumbprint")
    return str(cnf["jkt"])


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims without checking its signature: only for reading `cnf` of a token whose
    signature is (or will be) verified by the token check; {} when unreadable."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def challenge(error: str = "invalid_dpop_proof", description: str = "") -> str:
    """The `WWW-Authenticate` value of a refusal (RFC 9449 section 7.1), naming the algorithms."""
    value = f'DPoP error="{error}"'
    if description:
        value += ', error_description="' + description.replace('"', "'")[:200] + '"'
    return value + f', algs="{" ".join(ALGORITHMS)}"'


def make_proof(
    private_key: ec.EllipticCurvePrivateKey,
    *,
    method: str,
    url: str,
    now: float,
    jti: str,
    nonce: str | None = None,
    access_token: str | None = None,
) -> str:
    """An ES256 proof for a request this node makes itself (its own key at the identity
    provider's token endpoint); `jti` is fresh randomness the caller passes in."""
    public = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    jwk = {k: public[k] for k in ("kty", "crv", "x", "y")}
    claims: dict[str, Any] = {"jti": jti, "htm": method.upper(), "htu": url, "iat": int(now)}
    if nonce is not None:
        claims["nonce"] = nonce
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    headers = {"typ": PROOF_TYPE, "jwk": jwk}
    return jwt.encode(claims, private_key, algorithm="ES256", headers=headers)

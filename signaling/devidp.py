"""The development identity provider: mints tokens when no real IdP is configured.

It keeps one Ed25519 signing key in `<data_dir>/dev-idp/signing-key.pem` (mode 0600) and
publishes the public half as `<data_dir>/dev-idp/jwks.json`, so the server verifies its tokens
through the same `TokenVerifier(JwksFile(...))` path as a hospital IdP's: there is no back door.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm
from jwt.utils import base64url_encode

from core.canonical import canonical_json
from core.durable import create_once, write_atomically
from core.errors import ConfigError

log = logging.getLogger(__name__)

DEV_ISSUER = "consilium-dev"
"""`iss` of development tokens."""

DEV_AUDIENCE = "consilium"
"""`aud` of development tokens."""


def _jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of an OKP public JWK: SHA-256 over its required members only,
    in lexicographic order and without whitespace."""
    required = {name: jwk[name] for name in ("crv", "kty", "x")}
    # The members are base64url and fixed names (ASCII), so canonical JSON is RFC 7638's form.
    return base64url_encode(hashlib.sha256(canonical_json(required)).digest()).decode()


class DevelopmentIdP:
    """A local token issuer for development and tests, with a persistent Ed25519 key."""

    def __init__(self, signing_key: ed25519.Ed25519PrivateKey, jwks_path: Path) -> None:
        self._signing_key = signing_key
        public_jwk = OKPAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
        self.kid = _jwk_thumbprint(public_jwk)
        """Key id: the RFC 7638 thumbprint of the public key."""
        self.public_jwk: dict[str, Any] = {
            **public_jwk,
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }
        """The public key as published in the JWKS."""
        self.jwks_path = jwks_path
        """The JWKS file to trust: `TokenVerifier(JwksFile(idp.jwks_path), ...)`."""

    @classmethod
    def load_or_create(cls, data_dir: Path) -> DevelopmentIdP:
        """The IdP whose key lives under `data_dir/dev-idp`, creating key and JWKS if absent."""
        directory = Path(data_dir) / "dev-idp"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = directory / "signing-key.pem"
        if not key_path.exists():
            cls._create_key(key_path)
        signing_key = cls._load_key(key_path)
        idp = cls(signing_key, directory / "jwks.json")
        idp._publish()
        return idp

    @staticmethod
    def _create_key(key_path: Path) -> None:
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Linked into place, never replacing an existing key: two processes starting at once
        # end up sharing the one key that was linked first.
        if create_once(key_path, pem):
            log.info("created development IdP signing key %s", key_path)

    @staticmethod
    def _load_key(key_path: Path) -> ed25519.Ed25519PrivateKey:
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            log.warning("development IdP key %s had mode %o; tightening to 0600", key_path, mode)
            os.chmod(key_path, 0o600)
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{key_path} is not an unencrypted PEM private key") from error
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"{key_path} is not an Ed25519 private key")
        return key

    def _publish(self) -> None:
        """Write the JWKS if it does not already say exactly this (keeps its mtime stable)."""
        document = json.dumps({"keys": [self.public_jwk]}, indent=2, sort_keys=True).encode()
        try:
            if self.jwks_path.read_bytes() == document:
                return
        except FileNotFoundError:
            pass
        write_atomically(self.jwks_path, document, mode=0o644)  # a public key: readable

    def mint(
        self,
        *,
        sub: str,
        role: str,
        depts: Sequence[str] = (),
        rooms: Sequence[str] = (),
        name: str = "",
        org: str = "",
        amr: Sequence[str] = ("pwd", "otp"),
        ttl_s: int = 3600,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """A signed EdDSA token for these claims, valid from now for `ttl_s` seconds.

        `extra` claims are added last, so a test may also use them to override a default.
        """
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": DEV_ISSUER,
            "aud": DEV_AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": str(uuid.uuid4()),
            "sub": sub,
            "role": role,
            "name": name,
            "org": org,
            "dept": list(depts),
            "room": list(rooms),
            "amr": list(amr),
        }
        claims.update(extra or {})
        return jwt.encode(
            claims, self._signing_key, algorithm="EdDSA", headers={"kid": self.kid, "typ": "JWT"}
        )

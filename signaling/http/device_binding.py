"""Device binding at the HTTP edge (DPoP, RFC 9449): which key a request's session or token is
bound to, and the proof that must come with it; the checks themselves are `signaling.dpop`'s.

Bound are: a sign-in session whose browser named its key (`SignInSession.dpop_jkt`), and a token
carrying `cnf.jkt` (an identity provider's DPoP-bound access token). An API request presents its
proof in the `DPoP` header (a bound token with `Authorization: DPoP <token>`, never `Bearer`); a
WebSocket join, whose browser cannot set headers, in the `dpop` field of `join`/`resume`, made
for `GET` on the socket's `ws(s)://` URL. Each proof is accepted once (this node's `SeenProofs`)
within `dpop.PROOF_MAX_AGE_S` of its `iat`. With `dpop_required`, unbound sessions and tokens
are refused too. A proof's URL is this node's public origin (`public_url`) or the address the
request came to (`api_urls`).
"""

from __future__ import annotations

import time

from aiohttp import web

from signaling import dpop
from signaling.http.node import Node
from signaling.oidc import SignInSession


class TokenBindingRefused(dpop.InvalidDpopProof):
    """A token refused for its binding rather than for a proof: a DPoP-bound token presented
    with `Authorization: Bearer` (RFC 9449 section 7.2: its binding must not be dropped), or an
    unbound one where `dpop_required`; answered `WWW-Authenticate: DPoP error="invalid_token"`."""

    code = "invalid_token"


def api_urls(node: Node, request: web.Request) -> tuple[str, ...]:
    """The URLs a browser's proof for this API request may name (`htu`): on the public origin
    (`public_url`: behind a TLS-terminating proxy the request itself says `http`), or on the
    address the request came to (a node reached under a name `public_url` does not give). A
    proof is signed by the device key, so naming the Host the request carried lends nothing
    to someone without it."""
    own = node.settings.own_origin + request.path
    return (own, f"{request.scheme}://{request.host}{request.path}")


def _as_socket(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return ("wss" if scheme == "https" else "ws") + "://" + rest


def socket_urls(node: Node, request: web.Request) -> tuple[str, ...]:
    """The URLs a join's proof may name: the signalling socket, `ws(s)://`, as `api_urls`."""
    return tuple(_as_socket(url) for url in api_urls(node, request))


def token_binding(token: str) -> str | None:
    """The key a (verified) token is bound to, its `cnf.jkt`; None when it is unbound."""
    return dpop.confirmation_jkt(dpop.unverified_claims(token))


def _check(
    node: Node,
    proof: str | None,
    *,
    method: str,
    url: tuple[str, ...],
    jkt: str,
    token: str | None,
) -> dpop.Proof:
    return dpop.check_proof(
        proof, method=method, url=url, now=time.time(), seen=node.seen_proofs,
        access_token=token, expected_jkt=jkt, leeway_s=node.settings.jwt_leeway_s,
    )  # fmt: skip


def _one_header(request: web.Request) -> str | None:
    proofs = request.headers.getall(dpop.HEADER, [])
    if len(proofs) > 1:
        raise dpop.InvalidDpopProof("send one DPoP header", reason="several_proofs")
    return proofs[0] if proofs else None


def check_session_request(node: Node, request: web.Request, session: SignInSession) -> None:
    """An API request a session authenticates: with its key's proof when it is bound; refused
    unbound when `dpop_required`."""
    if session.dpop_jkt is None:
        if node.settings.dpop_required:
            raise dpop.InvalidDpopProof(
                "this node requires device-bound sign-ins: sign in again", reason="dpop_required"
            )
        return
    _check(
        node, _one_header(request), method=request.method, url=api_urls(node, request),
        jkt=session.dpop_jkt, token=None,
    )  # fmt: skip


def check_token_request(node: Node, request: web.Request, scheme: str, token: str) -> None:
    """An API request a (verified) token authenticates, under `Authorization` `scheme`: a bound
    token needs the `DPoP` scheme and its key's proof with `ath`; an unbound one the `Bearer`
    scheme, and is refused when `dpop_required`."""
    jkt = token_binding(token)
    if jkt is None:
        if scheme == "dpop":
            raise dpop.InvalidDpopProof(
                "the DPoP scheme is for a DPoP-bound token", reason="token_not_bound"
            )
        if node.settings.dpop_required:
            raise TokenBindingRefused(
                "this node requires DPoP-bound tokens", reason="dpop_required"
            )
        return
    if scheme != "dpop":
        raise TokenBindingRefused(
            "a DPoP-bound token is presented as Authorization: DPoP, with a proof",
            reason="bound_token_as_bearer",
        )  # fmt: skip
    _check(
        node, _one_header(request), method=request.method, url=api_urls(node, request),
        jkt=jkt, token=token,
    )  # fmt: skip


def check_join(
    node: Node, proof: str, *, token: str, session: SignInSession | None, urls: tuple[str, ...]
) -> None:
    """A `join`/`resume` with `token` (or, empty, the connection's `session`): its `dpop` proof
    by the bound key, for GET on the socket (`urls`: `socket_urls` of the upgrade); refused
    unbound when `dpop_required`."""
    if token:
        jkt, access_token = token_binding(token), token
    else:
        if session is None:
            return  # no identity at all: the join's own check refuses it (4401)
        jkt, access_token = session.dpop_jkt, None
    if jkt is None:
        if node.settings.dpop_required:
            raise dpop.InvalidDpopProof(
                "this node requires device-bound sign-ins and tokens", reason="dpop_required"
            )
        return
    _check(node, proof or None, method="GET", url=urls, jkt=jkt, token=access_token)

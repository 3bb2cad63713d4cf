"""The development link page: `/dev` mints a join link for any role (an archivist's opens the
archive), on a development node only.

It exists only while the development IdP signs tokens (`node.dev_idp is not None`) and only for
requests made from this machine; everywhere else every one of its paths answers the same JSON
404 as an unknown path, so a production node does not even reveal that it exists. Each minted
link is audited (who, which room, which role; never the token).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import jwt
import msgspec
from aiohttp import web

from core.errors import BadMessage, NotFound
from core.rooms import valid_room_id
from signaling.http.bodies import json_body
from signaling.http.node import NODE, Node
from signaling.http.routes.pages import WEB_DIR
from signaling.policy import ROLES
from signaling.settings import is_loopback

DEV_PAGE_FILES = {"/dev": "dev.html", "/dev.html": "dev.html", "/dev.js": "dev.js",
                  "/dev.css": "dev.css"}  # fmt: skip
"""Paths of the page and the `web/` files behind them (hidden outside development mode)."""

MAX_TTL_S = 86_400
"""The longest a development link stays valid: one day."""

_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")

# Printable text only: these strings reach the audit log and a signed token.
_TEXT = r"^[^\x00-\x1f\x7f]*$"
Sub = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_TEXT)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_TEXT)]
Text = Annotated[str, msgspec.Meta(max_length=200, pattern=_TEXT)]


class DevLinkRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/dev/links`: the claims of the development token to mint."""

    sub: Sub
    """Subject id of the pretend user."""
    role: str
    """One of `policy.ROLES`."""
    rooms: Annotated[list[str], msgspec.Meta(min_length=1, max_length=16)]
    """Rooms the token grants; the link opens the first."""
    name: Text = ""
    """Display name."""
    depts: Annotated[list[Label], msgspec.Meta(max_length=32)] = msgspec.field(default_factory=list)
    """Departments of the pretend user."""
    org: Text = ""
    """Institution."""
    amr: Annotated[list[Label], msgspec.Meta(max_length=8)] = msgspec.field(
        default_factory=lambda: ["pwd", "otp"]
    )
    """Authentication methods; the default claims a second factor."""
    ttl_s: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL_S)] = 3600
    """Lifetime of the token in seconds."""


def is_local_request(remote: str | None, headers: Mapping[str, str], host: str | None) -> bool:
    """True when a request comes straight from this machine and names it.

    A reverse proxy on the same host makes every request look local, so any forwarding header
    counts as remote; a `Host` that is not loopback (DNS rebinding of a public name onto
    127.0.0.1) counts as remote too.
    """
    if not remote or not is_loopback(remote):
        return False
    if any(name in headers for name in _FORWARDING_HEADERS):
        return False
    hostname = _hostname(host or "")
    return bool(hostname) and is_loopback(hostname)


def _hostname(host: str) -> str:
    """`host` of a `Host` header value `host[:port]` or `[v6]:port`."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _dev_node(request: web.Request) -> Node:
    """The node, when it is in development mode and the request is local; else a plain 404."""
    node = request.app[NODE]
    if node.dev_idp is None or not is_local_request(request.remote, request.headers, request.host):
        # The very answers an unknown path gets (see routes.pages: api_not_found and static_file).
        if request.path.startswith("/api/"):
            raise NotFound(f"no such API endpoint: {request.method} {request.path}")
        raise NotFound("no such page")
    return node


def _validate(body: dict[str, Any]) -> DevLinkRequest:
    try:
        link = msgspec.convert(body, DevLinkRequest)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"invalid link request: {exc}") from None
    if link.role not in ROLES:
        raise BadMessage(f"role must be one of {', '.join(ROLES)}")
    for room in link.rooms:
        if not valid_room_id(room):
            raise BadMessage("room ids are 1-64 letters, digits, '.', '_' or '-'")
    return link


async def mint_dev_link(request: web.Request) -> web.Response:
    """`POST /api/dev/links`: a development token and the join link that carries it."""
    node = _dev_node(request)
    if request.content_type != "application/json":
        # A cross-site form cannot send JSON without a CORS preflight, which is never granted.
        raise BadMessage("the request body must be application/json")
    link = _validate(await json_body(request))
    assert node.dev_idp is not None
    token = node.dev_idp.mint(
        sub=link.sub,
        role=link.role,
        depts=link.depts,
        rooms=link.rooms,
        name=link.name,
        org=link.org,
        amr=link.amr,
        ttl_s=link.ttl_s,
    )
    expires_at = jwt.decode(token, options={"verify_signature": False}).get(
        "exp", int(time.time()) + link.ttl_s
    )
    node.audit.append(
        "dev_link_minted",
        "info",
        sub=link.sub,
        room=link.rooms[0],
        role=link.role,
        rooms=link.rooms,
        ttl_s=link.ttl_s,
        ip=request.remote,
    )
    origin = f"{request.scheme}://{request.host}"
    # An archivist never joins a room: their link opens the archive.
    page = "/archive" if link.role == "archivist" else f"/join/{link.rooms[0]}"
    return web.json_response(
        {
            "token": token,
            "link": f"{origin}{page}#token={token}",
            "expires_at": expires_at,
        },
        status=201,
    )


async def dev_page_file(request: web.Request) -> web.FileResponse:
    """`GET /dev` (and the page's own files): the link page, on a development node only."""
    _dev_node(request)
    return web.FileResponse(WEB_DIR / DEV_PAGE_FILES[request.path])


def add_dev_routes(app: web.Application) -> None:
    """Register the development link page and API (idempotent; they hide themselves in production).

    Their paths are more specific than the `/api/{tail}` and `/{path}` catch-alls, so they win
    wherever they are registered; before the catch-alls reads best.
    """
    if "dev_links" in app.router:
        return
    app.router.add_post("/api/dev/links", mint_dev_link, name="dev_links")
    for path in DEV_PAGE_FILES:
        app.router.add_get(path, dev_page_file)

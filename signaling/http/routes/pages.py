"""The web client: its static files, the join and archive pages, the facts it needs before it
has a token, and the JSON 404 of unknown API paths."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from core import __version__
from core.errors import NotFound
from signaling.http.node import NODE

WEB_DIR = Path(__file__).resolve().parents[3] / "web"


async def static_file(request: web.Request) -> web.FileResponse:
    """A file of the web client (`/` is `index.html`); nothing outside `web/` is reachable."""
    relative = request.match_info.get("path", "") or "index.html"
    root = WEB_DIR.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise NotFound("no such page")
    return web.FileResponse(target)


async def join_page(request: web.Request) -> web.FileResponse:
    """A join link, `/join/<room>#token=...`: the web client (the token stays in the fragment)."""
    return web.FileResponse(WEB_DIR / "index.html")


async def archive_page(request: web.Request) -> web.FileResponse:
    """The archivist's page, `/archive#token=...` (the token stays in the fragment)."""
    return web.FileResponse(WEB_DIR / "archive.html")


async def api_info(request: web.Request) -> web.Response:
    """Public facts a client needs before it has a token."""
    node = request.app[NODE]
    return web.json_response(
        {
            "version": __version__,
            "dev_mode": node.settings.dev_mode,
            "max_message_bytes": node.settings.max_message_bytes,
        }
    )


async def api_not_found(request: web.Request) -> web.Response:
    """Unknown API paths get a JSON 404, not an HTML page."""
    raise NotFound(f"no such API endpoint: {request.method} {request.path}")

"""Request bodies and error texts at the edge: the bounded JSON reader, short messages."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core.errors import BadMessage, PayloadTooLarge
from signaling.http.node import NODE


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, within `max_request_bytes` (`PayloadTooLarge`, `BadMessage`)."""
    if request.content_length is not None and (
        request.content_length > request.app[NODE].settings.max_request_bytes
    ):
        raise PayloadTooLarge("request body too large")
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("request body too large") from None
    except (ValueError, UnicodeDecodeError):
        raise BadMessage("request body must be JSON") from None
    if not isinstance(body, dict):
        raise BadMessage("request body must be a JSON object")
    return body


def short(text: str) -> str:
    """`text` cut to 120 characters, for a close reason or an error message."""
    return text if len(text) <= 120 else text[:117] + "..."

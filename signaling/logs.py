"""Structured logs: one JSON object per line on stderr, with anything token-shaped scrubbed."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

# A compact JWS (header.payload.signature, base64url): never let one reach a log line.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def scrub(text: str) -> str:
    """Replace anything that looks like a token."""
    return _JWT.sub("<token>", text)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object, token-scrubbed."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(out, default=str, ensure_ascii=False))


class AccessLogger(AbstractAccessLogger):
    """HTTP access log without query strings (a token must never sit in a URL we log)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """One line per request: method, path, status, duration."""
        self.logger.info(
            "http",
            extra={
                "method": request.method,
                "path": scrub(request.path),
                "status": response.status,
                "ms": round(time * 1000, 1),
                "remote": request.remote,
            },
        )


def configure(level: str = "info") -> None:
    """Send JSON logs to stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

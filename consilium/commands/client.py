"""The REST client of the archive commands (`recordings`, `retention`, `keys rotate`/`data`):
one server, the caller's own token (an archivist's for recordings, an admin's for keys and
retention), so the same policy and audit apply as in the browser. Long jobs (export, verify,
rotation) show a progress bar (rich) on a terminal."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

DEFAULT_SERVER = "http://127.0.0.1:8443"
CHUNK = 256 * 1024

ServerCommand = Callable[[argparse.Namespace, "Client", Console], int]
"""A command that talks to a server: its arguments, the client, the console to print on."""


class ApiError(Exception):
    """The server refused or could not be reached; the message says why, in words."""


class Client:
    """A REST client of one server, with one token."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.server = (args.server or os.environ.get("CONSILIUM_SERVER") or DEFAULT_SERVER).rstrip(
            "/"
        )
        token = args.token or os.environ.get("CONSILIUM_TOKEN")
        if not token:
            raise ApiError("give --token or set CONSILIUM_TOKEN (your own token)")
        self.token = token
        self.context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None

    def open(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600
    ) -> Any:
        """The response object (caller closes it); `ApiError` on HTTP errors."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.server + path, data=data, headers=headers, method=method
        )
        try:
            return urllib.request.urlopen(request, timeout=timeout, context=self.context)
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode(errors="replace")
            try:
                message = json.loads(raw).get("message", raw)
            except ValueError:
                message = raw
            raise ApiError(f"HTTP {exc.code}: {message}") from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach {self.server}: {exc.reason}") from None

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON request and its JSON answer."""
        with self.open(method, path, body) as response:
            return json.loads(response.read())

    def job(self, what: str, path: str, console: Console) -> Any:
        """POST to a long server-side job (verify, retention, rotation) under a spinner; its
        JSON answer."""
        with _bar(console) as progress:
            progress.add_task(what, total=None)
            return self.json("POST", path)

    def download(self, path: str, out: Path, console: Console) -> int:
        """Stream a response to `out` (written to a temp file, renamed at the end) with a
        progress bar; returns the bytes written."""
        temp = out.with_name(f".{out.name}.partial")
        written = 0
        with self.open("GET", path, timeout=3600) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _bar(console, download=True) as progress, open(temp, "wb") as file:
                task = progress.add_task(out.name, total=total)
                written = _copy(response, file, lambda n: progress.advance(task, n))
        os.replace(temp, out)
        return written


def _copy(source: Any, target: BinaryIO, advance: Callable[[int], None]) -> int:
    written = 0
    while chunk := source.read(CHUNK):
        target.write(chunk)
        written += len(chunk)
        advance(len(chunk))
    return written


def _bar(console: Console, *, download: bool = False) -> Progress:
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if download:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    columns.append(TimeElapsedColumn())
    return Progress(*columns, console=console, transient=not console.is_terminal)


def query(**params: Any) -> str:
    """A URL query string of the parameters given (None left out), `?` included; or ``."""
    kept = {k: v for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(kept) if kept else ""


def with_client(command: ServerCommand) -> Callable[[argparse.Namespace], int]:
    """The handler that runs `command` with a client of the server the flags name; an
    `ApiError` is printed, exit status 1."""

    def run(args: argparse.Namespace) -> int:
        console = Console(stderr=False)
        try:
            return command(args, Client(args), console)
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--server, --token and --cacert, which every command talking to a server takes."""
    parser.add_argument("--server", help=f"server URL (or CONSILIUM_SERVER; {DEFAULT_SERVER})")
    parser.add_argument("--token", help="your token (or CONSILIUM_TOKEN)")
    parser.add_argument("--cacert", help="CA bundle to trust for the server's certificate")

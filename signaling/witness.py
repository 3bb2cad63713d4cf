"""The audit log's external witness: every signed checkpoint also goes, as an RFC 5424 syslog
message over TLS (RFC 5425), to a receiver the hospital runs (its SIEM's rsyslog), where the
node's service account cannot change it afterwards.

A checkpoint held by the witness shows what the log held at that moment: a log later cut
short, wiped, or rewritten no longer holds it (`consilium audit verify --witness FILE` compares).

The message is formatting plus a queue: `format_checkpoint` and `parse_witness` are plain
functions; `SyslogWitness` sends from one background thread so a slow or absent receiver never
holds up the audit writer (a checkpoint is queued, bounded, and sent when the receiver is back).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.canonical import canonical_json

log = logging.getLogger("consilium.audit.witness")

MESSAGE_MARK = "consilium-audit-checkpoint"
"""Starts the message text; the checkpoint's JSON follows it. Kept in the text (not only in
structured data) because many SIEM file formats drop RFC 5424 structured data."""
MAX_QUEUED = 10_000
"""Checkpoints kept while the witness is unreachable; beyond, the oldest are dropped (logged)."""
# Facility 13 ("log audit", RFC 5424 table 1) and severity 5 (notice).
_PRI = 13 * 8 + 5
_RETRY_S = 5.0
_CONNECT_TIMEOUT_S = 10.0
_LINE = re.compile(re.escape(MESSAGE_MARK) + r" (\{[^{}]*\})")


@dataclass(frozen=True, slots=True)
class WitnessedCheckpoint:
    """One checkpoint as the witness holds it (its signature is checked by the reader)."""

    count: int
    """Entries the checkpoint vouches for."""
    head: str
    """Hash of entry count-1."""
    ts: str
    """When it was signed."""
    sig: str
    """Base64 Ed25519 signature over {count, head, ts}, as in ``checkpoints.jsonl``."""
    node: str
    """The node that sent it (not signed: the signature says which key)."""
    line: int
    """Line number in the witness file."""


def format_checkpoint(statement: dict[str, Any], node: str, hostname: str, pid: int) -> bytes:
    """One RFC 5424 message for a signed checkpoint, with RFC 5425's octet-count framing."""
    body = {"count": statement["count"], "head": statement["head"], "node": node,
            "sig": statement["sig"], "ts": statement["ts"]}  # fmt: skip
    text = canonical_json(body, ascii_only=True).decode()
    host = _header_field(hostname)
    message = (
        f"<{_PRI}>1 {statement['ts']} {host} consilium {pid} checkpoint - {MESSAGE_MARK} {text}"
    ).encode()
    return str(len(message)).encode() + b" " + message


def parse_witness(path: Path) -> Iterator[WitnessedCheckpoint]:
    """Every checkpoint message found in a witness file, whatever the receiver's line format
    (the message text is searched for `MESSAGE_MARK`); other lines are skipped."""
    with Path(path).open("rb") as file:
        for lineno, raw in enumerate(file, start=1):
            text = raw.decode("utf-8", "replace")
            match = _LINE.search(text)
            if match is None:
                continue
            try:
                obj = json.loads(match.group(1))
                yield WitnessedCheckpoint(
                    count=int(obj["count"]), head=str(obj["head"]), ts=str(obj["ts"]),
                    sig=str(obj["sig"]), node=str(obj.get("node", "")), line=lineno,
                )  # fmt: skip
            except (ValueError, KeyError, TypeError):
                continue  # not one of ours after all; its signature could not check anyway


def _header_field(value: str) -> str:
    """An RFC 5424 header field: printable ASCII without spaces, or the nil value."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:255]
    return cleaned or "-"


class SyslogWitness:
    """Sends checkpoints to `host:port` over TLS from a background thread, in order."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        node: str,
        cafile: Path | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        """Start the sender thread; nothing is sent until `send` is called."""
        self.host = host
        self.port = port
        self.node = node
        self._context = context or ssl.create_default_context(
            cafile=str(cafile) if cafile else None
        )
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._socket: ssl.SSLSocket | None = None
        self._stopping = threading.Event()
        self._hostname = socket.gethostname()
        self._pid = os.getpid()
        self.sent = 0
        """Checkpoints the receiver has taken (written to its socket)."""
        self._thread = threading.Thread(target=self._run, name="audit-witness", daemon=True)
        self._thread.start()

    def send(self, statement: dict[str, Any]) -> None:
        """Queue one signed checkpoint (count, head, ts, sig); never blocks, never raises."""
        if self._queue.qsize() >= MAX_QUEUED:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            log.warning("audit witness unreachable: oldest queued checkpoint dropped")
        self._queue.put(format_checkpoint(statement, self.node, self._hostname, self._pid))

    def close(self, timeout: float = 5.0) -> bool:
        """Send what is queued (waiting at most `timeout`), then stop; True if all was sent."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._stopping.set()
        done = not self._thread.is_alive()
        if not done:
            log.warning("audit witness: %d checkpoint(s) not delivered", self._queue.qsize())
        return done

    def _run(self) -> None:
        pending: bytes | None = None
        while True:
            if pending is None:
                pending = self._queue.get()
                if pending is None:
                    self._disconnect()
                    return
            try:
                sock = self._connect()
                sock.sendall(pending)
                self.sent += 1
                pending = None
            except (OSError, ssl.SSLError) as exc:
                self._disconnect()
                log.warning("audit witness %s:%d unreachable: %s", self.host, self.port, exc)
                if self._stopping.wait(_RETRY_S):
                    return

    def _connect(self) -> ssl.SSLSocket:
        if self._socket is None:
            raw = socket.create_connection((self.host, self.port), timeout=_CONNECT_TIMEOUT_S)
            try:
                self._socket = self._context.wrap_socket(raw, server_hostname=self.host)
            except BaseException:
                raw.close()
                raise
        return self._socket

    def _disconnect(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except OSError:
                pass
            self._socket = None

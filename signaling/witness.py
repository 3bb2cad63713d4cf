"""The audit log's external witness: every signed checkpoint also goes, as an RFC 5424 syslog
message over TLS (RFC 5425), to a receiver the hospital runs (its SIEM's rsyslog), where the
node's service account cannot change it afterwards.

A checkpoint held by the witness shows what the log held at that moment: a log later cut
short, wiped, or rewritten no longer holds it (`consilium audit verify --witness FILE` compares).

The same stream carries every audit entry too, for the SIEM (`signaling.siem`: RFC 5424 with
structured data, the entry's seq and hash, no PHI), interleaved with the checkpoints in the
chain's order, so that the witness and the SIEM are one stream.

The message is formatting plus a queue: `format_checkpoint` and `parse_witness` are plain
functions; `SyslogWitness` sends from one background thread so a slow or absent receiver never
holds up the audit writer (a message is queued, bounded, and sent when the receiver is back).
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import socket
import ssl
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.canonical import canonical_json
from signaling.auditformat import AuditEntry
from signaling.siem import format_entry, header_field

log = logging.getLogger("consilium.audit.witness")

MESSAGE_MARK = "consilium-audit-checkpoint"
"""Starts the message text; the checkpoint's JSON follows it. Kept in the text (not only in
structured data) because many SIEM file formats drop RFC 5424 structured data."""
MAX_QUEUED = 10_000
"""Checkpoints kept while the witness is unreachable; beyond, the oldest are dropped (logged)."""
MAX_QUEUED_ENTRIES = 100_000
"""Entries kept while the witness is unreachable (some tens of MB); beyond, new entries are
dropped, counted and logged (the SIEM sees a gap in `seq`; the log holds them all), so that
entries never push a checkpoint out."""
_DROP_LOG_EVERY = 1000
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


def format_checkpoint(
    statement: dict[str, Any], node: str, hostname: str, pid: int, app_name: str = "consilium"
) -> bytes:
    """One RFC 5424 message for a signed checkpoint, with RFC 5425's octet-count framing."""
    body = {"count": statement["count"], "head": statement["head"], "node": node,
            "sig": statement["sig"], "ts": statement["ts"]}  # fmt: skip
    text = canonical_json(body, ascii_only=True).decode()
    host = header_field(hostname)
    message = (
        f"<{_PRI}>1 {statement['ts']} {host} {header_field(app_name)} {pid} checkpoint - "
        f"{MESSAGE_MARK} {text}"
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


class SyslogWitness:
    """Sends checkpoints (and entries) to `host:port` over TLS from a background thread, in
    the order the log wrote them."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        node: str,
        cafile: Path | None = None,
        context: ssl.SSLContext | None = None,
        entries: bool = True,
        app_name: str = "consilium",
    ) -> None:
        """Start the sender thread; nothing is sent until `send` is called. `entries=False`
        sends the checkpoints alone (`send_entry` does nothing)."""
        self.host = host
        self.port = port
        self.node = node
        self._context = context or ssl.create_default_context(
            cafile=str(cafile) if cafile else None
        )
        self.entries = entries
        self.app_name = app_name
        # Oldest first: a checkpoint's message, or an entry (formatted by the sender thread,
        # so the audit writer only appends here). Guarded by _ready, which wakes the sender.
        self._queue: deque[bytes | AuditEntry] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._queued_entries = 0
        self.dropped_entries = 0
        """Entries not sent because the queue was full (the receiver long unreachable)."""
        self.dropped_checkpoints = 0
        """Checkpoints dropped, the oldest first, because too many were queued."""
        self._socket: ssl.SSLSocket | None = None
        self._stopping = threading.Event()
        self._hostname = socket.gethostname()
        self._pid = os.getpid()
        self.sent = 0
        """Messages (checkpoints and entries) the receiver has taken (written to its socket)."""
        self.connections = 0
        """TLS connections opened to the receiver (one, unless it went away)."""
        self._thread = threading.Thread(target=self._run, name="audit-witness", daemon=True)
        self._thread.start()

    def send(self, statement: dict[str, Any]) -> None:
        """Queue one signed checkpoint (count, head, ts, sig); never blocks, never raises."""
        message = format_checkpoint(statement, self.node, self._hostname, self._pid, self.app_name)
        with self._ready:
            if len(self._queue) - self._queued_entries >= MAX_QUEUED:
                # The newest checkpoint vouches for all before it: the oldest goes. Rare (the
                # receiver down for days), so the scan for it is fine.
                oldest = next(i for i, item in enumerate(self._queue) if isinstance(item, bytes))
                del self._queue[oldest]
                self.dropped_checkpoints += 1
                log.warning("audit witness unreachable: oldest queued checkpoint dropped")
            self._queue.append(message)
            self._ready.notify()

    def send_entry(self, entry: AuditEntry) -> None:
        """Queue one audit entry for the SIEM; never blocks, never raises (a full queue drops
        the entry, counts and logs it)."""
        if not self.entries:
            return
        with self._ready:
            if self._queued_entries >= MAX_QUEUED_ENTRIES:
                self.dropped_entries += 1
                if self.dropped_entries % _DROP_LOG_EVERY == 1:
                    log.warning(
                        "audit witness unreachable: entry seq %d not queued for the SIEM "
                        "(%d dropped so far; the log holds them)",
                        entry.seq, self.dropped_entries,
                    )  # fmt: skip
                return
            self._queued_entries += 1
            self._queue.append(entry)
            self._ready.notify()

    @property
    def queued(self) -> int:
        """Messages waiting to be sent."""
        with self._ready:
            return len(self._queue)

    def close(self, timeout: float = 5.0) -> bool:
        """Send what is queued (waiting at most `timeout`), then stop; True if all was sent."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join(timeout)
        self._stopping.set()
        done = not self._thread.is_alive()
        if not done:
            log.warning("audit witness: %d message(s) not delivered", self.queued)
        return done

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    self._disconnect()
                    return
                item = self._queue[0]
            if isinstance(item, bytes):
                message = item
            else:
                message = format_entry(item, self.node, self._hostname, self._pid, self.app_name)
            try:
                sock = self._connect()
                sock.sendall(message)
            except (OSError, ssl.SSLError) as exc:
                self._disconnect()
                log.warning("audit witness %s:%d unreachable: %s", self.host, self.port, exc)
                if self._stopping.wait(_RETRY_S):
                    return
                continue
            self.sent += 1
            with self._ready:
                # send() may have dropped this very checkpoint meanwhile (a full queue).
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                if not isinstance(item, bytes):
                    self._queued_entries -= 1

    def _connect(self) -> ssl.SSLSocket:
        if self._socket is not None and _closed_by_peer(self._socket):
            # The receiver restarted: a write now would go into a dead connection and be lost
            # without an error (syslog over TCP has no acknowledgement), so reconnect first.
            self._disconnect()
        if self._socket is None:
            raw = socket.create_connection((self.host, self.port), timeout=_CONNECT_TIMEOUT_S)
            try:
                self._socket = self._context.wrap_socket(raw, server_hostname=self.host)
                self.connections += 1
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


def _closed_by_peer(sock: ssl.SSLSocket) -> bool:
    """Whether the receiver has closed the connection. It never sends anything but TLS's own
    records (a TLS 1.3 session ticket after the handshake), so a readable socket is read
    without waiting: the end of the stream or an error means closed; a TLS record that
    carried no data (`SSLWantReadError`) means still open."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (OSError, ssl.SSLError):
        return True
    finally:
        sock.settimeout(timeout)

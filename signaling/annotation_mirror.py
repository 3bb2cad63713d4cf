"""A copy of each room's annotation and chat events in the shared state, for the node its media
moves to.

A room's annotations and chat are stamped by the SFU hosting its media and kept in that node's
encrypted log (`annotations.log`). When that node is lost (or drained) the room's media moves to
another node, whose SFU would start the room empty: the shapes drawn so far and the chat gone.
So every stamped event is also appended to the room's list in the shared state
(`StateStore.append_annotations`), sealed (AES-256-GCM, the room and the seq as associated data)
under a key derived from the cluster's shared secret (`cluster_key_file`): nothing readable is
in Redis, and a record moved to another room or seq does not open. The node taking the room's
media reads the list back (`history`) before the room's first participant arrives there, and its
SFU takes over the events past its own log's last (`MediaServer.seed_annotations`).

The copy is made off the hot path: `record` queues, a task writes in batches (`run`). It is
bounded: `MAX_RECORDS` events per room (a room past them hands over its newest), kept
`KEEP_S` after the room's last event. Without `cluster_key_file` nothing is copied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections import defaultdict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import Unavailable
from signaling.state.store import StateStore

log = logging.getLogger("consilium.annotation_mirror")

MAX_RECORDS = 20_000
"""Most events kept per room (ops, chat, receipts)."""
KEEP_S = 12 * 3600.0
"""How long a room's copy is kept after its last event."""
MAX_QUEUED = 50_000
"""Most events waiting to be written (the shared state out of reach): the oldest go first."""
_NONCE = 12
_SEQ = struct.Struct(">Q")


def mirror_key(cluster_secret_key: bytes) -> bytes:
    """The sealing key, derived from the key `signaling.http.forwarding.load_cluster_key` gave
    (itself derived from the cluster's secret) for this use alone."""
    return HKDF(
        hashes.SHA256(), length=32, salt=None, info=b"consilium/annotation-mirror/1"
    ).derive(cluster_secret_key)


def _associated(room_id: str, seq: int) -> bytes:
    return room_id.encode() + b"\n" + _SEQ.pack(seq)


def seal(key: bytes, room_id: str, seq: int, text: bytes) -> bytes:
    """One event as stored: seq (8 bytes), nonce, AES-256-GCM of the event's JSON."""
    nonce = os.urandom(_NONCE)
    return _SEQ.pack(seq) + nonce + AESGCM(key).encrypt(nonce, text, _associated(room_id, seq))


def unseal(key: bytes, room_id: str, record: bytes) -> tuple[int, bytes]:
    """(seq, the event's JSON) of a stored record; ValueError if it is not this room's."""
    if len(record) < _SEQ.size + _NONCE + 16:
        raise ValueError("record too short")
    (seq,) = _SEQ.unpack_from(record)
    nonce = record[_SEQ.size : _SEQ.size + _NONCE]
    try:
        text = AESGCM(key).decrypt(nonce, record[_SEQ.size + _NONCE :], _associated(room_id, seq))
    except InvalidTag:
        raise ValueError("record does not open (another room's, another key, or altered)") from None
    return seq, text


class AnnotationMirror:
    """This node's copies of its rooms' events, and its reading of the others'."""

    def __init__(self, store: StateStore, key: bytes) -> None:
        self.store = store
        self.key = key
        """The sealing key (`mirror_key`)."""
        self._queue: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        """Each room's events not yet written, as stamped (sealed when written)."""
        self._queued = 0
        self._wake = asyncio.Event()

    def record(self, room_id: str, seq: int, text: bytes) -> None:
        """Queue one stamped event (the SFU's `annotation_mirror`, per event: no crypto and no
        I/O here; never blocks, never raises)."""
        if self._queued >= MAX_QUEUED:
            oldest = max(self._queue, key=lambda r: len(self._queue[r]))
            self._queue[oldest].pop(0)
            self._queued -= 1
        self._queue[room_id].append((seq, text))
        self._queued += 1
        self._wake.set()

    async def flush(self) -> None:
        """Write what is queued (Unavailable: the shared state is out of reach; kept queued).
        Events stamped while a room's batch is being written wait for the next batch."""
        while self._queue:
            room_id = next(iter(self._queue))
            events = self._queue.pop(room_id)
            self._queued -= len(events)
            records = [seal(self.key, room_id, seq, text) for seq, text in events]
            try:
                await self.store.append_annotations(room_id, records, MAX_RECORDS, KEEP_S)
            except BaseException:
                # Back at the head of the room's queue, before what came meanwhile.
                self._queue[room_id][:0] = events
                self._queued += len(events)
                raise

    async def run(self) -> None:
        """Write the queue as events come, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Unavailable:
                log.warning("annotation copies not written: shared state out of reach")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def history(self, room_id: str) -> list[tuple[int, bytes]]:
        """Every event of the room in the shared state (seq, JSON), in order; [] when it cannot
        be read (the room starts from this node's own log)."""
        try:
            records = await self.store.annotation_records(room_id)
        except Unavailable:
            log.warning("annotation copies not read: shared state out of reach",
                        extra={"room": room_id})  # fmt: skip
            return []
        events: dict[int, bytes] = {}
        for record in records:
            try:
                seq, text = unseal(self.key, room_id, record)
            except ValueError as exc:
                log.warning("annotation copy skipped: %s", exc, extra={"room": room_id})
                continue
            events[seq] = text
        return sorted(events.items())

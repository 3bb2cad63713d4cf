"""Signed webhooks to the hospital's systems (the HIS that scheduled the meeting): meetings
started and ended, participants joining and leaving, recordings ready, consent refused.

`WebhookDispatcher.observe` is handed every audit entry as it is written (any thread); the
entries that are events (`webhookformat.event_for`) are queued, bounded, for each subscriber
that wants them, and delivered by background tasks on the node's event loop: a room never
waits for a receiver. A failed attempt (no answer, 5xx, 408, 429) is tried again with
exponential backoff and jitter, the same event id each time; after `MAX_ATTEMPTS`, or at once
on another 4xx, the event is dead-lettered: a `webhook_dead_lettered` audit entry, a warning,
and its body kept in ``<data_dir>/webhooks/dead-letter.jsonl`` for replay.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from core.canonical import canonical_json
from core.durable import append_durably
from core.errors import ConfigError
from signaling import webhookformat as wf
from signaling.auditformat import AuditEntry

log = logging.getLogger("consilium.webhooks")

MAX_QUEUED = 10_000
"""Events waiting per subscriber; beyond, new events are dropped (counted and logged)."""
IN_FLIGHT = 8
"""Deliveries (with their retries) under way at once per subscriber."""
ATTEMPT_TIMEOUT_S = 10.0
"""A receiver that has not answered by then counts as a failed attempt."""
DEAD_LETTER_FILE = "dead-letter.jsonl"
MAX_SECRETS = 2
"""Secrets per receiver: the current one, and its successor while the receiver switches."""

AuditAppend = Callable[..., object]
"""`AuditLog.append`: where dead letters are recorded."""


def load_subscribers(entries: list[str]) -> list[wf.Subscriber]:
    """The `webhooks` setting's entries (``URL SECRET_FILE [EVENT ...]``), secrets read (one a
    line: two while replacing one). Raises `ConfigError` naming what is wrong."""
    subscribers = []
    for item in entries:
        words = item.split()
        if len(words) < 2:
            raise ConfigError(f"webhooks: {item!r} is not 'URL SECRET_FILE [EVENT ...]'")
        url, secret_file, *events = words
        parts = urlsplit(url)
        loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ConfigError(f"webhooks: {url} must be https (http only on loopback)")
        unknown = set(events) - set(wf.EVENT_TYPES)
        if unknown:
            raise ConfigError(
                f"webhooks: unknown event(s) {sorted(unknown)}; known: {', '.join(wf.EVENT_TYPES)}"
            )
        try:
            lines = Path(secret_file).read_bytes().splitlines()
        except OSError as exc:
            raise ConfigError(f"webhooks: cannot read the secret of {url}: {exc}") from None
        secrets = tuple(line.strip() for line in lines if line.strip())
        if not 1 <= len(secrets) <= MAX_SECRETS or any(len(s) < 16 for s in secrets):
            raise ConfigError(
                f"webhooks: {secret_file} must hold 1 to {MAX_SECRETS} secrets of at least "
                "16 bytes, one a line"
            )
        subscribers.append(
            wf.Subscriber(url, secrets, frozenset(events) if events else frozenset(wf.EVENT_TYPES))
        )
    return subscribers


class WebhookDispatcher:
    """Delivers the node's webhook events to every subscriber, in the background."""

    def __init__(self, subscribers: list[wf.Subscriber], node: str, directory: Path) -> None:
        """Nothing is sent before `start`; `directory` receives the dead letters."""
        self.subscribers = subscribers
        self.node = node
        self.directory = directory
        self.delivered = 0
        """Events a receiver took (2xx)."""
        self.dead_lettered = 0
        """Events given up on (retries exhausted, or refused with a 4xx)."""
        self.dropped = 0
        """Events not queued: a subscriber's queue was full, or the node not started."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: list[asyncio.Queue[wf.WebhookEvent]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._audit: AuditAppend | None = None
        self._random = random.Random()
        self._lock = threading.Lock()

    def observe(self, entry: AuditEntry) -> None:
        """An audit entry was written (any thread): queue it if it is an event. Never blocks
        or raises."""
        if not self.subscribers:
            return
        event = wf.event_for(entry, self.node)
        if event is None:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            self._count_drop(event, "the node is not serving")
            return
        try:
            loop.call_soon_threadsafe(self._enqueue, event)
        except RuntimeError:  # the loop closed meanwhile
            self._count_drop(event, "the node is stopping")

    async def start(self, audit: AuditAppend) -> None:
        """Start delivering on the running loop; dead letters are audited through `audit`."""
        if not self.subscribers:
            return
        self._audit = audit
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S)
        )
        for subscriber in self.subscribers:
            queue: asyncio.Queue[wf.WebhookEvent] = asyncio.Queue(MAX_QUEUED)
            self._queues.append(queue)
            self._spawn(self._serve(subscriber, queue))
        self._loop = asyncio.get_running_loop()

    async def close(self, timeout: float = 5.0) -> None:
        """Give deliveries under way `timeout` seconds, then stop (what is left is lost)."""
        self._loop = None
        if self._tasks:
            pending = [q.join() for q in self._queues]
            try:
                await asyncio.wait_for(asyncio.gather(*pending), timeout)
            except TimeoutError:
                left = sum(q.qsize() for q in self._queues)
                log.warning("webhooks: stopping with %d event(s) not delivered", left)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _enqueue(self, event: wf.WebhookEvent) -> None:
        for subscriber, queue in zip(self.subscribers, self._queues, strict=True):
            if event.type not in subscriber.events:
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._count_drop(event, f"{_host(subscriber.url)}'s queue is full")

    def _count_drop(self, event: wf.WebhookEvent, why: str) -> None:
        with self._lock:
            self.dropped += 1
        log.warning("webhook event %s (%s) not queued: %s", event.id, event.type, why)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, subscriber: wf.Subscriber, queue: asyncio.Queue[Any]) -> None:
        """Take the subscriber's events in order; up to `IN_FLIGHT` deliveries at once."""
        slots = asyncio.Semaphore(IN_FLIGHT)
        while True:
            event = await queue.get()
            await slots.acquire()

            async def deliver_one(event: wf.WebhookEvent = event) -> None:
                try:
                    await self._deliver(subscriber, event)
                finally:
                    slots.release()
                    queue.task_done()

            self._spawn(deliver_one())

    async def _deliver(self, subscriber: wf.Subscriber, event: wf.WebhookEvent) -> None:
        """Attempts until delivered, refused, or out of attempts."""
        assert self._session is not None
        body = wf.encode(event)
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            try:
                headers = wf.headers(event.id, subscriber.secrets, time.time(), body)
                async with self._session.post(subscriber.url, data=body, headers=headers) as r:
                    status = r.status
                    await r.read()
                failure = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failure = type(exc).__name__
            if status is not None and wf.delivered(status):
                self.delivered += 1
                return
            delay = wf.retry_delay(attempt, self._random.random())
            if not wf.retryable(status) or delay is None:
                await self._dead_letter(subscriber, event, attempt, failure)
                return
            log.info("webhook %s to %s: %s, retry %d in %.1f s", event.id,
                     _host(subscriber.url), failure, attempt + 1, delay)  # fmt: skip
            await asyncio.sleep(delay)

    async def _dead_letter(
        self, subscriber: wf.Subscriber, event: wf.WebhookEvent, attempts: int, failure: str
    ) -> None:
        self.dead_lettered += 1
        host = _host(subscriber.url)
        log.warning("webhook %s (%s) to %s given up after %d attempt(s): %s",
                    event.id, event.type, host, attempts, failure)  # fmt: skip
        if self._audit is not None:
            self._audit("webhook_dead_lettered", "error", room=event.room, event=event.id,
                        type=event.type, receiver=host, attempts=attempts,
                        reason=failure.replace(" ", "_").lower())  # fmt: skip
        line = canonical_json({"url": subscriber.url, "attempts": attempts, "failure": failure,
                               "event": wf.encode(event).decode()}) + b"\n"  # fmt: skip
        try:
            await asyncio.to_thread(self._append_dead_letter, line)
        except OSError as exc:
            log.error("webhook dead letter not kept: %s", exc)

    def _append_dead_letter(self, line: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        append_durably(self.directory / DEAD_LETTER_FILE, line, 0o640)


def _host(url: str) -> str:
    """The receiver's host and port: what logs and the audit name (a URL may carry a key)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)

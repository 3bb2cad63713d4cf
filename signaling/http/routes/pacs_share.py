"""One share from the PACS running in the background: the instances retrieved one at a time,
each through the upload's path into its series' stacked image, and the room told as it grows.

Every instance goes through `ImageStore.share_slice` in the memory-capped image worker (the
upload's de-identification, burned-in text check and rendering; watermarked per viewer when
fetched): one instance in memory at a time, whatever the size of the series. A series is ONE
image in the room (`imaging.stack`): its `image_shared` goes out as soon as its first slice is
stored, then again as it grows, paced by `imaging.stack.UpdatePacer` together with
`pacs_share_progress`, so that a 200-slice series costs the room a few messages a second rather
than 400. An instance that cannot join its series is skipped and named in the progress; a
failure or a cancel ends the share with the slices that arrived, each image marked complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from core.errors import ConsiliumError, NotFound, RateLimited
from imaging.pacs_source import read_source
from imaging.sniff import BurnedInAnnotation, ImageTooLarge, UnsupportedImage
from imaging.stack import SeriesStacks, SliceRefused, UpdatePacer
from imaging.store import SharedImage, TooManyImages
from signaling import protocol as p
from signaling.http.node import Node
from signaling.http.routes.images import announce_image, audit_shared
from signaling.pacs import PacsClient

log = logging.getLogger("consilium.pacs")

_BUSY_RETRY_S = 0.2
"""Wait before retrying an instance when the image work queue is full (uploads run too)."""
UPDATE_INTERVAL_S = 0.25
"""Shortest time between two updates of a growing series to the room."""

ShareState = Literal["running", "done", "failed"]


@dataclass(frozen=True, slots=True)
class ShareOrder:
    """One share from the PACS into a room, as decided by the route."""

    share_id: str
    room_id: str
    study_uid: str
    series_uid: str
    """Empty: the whole study."""
    total: int
    """Instances the PACS said it holds for it."""
    sub: str
    """Who shares (`sub`): the uploader of every instance, the one who sees a held one."""
    participant_id: str
    """Their participant id in the room (`shared_by`)."""
    expected: dict[str, int] = field(default_factory=dict)
    """Instances per series as the PACS counted them, by the series UID replaced for the room
    (what the slices' de-identified headers carry): each stack's `frames_pending`."""


@dataclass
class ShareRun:
    """What a running share has done so far (its audit entry and progress messages)."""

    order: ShareOrder
    stacks: SeriesStacks
    shared: int = 0
    """Instances shared into the room (slices stacked)."""
    held: int = 0
    """Instances held for the sharer's redaction (each an image of its own, as an upload)."""
    skipped: int = 0
    """Instances left out."""
    reasons: list[str] = field(default_factory=list)
    """Why they were left out, each reason code once."""
    title: str = ""
    """The first series' title (no patient data)."""
    unannounced: dict[str, SharedImage] = field(default_factory=dict)
    """Stacked images changed since the room last heard of them, by id."""
    announced: set[str] = field(default_factory=set)
    """Stacked images the room has heard of."""

    def skip(self, reason: str) -> None:
        """An instance left out, and why."""
        self.skipped += 1
        if reason not in self.reasons:
            self.reasons.append(reason)

    def progress(self, state: ShareState, error: str = "") -> p.PacsShareProgress:
        """The `pacs_share_progress` message as things stand."""
        return p.PacsShareProgress(
            share_id=self.order.share_id,
            state=state,
            shared=self.shared,
            total=self.order.total,
            title=self.title,
            shared_by=self.order.participant_id,
            error=error,
            skipped=self.skipped,
            skipped_reasons=list(self.reasons),
            images=[stack.image_id for stack in self.stacks.stacks()],
        )


class RoomUpdates:
    """Tells the room how a share stands, paced (`UpdatePacer`): at once when the last update
    is old enough, otherwise once the interval is up, carrying every change since."""

    def __init__(self, node: Node, run: ShareRun) -> None:
        self.node = node
        self.run = run
        self.pacer = UpdatePacer(UPDATE_INTERVAL_S)
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    async def changed(self) -> None:
        """Something changed: announce it now or schedule it."""
        delay = self.pacer.changed(time.monotonic())
        if delay <= 0:
            await self.flush()
        elif self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._later(delay))

    async def _later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.flush()

    async def flush(self) -> None:
        """Send what changed since the last update (nothing if nothing did)."""
        async with self._lock:
            if not self.pacer.dirty:
                return
            self.pacer.sent(time.monotonic())
            await self._send_images()
            await self.node.rooms.announce(self.run.order.room_id, self.run.progress("running"))

    async def _send_images(self) -> None:
        room_id = self.run.order.room_id
        changed, self.run.unannounced = self.run.unannounced, {}
        for record in changed.values():
            if record.image_id in self.run.announced:
                await self.node.rooms.announce(room_id, p.ImageShared(**record.announcement()))
            else:  # its first slice: as an upload is (the recording stores it too)
                self.run.announced.add(record.image_id)
                await announce_image(self.node, room_id, record)

    async def stop(self) -> None:
        """No more paced updates (the share is ending)."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer

    async def finish(self, state: ShareState, error: str) -> None:
        """The share ended: every stacked image complete with what arrived (stored, then told
        to the room and the recording with all its frames), then the last progress."""
        node, order = self.node, self.run.order
        for stack in self.run.stacks.stacks():
            try:
                record = await asyncio.to_thread(node.images.finish_stack, order.room_id,
                                                 stack.image_id)  # fmt: skip
            except NotFound:  # deleted meanwhile (retention, the room's data removed)
                self.run.unannounced.pop(stack.image_id, None)
                continue
            self.run.announced.discard(record.image_id)  # announce_image: the recording too
            self.run.unannounced[record.image_id] = record
        await self._send_images()
        await node.rooms.announce(order.room_id, self.run.progress(state, error))


async def _share_one(node: Node, run: ShareRun, data: bytes) -> SharedImage:
    """One instance through the upload's path; retried while the image work queue is full."""
    order = run.order
    # Its original UIDs, kept encrypted with the image for the annotations' write-back
    # (`imaging.pacs_source`; `UnsupportedImage` when it has none: skipped like any unreadable).
    source = await asyncio.to_thread(read_source, data)
    while True:
        try:
            record: SharedImage = await node.image_work.run(
                node.images.share_slice,
                order.room_id,
                data,
                run.stacks,
                shared_by_participant=order.participant_id,
                uploader=order.sub,
                prepare=node.image_work.workers.prepare,
                source=source,
            )
            return record
        except RateLimited as exc:
            if isinstance(exc, TooManyImages):
                raise
            await asyncio.sleep(_BUSY_RETRY_S)


async def run_share(node: Node, client: PacsClient, order: ShareOrder, cancelled: set[str]) -> None:
    """Retrieve the instances one by one and stack each as it comes (the background task).
    `cancelled` holds the ids of shares someone stopped (a cancel, not a shutdown); the caller
    removes this one once the task is over (so a second stop while it ends is not a second
    cancel)."""
    run = ShareRun(order, SeriesStacks(node.images.limits.max_frames, dict(order.expected)))
    updates = RoomUpdates(node, run)
    error = ""
    try:
        await node.rooms.announce(order.room_id, run.progress("running"))
        # Closed on every exit (a break included): the PACS's connection is released at once.
        async with contextlib.aclosing(
            client.retrieve(order.study_uid, order.series_uid)
        ) as instances:
            async for data in instances:
                if run.shared + run.held + run.skipped >= order.total:
                    break  # the PACS sends more than it counted: never more than was checked
                try:
                    record = await _share_one(node, run, data)
                except (UnsupportedImage, BurnedInAnnotation, ImageTooLarge) as exc:
                    # One unreadable or unconfirmed instance (a report, a burned-in secondary
                    # capture) does not stop the series: it is named, not shared.
                    run.skip(exc.code)
                    await updates.changed()
                    continue
                except SliceRefused as exc:
                    run.skip(exc.reason)
                    await updates.changed()
                    continue
                audit_shared(node, order.sub, order.room_id, order.participant_id, record,
                             share=order.share_id)  # fmt: skip
                if record.held:
                    run.held += 1  # only the sharer sees it until they redact it
                else:
                    run.shared += 1
                    run.title = run.title or record.title
                    run.unannounced[record.image_id] = record
                await updates.changed()
    except asyncio.CancelledError:
        if order.share_id not in cancelled:
            error = "server_shutdown"
            raise
        error = "cancelled"  # someone stopped it: what arrived stays, the room is told below
    except ConsiliumError as exc:
        error = exc.code
    except Exception:
        log.exception("share from the PACS failed")
        error = "server_error"
    finally:
        await updates.stop()
        node.audit.append(
            "pacs_share_failed" if error else "pacs_share_finished",
            "deny" if error else "allow",
            sub=order.sub,
            room=order.room_id,
            reason=error or None,
            participant=order.participant_id,
            share=order.share_id,
            total=order.total,
            images=len(run.stacks.stacks()),
            shared=run.shared,
            held=run.held,
            skipped=run.skipped,
            skipped_reasons=list(run.reasons),
        )
        if error != "server_shutdown":
            try:
                await updates.finish("failed" if error else "done", error)
            except Exception:  # the shared state is out of reach: the audit entry stands
                log.warning("the end of a PACS share could not be announced to the room")

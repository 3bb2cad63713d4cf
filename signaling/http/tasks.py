"""The node's periodic sweeps: revocations and media claims, retention (shared images,
annotation logs, recordings), and the ends of scheduled meetings."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from core.errors import Unavailable
from signaling import ending, liveness
from signaling import meeting_end as me
from signaling.http.node import Node
from signaling.http.routes.meetings import delete_expired_meetings
from signaling.rooms import LOST_SWEEP_S, OWN_CHECK_S

log = logging.getLogger("consilium.server")


IMAGE_SWEEP_S = 3600.0
"""How often each node deletes the shared images older than `image_retention_days`."""
RECORDING_SWEEP_S = 86400.0
"""How often each node shreds the recordings whose retention has ended (and once at start)."""


async def delete_expired_images(node: Node) -> dict[str, list[str]]:
    """Delete the shared images older than `image_retention_days` (audited per room)."""
    cutoff = time.time() - node.settings.image_retention_days * 86400.0
    deleted: dict[str, list[str]] = await asyncio.to_thread(node.images.delete_expired, cutoff)
    for room_id, image_ids in deleted.items():
        node.audit.append(
            "images_deleted",
            "info",
            room=room_id,
            reason="retention",
            images=image_ids,
            count=len(image_ids),
        )
    return deleted


def _expired_annotation_logs(node: Node, cutoff: float) -> list[Path]:
    """Annotation logs whose last entry is older than `cutoff`, of rooms not in session here."""
    live = set(node.rooms.media.rooms) if node.rooms.media is not None else set()
    expired = []
    for path in sorted((node.settings.data_dir / "rooms").glob("*/annotations.log")):
        room_id = path.parent.name
        if room_id not in live and path.stat().st_mtime < cutoff:
            expired.append(path)
    return expired


async def delete_expired_annotations(node: Node) -> list[str]:
    """Delete the rooms' annotation and chat logs older than `annotation_retention_days`
    (audited per room): the records are encrypted under the room key, so the file goes."""
    cutoff = time.time() - node.settings.annotation_retention_days * 86400.0
    deleted = []
    for path in await asyncio.to_thread(_expired_annotation_logs, node, cutoff):
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:  # a concurrent sweep took it (and audited it)
            continue
        deleted.append(path.parent.name)
        node.audit.append("annotations_deleted", "info", room=path.parent.name, reason="retention")
    return deleted


async def sweep_retention(node: Node) -> None:
    """Apply retention at start, then: shared images, annotation logs and scheduled meetings
    every `IMAGE_SWEEP_S`, recordings every `RECORDING_SWEEP_S` (legal holds are kept)."""
    archive = node.archive
    last_recordings = -RECORDING_SWEEP_S
    while True:
        try:
            await delete_expired_images(node)
            await delete_expired_annotations(node)
        except Exception:
            log.exception("retention sweep of shared images and annotations failed")
        try:
            await delete_expired_meetings(node)
        except Exception:
            log.exception("retention sweep of scheduled meetings failed")
        if time.monotonic() - last_recordings >= RECORDING_SWEEP_S:
            last_recordings = time.monotonic()
            try:
                shredded = await archive.run(archive.archive.run_retention)
                if shredded and node.archive_store is not None:
                    node.archive_store.nudge()  # their copies in the object store go too
                if shredded:
                    node.audit.append("retention_run", "info", shredded=len(shredded),
                                      recordings=shredded)  # fmt: skip
            except Exception:
                log.exception("retention sweep of recordings failed")
        node.retention_swept.set()
        await asyncio.sleep(IMAGE_SWEEP_S)


async def sweep_revocations(node: Node) -> None:
    """Re-check live connections against the revocation list, for events a node missed; keep
    this node's claims on the rooms whose media it hosts."""
    last_claim = 0.0
    while True:
        await asyncio.sleep(node.settings.revocation_sweep_s)
        try:
            await node.rooms.sweep_revoked()
            if time.monotonic() - last_claim > 10.0:
                last_claim = time.monotonic()
                await node.rooms.refresh_media_claims()
        except Exception:
            log.exception("periodic sweep failed")


async def sweep_meeting_ends(node: Node) -> None:
    """Every `meeting_end.SWEEP_S`, end the scheduled meetings whose room has stayed empty
    `meeting_end_grace_min` past their end (once in the cluster: `ending.end_meeting`)."""
    empty = me.EmptyRooms()
    while True:
        await asyncio.sleep(me.SWEEP_S)
        try:
            await ending.end_meetings_over(
                node.store, node.audit, empty,
                grace_s=node.settings.meeting_end_grace_min * 60.0, now=time.time(),
            )  # fmt: skip
        except Exception:
            log.exception("sweep of scheduled meetings' ends failed")


async def sweep_lost_participants(node: Node) -> None:
    """Every `rooms.OWN_CHECK_S`, look at this node's participants as the shared state has them
    (`Rooms.check_own`: after this node was taken for dead); every `rooms.LOST_SWEEP_S`, let go
    of lost nodes' participants whom the node holding them for a resume never let go (it died
    too: `Rooms.sweep_lost`)."""
    swept = time.monotonic()
    while True:
        await asyncio.sleep(OWN_CHECK_S)
        try:
            await node.rooms.check_own()
            if time.monotonic() - swept >= LOST_SWEEP_S:
                swept = time.monotonic()
                await node.rooms.sweep_lost()
        except Unavailable:
            pass  # Redis out of reach: nothing to compare with (`/readyz` says so)
        except Exception:
            log.exception("sweep of lost nodes' participants failed")


def media_load(node: Node) -> int | None:
    """What this node's heartbeat reports as its load: the media participants its SFU hosts
    (None: it has no SFU, or is draining: no room's media goes there)."""
    media = node.rooms.media
    if media is None or node.rooms.draining:
        return None  # a draining node takes no room's media (`signaling.http.drain`)
    return len(media.participants)


async def watch_nodes(node: Node) -> None:
    """Heartbeat this node every `liveness.HEARTBEAT_EVERY_S`, and clean up after the nodes
    whose heartbeats ran out (`signaling.liveness`; with a shared Redis: the memory store has
    only this node)."""
    watch = liveness.LivenessWatch(node.settings.node_dead_after_s)
    disconnections = liveness.Disconnections()
    own = node.settings.node_id
    next_beat = 0.0
    while True:
        if time.monotonic() >= next_beat:
            sent_at = time.monotonic()
            next_beat = sent_at + liveness.HEARTBEAT_EVERY_S
            try:
                await node.store.heartbeat(own, node.settings.node_dead_after_s, media_load(node))
            except Exception as exc:
                watch.beat_failed()
                log.warning("node heartbeat failed: %s", type(exc).__name__)
            else:
                watch.beat_ok(sent_at, time.monotonic())
        if watch.may_judge(time.monotonic()):
            try:
                await _reap_dead(node, watch, disconnections)
            except Exception:
                log.exception("cleaning up after a lost node failed; tried again shortly")
        else:
            disconnections.clear()
        await asyncio.sleep(liveness.CHECK_EVERY_S)


async def _reap_dead(
    node: Node, watch: liveness.LivenessWatch, disconnections: liveness.Disconnections
) -> None:
    """Clean up after the nodes found dead: heartbeat run out, or no connection left. What
    the shared state answered late is not believed (`LivenessWatch.beat_ok`: it was out of
    reach meanwhile, and the others' heartbeats may have run out through no fault of theirs)."""
    own = node.settings.node_id
    asked_at = time.monotonic()
    dead = dict.fromkeys(liveness.judged_dead(await node.store.dead_nodes(), own), "heartbeat")
    connected = await node.store.connected_nodes()
    heartbeating = set(await node.store.live_nodes()) - {own} if connected is not None else set()
    watch.beat_ok(asked_at, time.monotonic())
    # Asked last: answers above from a server other than the one of the last look (a
    # failover between them) are not believed either.
    if watch.server_seen(await node.store.server_identity()):
        log.warning(
            "the shared state is served by another Redis server (failover or restart): "
            "judging no node for %.0f s",
            watch.dead_after_s + liveness.HEARTBEAT_EVERY_S,
        )
    if not watch.may_judge(time.monotonic()):
        disconnections.clear()
        return
    if connected is not None:
        for gone in disconnections.update(time.monotonic(), heartbeating, connected):
            dead.setdefault(gone, "disconnected")
    for gone, found in dead.items():
        left, waiting = await node.rooms.reap_node(gone, found)
        await node.store.forget_node(gone)
        log.warning(
            "node lost: cleaned up after it",
            extra={"node": gone, "participants": left, "lobby": waiting, "found": found},
        )

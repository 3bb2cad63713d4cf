"""Recording control: carries out what the consent rules decide, on the node hosting the media.

`signaling/consent.py` decides (who may start, who is recorded, what everyone is told); this
module does the I/O its effects ask for: the data key in the keyring, the `RecordingSink` and its
writer thread, the SFU room's sinks, the disk watcher, the audit log and the sends. Requests from
chairs on other nodes arrive through the media relay as `(action, fields)` and are decoded here
into typed `RecordingRequest`s.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.codes import ErrorCode
from core.errors import Unavailable
from recorder.diskspace import DiskLevel, DiskSpace, DiskWatcher, failure_code
from recorder.keyring import Keyring
from recorder.manifest import AuditCallback, RecordedParticipant
from recorder.sink import RecordingSettings, RecordingSink
from sfu.server import MediaServer
from signaling import consent as c
from signaling import protocol as p
from signaling.audit import AuditLog
from signaling.state.store import StateStore

log = logging.getLogger("consilium.recording")

Broadcast = Callable[[str, p.Message], Awaitable[None]]
"""Send a message to everyone in a room, on every node."""
Notify = Callable[[str, p.Message], None]
"""Send a message to one participant, wherever their signalling connection is."""
ImageFrames = Callable[[str, str | None], list[tuple[dict[str, Any], list[bytes]]]]
"""A room's shared images (all, or the one named) as (metadata, rendered frames): blocking."""

KEEP_EVERY_S = 1.0
"""How often the state of a room being recorded is kept again in the shared state: the node its
media moves to after this one is lost knows the recording ran until at most this long before."""
KEPT_FOR_S = 60.0
"""How long a room's kept state outlives its node's last keeping (then nobody continues it)."""

_RequestMessage = (
    p.RequestConsent | p.Consent | p.VerbalConsent | p.StartRecording | p.StopRecording
    | p.MarkCase
)  # fmt: skip


def recorder_audit(audit: AuditLog) -> AuditCallback:
    """The audit log as the recorder's callback (thread-safe: `AuditLog.append` is)."""

    def report(action: str, outcome: str = "info", /, **fields: Any) -> object:
        return audit.append(action, outcome, **fields)

    return report


def recording_request(action: str, fields: Mapping[str, Any]) -> c.RecordingRequest:
    """A recording request as the media relay carries it (`action`: the message type, or
    `hello`; `fields`: the message's fields) made typed again."""
    if action == "hello":
        return c.Hello()
    return msgspec.convert({**fields, "type": action}, _RequestMessage)


class Recorder:
    """Carries out the consent rules' effects for every room whose media this node hosts."""

    def __init__(
        self,
        recordings_dir: Path,
        keyring: Keyring,
        signing_key: Ed25519PrivateKey,
        audit: AuditLog,
        media: MediaServer,
        *,
        notice_version: str,
        settings: RecordingSettings | None = None,
        broadcast: Broadcast,
        notify: Notify,
        images: ImageFrames | None = None,
        disk: DiskSpace | None = None,
        store: StateStore | None = None,
        node_id: str = "",
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.recordings_dir = recordings_dir
        self.keyring = keyring
        self.signing_key = signing_key
        self.audit = audit
        self.media = media
        self.settings = settings or RecordingSettings()
        self.broadcast = broadcast
        self.notify = notify
        self.images = images
        """The room's shared images, stored with a recording so the archive shows the shapes on
        what they were drawn on."""
        self.consent = c.RecordingConsent(notice_version)
        """The rules: every room's consent and recording state."""
        self.store = store
        """Where each room's state is kept for the node its media may move to (None: one node)."""
        self.node_id = node_id
        self.draining = draining
        """Whether the node is draining (its rooms' media is moving on purpose)."""
        self.on_closed: Callable[[str], None] = lambda recording_id: None
        """Told the id of each recording once it is closed (its manifest final): the object
        store copies it (`signaling.http.archive_store`)."""
        self._kept: set[str] = set()
        """Rooms whose state this node has kept (and forgets when their media ends here)."""
        self._moved_away: set[str] = set()
        """Rooms whose media a drain moved to another node (`hand_off`): their recording here
        runs on until the room's media ends here, but the room hears only the new node's."""
        self._keeper: asyncio.Task[None] | None = None
        """Keeps the recorded rooms' state every `KEEP_EVERY_S`, while anything is recorded."""
        self.sinks: dict[str, RecordingSink] = {}
        """Each open recording's sink, by recording id."""
        self.closed_bytes = 0
        """Segment bytes written by the recordings closed since start (the node's metrics)."""
        self._ending: set[asyncio.Task[None]] = set()
        """Recordings being stopped because their room's media ended, or failing."""
        self._lock = asyncio.Lock()
        """One recording operation at a time (they are rare and touch the disk)."""
        self.disk_watcher = (
            DiskWatcher(recordings_dir.parent, disk, self._disk_level) if disk is not None else None
        )
        """Watches the data folder's free space while anything is recorded."""

    @property
    def notice_version(self) -> str:
        """Version of the recording notice's text."""
        return self.consent.notice_version

    # -- events --------------------------------------------------------------------------------

    async def arrive(self, room_id: str) -> None:
        """Someone's media is about to join the room here. If the room is new here and another
        node kept its state (its media was there: that node was lost, or drained), take it
        over: the answers stand, and a recording running there continues here (`take_over`)."""
        if self.store is None or room_id in self.consent.rooms:
            return
        async with self._lock:
            if room_id in self.consent.rooms:
                return
            try:
                text = await self.store.kept_consent(room_id)
                kept = msgspec.json.decode(text, type=c.Kept) if text else None
            except Exception:
                log.warning("the room's kept consent state could not be read",
                            extra={"room": room_id}, exc_info=True)  # fmt: skip
                return
            if kept is None or kept.node == self.node_id:
                return
            log.warning(
                "taking the room's consent over from another node",
                extra={"room": room_id, "node": kept.node, "recording": bool(kept.recording)},
            )
            nonce = secrets.token_hex(3)
            await self._carry_out(self.consent.take_over(room_id, kept, self._now(None), nonce))
        await self.keep(room_id)

    async def keep(self, room_id: str | None) -> None:
        """Keep the room's consent and recording state in the shared state, for the node its
        media moves to should this one be lost or drained; forget it when the room's media
        ended here. Never raises (a meeting does not stop for it)."""
        if self.store is None or room_id is None:
            return
        now = self._now(room_id)
        kept = self.consent.kept(room_id, self.node_id, now, draining=self.draining())
        worth = kept is not None and (kept.requested or kept.answers or kept.recording)
        try:
            if not worth and (room_id not in self._kept or self.draining()):
                return  # nothing to keep; a draining node leaves it for the next one
            holder = await self.store.media_node_of(room_id)
            if holder not in (None, self.node_id):
                self._kept.discard(room_id)
                return  # the room's media moved: its new node keeps it now
            if worth and kept is not None:
                await self.store.keep_consent(
                    room_id, msgspec.json.encode(kept).decode(), KEPT_FOR_S
                )
                self._kept.add(room_id)
            else:
                await self.store.keep_consent(room_id, None, 0)
                self._kept.discard(room_id)
        except Exception:
            log.warning("the room's consent state could not be kept", extra={"room": room_id},
                        exc_info=True)  # fmt: skip

    async def hand_off(self, room_id: str) -> None:
        """A drain moves the room's media to another node, which continues its recording (from
        what `keep` kept, with this node draining): from now on this node tells the room
        nothing more about its recording (the new node's `recording_state` stands)."""
        await self.keep(room_id)
        self._moved_away.add(room_id)

    async def _keep_recorded(self) -> None:
        """Every `KEEP_EVERY_S` while anything is recorded: keep the recorded rooms' state."""
        try:
            while self.sinks:
                await asyncio.sleep(KEEP_EVERY_S)
                recorded = [r for r, room in self.consent.rooms.items() if room.recording]
                for room_id in recorded:
                    await self.keep(room_id)
        finally:
            self._keeper = None

    def joined(self, room_id: str, person: RecordedParticipant) -> None:
        """Someone's media joined the room (before their `joined` is sent)."""
        self.consent.joined(room_id, person)

    async def left(self, participant_id: str) -> None:
        """Someone's media left; when the room's media has ended, so does its recording."""
        room_id = self.consent.room_of.get(participant_id)
        try:
            await self._left(participant_id)
        finally:
            await self.keep(room_id)
            if room_id not in self.consent.rooms:
                self._moved_away.discard(room_id or "")  # its media ended here

    async def _left(self, participant_id: str) -> None:
        effects = self.consent.left(participant_id)
        if not any(isinstance(effect, c.CloseRecording) for effect in effects):
            await self._carry_out(effects)
            return
        # Shielded: the caller (a closing WebSocket's handler) may be cancelled meanwhile,
        # and a recording must still end cleanly.
        task = asyncio.get_running_loop().create_task(self._locked(effects))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        await asyncio.shield(task)

    async def _locked(self, effects: list[c.Effect]) -> None:
        async with self._lock:
            await self._carry_out(effects)

    async def handle(self, participant_id: str, action: str, fields: dict[str, Any]) -> None:
        """One recording request from a participant, as the media relay carries it."""
        await self.request(participant_id, recording_request(action, fields))

    async def request(self, participant_id: str, request: c.RecordingRequest) -> None:
        """One recording request from a participant (permissions were checked by `Rooms`)."""
        room_id = self.consent.room_of.get(participant_id)
        try:
            async with self._lock:
                now = self._now(room_id)
                # Only a start names a new recording; the Hello of every join draws nothing.
                nonce = secrets.token_hex(3) if isinstance(request, p.StartRecording) else ""
                await self._carry_out(self.consent.request(participant_id, request, now, nonce))
            await self.keep(room_id)
        except Exception:
            action = "hello" if isinstance(request, c.Hello) else request.__struct_config__.tag
            log.exception("recording request failed", extra={"room": room_id, "action": action})
            self.notify(
                participant_id,
                p.Error(ErrorCode.RECORDING_FAILED, "the recording request failed", str(action)),
            )

    def _now(self, room_id: str | None) -> c.Now:
        """Now, on the wall clock and on the room's running recording's timeline."""
        recording_id = self.consent.recording_of(room_id) if room_id is not None else None
        sink = self.sinks.get(recording_id) if recording_id is not None else None
        return c.Now(datetime.now(UTC), sink.now_ms() if sink is not None else 0)

    async def image_shared(self, room_id: str, image_id: str) -> None:
        """An image was shared while the room may be recording: store it with the recording."""
        recording_id = self.consent.recording_of(room_id)
        sink = self.sinks.get(recording_id) if recording_id is not None else None
        if sink is None or self.images is None:
            return
        for meta, frames in await asyncio.to_thread(self.images, room_id, image_id):
            sink.add_image(meta, frames)

    def _writer_failed(self, room_id: str, recording_id: str, code: c.Failure) -> None:
        task = asyncio.get_running_loop().create_task(self._fail(room_id, recording_id, code))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _fail(self, room_id: str, recording_id: str, code: c.Failure) -> None:
        async with self._lock:
            await self._carry_out(self.consent.failed(room_id, recording_id, code))
        await self.keep(room_id)

    async def _disk_level(self, level: DiskLevel, free: int) -> None:
        """The disk watcher's news, for the rules to act on."""
        assert self.disk_watcher is not None
        reserve = self.disk_watcher.space.reserve_bytes
        await self._carry_out(self.consent.disk_level(level, free, reserve))

    # -- effects -------------------------------------------------------------------------------

    async def _carry_out(self, effects: list[c.Effect]) -> None:
        """Carry out the rules' effects in order (the caller holds the lock where a sink is
        opened or closed)."""
        for effect in effects:
            match effect:
                case c.Send(participant_id, message):
                    self.notify(participant_id, message)
                case c.Broadcast(room_id, message):
                    if room_id not in self._moved_away:
                        await self.broadcast(room_id, message)
                case c.Audit(action, outcome, fields):
                    self.audit.append(action, outcome, **fields)
                case c.Refuse(participant_id, code, message, request):
                    self.notify(participant_id, p.Error(code, message, request))
                case c.OpenRecording():
                    await self._open(effect)
                case c.AddParticipant(recording_id, participant):
                    self.sinks[recording_id].add_participant(participant)
                case c.RecordConsent(recording_id, consent):
                    self.sinks[recording_id].record_consent(consent)
                case c.StartCase(recording_id, label):
                    self.sinks[recording_id].mark_case(label)
                case c.AttachSink(room_id, recording_id):
                    await self._attach(room_id, self.sinks[recording_id])
                case c.DetachSink(room_id, recording_id):
                    sink = self.sinks.get(recording_id)
                    if sink is not None:
                        self.media.detach_sink(room_id, sink)
                case c.CloseRecording():
                    await self._close(effect)
                case c.FailRecording(room_id, recording_id, code):
                    self._writer_failed(room_id, recording_id, code)  # its own task: it stops us
                case c.ReleaseDiskReserve():
                    if self.disk_watcher is not None:
                        await asyncio.to_thread(self.disk_watcher.release)

    async def _open(self, effect: c.OpenRecording) -> None:
        """Create the recording's data key and start its sink, then tell the rules."""
        room_id, recording_id = effect.room_id, effect.recording_id
        try:
            data_key = await asyncio.to_thread(self.keyring.create, recording_id)
            loop = asyncio.get_running_loop()

            def writer_failed(error: BaseException) -> None:  # on the sink's writer thread
                loop.call_soon_threadsafe(
                    self._writer_failed, room_id, recording_id, failure_code(error)
                )

            sink = RecordingSink(
                self.recordings_dir,
                recording_id,
                room_id,
                data_key,
                self.signing_key,
                audit=recorder_audit(self.audit),
                settings=self.settings,
                recording_class=effect.recording_class,
                continues=effect.continues,
                on_failure=writer_failed,
            )
            await asyncio.to_thread(sink.start)
        except BaseException:
            self.consent.abandoned(room_id, recording_id)
            raise
        self.sinks[recording_id] = sink
        if self.store is not None and self.node_id:
            # Every node forwards the archive's requests for it here (signaling.http.forwarding).
            try:
                await self.store.set_recording_holders(self.node_id, [recording_id])
            except Unavailable:
                log.warning("recording %s: not announced (shared state out of reach)", recording_id)
        await self._carry_out(self.consent.opened(room_id, recording_id, self._now(room_id)))
        if self.store is not None and self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep_recorded())

    async def _attach(self, room_id: str, sink: RecordingSink) -> None:
        """The room's shared images into the recording, then the sink into the SFU room."""
        if self.images is not None:
            for meta, frames in await asyncio.to_thread(self.images, room_id, None):
                sink.add_image(meta, frames)
        self.media.attach_sink(room_id, sink)
        if self.disk_watcher is not None:
            self.disk_watcher.start()

    async def _close(self, effect: c.CloseRecording) -> None:
        """Stop the sink (in a thread: it waits for the writer's last fsync), then tell the
        rules what its manifest says."""
        sink = self.sinks.pop(effect.recording_id, None)
        if sink is None:
            return
        written = sink.bytes_written
        self.closed_bytes += written  # counted at once: the node's total never goes back
        if effect.failure:
            log.error("recording failed", extra={"room": effect.room_id, "failure": effect.failure})
            manifest = await asyncio.to_thread(sink.stop, 30.0, effect.failure)
            log.info(
                "failed recording closed",
                extra={"room": effect.room_id, "stopped_at_ms": manifest.stopped_at_ms},
            )
        else:
            manifest = await asyncio.to_thread(sink.stop)
        self.closed_bytes += sink.bytes_written - written  # its last segments
        self.on_closed(effect.recording_id)
        if self.disk_watcher is not None and not self.sinks:
            await self.disk_watcher.stop()  # nothing is recorded any more
        await self._carry_out(
            self.consent.closed(
                effect, status=manifest.status, failure=manifest.failure,
                tracks=len(manifest.tracks), dropped=manifest.dropped_records,
            )
        )  # fmt: skip

    # -- shutdown ------------------------------------------------------------------------------

    def is_recording(self, room_id: str) -> bool:
        """Whether the room is being recorded on this node."""
        return self.consent.recording_of(room_id) is not None

    async def shut_down(self) -> None:
        """The node begins to stop (SIGTERM): every recording ends now, as `server_shutdown`,
        before the connections close and their rooms empty (which would say `room_ended`)."""
        self.consent.begin_shutdown()
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
        async with self._lock:
            await self._carry_out(self.consent.shut_down())

    async def close(self) -> None:
        """Stop every recording cleanly and the disk watcher (the node has stopped)."""
        await self.shut_down()
        if self._keeper is not None:
            self._keeper.cancel()
        if self.disk_watcher is not None:
            await self.disk_watcher.stop()

"""Recording a meeting with consent: who may start it, who is recorded, what everyone is told.

The recording of a room runs on the node that hosts the room's media (its SFU holds the packets
the recorder stores); chairs and participants connected to other nodes reach it through the same
relay as their SDP (`Rooms._media_call`). The rules, in the order a meeting meets them:

1. The chair asks for consent (`request_consent`): everyone present is sent the recording
   notice (`consent_requested`, with the notice text's version) and answers `consent` in the
   client; the chair may record a spoken answer for someone (`verbal_consent`, audited as such).
2. The chair starts (`start_recording`) only once nobody present is still `pending`; a
   participant who declined is present but left out: none of their tracks is stored.
3. While it runs, everyone sees it (`recording_state` to the room on every change); a late
   joiner is asked at once and is not recorded until they agree; anyone may decline later,
   which stops recording them from then on. Someone who reconnects keeps their answer (answers
   belong to the person, the token subject, not to the connection).
4. Case markers (`mark_case`) cut every stream into a new segment, so one case can be exported
   alone; the label goes to the manifest, not to the audit log (it may name a patient).
5. It stops when the chair stops it, when the room's media ends (everyone left), or when the
   node shuts down; a crash leaves it to `recover_interrupted` at the next start.
6. It fails when its writes fail (a full disk) or when the data folder's free space falls below
   the floor (`recorder.diskspace`): everyone is told at once (`recording_state` with `failure`),
   the manifest says `failed` and where it stopped, the audit log `recording_failed` (outcome
   `error`). Below the reserve the chair who started it is warned first (`storage_low`).

Every consent answer is stored with the recording (`ConsentRecord`: who, when, how, which notice
version) and audited; the manifest's hash is audited at start, at each case and at stop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recorder.diskspace import MIB, DiskLevel, DiskSpace, DiskWatcher, failure_code
from recorder.keyring import Keyring
from recorder.manifest import ConsentRecord, RecordedParticipant
from recorder.sink import AuditCallback, RecordingSettings, RecordingSink, utc_now
from sfu.room import MediaServer
from signaling import protocol as p
from signaling.audit import AuditLog

log = logging.getLogger("consilium.recording")


@dataclass
class RoomRecording:
    """One room's recording state on the node hosting its media."""

    room_id: str
    requested: bool = False
    """The chair has asked for consent."""
    requested_by: str = ""
    """Participant id of the chair who asked."""
    answers: dict[str, ConsentRecord] = field(default_factory=dict)
    """Each person's latest answer, by token subject."""
    sink: RecordingSink | None = None
    """The running recording, if any."""
    started_at: str = ""
    started_by: str = ""
    """Token subject of the chair who started it (warned, on each of their connections in the
    room, when the disk runs low: a chair who reconnected is still told)."""
    cases: list[str] = field(default_factory=list)
    failure: str = ""
    """Why the last recording stopped by itself (`disk_full`, `write_failed`), until the next."""
    failed_recording_id: str = ""

    def decision_of(self, sub: str) -> str:
        """`granted`, `declined` or `pending`."""
        answer = self.answers.get(sub)
        return "pending" if answer is None else answer.decision


Broadcast = Callable[[str, p.Message], Awaitable[None]]
"""Send a message to everyone in a room, on every node."""
Notify = Callable[[str, p.Message], None]
"""Send a message to one participant, wherever their signalling connection is."""
ImageFrames = Callable[[str, str | None], list[tuple[dict[str, Any], list[bytes]]]]
"""A room's shared images (all, or the one named) as (metadata, rendered frames): blocking."""


def recorder_audit(audit: AuditLog) -> AuditCallback:
    """The audit log as the recorder's callback (thread-safe: `AuditLog.append` is)."""

    def report(action: str, outcome: str = "info", /, **fields: Any) -> object:
        return audit.append(action, outcome, **fields)

    return report


class RecordingRefused(Exception):
    """A recording request that cannot be carried out; `code` goes to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Recorder:
    """Every room's recording on this node (the node that hosts the rooms' media)."""

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
    ) -> None:
        self.recordings_dir = recordings_dir
        self.keyring = keyring
        self.signing_key = signing_key
        self.audit = audit
        self.media = media
        self.notice_version = notice_version
        self.settings = settings or RecordingSettings()
        self.broadcast = broadcast
        self.notify = notify
        self.images = images
        """The room's shared images, stored with a recording so the archive shows the shapes on
        what they were drawn on."""
        self.rooms: dict[str, RoomRecording] = {}
        self.people: dict[str, RecordedParticipant] = {}
        """Everyone whose media this node hosts, by participant id."""
        self._room_of: dict[str, str] = {}
        self._ending: set[asyncio.Task[None]] = set()
        """Recordings being stopped because their room's media ended."""
        self._lock = asyncio.Lock()
        """One recording operation at a time (they are rare and touch the disk)."""
        self.shutting_down = False
        """The node is stopping: recordings end as `server_shutdown`, even those whose room's
        media ends meanwhile (the WebSockets closing as the server goes)."""
        self.disk_watcher = (
            DiskWatcher(recordings_dir.parent, disk, self._disk_level) if disk is not None else None
        )
        """Watches the data folder's free space while anything is recorded."""

    # -- who is here ---------------------------------------------------------------------------

    def present(self, room_id: str) -> list[str]:
        """Participant ids present in the room's media, in join order."""
        room = self.media.rooms.get(room_id)
        return list(room.participants) if room is not None else []

    def joined(self, room_id: str, person: RecordedParticipant) -> None:
        """Someone's media joined the room (before their `joined` is sent)."""
        self.people[person.participant_id] = person
        self._room_of[person.participant_id] = room_id

    async def left(self, participant_id: str) -> None:
        """Someone's media left; when the room's media has ended, so does its recording."""
        room_id = self._room_of.pop(participant_id, None)
        self.people.pop(participant_id, None)
        if room_id is None:
            return
        state = self.rooms.get(room_id)
        if state is None:
            return
        if room_id not in self.media.rooms:
            self.rooms.pop(room_id, None)
            # Shielded: the caller (a closing WebSocket's handler) may be cancelled meanwhile,
            # and a recording must still end cleanly.
            task = asyncio.get_running_loop().create_task(self._end(state))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
            await asyncio.shield(task)
            return
        if state.requested or state.sink is not None:
            await self._announce(state)

    async def _end(self, state: RoomRecording) -> None:
        reason = "server_shutdown" if self.shutting_down else "room_ended"
        async with self._lock:
            await self._stop(state, reason=reason)

    # -- requests ------------------------------------------------------------------------------

    async def handle(self, participant_id: str, action: str, fields: dict[str, Any]) -> None:
        """One recording request from a participant (permissions were checked by `Rooms`)."""
        person = self.people.get(participant_id)
        room_id = self._room_of.get(participant_id)
        if person is None or room_id is None:
            return  # left meanwhile
        state = self.rooms.setdefault(room_id, RoomRecording(room_id))
        try:
            async with self._lock:
                if action == "hello":
                    await self._hello(state, person)
                elif action == "request_consent":
                    await self._request(state, person)
                elif action == "consent":
                    await self._answer(state, person, fields["decision"], "client", None)
                elif action == "verbal_consent":
                    target = self.people.get(fields["participant_id"])
                    if target is None or self._room_of.get(target.participant_id) != room_id:
                        raise RecordingRefused("not_found", "no such participant in the room")
                    await self._answer(state, target, fields["decision"], "verbal", person)
                elif action == "start_recording":
                    await self._start(state, person, fields.get("recording_class", "mdt"))
                elif action == "stop_recording":
                    if state.sink is None:
                        raise RecordingRefused("not_recording", "the room is not being recorded")
                    await self._stop(state, reason="stopped", by=person)
                    await self._announce(state)
                elif action == "mark_case":
                    await self._mark_case(state, person, fields["label"])
        except RecordingRefused as refused:
            self.notify(participant_id, p.Error(refused.code, str(refused), action))
        except Exception:
            log.exception("recording request failed", extra={"room": room_id, "action": action})
            self.notify(
                participant_id, p.Error("recording_failed", "the recording request failed", action)
            )

    async def _hello(self, state: RoomRecording, person: RecordedParticipant) -> None:
        """A participant has just joined: tell them where the recording stands, ask them."""
        if not (state.requested or state.sink is not None):
            return
        answer = state.answers.get(person.sub)
        if state.sink is not None:
            state.sink.add_participant(replace(person, joined_ms=state.sink.now_ms()))
            if answer is not None:
                # The same person on a new connection: their answer stands.
                state.sink.record_consent(replace(answer, participant_id=person.participant_id))
        if answer is None:
            self.notify(
                person.participant_id,
                p.ConsentRequested(self.notice_version, requested_by=state.requested_by),
            )
        await self._announce(state)

    async def _request(self, state: RoomRecording, chair: RecordedParticipant) -> None:
        state.requested = True
        state.requested_by = chair.participant_id
        self.audit.append(
            "recording_consent_requested", "allow", sub=chair.sub, room=state.room_id,
            notice_version=self.notice_version,
        )  # fmt: skip
        await self.broadcast(
            state.room_id,
            p.ConsentRequested(self.notice_version, requested_by=chair.participant_id),
        )
        await self._announce(state)

    async def _answer(
        self,
        state: RoomRecording,
        person: RecordedParticipant,
        decision: str,
        method: str,
        chair: RecordedParticipant | None,
    ) -> None:
        sink = state.sink
        record = ConsentRecord(
            participant_id=person.participant_id,
            sub=person.sub,
            decision=decision,  # type: ignore[arg-type]  # the protocol's Literal
            method=method,  # type: ignore[arg-type]
            at=utc_now(),
            at_ms=sink.now_ms() if sink is not None else 0,
            notice_version=self.notice_version,
            recorded_by=chair.participant_id if chair is not None else "",
        )
        state.answers[person.sub] = record
        if sink is not None:
            sink.record_consent(record)
        self.audit.append(
            "recording_consent",
            "allow" if decision == "granted" else "deny",
            sub=person.sub,
            room=state.room_id,
            decision=decision,
            method=method,
            by=chair.sub if chair is not None else None,
            notice_version=self.notice_version,
            recording=sink.recording_id if sink is not None else None,
        )
        await self._announce(state)

    async def _start(
        self, state: RoomRecording, chair: RecordedParticipant, recording_class: str
    ) -> None:
        if state.sink is not None:
            raise RecordingRefused("recording_running", "the room is already being recorded")
        present = self.present(state.room_id)
        missing = [
            pid for pid in present
            if pid in self.people and state.decision_of(self.people[pid].sub) == "pending"
        ]  # fmt: skip
        if missing:
            self.audit.append(
                "start_recording", "deny", sub=chair.sub, room=state.room_id,
                reason="consent_missing", missing=len(missing),
            )  # fmt: skip
            names = ", ".join(self.people[pid].name for pid in missing)
            raise RecordingRefused(
                "consent_missing", f"not everyone has answered the recording notice: {names}"
            )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        recording_id = f"rec-{state.room_id}-{stamp}-{secrets.token_hex(3)}"
        data_key = await asyncio.to_thread(self.keyring.create, recording_id)
        loop = asyncio.get_running_loop()

        def writer_failed(error: BaseException) -> None:  # on the sink's writer thread
            loop.call_soon_threadsafe(self._writer_failed, state, sink, failure_code(error))

        sink = RecordingSink(
            self.recordings_dir,
            recording_id,
            state.room_id,
            data_key,
            self.signing_key,
            audit=recorder_audit(self.audit),
            settings=self.settings,
            recording_class=recording_class,
            on_failure=writer_failed,
        )
        await asyncio.to_thread(sink.start)
        for pid in present:
            person = self.people.get(pid)
            if person is None:
                continue
            sink.add_participant(person)
            answer = state.answers.get(person.sub)
            if answer is not None:
                sink.record_consent(replace(answer, participant_id=pid))
        if self.images is not None:
            for meta, frames in await asyncio.to_thread(self.images, state.room_id, None):
                sink.add_image(meta, frames)
        self.media.room(state.room_id).sinks.append(sink)
        state.sink = sink
        state.started_at = utc_now()
        state.started_by = chair.sub
        state.cases = []
        state.failure = state.failed_recording_id = ""
        if self.disk_watcher is not None:
            self.disk_watcher.start()
        declined = sum(
            1 for pid in present
            if pid in self.people and state.decision_of(self.people[pid].sub) != "granted"
        )  # fmt: skip
        self.audit.append(
            "start_recording", "allow", sub=chair.sub, room=state.room_id,
            recording=recording_id, recording_class=recording_class,
            participants=len(present), declined=declined,
        )  # fmt: skip
        await self._announce(state)

    async def _mark_case(
        self, state: RoomRecording, chair: RecordedParticipant, label: str
    ) -> None:
        sink = state.sink
        if sink is None:
            raise RecordingRefused("not_recording", "mark a case while recording")
        sink.mark_case(label)
        state.cases.append(label)
        await self._announce(state)

    async def _stop(
        self, state: RoomRecording, *, reason: str, by: RecordedParticipant | None = None
    ) -> None:
        sink = state.sink
        if sink is None:
            return
        state.sink = None
        room = self.media.rooms.get(state.room_id)
        if room is not None and sink in room.sinks:
            room.sinks.remove(sink)
        manifest = await asyncio.to_thread(sink.stop)
        await self._watch_less()
        if manifest.status == "failed":
            # It failed before this stop: the sink audited `recording_failed`, not a stop.
            state.failure, state.failed_recording_id = manifest.failure, sink.recording_id
            return
        self.audit.append(
            "stop_recording", "allow", sub=by.sub if by is not None else None,
            room=state.room_id, recording=sink.recording_id, reason=reason,
            tracks=len(manifest.tracks), dropped_records=manifest.dropped_records,
        )  # fmt: skip

    def _writer_failed(self, state: RoomRecording, sink: RecordingSink, code: str) -> None:
        task = asyncio.get_running_loop().create_task(self._fail(state, sink, code))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _fail(self, state: RoomRecording, sink: RecordingSink, code: str) -> None:
        """The recording cannot go on (`code`: `disk_full`, `write_failed`): the room is told at
        once, then the sink closes it as `failed` (and audits `recording_failed`)."""
        async with self._lock:
            if state.sink is not sink:
                return  # stopped meanwhile
            if self.disk_watcher is not None and code == "disk_full":
                # Room for the failed manifest and its audit entry, whatever filled the disk.
                await asyncio.to_thread(self.disk_watcher.release)
            state.sink = None
            state.failure, state.failed_recording_id = code, sink.recording_id
            room = self.media.rooms.get(state.room_id)
            if room is not None and sink in room.sinks:
                room.sinks.remove(sink)
            log.error("recording failed", extra={"room": state.room_id, "failure": code})
            await self._announce(state)
            manifest = await asyncio.to_thread(sink.stop, 30.0, code)
            log.info(
                "failed recording closed",
                extra={"room": state.room_id, "stopped_at_ms": manifest.stopped_at_ms},
            )
            await self._watch_less()

    async def _disk_level(self, level: DiskLevel, free: int) -> None:
        """The disk watcher's news: below the reserve, warn each recording's chair; below the
        floor, stop each recording as failed while it can still be closed cleanly."""
        running = [s for s in self.rooms.values() if s.sink is not None]
        if level == "low":
            assert self.disk_watcher is not None
            for state in running:
                assert state.sink is not None
                warning = p.StorageLow(
                    free_mb=free // MIB,
                    reserve_mb=self.disk_watcher.space.reserve_bytes // MIB,
                    recording_id=state.sink.recording_id,
                )
                for pid, room_id in self._room_of.items():
                    if room_id == state.room_id and self.people[pid].sub == state.started_by:
                        self.notify(pid, warning)
                self.audit.append(
                    "storage_low", "info", room=state.room_id,
                    recording=state.sink.recording_id, free_mb=free // MIB,
                )  # fmt: skip
        elif level == "full":
            for state in running:
                assert state.sink is not None
                self._writer_failed(state, state.sink, "disk_full")  # its own task: it stops us

    async def _watch_less(self) -> None:
        """Nothing is recorded any more: stop watching the disk."""
        if self.disk_watcher is not None and not any(s.sink for s in self.rooms.values()):
            await self.disk_watcher.stop()

    async def _announce(self, state: RoomRecording) -> None:
        sink = state.sink
        consent = {
            pid: state.decision_of(self.people[pid].sub)
            for pid in self.present(state.room_id)
            if pid in self.people
        }
        message = p.RecordingState(
            recording=sink is not None,
            recording_id=sink.recording_id if sink is not None else "",
            started_at=state.started_at if sink is not None else "",
            requested=state.requested,
            consent=consent,  # type: ignore[arg-type]  # decision_of gives the Literal's values
            cases=list(state.cases),
            notice_version=self.notice_version,
            failure=state.failure,  # type: ignore[arg-type]  # failure_code gives the Literal's
            failed_recording_id=state.failed_recording_id,
        )
        await self.broadcast(state.room_id, message)

    async def image_shared(self, room_id: str, image_id: str) -> None:
        """An image was shared while the room may be recording: store it with the recording."""
        state = self.rooms.get(room_id)
        if state is None or state.sink is None or self.images is None:
            return
        for meta, frames in await asyncio.to_thread(self.images, room_id, image_id):
            state.sink.add_image(meta, frames)

    # -- shutdown ------------------------------------------------------------------------------

    def is_recording(self, room_id: str) -> bool:
        """Whether the room is being recorded on this node."""
        state = self.rooms.get(room_id)
        return state is not None and state.sink is not None

    async def shut_down(self) -> None:
        """The node begins to stop (SIGTERM): every recording ends now, as `server_shutdown`,
        before the connections close and their rooms empty (which would say `room_ended`)."""
        self.shutting_down = True
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
        async with self._lock:
            for state in list(self.rooms.values()):
                await self._stop(state, reason="server_shutdown")
        self.rooms.clear()

    async def close(self) -> None:
        """Stop every recording cleanly and the disk watcher (the node has stopped)."""
        await self.shut_down()
        if self.disk_watcher is not None:
            await self.disk_watcher.stop()

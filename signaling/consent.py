"""Recording a meeting with consent: who may start it, who is recorded, what everyone is told.

The rules only (sans-IO): each event (a request, a join, a leave, the disk's level, a recording
opened or closed by the executor) goes in with `now`, and comes back as effects (send, broadcast,
audit, open / attach / detach / close the recording sink, refuse with a code) that
`signaling/recording_control.py` carries out. Nothing here waits, reads a clock or touches a disk.

The recording of a room runs on the node that hosts the room's media (its SFU holds the packets
the recorder stores); chairs and participants connected to other nodes reach it through the same
relay as their SDP (`MediaRelay.call`). The rules, in the order a meeting meets them:

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
   When the room's media moves to another node (its node was lost, or drained), that node
   takes the room's consent over from the shared state (`kept`, `take_over`): the answers
   stand, and a recording that was running goes on there as a continuation of the same
   recording (a new recording whose manifest names the one it continues: `Continuation`).
6. It fails when its writes fail (a full disk) or when the data folder's free space falls below
   the floor (`recorder.diskspace`): everyone is told at once (`recording_state` with `failure`),
   the manifest says `failed` and where it stopped, the audit log `recording_failed` (outcome
   `error`). Below the reserve the chair who started it is warned first (`storage_low`).

Every consent answer is stored with the recording (`ConsentRecord`: who, when, how, which notice
version) and audited; the manifest's hash is audited at start, at each case and at stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from core.canonical import stamp_compact
from core.codes import ErrorCode
from recorder.diskspace import MIB, DiskLevel
from recorder.manifest import ConsentRecord, Continuation, RecordedParticipant
from signaling import protocol as p

Decision = Literal["granted", "declined", "pending"]
"""A present person's standing towards the recording notice."""

Failure = Literal["disk_full", "write_failed"]
"""Why a recording stopped by itself (`recorder.diskspace.failure_code`)."""


NO_SUCH_PARTICIPANT = "no such participant in the room"
NOT_RECORDING = "the room is not being recorded"
MARK_WHILE_RECORDING = "mark a case while recording"
ALREADY_RECORDING = "the room is already being recorded"
"""What each refusal says, beside its code."""


# -- events in --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A participant has just joined (sent by `Rooms` once their `joined` is out): tell them
    where the recording stands, and ask them if consent is being asked for."""


RecordingRequest = (
    Hello | p.RequestConsent | p.Consent | p.VerbalConsent | p.StartRecording | p.StopRecording
    | p.MarkCase
)  # fmt: skip
"""A participant's recording request (permissions were checked by `Rooms`)."""


@dataclass(frozen=True)
class Now:
    """When an event happens, on the two clocks the rules write down."""

    utc: datetime
    """Wall-clock time, timezone-aware UTC (answers, start times, recording ids)."""
    recording_ms: int = 0
    """Milliseconds since the room's running recording started (its sink's timeline), or 0
    when the room is not being recorded."""


# -- effects out ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send a message to one participant, wherever their signalling connection is."""

    participant_id: str
    message: p.Message


@dataclass(frozen=True)
class Broadcast:
    """Send a message to everyone in a room, on every node."""

    room_id: str
    message: p.Message


@dataclass(frozen=True)
class Audit:
    """Append an entry to the audit log: `AuditLog.append(action, outcome, **fields)`."""

    action: str
    outcome: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Refuse:
    """Tell the participant their request cannot be carried out (an `error` with `code`)."""

    participant_id: str
    code: ErrorCode
    message: str
    request: str
    """The refused request's message type."""


@dataclass(frozen=True)
class OpenRecording:
    """Create the recording's data key and start its sink; then report `opened` (or
    `abandoned` if that failed)."""

    room_id: str
    recording_id: str
    recording_class: str
    started_by: str
    """Token subject of the chair who starts it."""
    continues: Continuation | None = None
    """The recording it continues, from another node (`take_over`)."""


@dataclass(frozen=True)
class AddParticipant:
    """List someone present in the recording (`RecordingSink.add_participant`)."""

    recording_id: str
    participant: RecordedParticipant


@dataclass(frozen=True)
class RecordConsent:
    """Store an answer with the recording; from then on their media is recorded or left out."""

    recording_id: str
    consent: ConsentRecord


@dataclass(frozen=True)
class StartCase:
    """Cut every stream of the recording at a case of the agenda (`RecordingSink.mark_case`)."""

    recording_id: str
    label: str


@dataclass(frozen=True)
class AttachSink:
    """Store the room's shared images with the recording, then hand the sink to the SFU room
    (its packets are recorded from now on) and watch the disk."""

    room_id: str
    recording_id: str


@dataclass(frozen=True)
class DetachSink:
    """Take the sink off the SFU room: no more packets go to it."""

    room_id: str
    recording_id: str


@dataclass(frozen=True)
class CloseRecording:
    """Stop the sink (it waits for its writer's last fsync), stop watching the disk if nothing
    else is recorded; then report `closed` with what the manifest says."""

    room_id: str
    recording_id: str
    reason: str
    """`stopped` (by a chair), `room_ended`, `server_shutdown`, or `failed`."""
    by: str | None = None
    """Token subject of the chair who stopped it."""
    failure: str = ""
    """Close it as `failed` with this code (`disk_full`, `write_failed`)."""
    announce: bool = False
    """Tell the room where the recording stands once it is closed."""


@dataclass(frozen=True)
class FailRecording:
    """The recording must stop as failed: report `failed` on its own (the executor's disk
    watcher, which found the disk full, is stopped by the failure it reports)."""

    room_id: str
    recording_id: str
    code: Failure


@dataclass(frozen=True)
class ReleaseDiskReserve:
    """Give back the space set aside for closing a recording, whatever filled the disk."""


Effect = (
    Send | Broadcast | Audit | Refuse | OpenRecording | AddParticipant | RecordConsent | StartCase
    | AttachSink | DetachSink | CloseRecording | FailRecording | ReleaseDiskReserve
)  # fmt: skip
"""What the executor carries out, in order."""


# -- state ------------------------------------------------------------------------------------


@dataclass
class Kept:
    """A room's consent and recording state as its media node keeps it in the shared state, for
    the node its media moves to (`RecordingConsent.kept`, `take_over`)."""

    node: str
    """The node that hosts the room's media (and records it)."""
    at: str
    """UTC time this was kept, ISO 8601 (kept again on every change and periodically)."""
    draining: bool
    """The node is draining: the room's media is moving on purpose."""
    requested: bool
    requested_by: str
    answers: list[ConsentRecord]
    cases: list[str]
    recording: RunningRecording | None


@dataclass
class RunningRecording:
    """A room's recording while its sink records."""

    recording_id: str
    started_at: str
    """UTC start time, ISO 8601."""
    started_by: str
    """Token subject of the chair who started it (warned, on each of their connections in the
    room, when the disk runs low: a chair who reconnected is still told)."""
    recording_class: str = "mdt"


@dataclass
class RoomConsent:
    """One room's recording state on the node hosting its media."""

    room_id: str
    present: dict[str, RecordedParticipant] = field(default_factory=dict)
    """Everyone whose media is in the room, by participant id, in join order."""
    requested: bool = False
    """The chair has asked for consent."""
    requested_by: str = ""
    """Participant id of the chair who asked."""
    answers: dict[str, ConsentRecord] = field(default_factory=dict)
    """Each person's latest answer, by token subject."""
    opening: OpenRecording | None = None
    """The recording whose key and sink are being created (between `start` and `opened`)."""
    recording: RunningRecording | None = None
    """The running recording, if any."""
    cases: list[str] = field(default_factory=list)
    """Case labels of the last recording started, in order."""
    failure: str = ""
    """Why the last recording stopped by itself (`disk_full`, `write_failed`), until the next."""
    failed_recording_id: str = ""

    def decision_of(self, sub: str) -> Decision:
        """`granted`, `declined` or `pending`."""
        answer = self.answers.get(sub)
        return "pending" if answer is None else answer.decision


class RecordingConsent:
    """The consent rules of every room whose media this node hosts: events in, effects out."""

    def __init__(self, notice_version: str) -> None:
        self.notice_version = notice_version
        """Version of the recording notice's text (each answer names the one it was given to)."""
        self.rooms: dict[str, RoomConsent] = {}
        self.room_of: dict[str, str] = {}
        """The room of each participant present, by participant id."""
        self.shutting_down = False
        """The node is stopping: recordings end as `server_shutdown`, even those whose room's
        media ends meanwhile (the WebSockets closing as the server goes)."""

    # -- who is here ---------------------------------------------------------------------------

    def recording_of(self, room_id: str) -> str | None:
        """The id of the room's running recording, if any."""
        room = self.rooms.get(room_id)
        return room.recording.recording_id if room is not None and room.recording else None

    def joined(self, room_id: str, person: RecordedParticipant) -> list[Effect]:
        """Someone's media joined the room (before their `joined` is sent; `Hello` follows)."""
        room = self.rooms.setdefault(room_id, RoomConsent(room_id))
        room.present[person.participant_id] = person
        self.room_of[person.participant_id] = room_id
        return []

    def left(self, participant_id: str) -> list[Effect]:
        """Someone's media left; when the room's media has ended, so does its recording."""
        room_id = self.room_of.pop(participant_id, None)
        room = self.rooms.get(room_id) if room_id is not None else None
        if room is None:
            return []
        room.present.pop(participant_id, None)
        if room.present:
            return [self._state(room)] if room.requested or room.recording else []
        # The room's media ended: its answers go with it.
        del self.rooms[room.room_id]
        if room.recording is None:
            return []
        recording_id = room.recording.recording_id
        return [
            DetachSink(room.room_id, recording_id),
            CloseRecording(room.room_id, recording_id, self._end_reason()),
        ]

    def _end_reason(self) -> str:
        return "server_shutdown" if self.shutting_down else "room_ended"

    # -- requests ------------------------------------------------------------------------------

    def request(
        self, participant_id: str, request: RecordingRequest, now: Now, nonce: str
    ) -> list[Effect]:
        """One recording request from a participant. `nonce` (a few random hex digits) makes
        the id of a recording started now unique."""
        room_id = self.room_of.get(participant_id)
        room = self.rooms.get(room_id) if room_id is not None else None
        if room is None:
            return []  # left meanwhile
        person = room.present[participant_id]
        match request:
            case Hello():
                return self._hello(room, person, now)
            case p.RequestConsent():
                return self._request(room, person)
            case p.Consent(decision=decision):
                return self._answer(room, person, decision, "client", None, now)
            case p.VerbalConsent(participant_id=target_id, decision=decision):
                target = room.present.get(target_id)
                if target is None:
                    return [self._refuse(person, request, ErrorCode.NOT_FOUND, NO_SUCH_PARTICIPANT)]
                return self._answer(room, target, decision, "verbal", person, now)
            case p.StartRecording(recording_class=recording_class):
                return self._start(room, person, request, recording_class, now, nonce)
            case p.StopRecording():
                if room.recording is None:
                    return [self._refuse(person, request, ErrorCode.NOT_RECORDING, NOT_RECORDING)]
                recording_id = room.recording.recording_id
                room.recording = None
                return [DetachSink(room.room_id, recording_id),
                        CloseRecording(room.room_id, recording_id, "stopped", person.sub,
                                       announce=True)]  # fmt: skip
            case p.MarkCase(label=label):
                if room.recording is None:
                    refusal = self._refuse(
                        person, request, ErrorCode.NOT_RECORDING, MARK_WHILE_RECORDING
                    )
                    return [refusal]
                room.cases.append(label)
                return [StartCase(room.recording.recording_id, label), self._state(room)]
        return []

    def _refuse(
        self, person: RecordedParticipant, request: RecordingRequest, code: ErrorCode, message: str
    ) -> Refuse:
        kind = request.__struct_config__.tag if isinstance(request, p.Message) else "hello"
        return Refuse(person.participant_id, code, message, str(kind))

    def _hello(self, room: RoomConsent, person: RecordedParticipant, now: Now) -> list[Effect]:
        """A participant has just joined: tell them where the recording stands, ask them."""
        if not (room.requested or room.recording is not None):
            return []
        effects: list[Effect] = []
        answer = room.answers.get(person.sub)
        if room.recording is not None:
            recording_id = room.recording.recording_id
            effects.append(
                AddParticipant(recording_id, replace(person, joined_ms=now.recording_ms))
            )
            if answer is not None:
                # The same person on a new connection: their answer stands.
                consent = replace(answer, participant_id=person.participant_id)
                effects.append(RecordConsent(recording_id, consent))
        if answer is None:
            notice = p.ConsentRequested(self.notice_version, requested_by=room.requested_by)
            effects.append(Send(person.participant_id, notice))
        effects.append(self._state(room))
        return effects

    def _request(self, room: RoomConsent, chair: RecordedParticipant) -> list[Effect]:
        room.requested = True
        room.requested_by = chair.participant_id
        return [
            Audit("recording_consent_requested", "allow", {
                "sub": chair.sub, "room": room.room_id, "notice_version": self.notice_version,
            }),
            Broadcast(
                room.room_id,
                p.ConsentRequested(self.notice_version, requested_by=chair.participant_id),
            ),
            self._state(room),
        ]  # fmt: skip

    def _answer(
        self,
        room: RoomConsent,
        person: RecordedParticipant,
        decision: Literal["granted", "declined"],
        method: Literal["client", "verbal"],
        chair: RecordedParticipant | None,
        now: Now,
    ) -> list[Effect]:
        recording_id = room.recording.recording_id if room.recording is not None else None
        record = ConsentRecord(
            participant_id=person.participant_id,
            sub=person.sub,
            decision=decision,
            method=method,
            at=now.utc.isoformat(timespec="milliseconds"),
            at_ms=now.recording_ms if recording_id is not None else 0,
            notice_version=self.notice_version,
            recorded_by=chair.participant_id if chair is not None else "",
        )
        room.answers[person.sub] = record
        effects: list[Effect] = []
        if recording_id is not None:
            effects.append(RecordConsent(recording_id, record))
        effects.append(
            Audit("recording_consent", "allow" if decision == "granted" else "deny", {
                "sub": person.sub,
                "room": room.room_id,
                "decision": decision,
                "method": method,
                "by": chair.sub if chair is not None else None,
                "notice_version": self.notice_version,
                "recording": recording_id,
            })
        )  # fmt: skip
        effects.append(self._state(room))
        return effects

    def _start(
        self,
        room: RoomConsent,
        chair: RecordedParticipant,
        request: p.StartRecording,
        recording_class: str,
        now: Now,
        nonce: str,
    ) -> list[Effect]:
        if room.recording is not None or room.opening is not None:
            return [self._refuse(chair, request, ErrorCode.RECORDING_RUNNING, ALREADY_RECORDING)]
        missing = [x for x in room.present.values() if room.decision_of(x.sub) == "pending"]
        if missing:
            names = ", ".join(x.name for x in missing)
            return [
                Audit("start_recording", "deny", {
                    "sub": chair.sub, "room": room.room_id, "reason": "consent_missing",
                    "missing": len(missing),
                }),
                self._refuse(chair, request, ErrorCode.CONSENT_MISSING,
                             f"not everyone has answered the recording notice: {names}"),
            ]  # fmt: skip
        stamp = stamp_compact(now.utc)
        recording_id = f"rec-{room.room_id}-{stamp}-{nonce}"
        room.opening = OpenRecording(room.room_id, recording_id, recording_class, chair.sub)
        return [room.opening]

    def opened(self, room_id: str, recording_id: str, now: Now) -> list[Effect]:
        """The recording's sink has started: list everyone present in it with their answers,
        hand it to the SFU room, tell the room."""
        room = self.rooms.get(room_id)
        opening = room.opening if room is not None else None
        if room is None or opening is None or opening.recording_id != recording_id:
            # The room's media ended while the recording was being opened.
            return [CloseRecording(room_id, recording_id, self._end_reason())]
        room.opening = None
        effects: list[Effect] = []
        for person in room.present.values():
            effects.append(AddParticipant(recording_id, person))
            answer = room.answers.get(person.sub)
            if answer is not None:
                consent = replace(answer, participant_id=person.participant_id)
                effects.append(RecordConsent(recording_id, consent))
        effects.append(AttachSink(room_id, recording_id))
        started_at = now.utc.isoformat(timespec="milliseconds")
        room.recording = RunningRecording(
            recording_id, started_at, opening.started_by, opening.recording_class
        )
        if opening.continues is not None and room.cases:
            # The case under discussion when the other node stopped goes on in this part.
            effects.append(StartCase(recording_id, room.cases[-1]))
        else:
            room.cases = []
        room.failure = room.failed_recording_id = ""
        declined = sum(1 for x in room.present.values() if room.decision_of(x.sub) != "granted")
        effects.append(
            Audit("start_recording", "allow", {
                "sub": opening.started_by, "room": room_id, "recording": recording_id,
                "recording_class": opening.recording_class, "participants": len(room.present),
                "declined": declined,
            })
        )  # fmt: skip
        effects.append(self._state(room))
        return effects

    def abandoned(self, room_id: str, recording_id: str) -> list[Effect]:
        """Opening the recording failed (its key or its first manifest could not be written)."""
        room = self.rooms.get(room_id)
        if room is not None and room.opening is not None:
            if room.opening.recording_id == recording_id:
                room.opening = None
        return []

    def closed(
        self, close: CloseRecording, *, status: str, failure: str, tracks: int, dropped: int
    ) -> list[Effect]:
        """A recording's sink has stopped; `status`, `failure`, `tracks` and `dropped` (records
        dropped because the writer fell behind) are its final manifest's."""
        room = self.rooms.get(close.room_id)
        effects: list[Effect] = []
        if close.failure:
            pass  # closed as failed: the sink audited `recording_failed`
        elif status == "failed":
            # It failed before this stop: the sink audited `recording_failed`, not a stop.
            if room is not None:
                room.failure, room.failed_recording_id = failure, close.recording_id
        else:
            effects.append(
                Audit("stop_recording", "allow", {
                    "sub": close.by, "room": close.room_id, "recording": close.recording_id,
                    "reason": close.reason, "tracks": tracks, "dropped_records": dropped,
                })
            )  # fmt: skip
        if close.announce and room is not None:
            effects.append(self._state(room))
        return effects

    def failed(self, room_id: str, recording_id: str, code: Failure) -> list[Effect]:
        """The recording cannot go on (`code`: `disk_full`, `write_failed`): the room is told at
        once, then the sink closes it as `failed` (and audits `recording_failed`)."""
        room = self.rooms.get(room_id)
        if room is None or room.recording is None or room.recording.recording_id != recording_id:
            return []  # stopped meanwhile
        room.recording = None
        room.failure, room.failed_recording_id = code, recording_id
        effects: list[Effect] = []
        if code == "disk_full":
            # Room for the failed manifest and its audit entry, whatever filled the disk.
            effects.append(ReleaseDiskReserve())
        effects += [
            DetachSink(room_id, recording_id),
            self._state(room),
            CloseRecording(room_id, recording_id, "failed", failure=code),
        ]
        return effects

    def disk_level(self, level: DiskLevel, free_bytes: int, reserve_bytes: int) -> list[Effect]:
        """The disk watcher's news: below the reserve, warn each recording's chair; below the
        floor, stop each recording as failed while it can still be closed cleanly."""
        effects: list[Effect] = []
        for room in self.rooms.values():
            recording = room.recording
            if recording is None:
                continue
            if level == "low":
                warning = p.StorageLow(
                    free_mb=free_bytes // MIB,
                    reserve_mb=reserve_bytes // MIB,
                    recording_id=recording.recording_id,
                )
                for pid, person in room.present.items():
                    if person.sub == recording.started_by:
                        effects.append(Send(pid, warning))
                effects.append(
                    Audit("storage_low", "info", {
                        "room": room.room_id, "recording": recording.recording_id,
                        "free_mb": free_bytes // MIB,
                    })
                )  # fmt: skip
            elif level == "full":
                effects.append(FailRecording(room.room_id, recording.recording_id, "disk_full"))
        return effects

    # -- another node takes the room over (issue 13) -------------------------------------------

    def kept(self, room_id: str, node: str, now: Now, *, draining: bool = False) -> Kept | None:
        """What another node needs to take this room's consent over, should its media move
        there: kept in the shared state by the executor on every change (None: nothing to keep,
        the room's media is not here)."""
        room = self.rooms.get(room_id)
        if room is None:
            return None
        recording = room.recording
        return Kept(
            node=node,
            at=now.utc.isoformat(timespec="milliseconds"),
            draining=draining,
            requested=room.requested,
            requested_by=room.requested_by,
            answers=list(room.answers.values()),
            cases=list(room.cases),
            recording=replace(recording) if recording is not None else None,
        )

    def take_over(self, room_id: str, kept: Kept, now: Now, nonce: str) -> list[Effect]:
        """The room's media has come here from the node that kept `kept` (before anyone's media
        joins here): its answers stand, and a recording running there goes on here as a new
        recording continuing it (opened at once: those whose media joins are added to it, their
        answers with them)."""
        room = self.rooms.setdefault(room_id, RoomConsent(room_id))
        room.requested = room.requested or kept.requested
        room.requested_by = room.requested_by or kept.requested_by
        for answer in kept.answers:
            room.answers.setdefault(answer.sub, answer)
        room.cases = room.cases or list(kept.cases)
        previous = kept.recording
        if previous is None or room.recording is not None or room.opening is not None:
            return []
        reason: Literal["node_lost", "drain"] = "drain" if kept.draining else "node_lost"
        stamp = stamp_compact(now.utc)
        recording_id = f"rec-{room_id}-{stamp}-{nonce}"
        continues = Continuation(previous.recording_id, kept.node, reason, kept.at)
        room.opening = OpenRecording(
            room_id, recording_id, previous.recording_class, previous.started_by, continues
        )
        return [
            Audit("recording_continued", "info", {
                "sub": previous.started_by, "room": room_id, "recording": recording_id,
                "continues": previous.recording_id, "node": kept.node, "reason": reason,
                "last_seen": kept.at,
            }),
            room.opening,
        ]  # fmt: skip

    # -- shutdown ------------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """The node begins to stop: from now on an ending room's recording ends as
        `server_shutdown` (its WebSockets close as the server goes)."""
        self.shutting_down = True

    def shut_down(self) -> list[Effect]:
        """Every recording ends now, as `server_shutdown`, before the connections close and
        their rooms empty (which would say `room_ended`)."""
        self.shutting_down = True
        effects: list[Effect] = []
        for room in self.rooms.values():
            if room.recording is not None:
                recording_id = room.recording.recording_id
                room.recording = None
                effects += [
                    DetachSink(room.room_id, recording_id),
                    CloseRecording(room.room_id, recording_id, "server_shutdown"),
                ]
        self.rooms.clear()
        self.room_of.clear()
        return effects

    def _state(self, room: RoomConsent) -> Broadcast:
        """Where the room's recording stands, for everyone in it."""
        recording = room.recording
        return Broadcast(
            room.room_id,
            p.RecordingState(
                recording=recording is not None,
                recording_id=recording.recording_id if recording is not None else "",
                started_at=recording.started_at if recording is not None else "",
                requested=room.requested,
                consent={pid: room.decision_of(x.sub) for pid, x in room.present.items()},
                cases=list(room.cases),
                notice_version=self.notice_version,
                failure=room.failure,  # type: ignore[arg-type]  # a Failure or ""
                failed_recording_id=room.failed_recording_id,
            ),
        )

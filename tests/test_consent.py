"""The consent rules of a recording, as events in and effects out: no node, no socket, no loop.

The end-to-end tests (`tests/test_recording_consent.py`) prove the rules reach a real recording;
these check each rule, one event at a time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from recorder.diskspace import MIB
from recorder.manifest import Continuation, RecordedParticipant
from signaling import protocol as p
from signaling.consent import (
    AddParticipant,
    AttachSink,
    Audit,
    Broadcast,
    CloseRecording,
    DetachSink,
    Effect,
    FailRecording,
    Hello,
    Kept,
    Now,
    OpenRecording,
    RecordConsent,
    RecordingConsent,
    Refuse,
    ReleaseDiskReserve,
    Send,
    StartCase,
)
from signaling.recording_control import recording_request

ROOM = "tumour-board"
NOTICE = "2026-01"
T0 = datetime(2026, 3, 2, 9, 30, 0, tzinfo=UTC)


def at(seconds: float = 0, recording_ms: int = 0) -> Now:
    return Now(T0 + timedelta(seconds=seconds), recording_ms)


def person(pid: str, sub: str, name: str = "") -> RecordedParticipant:
    return RecordedParticipant(
        participant_id=pid, sub=sub, name=name or sub.title(), role="specialist",
        depts=["oncology"],
    )  # fmt: skip


def of(kind: type, effects: list[Effect]) -> list:  # type: ignore[type-arg]
    return [e for e in effects if isinstance(e, kind)]


def state(effects: list[Effect]) -> p.RecordingState:
    """The last `recording_state` broadcast among the effects."""
    (*_, last) = [
        e.message for e in of(Broadcast, effects) if isinstance(e.message, p.RecordingState)
    ]
    return last


def audited(effects: list[Effect], action: str) -> list[Audit]:
    return [e for e in of(Audit, effects) if e.action == action]


def meeting(*people: RecordedParticipant) -> RecordingConsent:
    consent = RecordingConsent(NOTICE)
    for x in people:
        consent.joined(ROOM, x)
        consent.request(x.participant_id, Hello(), at(), "000000")
    return consent


CHAIR = person("p-chair", "dr-chair", "Dr Chair")
ONC = person("p-onc", "dr-onc", "Dr Onc")
RAD = person("p-rad", "dr-rad", "Dr Rad")


def ask_to_start(consent: RecordingConsent, nonce: str) -> list[Effect]:
    return consent.request(CHAIR.participant_id, p.StartRecording(), at(), nonce)


def start(consent: RecordingConsent, nonce: str = "abc123", seconds: float = 0) -> list[Effect]:
    """Ask to start, and open the recording as the executor would."""
    effects = consent.request(CHAIR.participant_id, p.StartRecording(), at(seconds), nonce)
    (open_,) = of(OpenRecording, effects)
    return consent.opened(ROOM, open_.recording_id, at(seconds + 0.2))


def all_granted(consent: RecordingConsent, *people: RecordedParticipant) -> None:
    for x in people:
        consent.request(x.participant_id, p.Consent("granted"), at(1), "")


# -- asking --------------------------------------------------------------------------------------


def test_asking_for_consent_notifies_everyone_and_is_audited() -> None:
    consent = meeting(CHAIR, ONC)
    effects = consent.request(CHAIR.participant_id, p.RequestConsent(), at(), "")
    (notice,) = [e for e in of(Broadcast, effects) if isinstance(e.message, p.ConsentRequested)]
    assert notice.room_id == ROOM
    assert notice.message == p.ConsentRequested(NOTICE, requested_by=CHAIR.participant_id)
    (entry,) = audited(effects, "recording_consent_requested")
    assert entry.outcome == "allow" and entry.fields["sub"] == "dr-chair"
    assert entry.fields["notice_version"] == NOTICE
    shown = state(effects)
    assert shown.requested and not shown.recording
    assert shown.consent == {"p-chair": "pending", "p-onc": "pending"}


def test_nothing_is_said_to_a_joiner_while_consent_was_never_asked() -> None:
    consent = meeting(CHAIR)
    consent.joined(ROOM, ONC)
    assert consent.request(ONC.participant_id, Hello(), at(), "") == []


# -- starting ------------------------------------------------------------------------------------


def test_start_is_refused_while_anyone_present_is_pending() -> None:
    consent = meeting(CHAIR, ONC, RAD)
    consent.request(CHAIR.participant_id, p.RequestConsent(), at(), "")
    all_granted(consent, CHAIR, ONC)
    effects = consent.request(CHAIR.participant_id, p.StartRecording(), at(2), "abc123")
    assert not of(OpenRecording, effects)
    (refused,) = of(Refuse, effects)
    assert refused.participant_id == CHAIR.participant_id
    assert refused.code == "consent_missing" and refused.request == "start_recording"
    assert "Dr Rad" in refused.message and "Dr Onc" not in refused.message
    (entry,) = audited(effects, "start_recording")
    assert entry.outcome == "deny" and entry.fields["reason"] == "consent_missing"
    assert entry.fields["missing"] == 1
    assert consent.recording_of(ROOM) is None


def test_a_decliner_does_not_block_the_start_and_is_left_out() -> None:
    consent = meeting(CHAIR, ONC, RAD)
    consent.request(CHAIR.participant_id, p.RequestConsent(), at(), "")
    all_granted(consent, CHAIR, ONC)
    consent.request(RAD.participant_id, p.Consent("declined"), at(1), "")
    effects = consent.request(CHAIR.participant_id, p.StartRecording("tumour"), at(2), "abc123")
    assert not of(Refuse, effects)
    (open_,) = of(OpenRecording, effects)
    recording_id = "rec-tumour-board-20260302T093002Z-abc123"
    assert open_ == OpenRecording(ROOM, recording_id, "tumour", started_by="dr-chair")
    assert consent.recording_of(ROOM) is None, "not running until its sink has started"

    effects = consent.opened(ROOM, open_.recording_id, at(2.5))
    added = [e.participant.participant_id for e in of(AddParticipant, effects)]
    assert added == ["p-chair", "p-onc", "p-rad"], "everyone present is listed"
    answers = {e.consent.participant_id: e.consent.decision for e in of(RecordConsent, effects)}
    assert answers == {"p-chair": "granted", "p-onc": "granted", "p-rad": "declined"}
    # The sink gets the answers before it is handed packets.
    kinds = [type(e) for e in effects]
    assert kinds.index(AttachSink) > max(i for i, k in enumerate(kinds) if k is RecordConsent)
    (entry,) = audited(effects, "start_recording")
    assert entry.outcome == "allow"
    assert entry.fields["declined"] == 1 and entry.fields["participants"] == 3
    assert entry.fields["recording_class"] == "tumour"
    shown = state(effects)
    assert shown.recording and shown.recording_id == open_.recording_id
    assert shown.started_at == "2026-03-02T09:30:02.500+00:00"
    assert consent.recording_of(ROOM) == open_.recording_id


def test_a_second_start_is_refused_while_recording() -> None:
    consent = meeting(CHAIR)
    all_granted(consent, CHAIR)
    start(consent)
    effects = consent.request(CHAIR.participant_id, p.StartRecording(), at(5), "ffffff")
    assert [(e.code, e.message) for e in of(Refuse, effects)] == [
        ("recording_running", "the room is already being recorded")
    ]
    assert not of(OpenRecording, effects)


def test_a_recording_that_could_not_be_opened_can_be_started_again() -> None:
    consent = meeting(CHAIR)
    all_granted(consent, CHAIR)
    (open_,) = of(
        OpenRecording, consent.request(CHAIR.participant_id, p.StartRecording(), at(), "a")
    )
    consent.abandoned(ROOM, open_.recording_id)
    again = consent.request(CHAIR.participant_id, p.StartRecording(), at(1), "b")
    assert of(OpenRecording, again) and not of(Refuse, again)


# -- while it runs -------------------------------------------------------------------------------


def test_a_late_joiner_is_asked_and_recorded_only_after_agreeing() -> None:
    consent = meeting(CHAIR)
    consent.request(CHAIR.participant_id, p.RequestConsent(), at(), "")
    all_granted(consent, CHAIR)
    recording_id = state(start(consent)).recording_id

    late = person("p-late", "dr-late")
    consent.joined(ROOM, late)
    effects = consent.request(late.participant_id, Hello(), at(10, recording_ms=8000), "")
    (added,) = of(AddParticipant, effects)
    assert added.recording_id == recording_id and added.participant.joined_ms == 8000
    assert not of(RecordConsent, effects), "not recorded before answering"
    assert of(Send, effects) == [
        Send("p-late", p.ConsentRequested(NOTICE, requested_by=CHAIR.participant_id))
    ]
    assert state(effects).consent == {"p-chair": "granted", "p-late": "pending"}

    effects = consent.request(late.participant_id, p.Consent("granted"), at(12, 10_000), "")
    (stored,) = of(RecordConsent, effects)
    assert stored.recording_id == recording_id
    assert stored.consent.decision == "granted" and stored.consent.at_ms == 10_000
    assert stored.consent.at == "2026-03-02T09:30:12.000+00:00"
    (entry,) = audited(effects, "recording_consent")
    assert entry.fields["recording"] == recording_id and entry.fields["method"] == "client"


def test_an_answer_belongs_to_the_person_across_a_reconnect() -> None:
    consent = meeting(CHAIR, ONC)
    consent.request(CHAIR.participant_id, p.RequestConsent(), at(), "")
    all_granted(consent, CHAIR, ONC)
    recording_id = state(start(consent)).recording_id
    consent.left(ONC.participant_id)

    again = person("p-onc-2", "dr-onc", "Dr Onc")
    consent.joined(ROOM, again)
    effects = consent.request(again.participant_id, Hello(), at(30, 28_000), "")
    assert not of(Send, effects), "not asked again"
    (stored,) = of(RecordConsent, effects)
    assert stored.recording_id == recording_id
    assert stored.consent.participant_id == "p-onc-2" and stored.consent.decision == "granted"
    assert state(effects).consent == {"p-chair": "granted", "p-onc-2": "granted"}


def test_declining_while_recording_stops_recording_that_person() -> None:
    consent = meeting(CHAIR, ONC)
    all_granted(consent, CHAIR, ONC)
    start(consent)
    effects = consent.request(ONC.participant_id, p.Consent("declined"), at(20, 18_000), "")
    (stored,) = of(RecordConsent, effects)
    assert stored.consent.decision == "declined" and stored.consent.participant_id == "p-onc"
    (entry,) = audited(effects, "recording_consent")
    assert entry.outcome == "deny"
    assert state(effects).consent["p-onc"] == "declined" and state(effects).recording


def test_the_chair_records_verbal_consent_for_someone_present() -> None:
    consent = meeting(CHAIR, ONC)
    consent.request(CHAIR.participant_id, p.RequestConsent(), at(), "")
    effects = consent.request(CHAIR.participant_id, p.VerbalConsent("p-onc"), at(3), "")
    assert not of(RecordConsent, effects), "nothing is recording yet"
    (entry,) = audited(effects, "recording_consent")
    assert entry.fields["sub"] == "dr-onc" and entry.fields["method"] == "verbal"
    assert entry.fields["by"] == "dr-chair" and entry.fields["recording"] is None
    assert state(effects).consent["p-onc"] == "granted"

    all_granted(consent, CHAIR)
    opened = start(consent)
    (verbal,) = [e.consent for e in of(RecordConsent, opened) if e.consent.sub == "dr-onc"]
    assert verbal.method == "verbal" and verbal.recorded_by == "p-chair" and verbal.at_ms == 0


def test_verbal_consent_for_someone_not_in_the_room_is_refused() -> None:
    consent = meeting(CHAIR)
    other = person("p-other", "dr-other")
    consent.joined("another-room", other)
    for target in ("p-nobody", "p-other"):
        effects = consent.request(CHAIR.participant_id, p.VerbalConsent(target), at(), "")
        assert [(e.code, e.request) for e in of(Refuse, effects)] == [
            ("not_found", "verbal_consent")
        ]
        assert not audited(effects, "recording_consent")


def test_case_marks_cut_the_recording_and_are_shown_to_the_room() -> None:
    consent = meeting(CHAIR)
    refused = consent.request(CHAIR.participant_id, p.MarkCase("case 1"), at(), "")
    assert [e.code for e in of(Refuse, refused)] == ["not_recording"]
    all_granted(consent, CHAIR)
    recording_id = state(start(consent)).recording_id
    effects = consent.request(CHAIR.participant_id, p.MarkCase("case 2"), at(9), "")
    assert of(StartCase, effects) == [StartCase(recording_id, "case 2")]
    assert state(effects).cases == ["case 2"]
    assert not of(Audit, effects), "a label may name a patient: it stays out of the audit log"


# -- stopping ------------------------------------------------------------------------------------


def test_the_chair_stops_and_the_stop_is_audited_once_closed() -> None:
    consent = meeting(CHAIR)
    all_granted(consent, CHAIR)
    recording_id = state(start(consent)).recording_id
    effects = consent.request(CHAIR.participant_id, p.StopRecording(), at(60), "")
    close = CloseRecording(ROOM, recording_id, "stopped", by="dr-chair", announce=True)
    assert effects == [DetachSink(ROOM, recording_id), close]
    assert consent.recording_of(ROOM) is None

    effects = consent.closed(close, status="complete", failure="", tracks=2, dropped=0)
    (entry,) = audited(effects, "stop_recording")
    assert entry.fields["reason"] == "stopped" and entry.fields["sub"] == "dr-chair"
    assert entry.fields["tracks"] == 2 and entry.fields["dropped_records"] == 0
    assert not state(effects).recording

    again = consent.request(CHAIR.participant_id, p.StopRecording(), at(61), "")
    assert [e.code for e in of(Refuse, again)] == ["not_recording"]


def test_a_recording_whose_writer_had_failed_is_not_audited_as_stopped() -> None:
    consent = meeting(CHAIR)
    all_granted(consent, CHAIR)
    recording_id = state(start(consent)).recording_id
    (_, close) = consent.request(CHAIR.participant_id, p.StopRecording(), at(60), "")
    assert isinstance(close, CloseRecording)
    effects = consent.closed(close, status="failed", failure="write_failed", tracks=1, dropped=0)
    assert not audited(effects, "stop_recording")
    shown = state(effects)
    assert shown.failure == "write_failed" and shown.failed_recording_id == recording_id


def test_the_recording_ends_when_the_room_s_media_ends() -> None:
    consent = meeting(CHAIR, ONC)
    all_granted(consent, CHAIR, ONC)
    recording_id = state(start(consent)).recording_id
    effects = consent.left(ONC.participant_id)
    assert not of(CloseRecording, effects) and state(effects).consent == {"p-chair": "granted"}
    effects = consent.left(CHAIR.participant_id)
    assert effects == [
        DetachSink(ROOM, recording_id),
        CloseRecording(ROOM, recording_id, "room_ended"),
    ]
    assert consent.recording_of(ROOM) is None
    # The room's answers went with it: the next meeting asks again.
    consent.joined(ROOM, CHAIR)
    refused = consent.request(CHAIR.participant_id, p.StartRecording(), at(90), "b")
    assert [e.code for e in of(Refuse, refused)] == ["consent_missing"]


def test_a_room_ending_while_the_node_stops_ends_as_a_server_shutdown() -> None:
    consent = meeting(CHAIR)
    all_granted(consent, CHAIR)
    recording_id = state(start(consent)).recording_id
    consent.begin_shutdown()
    assert consent.left(CHAIR.participant_id)[-1] == CloseRecording(
        ROOM, recording_id, "server_shutdown"
    )


def test_shutdown_stops_every_recording() -> None:
    consent = meeting(CHAIR)
    all_granted(consent, CHAIR)
    recording_id = state(start(consent)).recording_id
    effects = consent.shut_down()
    assert effects == [
        DetachSink(ROOM, recording_id),
        CloseRecording(ROOM, recording_id, "server_shutdown"),
    ]
    assert consent.shut_down() == [] and consent.left(CHAIR.participant_id) == []


def test_a_room_that_ended_while_its_recording_opened_closes_it() -> None:
    consent = meeting(CHAIR)
    all_granted(consent, CHAIR)
    (open_,) = of(
        OpenRecording, consent.request(CHAIR.participant_id, p.StartRecording(), at(), "a")
    )
    consent.left(CHAIR.participant_id)
    effects = consent.opened(ROOM, open_.recording_id, at(1))
    assert effects == [CloseRecording(ROOM, open_.recording_id, "room_ended")]
    assert not of(AttachSink, effects)


# -- the disk ------------------------------------------------------------------------------------


def test_a_low_disk_warns_the_chair_who_started_on_each_connection() -> None:
    second = person("p-chair-2", "dr-chair", "Dr Chair")  # the chair, reconnected
    consent = meeting(CHAIR, ONC)
    all_granted(consent, CHAIR, ONC)
    recording_id = state(start(consent)).recording_id
    consent.joined(ROOM, second)
    effects = consent.disk_level("low", 300 * MIB, 1024 * MIB)
    warning = p.StorageLow(free_mb=300, reserve_mb=1024, recording_id=recording_id)
    assert of(Send, effects) == [Send("p-chair", warning), Send("p-chair-2", warning)]
    (entry,) = audited(effects, "storage_low")
    assert entry.fields == {"room": ROOM, "recording": recording_id, "free_mb": 300}
    assert consent.disk_level("ok", 2048 * MIB, 1024 * MIB) == []


def test_a_full_disk_fails_the_recording_and_tells_the_room_before_closing_it() -> None:
    consent = meeting(CHAIR)
    all_granted(consent, CHAIR)
    recording_id = state(start(consent)).recording_id
    assert consent.disk_level("full", MIB, 1024 * MIB) == [
        FailRecording(ROOM, recording_id, "disk_full")
    ]
    effects = consent.failed(ROOM, recording_id, "disk_full")
    assert [type(e) for e in effects] == [ReleaseDiskReserve, DetachSink, Broadcast, CloseRecording]
    shown = state(effects)
    assert not shown.recording
    assert shown.failure == "disk_full" and shown.failed_recording_id == recording_id
    (close,) = of(CloseRecording, effects)
    assert close.failure == "disk_full"
    assert consent.closed(close, status="failed", failure="disk_full", tracks=1, dropped=0) == []
    assert consent.failed(ROOM, recording_id, "disk_full") == [], "already stopped"


def test_a_failing_writer_keeps_the_disk_reserve() -> None:
    consent = meeting(CHAIR)
    all_granted(consent, CHAIR)
    recording_id = state(start(consent)).recording_id
    effects = consent.failed(ROOM, recording_id, "write_failed")
    assert not of(ReleaseDiskReserve, effects)
    assert state(effects).failure == "write_failed"
    # The next start clears the failure.
    assert state(start(consent, nonce="def456", seconds=5)).failure == ""


# -- requests as the media relay carries them ----------------------------------------------------


@pytest.mark.parametrize(
    ("action", "fields", "typed"),
    [
        ("hello", {}, Hello()),
        ("request_consent", {}, p.RequestConsent()),
        ("consent", {"decision": "declined", "notice_version": "2"}, p.Consent("declined", "2")),
        ("verbal_consent", {"participant_id": "p-1", "decision": "granted"},
         p.VerbalConsent("p-1", "granted")),
        ("start_recording", {"recording_class": "mdt"}, p.StartRecording("mdt")),
        ("stop_recording", {}, p.StopRecording()),
        ("mark_case", {"label": "case 3"}, p.MarkCase("case 3")),
    ],
)  # fmt: skip
def test_relayed_requests_become_typed(action: str, fields: dict, typed: object) -> None:  # type: ignore[type-arg]
    assert recording_request(action, fields) == typed


# -- the room's media moving to another node (issue 13) ---------------------------------------


def test_what_is_kept_for_the_next_node_round_trips_and_it_continues_the_recording() -> None:
    old = meeting(CHAIR, ONC, RAD)
    old.request(CHAIR.participant_id, p.RequestConsent(), at(), "")
    all_granted(old, CHAIR, ONC)
    old.request(RAD.participant_id, p.Consent("declined"), at(1), "")
    effects = old.request(CHAIR.participant_id, p.StartRecording("tumour"), at(2), "abc123")
    (open_,) = of(OpenRecording, effects)
    old.opened(ROOM, open_.recording_id, at(2.5))
    old.request(CHAIR.participant_id, p.MarkCase("case 1"), at(3), "")
    kept = old.kept(ROOM, "node-a", at(4))
    assert kept is not None and old.kept("elsewhere", "node-a", at(4)) is None
    # As the shared state holds it (JSON), and back.
    kept = msgspec.json.decode(msgspec.json.encode(kept), type=Kept)

    new = RecordingConsent(NOTICE)
    effects = new.take_over(ROOM, kept, at(10), "def456")
    (open_again,) = of(OpenRecording, effects)
    assert open_again.recording_class == "tumour" and open_again.started_by == "dr-chair"
    assert open_again.continues == Continuation(
        open_.recording_id, "node-a", "node_lost", "2026-03-02T09:30:04.000+00:00"
    )
    assert open_again.recording_id == "rec-tumour-board-20260302T093010Z-def456"
    (entry,) = audited(effects, "recording_continued")
    assert entry.fields["continues"] == open_.recording_id and entry.fields["reason"] == "node_lost"
    effects = new.opened(ROOM, open_again.recording_id, at(10.2))
    assert of(StartCase, effects) == [StartCase(open_again.recording_id, "case 1")], "goes on"
    # Whoever arrives is recorded with the answer they gave on the old node: nobody is asked.
    for x in (CHAIR, ONC, RAD):
        new.joined(ROOM, x)
        effects = new.request(x.participant_id, Hello(), at(11), "")
        assert not of(Send, effects), "no notice: their answer stands"
        (answer,) = of(RecordConsent, effects)
        assert answer.consent.decision == ("declined" if x is RAD else "granted")
    assert state(effects).cases == ["case 1"]
    assert new.recording_of(ROOM) == open_again.recording_id


def test_a_drain_is_kept_as_such_and_nothing_is_continued_without_a_recording() -> None:
    old = meeting(CHAIR, ONC)
    old.request(CHAIR.participant_id, p.RequestConsent(), at(), "")
    all_granted(old, CHAIR)
    kept = old.kept(ROOM, "node-a", at(2), draining=True)
    assert kept is not None and kept.draining and kept.recording is None
    new = RecordingConsent(NOTICE)
    assert new.take_over(ROOM, kept, at(3), "def456") == [], "answers only: nothing to open"
    new.joined(ROOM, ONC)
    effects = new.request(ONC.participant_id, Hello(), at(4), "")
    assert of(Send, effects), "the one who had not answered is asked"
    assert state(effects).requested


def test_a_drained_recording_continues_as_a_drains() -> None:
    old = meeting(CHAIR)
    all_granted(old, CHAIR)
    start(old)
    kept = old.kept(ROOM, "node-a", at(5), draining=True)
    assert kept is not None
    (open_again,) = of(OpenRecording, RecordingConsent(NOTICE).take_over(ROOM, kept, at(6), "x"))
    assert open_again.continues is not None and open_again.continues.reason == "drain"

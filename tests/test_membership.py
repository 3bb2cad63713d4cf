"""The lobby and admission rules, as plain function calls: no event loop, no socket, no store."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.actions import Action
from core.codes import ErrorCode
from core.errors import PolicyDenied, RateLimited, Replaced
from signaling import cluster
from signaling import membership as m
from signaling import protocol as p
from signaling.errors import close_code_of
from signaling.identity import Identity
from signaling.policy import Policy
from signaling.state.records import ParticipantRecord, RoomRecord

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load()


def person(role: str, **claims: Any) -> Identity:
    """A token holder with a second factor, granted mdt-1, in cardiology, unless told otherwise."""
    fields: dict[str, Any] = {
        "sub": f"{role}-1",
        "jti": f"t-{role}",
        "role": role,
        "depts": ("cardiology",),
        "org": "city-hospital",
        "rooms": ("mdt-1",),
        "amr": ("pwd", "otp"),
    }
    fields.update(claims)
    return Identity(**fields)


def room(**fields: Any) -> RoomRecord:
    values: dict[str, Any] = {"room_id": "mdt-1", "departments": ["cardiology"], "opened": True}
    values.update(fields)
    return RoomRecord(**values)


def record(identity: Identity, pid: str = "p-1") -> ParticipantRecord:
    return ParticipantRecord(
        participant_id=pid, sub=identity.sub, role=identity.role, name="Dr Who",
        depts=list(identity.depts), org=identity.org, node="node-a", joined_at=NOW,
    )  # fmt: skip


CHAIR = m.Actor(sub="chair-1", participant_id="p-chair", room="mdt-1")


def refusal(effects: list[m.Effect]) -> Exception | None:
    last = effects[-1] if effects else None
    return last.error if isinstance(last, m.Refuse) else None


def audits(effects: list[m.Effect]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.event, e.outcome, dict(e.fields)) for e in effects if isinstance(e, m.Audit)]


# arriving


def test_chair_opens_a_room_nobody_opened(policy: Policy) -> None:
    assert m.arrival(person("chair"), None, policy) is m.Arrival.OPEN
    assert m.arrival(person("chair"), room(opened=False), policy) is m.Arrival.OPEN


def test_specialist_waits_for_a_chair_to_open_the_room(policy: Policy) -> None:
    assert m.arrival(person("specialist"), None, policy) is m.Arrival.WAIT_FOR_CHAIR
    assert m.arrival(person("specialist"), room(opened=False), policy) is m.Arrival.WAIT_FOR_CHAIR


def test_lobby_holds_a_specialist_but_not_the_chair(policy: Policy) -> None:
    assert m.arrival(person("specialist"), room(lobby=True), policy) is m.Arrival.LOBBY
    assert m.arrival(person("chair"), room(lobby=True), policy) is m.Arrival.ENTER


def test_someone_admitted_before_rejoins_without_waiting(policy: Policy) -> None:
    admitted = room(lobby=True, admitted=["specialist-1"])
    assert m.arrival(person("specialist"), admitted, policy) is m.Arrival.ENTER
    assert m.arrival(person("specialist", sub="other"), admitted, policy) is m.Arrival.LOBBY


def test_locked_room_refuses_all_but_chairs_even_those_admitted_before(policy: Policy) -> None:
    locked = room(locked=True, admitted=["specialist-1"])
    assert m.arrival(person("specialist"), locked, policy) is m.Arrival.LOCKED
    assert m.arrival(person("chair"), locked, policy) is m.Arrival.ENTER
    effects = m.locked_out(person("specialist"), "mdt-1", "10.0.0.1")
    assert isinstance(refusal(effects), PolicyDenied)
    assert audits(effects)[0][2]["reason"] == "room_locked"


def test_open_room_without_lobby_lets_a_specialist_in(policy: Policy) -> None:
    assert m.arrival(person("specialist"), room(), policy) is m.Arrival.ENTER


def test_opening_an_ad_hoc_room_gives_it_the_chairs_departments() -> None:
    placeholder = room(opened=False, departments=[])
    effects = m.opened(person("chair", depts=("oncology",)), placeholder)
    saved = [e.room for e in effects if isinstance(e, m.SaveRoom)]
    assert saved and saved[0].opened and saved[0].departments == ["oncology"]
    assert not placeholder.opened  # the rule returns a new record, never changes what it read
    assert m.Publish(cluster.RoomOpened(room="mdt-1")) in effects
    assert audits(effects) == [("room_opened", "info", {"sub": "chair-1", "room": "mdt-1"})]


def test_opening_a_room_already_open_saves_nothing_but_still_announces() -> None:
    effects = m.opened(person("chair"), room())
    assert not [e for e in effects if isinstance(e, m.SaveRoom)]
    assert m.Publish(cluster.RoomOpened(room="mdt-1")) in effects


def test_new_room_is_stamped_with_now() -> None:
    made = m.new_room(person("chair"), "mdt-9", opened=True, now=NOW)
    assert (made.created_at, made.opened, made.departments) == (NOW, True, ["cardiology"])
    waiting = m.new_room(person("specialist"), "mdt-9", opened=False, now=NOW)
    assert (waiting.opened, waiting.departments) == (False, [])


# waiting


def test_waiting_in_a_lobby_knocks_at_the_admitters() -> None:
    who = person("specialist")
    effects = m.wait(record(who), "lobby_enabled", waiting_now=0, max_waiting=50,
                     peer="10.0.0.1", identity=who, room_id="mdt-1")  # fmt: skip
    assert refusal(effects) is None
    assert m.Reply(p.Lobby("mdt-1", "lobby_enabled", "p-1")) in effects
    knocks = [e for e in effects if isinstance(e, m.Broadcast) and isinstance(e.message, p.Knock)]
    assert [k.to for k in knocks] == ["admitters"]
    assert audits(effects)[0][:2] == ("lobby_wait", "info")


def test_waiting_for_a_chair_does_not_knock() -> None:
    who = person("specialist")
    effects = m.wait(record(who), "room_not_open", waiting_now=0, max_waiting=50,
                     peer="10.0.0.1", identity=who, room_id="mdt-1")  # fmt: skip
    assert not [e for e in effects if isinstance(e, m.Broadcast)]


def test_full_lobby_refuses_with_4429() -> None:
    who = person("specialist")
    effects = m.wait(record(who), "lobby_enabled", waiting_now=50, max_waiting=50,
                     peer="10.0.0.1", identity=who, room_id="mdt-1")  # fmt: skip
    error = refusal(effects)
    assert isinstance(error, RateLimited) and close_code_of(error) == 4429
    assert audits(effects)[0][2]["reason"] == "lobby_full"
    assert not [e for e in effects if isinstance(e, m.Reply)]


def test_full_room_refuses_with_4429() -> None:
    error = refusal(m.room_full(person("specialist"), "mdt-1", "10.0.0.1"))
    assert isinstance(error, RateLimited) and close_code_of(error) == 4429


def test_entering_tells_everyone_else_and_audits_who_admitted() -> None:
    who = person("specialist")
    announced, audited = m.entered(record(who), who, "mdt-1", "10.0.0.1", "chair-1")
    assert isinstance(announced.message, p.ParticipantJoined) and announced.exclude == "p-1"
    assert (audited.event, audited.fields["admitted_by"]) == ("join", "chair-1")


def test_waiting_for_a_chair_in_another_department_is_refused_once_the_room_opens(
    policy: Policy,
) -> None:
    verdict = m.room_opened_for(person("specialist"), room(departments=["oncology"]), policy, "ip")
    assert isinstance(verdict, list)
    error = refusal(verdict)
    assert isinstance(error, PolicyDenied) and error.message.startswith(p.JOIN_REFUSED)


def test_waiting_for_a_chair_goes_to_the_lobby_or_in_once_the_room_opens(policy: Policy) -> None:
    specialist = person("specialist")
    assert m.room_opened_for(specialist, room(lobby=True), policy, "ip") is m.Arrival.LOBBY
    assert m.room_opened_for(specialist, room(), policy, "ip") is m.Arrival.ENTER


# a newer connection of the same identity


def test_newer_connection_replaces_the_older_one_with_4409() -> None:
    effects = m.replaced_in_room("mdt-1", "specialist-1", "p-old", removed=True)
    assert m.Broadcast("mdt-1", p.ParticipantLeft("p-old", "replaced")) in effects
    assert m.CloseRemote("mdt-1", "p-old", 4409, "replaced") in effects
    assert close_code_of(Replaced) == 4409


def test_replaced_connection_someone_else_removed_first_is_not_announced_twice() -> None:
    effects = m.replaced_in_room("mdt-1", "specialist-1", "p-old", removed=False)
    assert not [e for e in effects if isinstance(e, m.Broadcast)]
    assert m.CloseRemote("mdt-1", "p-old", 4409, "replaced") in effects


def test_newer_connection_replaces_one_waiting_in_the_lobby() -> None:
    effects = m.replaced_in_lobby("mdt-1", "p-old")
    assert effects == [
        m.Broadcast("mdt-1", p.LobbyLeft("p-old", "left"), to="admitters"),
        m.CloseRemote("mdt-1", "p-old", 4409, "replaced"),
    ]


# a chair answers the lobby


def test_admitting_someone_waiting_lets_them_in_on_their_node_and_remembers_them() -> None:
    waiting = record(person("specialist"), "p-2")
    effects = m.admit(CHAIR, "p-2", waiting)
    assert m.RememberAdmitted("mdt-1", "specialist-1", True) in effects
    assert m.Broadcast("mdt-1", p.LobbyLeft("p-2", "admitted"), to="admitters") in effects
    assert effects[-1] == m.Publish(cluster.Admitted(room="mdt-1", pid="p-2", by="chair-1"))
    assert audits(effects)[0][:2] == ("admit", "allow")


def test_admitting_nobody_is_a_not_found_error_and_nothing_else() -> None:
    assert m.admit(CHAIR, "p-9", None) == [
        m.Reply(p.Error(ErrorCode.NOT_FOUND, "nobody with that id is waiting", "admit"))
    ]


def test_denying_closes_with_4403_and_keeps_the_chairs_words_out_of_the_audit() -> None:
    effects = m.deny(CHAIR, "p-2", record(person("specialist"), "p-2"))
    assert m.CloseRemote("mdt-1", "p-2", 4403, "denied") in effects
    assert audits(effects) == [
        ("deny", "deny", {"sub": "specialist-1", "room": "mdt-1", "by": "chair-1",
                          "reason": "denied_by_chair"}),
    ]  # fmt: skip
    assert not [e for e in effects if isinstance(e, m.RememberAdmitted)]


# leaving


def test_leaving_the_room_is_announced_and_audited() -> None:
    effects = m.left_room("mdt-1", "p-1", "specialist-1", "left", removed=True)
    assert effects[0] == m.Broadcast("mdt-1", p.ParticipantLeft("p-1", "left"))
    assert audits(effects)[0][:2] == ("leave", "info")


def test_leaving_after_being_removed_or_replaced_says_nothing_more() -> None:
    assert m.left_room("mdt-1", "p-1", "specialist-1", "left", removed=False) == []
    assert m.left_lobby("mdt-1", "p-1", removed=False) == []


def test_leaving_the_lobby_tells_only_the_admitters() -> None:
    assert m.left_lobby("mdt-1", "p-1", removed=True) == [
        m.Broadcast("mdt-1", p.LobbyLeft("p-1", "left"), to="admitters")
    ]


def test_ad_hoc_room_ends_when_the_chair_leaves_last_but_a_scheduled_one_stays() -> None:
    assert m.room_done(room(), [], [])
    assert not m.room_done(room(), [], ["someone waiting"])
    assert not m.room_done(room(), ["someone"], [])
    assert not m.room_done(room(scheduled_by="chair-1"), [], [])
    assert not m.room_done(None, [], [])


# revocation mid-meeting, delivery


def test_revoking_a_token_covers_only_that_token_and_revoking_a_sub_covers_all_its_tokens() -> None:
    who = person("specialist")
    assert m.revocation_covers({"kind": "jti", "value": "t-specialist"}, who)
    assert not m.revocation_covers({"kind": "jti", "value": "specialist-1"}, who)
    assert m.revocation_covers({"kind": "sub", "value": "specialist-1"}, who)
    assert not m.revocation_covers({"kind": "sub", "value": "t-specialist"}, who)


def test_room_messages_for_admitters_reach_only_those_who_may_admit() -> None:
    knock = cluster.RoomMessage(room="mdt-1", to="admitters", msg="{}")
    assert m.delivered_to(knock, "p-chair", {Action.ADMIT})
    assert not m.delivered_to(knock, "p-1", {Action.PUBLISH_AUDIO})


def test_room_messages_skip_the_excluded_and_reach_one_named_participant() -> None:
    joined = cluster.RoomMessage(room="mdt-1", to="all", msg="{}", exclude="p-1")
    assert not m.delivered_to(joined, "p-1", set())
    assert m.delivered_to(joined, "p-2", set())
    direct = cluster.RoomMessage(room="mdt-1", to="p-2", msg="{}")
    assert m.delivered_to(direct, "p-2", set()) and not m.delivered_to(direct, "p-3", set())


# requests in the room


def test_join_again_is_refused_and_waiting_people_may_not_act() -> None:
    again = m.screen(p.Join(token="t", room="mdt-1"), joined=True)
    assert again is not None and again.code == ErrorCode.ALREADY_JOINED
    waiting = m.screen(p.Mute("p-2", "audio"), joined=False)
    assert waiting is not None and (waiting.code, waiting.request) == ("not_admitted", "mute")
    assert m.screen(p.Mute("p-2", "audio"), joined=True) is None


def test_a_specialist_cannot_admit_and_the_refusal_is_audited(policy: Policy) -> None:
    specialist = person("specialist")
    permissions = policy.permissions(specialist, m.room_scope(room(), "mdt-1"))
    assert m.missing_action(p.Admit("p-2"), permissions) is Action.ADMIT
    assert m.missing_action(p.SetMedia(audio_muted=True), permissions) is None
    actor = m.Actor(sub="specialist-1", participant_id="p-1", room="mdt-1")
    effects = m.not_allowed(actor, p.Admit("p-2"), Action.ADMIT, "role_not_permitted")
    assert audits(effects) == [
        ("admit", "deny", {"sub": "specialist-1", "room": "mdt-1", "reason": "role_not_permitted"})
    ]
    assert m.Reply(p.Error(ErrorCode.NOT_ALLOWED, "role_not_permitted", "admit")) in effects


def test_error_codes_go_on_the_wire_as_plain_strings() -> None:
    text = p.encode(p.Error(ErrorCode.NOT_FOUND, "no such participant", "mute"))
    assert json.loads(text)["code"] == "not_found"


def test_muting_yourself_changes_only_what_you_asked_and_tells_the_sfu_both() -> None:
    me = record(person("specialist"))
    effects = m.set_own_media("mdt-1", me, audio_muted=True, video_muted=None)
    (saved,) = [e.record for e in effects if isinstance(e, m.SaveParticipant)]
    assert (saved.audio_muted, saved.video_muted) == (True, False)
    assert [e for e in effects if isinstance(e, m.OwnMedia)] == [
        m.OwnMedia("audio", True),
        m.OwnMedia("video", False),
    ]
    assert not me.audio_muted
    assert m.set_own_media("mdt-1", None, audio_muted=True, video_muted=None) == []


def test_someone_waiting_for_the_chair_moves_to_the_lobby_and_knocks() -> None:
    effects = m.moved_to_lobby("mdt-1", record(person("specialist")))
    assert effects[0] == m.Reply(p.Lobby("mdt-1", "lobby_enabled", "p-1"))
    assert json.loads(p.encode(p.Lobby("mdt-1", m.Arrival.LOBBY, "p-1")))["reason"] == (  # type: ignore[arg-type]
        "lobby_enabled"
    )
    assert isinstance(effects[1], m.Broadcast) and effects[1].to == "admitters"


def test_when_the_chair_leaves_last_the_ad_hoc_room_ends_unless_someone_still_waits() -> None:
    chair = person("chair")
    left = m.left_room("mdt-1", "p-chair", chair.sub, "left", removed=True)
    assert m.Broadcast("mdt-1", p.ParticipantLeft("p-chair", "left")) in left
    ad_hoc = room(lobby=True)
    assert m.room_done(ad_hoc, participants=[], waiting=[])
    assert not m.room_done(ad_hoc, participants=[], waiting=[record(person("specialist"))])


def test_an_arrival_is_recorded_on_its_node_at_now() -> None:
    arrived = m.participant(person("specialist"), "p-7", "node-b", now=NOW)
    assert (arrived.participant_id, arrived.sub, arrived.node, arrived.joined_at) == (
        "p-7", "specialist-1", "node-b", NOW,
    )  # fmt: skip

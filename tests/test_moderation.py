"""What a chair's mute, remove and room settings do, as plain function calls (no loop, no store)."""

from __future__ import annotations

from core.codes import ErrorCode
from signaling import cluster, moderation
from signaling import membership as m
from signaling import protocol as p
from signaling.state.records import ParticipantRecord, RoomRecord

CHAIR = m.Actor(sub="chair-1", participant_id="p-chair", room="mdt-1")


def specialist(**fields: object) -> ParticipantRecord:
    values: dict[str, object] = {
        "participant_id": "p-2", "sub": "specialist-1", "role": "specialist", "name": "Dr Li",
        "depts": ["cardiology"], "org": "city-hospital", "node": "node-b", "joined_at": 1.0,
    }  # fmt: skip
    values.update(fields)
    return ParticipantRecord(**values)  # type: ignore[arg-type]


def saved(effects: list[m.Effect]) -> ParticipantRecord:
    (record,) = [e.record for e in effects if isinstance(e, m.SaveParticipant)]
    return record


def test_muting_audio_leaves_video_alone_and_tells_the_media_node() -> None:
    effects = moderation.mute(CHAIR, specialist(), "audio")
    muted = saved(effects)
    assert (muted.audio_muted, muted.video_muted) == (True, False)
    assert m.Publish(cluster.MuteMedia(room="mdt-1", pid="p-2", kind="audio")) in effects


def test_muting_both_mutes_both_and_the_room_hears_who_did_it() -> None:
    effects = moderation.mute(CHAIR, specialist(), "both")
    assert (saved(effects).audio_muted, saved(effects).video_muted) == (True, True)
    (update,) = [e for e in effects if isinstance(e, m.Broadcast)]
    assert isinstance(update.message, p.ParticipantUpdated) and update.message.by == "p-chair"


def test_muting_video_never_unmutes_audio_already_muted() -> None:
    muted = saved(moderation.mute(CHAIR, specialist(audio_muted=True), "video"))
    assert (muted.audio_muted, muted.video_muted) == (True, True)


def test_muting_leaves_the_record_it_read_unchanged() -> None:
    read = specialist()
    moderation.mute(CHAIR, read, "both")
    assert not read.audio_muted and not read.video_muted


def test_muting_somebody_not_there_is_not_found() -> None:
    assert moderation.mute(CHAIR, None, "audio") == [
        m.Reply(p.Error(ErrorCode.NOT_FOUND, "no such participant", "mute"))
    ]


def test_removing_closes_with_4403_and_forgets_the_admission() -> None:
    effects = moderation.remove(CHAIR, "p-2", specialist())
    assert m.RememberAdmitted("mdt-1", "specialist-1", False) in effects
    assert m.Broadcast("mdt-1", p.ParticipantLeft("p-2", "removed")) in effects
    assert effects[-1] == m.CloseRemote("mdt-1", "p-2", 4403, "removed")
    (audit,) = [e for e in effects if isinstance(e, m.Audit)]
    assert audit.fields["reason"] == "removed_by_chair"


def test_removing_somebody_not_there_is_not_found() -> None:
    assert moderation.remove(CHAIR, "p-9", None) == [
        m.Reply(p.Error(ErrorCode.NOT_FOUND, "no such participant", "remove"))
    ]


def test_locking_keeps_the_lobby_setting_and_tells_the_room() -> None:
    room = RoomRecord(room_id="mdt-1", departments=["cardiology"], lobby=True)
    effects = moderation.update_room(CHAIR, room, lobby=None, locked=True)
    (save,) = [e for e in effects if isinstance(e, m.SaveRoom)]
    assert (save.room.lobby, save.room.locked) == (True, True)
    assert not room.locked
    assert m.Broadcast("mdt-1", p.RoomUpdated(m.room_state(save.room))) in effects
    (audit,) = [e for e in effects if isinstance(e, m.Audit)]
    assert (audit.fields["lobby"], audit.fields["locked"]) == (True, True)


def test_turning_the_lobby_off_and_unlocking() -> None:
    room = RoomRecord(room_id="mdt-1", departments=[], lobby=True, locked=True)
    effects = moderation.update_room(CHAIR, room, lobby=False, locked=False)
    (save,) = [e for e in effects if isinstance(e, m.SaveRoom)]
    assert (save.room.lobby, save.room.locked) == (False, False)


def test_updating_a_room_that_is_gone_does_nothing() -> None:
    assert moderation.update_room(CHAIR, None, lobby=True, locked=None) == []

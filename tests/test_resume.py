"""The rules of resuming a signalling connection (signaling/resume.py): no loop, no network."""

from __future__ import annotations

from typing import Any

from signaling.resume import (
    Hold,
    Lost,
    ReplayBuffer,
    ResumeRefusal,
    decide,
    decide_adoption,
    holds,
    token_digest,
)


def _hold(**kw: Any) -> Hold:
    fields: dict[str, Any] = {
        "participant_id": "p1", "sub": "dr-heart", "resume_token": "secret", "since": 100.0,
        "grace_s": 20.0,
    }  # fmt: skip
    fields.update(kw)
    return Hold(**fields)


def _buffer(sent: int, **kw: Any) -> ReplayBuffer:
    buffer = ReplayBuffer(**kw)
    for n in range(1, sent + 1):
        buffer.record(f'{{"type":"m","n":{n}}}')
    return buffer


def _decide(hold: Hold | None, buffer: ReplayBuffer | None, **kw: Any) -> ResumeRefusal | None:
    request: dict[str, Any] = {
        "participant_id": "p1", "resume_token": "secret", "sub": "dr-heart", "last_seq": 0,
        "now": 105.0,
    }  # fmt: skip
    request.update(kw)
    return decide(hold, buffer, **request)


def test_a_lost_connection_holds_a_joined_participant_and_a_leave_does_not() -> None:
    assert holds("connection_lost", joined=True, grace_s=20)
    assert holds("closed_without_leave", joined=True, grace_s=20)
    assert not holds("left", joined=True, grace_s=20)
    assert not holds("revoked", joined=True, grace_s=20)
    assert not holds("slow_consumer", joined=True, grace_s=20)
    assert not holds("timed_out", joined=True, grace_s=20)


def test_nobody_is_held_from_the_lobby_or_when_the_grace_period_is_off() -> None:
    assert not holds("connection_lost", joined=False, grace_s=20)
    assert not holds("connection_lost", joined=True, grace_s=0)


def test_messages_are_numbered_from_one_and_replayed_after_the_last_one_processed() -> None:
    buffer = _buffer(5)
    assert buffer.last_seq == 5
    assert buffer.after(3) == ['{"type":"m","n":4}', '{"type":"m","n":5}']
    assert buffer.after(5) == []
    assert buffer.after(0) == [f'{{"type":"m","n":{n}}}' for n in range(1, 6)]


def test_the_replay_buffer_keeps_the_newest_messages_by_count() -> None:
    buffer = _buffer(10, max_messages=4)
    assert buffer.first_seq == 7
    assert buffer.after(6) == [f'{{"type":"m","n":{n}}}' for n in range(7, 11)]
    assert buffer.covers(6) and not buffer.covers(5)


def test_the_replay_buffer_keeps_the_newest_messages_by_bytes() -> None:
    buffer = ReplayBuffer(max_bytes=100)
    for n in range(10):
        buffer.record("x" * 30 + str(n))
    # 31 bytes each: three fit in 100.
    assert buffer.first_seq == 8 and buffer.last_seq == 10
    assert buffer.after(7) == ["x" * 30 + "7", "x" * 30 + "8", "x" * 30 + "9"]


def test_one_message_larger_than_the_byte_bound_is_still_kept() -> None:
    buffer = ReplayBuffer(max_bytes=10)
    buffer.record("y" * 50)
    assert buffer.after(0) == ["y" * 50]


def test_a_resume_within_the_grace_period_with_the_right_token_takes_over() -> None:
    assert _decide(_hold(), _buffer(3), last_seq=1) is None
    assert _decide(_hold(), _buffer(3), last_seq=3) is None


def test_a_resume_after_the_grace_period_is_refused_as_late() -> None:
    assert _decide(_hold(), _buffer(3), now=120.0) is ResumeRefusal.LATE
    assert _decide(_hold(), _buffer(3), now=119.9) is None


def test_a_resume_with_another_token_is_refused() -> None:
    assert _decide(_hold(), _buffer(3), resume_token="guess") is ResumeRefusal.BAD_TOKEN
    assert _decide(_hold(), _buffer(3), resume_token="") is ResumeRefusal.BAD_TOKEN


def test_a_resume_by_another_identity_is_refused_even_with_the_right_resume_token() -> None:
    assert _decide(_hold(), _buffer(3), sub="dr-other") is ResumeRefusal.OTHER_IDENTITY


def test_a_resume_for_nobody_held_here_is_refused_as_unknown() -> None:
    assert _decide(None, None) is ResumeRefusal.UNKNOWN
    assert _decide(_hold(), _buffer(3), participant_id="p2") is ResumeRefusal.UNKNOWN


def test_a_gap_the_buffer_no_longer_covers_is_refused() -> None:
    buffer = _buffer(10, max_messages=4)
    assert _decide(_hold(), buffer, last_seq=5) is ResumeRefusal.GAP
    assert _decide(_hold(), buffer, last_seq=6) is None


def test_a_client_claiming_more_than_was_sent_is_refused() -> None:
    assert _decide(_hold(), _buffer(3), last_seq=4) is ResumeRefusal.GAP


def _lost(**kw: Any) -> Lost:
    values: dict[str, Any] = {"participant_id": "p1", "sub": "dr-li",
                              "resume_digest": token_digest("secret"), "lost_at": 1000.0,
                              "grace_s": 20.0, **kw}  # fmt: skip
    return Lost(**values)


def _adopt(lost: Lost | None, **kw: Any) -> ResumeRefusal | None:
    values: dict[str, Any] = {"participant_id": "p1", "resume_token": "secret", "sub": "dr-li",
                              "now": 1010.0, **kw}  # fmt: skip
    return decide_adoption(lost, **values)


def test_a_lost_nodes_participant_is_taken_over_with_the_secret_their_record_hashes() -> None:
    assert _adopt(_lost()) is None
    assert token_digest("secret") != "secret" and len(token_digest("secret")) == 64


def test_taking_over_a_lost_nodes_participant_is_refused_as_a_resume_would_be() -> None:
    assert _adopt(None) is ResumeRefusal.UNKNOWN
    assert _adopt(_lost(participant_id="p2")) is ResumeRefusal.UNKNOWN
    assert _adopt(_lost(resume_digest="")) is ResumeRefusal.UNKNOWN, "no secret was given"
    assert _adopt(_lost(), resume_token="guess") is ResumeRefusal.BAD_TOKEN
    assert _adopt(_lost(), sub="dr-other") is ResumeRefusal.OTHER_IDENTITY
    assert _adopt(_lost(), now=1020.0) is ResumeRefusal.LATE
    assert _adopt(_lost(), now=1019.9) is None

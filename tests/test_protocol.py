"""The wire protocol: declared once, validated, documented from the same declarations."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from core.rooms import new_room_id, valid_room_id
from signaling import protocol as p
from signaling.protocol_doc import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def test_protocol_document_matches_the_schemas() -> None:
    assert DOC.read_text() == render(), (
        "docs/protocol.md is stale: run `python -m signaling.protocol_doc > docs/protocol.md`"
    )


def test_every_message_is_documented_with_a_docstring() -> None:
    for union in (p.ClientMessage, p.ServerMessage):
        for cls in union.__args__:
            assert cls.__doc__ and cls.__doc__.strip(), cls
            assert f"### `{cls.__struct_config__.tag}`" in render()


def test_join_is_decoded() -> None:
    msg = p.client_decoder.decode(b'{"type":"join","token":"t","room":"mdt-1"}')
    assert msg == p.Join(token="t", room="mdt-1")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"join","token":"t"}',
        b'{"type":"join","token":"t","room":"r","admin":true}',
        b'{"type":"joined"}',
        b'{"type":"mute","participant_id":"x","kind":"brain"}',
        b'{"type":"ping","id":"seven"}',
        b"[]",
        b"",
    ],
)
def test_invalid_client_messages_are_refused(raw: bytes) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        p.client_decoder.decode(raw)


def test_server_messages_round_trip() -> None:
    decoder = msgspec.json.Decoder(p.ServerMessage)
    info = p.ParticipantInfo("pid", "sub", "Dr X", "chair", ["cardiology"])
    for message in [
        p.Joined("pid", info, ["join_room"], p.RoomState("r", ["cardiology"]), [info]),
        p.Lobby("r", "lobby_enabled", "pid"),
        p.Knock(info),
        p.ParticipantLeft("pid", "removed"),
        p.Error("not_allowed", "no", "mute"),
    ]:
        assert decoder.decode(p.encode(message)) == message


@pytest.mark.parametrize(
    ("room", "ok"),
    [("mdt-1", True), ("A.b_c-9", True), ("", False), ("-x", False), ("a" * 65, False),
     ("a/b", False), ("café", False)],
)  # fmt: skip
def test_room_ids(room: str, ok: bool) -> None:
    assert valid_room_id(room) is ok


def test_a_room_scheduled_without_an_id_always_gets_a_valid_one() -> None:
    # A URL-safe token starts with '-' or '_' one time in 32: over 2,000 draws, a generator that
    # kept those would fail here with certainty (1 - (31/32)^2000 > 0.999999...).
    ids = [new_room_id() for _ in range(2000)]
    assert all(valid_room_id(room_id) and len(room_id) == 12 for room_id in ids)
    assert len(set(ids)) == len(ids)

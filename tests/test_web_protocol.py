"""web/js/protocol.js speaks the server's protocol: its declarations match signaling/protocol.py.

The browser client declares every message it sends and receives, with each field's default
(the server leaves fields at their default out, and the client fills them back in). These
tests load that module in Chromium and compare it with the msgspec Structs the server validates
and encodes with; then they make the module build every client message and decode each with
the server's own decoder.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import msgspec
import pytest

from signaling import protocol
from tests.fixtures.browser import BrowserTab, OpenTab
from tests.fixtures.servers import RunningNode

REQUIRED = "<required>"
"""How protocol.js marks a field with no default."""


def _fields(struct: Any) -> dict[str, Any]:
    """A Struct's fields and their defaults, as protocol.js writes them."""
    fields: dict[str, Any] = {}
    for f in msgspec.inspect.type_info(struct).fields:
        if f.required:
            fields[f.name] = REQUIRED
        elif f.default_factory is not msgspec.NODEFAULT:
            fields[f.name] = msgspec.to_builtins(f.default_factory())
        else:
            fields[f.name] = msgspec.to_builtins(f.default)
    return fields


def _messages(union: Any) -> dict[str, dict[str, Any]]:
    return {m.__struct_config__.tag: _fields(m) for m in typing.get_args(union)}


def _objects() -> dict[str, dict[str, Any]]:
    """The Structs inside messages (ParticipantInfo...), by class name."""
    found: dict[str, dict[str, Any]] = {}

    def walk(t: msgspec.inspect.Type) -> None:
        if isinstance(t, msgspec.inspect.StructType):
            if t.cls.__struct_config__.tag is None and t.cls.__name__ not in found:
                found[t.cls.__name__] = _fields(t.cls)
            for f in t.fields:
                walk(f.type)
        elif isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.DictType)):
            for inner in (getattr(t, "item_type", None), getattr(t, "value_type", None)):
                if inner is not None:
                    walk(inner)
        elif isinstance(t, msgspec.inspect.UnionType):
            for inner in t.types:
                walk(inner)

    for union in (protocol.ClientMessage, protocol.ServerMessage):
        for message in typing.get_args(union):
            walk(msgspec.inspect.type_info(message))
    return found


@pytest.fixture
async def protocol_page(dev_node: RunningNode, chromium: OpenTab) -> BrowserTab:
    """The client's home page, whose modules the tests import."""
    tab = await chromium(f"{dev_node.url}/")
    await tab.until("document.getElementById('home-heading').textContent.length > 0")
    return tab


async def _declared(tab: BrowserTab) -> dict[str, Any]:
    return dict(
        await tab.page.evaluate(
            """import('/js/protocol.js').then((m) => ({
                required: m.REQUIRED, close: m.CLOSE, client: m.CLIENT_MESSAGES,
                server: m.SERVER_MESSAGES, objects: m.OBJECTS,
            }))"""
        )
    )


async def test_protocol_js_declares_every_message_the_server_knows(
    protocol_page: BrowserTab,
) -> None:
    declared = await _declared(protocol_page)
    assert declared["required"] == REQUIRED
    assert declared["client"] == _messages(protocol.ClientMessage)
    assert declared["server"] == _messages(protocol.ServerMessage)
    assert declared["objects"] == _objects()


async def test_protocol_js_knows_every_close_code_the_server_sends(
    protocol_page: BrowserTab,
) -> None:
    declared = await _declared(protocol_page)
    abnormal = 1006  # the browser's own: the connection ended without a close frame
    assert set(declared["close"].values()) - {abnormal} == set(protocol.CLOSE_CODES)


async def test_every_message_protocol_js_builds_is_valid_for_the_server(
    protocol_page: BrowserTab,
) -> None:
    sent = await protocol_page.page.evaluate(
        """import('/js/protocol.js').then((m) => {
            const sent = [];
            const conn = new m.SignallingConnection({});
            conn.ws = { readyState: WebSocket.OPEN, send: (text) => sent.push(text) };
            conn.send("join", { token: "a.b.c", room: "tumour-board" });
            conn.send("resume", { token: "a.b.c", participant_id: "p1", resume_token: "r",
                                  last_seq: 3 });
            conn.send("ping", { id: 1 });
            conn.leave();
            conn.admit("p1");
            conn.deny("p1");
            conn.mute("p1");
            conn.mute("p1", "video");
            conn.remove("p1");
            conn.setMedia({ audioMuted: true });
            conn.setMedia({ audioMuted: false, videoMuted: true });
            conn.updateRoom({ locked: true });
            conn.updateRoom({ lobby: false });
            conn.endMeeting();
            conn.offer("publish", "v=0", ["2"]);
            conn.answer("subscribe", "v=0");
            conn.candidate("publish", { candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                                        sdpMid: "0", sdpMLineIndex: 0 });
            conn.candidate("subscribe", null);
            conn.restartIce();
            conn.requestConsent();
            conn.consent("granted", "2026-12");
            conn.consent("declined");
            conn.verbalConsent("p1");
            conn.startRecording();
            conn.startRecording("teaching");
            conn.stopRecording();
            conn.markCase("case 3");
            conn.mediaFailed("ice_failed", "publish", ["host", "srflx"]);
            conn.mediaFailed("no_media", "subscribe");
            conn.renderSizes({ "1": [320, 180], "3": [0, 0] });
            return sent;
        })"""
    )
    types = set()
    for text in sent:
        message = protocol.client_decoder.decode(text)  # raises on anything the server refuses
        types.add(message.__struct_config__.tag)
    assert types == set(_messages(protocol.ClientMessage))


async def test_protocol_js_refuses_to_build_a_malformed_message(
    protocol_page: BrowserTab,
) -> None:
    errors = await protocol_page.page.evaluate(
        """import('/js/protocol.js').then((m) => {
            const attempt = (type, fields) => {
                try { m.clientMessage(type, fields); return null; } catch (e) { return e.message; }
            };
            return [attempt("kick", {}), attempt("mute", { who: "p1", participant_id: "p1" }),
                    attempt("admit", {})];
        })"""
    )
    assert errors == [
        "not a client message: kick",
        "mute has no field who",
        "admit needs participant_id",
    ]


async def test_defaults_the_server_leaves_out_are_filled_in(protocol_page: BrowserTab) -> None:
    info = protocol.ParticipantInfo("p1", "dr-ana", "Dr Ana Silva", "specialist", ["cardiology"])
    sent = protocol.encode(protocol.ParticipantJoined(info))
    assert "audio_muted" not in sent  # left out on the wire
    filled = await protocol_page.page.evaluate(
        f"""import('/js/protocol.js').then((m) => {{
            const message = m.withDefaults(m.SERVER_MESSAGES.participant_joined, {sent});
            return m.withDefaults(m.OBJECTS.ParticipantInfo, message.participant);
        }})"""
    )
    assert filled == json.loads(msgspec.json.encode(msgspec.structs.asdict(info)))

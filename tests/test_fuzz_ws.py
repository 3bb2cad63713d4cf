"""Random and mutated messages on `/ws` of a real `consilium serve`: it stays up and answers with
documented close codes and message types only."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling import protocol as p
from signaling.devidp import DevelopmentIdP
from tests.fixtures.servers import ServeProcess, start_serve

DOCUMENTED_CLOSE_CODES = set(p.CLOSE_CODES)
SERVER_TYPES = {
    str(t.__struct_config__.tag)
    for t in p.ServerMessage.__args__  # type: ignore[attr-defined]
}
CLIENT_TYPES = [
    str(t.__struct_config__.tag)
    for t in p.ClientMessage.__args__  # type: ignore[attr-defined]
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, str]]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    serve = start_serve(
        data,
        env={
            "CONSILIUM_JOIN_ATTEMPTS_PER_IP_PER_MIN": "1000000",
            "CONSILIUM_LOG_LEVEL": "warning",
            "CONSILIUM_JOIN_TIMEOUT_S": "2",
        },
    )
    idp = DevelopmentIdP.load_or_create(data)
    token = idp.mint(sub="dr-fuzz", role="chair", depts=["cardiology"], rooms=["fuzz"], ttl_s=3600)
    yield serve, token
    assert serve.stop() == 0, serve.output()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


def message_like() -> st.SearchStrategy[Any]:
    """Objects shaped like protocol messages: a known or unknown type, random fields."""
    return st.fixed_dictionaries(
        {"type": st.sampled_from([*CLIENT_TYPES, "nonsense", ""]) | st.text(max_size=8)},
        optional={
            "participant_id": st.text(max_size=20) | st.integers(),
            "token": st.text(max_size=40),
            "room": st.text(max_size=70),
            "kind": st.sampled_from(["audio", "video", "both", "brain"]),
            "sdp": st.text(max_size=50),
            "id": st.integers() | st.text(max_size=3),
            "lobby": json_values,
            "extra": json_values,
        },
    )


frames = st.one_of(
    st.binary(max_size=200).map(lambda b: ("bytes", b)),
    st.text(max_size=200).map(lambda t: ("text", t)),
    json_values.map(lambda v: ("text", json.dumps(v))),
    message_like().map(lambda v: ("text", json.dumps(v))),
)


async def _exchange(url: str, sends: list[tuple[str, Any]]) -> tuple[list[str], int | None]:
    """Send frames; collect the message types received and the close code (if closed)."""
    types: list[str] = []
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url.replace("http", "ws") + "/ws")
        for kind, payload in sends:
            if ws.closed:
                break
            try:
                if kind == "bytes":
                    await ws.send_bytes(payload)
                else:
                    await ws.send_str(payload)
            except ConnectionError:
                break
        code: int | None = None
        while True:
            try:
                msg = await ws.receive(timeout=0.3)
            except TimeoutError:
                break
            if msg.type is aiohttp.WSMsgType.TEXT:
                types.append(json.loads(msg.data)["type"])
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                code = int(msg.data)
                break
            else:
                code = ws.close_code
                break
        await ws.close()
    return types, code


def _check(serve: ServeProcess, types: list[str], code: int | None) -> None:
    assert set(types) <= SERVER_TYPES, types
    assert code is None or code in DOCUMENTED_CLOSE_CODES, code
    assert serve.proc.poll() is None, serve.output()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=frames, rest=st.lists(frames, max_size=3))
def test_random_first_messages_are_refused_with_4401(
    fuzz_server: tuple[ServeProcess, str], first: tuple[str, Any], rest: list[tuple[str, Any]]
) -> None:
    serve, _ = fuzz_server
    types, code = asyncio.run(_exchange(serve.url, [first, *rest]))
    _check(serve, types, code)
    # Nothing random is a valid join: every such connection ends unauthenticated (or as a bad
    # room id), never joined.
    assert "joined" not in types and "lobby" not in types
    assert code in (4400, 4401), code


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(after=st.lists(frames, min_size=1, max_size=5))
def test_random_messages_after_join_get_documented_answers(
    fuzz_server: tuple[ServeProcess, str], after: list[tuple[str, Any]]
) -> None:
    serve, token = fuzz_server
    join = ("text", json.dumps({"type": "join", "token": token, "room": "fuzz"}))
    types, code = asyncio.run(_exchange(serve.url, [join, *after]))
    _check(serve, types, code)
    assert types and types[0] == "joined"


def test_server_still_serves_after_fuzzing(fuzz_server: tuple[ServeProcess, str]) -> None:
    serve, token = fuzz_server
    with urllib.request.urlopen(serve.url + "/healthz", timeout=5) as r:
        assert r.status == 200
    join = ("text", json.dumps({"type": "join", "token": token, "room": "fuzz"}))
    types, code = asyncio.run(_exchange(serve.url, [join]))
    assert types[:1] == ["joined"] and code is None
    assert "Traceback" not in serve.output()

"""The development link page: mints join links on a development node, for this machine only."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from consilium.node import create_app
from signaling.audit import iter_entries
from signaling.devidp import DevelopmentIdP
from signaling.http.routes.dev import add_dev_routes, is_local_request
from signaling.policy import ROLES
from tests.fixtures.servers import RunningNode, next_message, node_settings, running_node

LINK = {"sub": "dr-dev", "name": "Dr Dev", "role": "chair", "depts": ["cardiology"],
        "rooms": ["mdt-1"]}  # fmt: skip


@pytest.fixture
async def production_node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    """A node that trusts a hospital IdP's JWKS file (one key): no development IdP."""
    idp = DevelopmentIdP.load_or_create(tmp_path / "hospital-idp")
    settings = node_settings(
        tmp_path / "data", jwks=str(idp.jwks_path), jwt_issuer="https://idp.hospital.example"
    )
    async with running_node(settings) as node:
        yield node


async def mint(node: RunningNode, body: dict[str, Any], **kw: Any) -> tuple[int, dict[str, Any]]:
    session = await node.session()
    async with session.post(node.url + "/api/dev/links", json=body, **kw) as response:
        return response.status, await response.json()


async def test_minted_link_joins_its_room(dev_node: RunningNode) -> None:
    status, body = await mint(dev_node, LINK)
    assert status == 201
    assert body["link"] == f"{dev_node.url}/join/mdt-1#token={body['token']}"
    assert body["expires_at"] > 0

    ws = await dev_node.connect()
    token = body["link"].partition("#token=")[2]
    await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
    joined = await next_message(ws)
    assert joined["type"] == "joined"
    assert joined["room"]["room_id"] == "mdt-1"
    assert {p["sub"] for p in joined["participants"]} == {"dr-dev"}


async def test_an_archivists_link_opens_the_archive_and_lists_recordings(
    dev_node: RunningNode,
) -> None:
    status, body = await mint(dev_node, {**LINK, "sub": "arch-1", "role": "archivist",
                                         "depts": ["records"]})  # fmt: skip
    assert status == 201
    assert body["link"] == f"{dev_node.url}/archive#token={body['token']}"
    session = await dev_node.session()
    headers = {"Authorization": f"Bearer {body['token']}"}
    async with session.get(dev_node.url + "/api/recordings", headers=headers) as response:
        assert response.status == 200 and (await response.json())["recordings"] == []


async def test_minted_link_is_audited_without_the_token(dev_node: RunningNode) -> None:
    _status, body = await mint(dev_node, {**LINK, "role": "nurse"})
    entries = list(iter_entries(dev_node.data_dir / "audit", action="dev_link_minted"))
    assert len(entries) == 1
    assert (entries[0].sub, entries[0].room, entries[0].fields["role"]) == (
        "dr-dev",
        "mdt-1",
        "nurse",
    )
    for segment in (dev_node.data_dir / "audit").rglob("*"):
        if segment.is_file():
            assert body["token"] not in segment.read_text(errors="replace")


async def test_without_mfa_the_token_claims_password_only(dev_node: RunningNode) -> None:
    _status, body = await mint(dev_node, {**LINK, "amr": ["pwd"], "ttl_s": 60})
    identity = await dev_node.node.verifier.verify(body["token"])  # type: ignore[union-attr]
    assert identity.amr == ("pwd",)
    assert identity.exp == body["expires_at"]


@pytest.mark.parametrize(
    "change",
    [
        {"role": "superuser"},
        {"rooms": ["../etc"]},
        {"rooms": []},
        {"rooms": [f"room-{i}" for i in range(17)]},
        {"sub": ""},
        {"sub": "x" * 129},
        {"sub": "dr\nforged"},
        {"depts": ["d"] * 33},
        {"name": "n" * 201},
        {"ttl_s": 86_401},
        {"ttl_s": 0},
        {"amr": "pwd"},
        {"is_admin": True},
    ],
)
async def test_bad_link_request_is_refused(dev_node: RunningNode, change: dict[str, Any]) -> None:
    status, body = await mint(dev_node, {**LINK, **change})
    assert status == 400
    assert body["error"] == "bad_message"
    assert not list(iter_entries(dev_node.data_dir / "audit", action="dev_link_minted"))


async def test_non_json_body_is_refused(dev_node: RunningNode) -> None:
    session = await dev_node.session()
    async with session.post(dev_node.url + "/api/dev/links", data="sub=x") as response:
        assert response.status == 400


@pytest.mark.parametrize("path", ["/dev", "/dev.html", "/dev.js", "/dev.css"])
async def test_dev_page_is_served_in_development_mode(dev_node: RunningNode, path: str) -> None:
    session = await dev_node.session()
    async with session.get(dev_node.url + path) as response:
        assert response.status == 200
        text = await response.text()
    if path == "/dev":
        assert "DEVELOPMENT ONLY" in text and "never use with patient data" in text
        assert "<script>" not in text and "style=" not in text


async def test_dev_page_offers_every_role(dev_node: RunningNode) -> None:
    session = await dev_node.session()
    async with session.get(dev_node.url + "/dev") as response:
        html = await response.text()
    assert tuple(re.findall(r'<option value="([a-z]+)"', html)) == ROLES


@pytest.mark.parametrize("path", ["/dev", "/dev.html", "/dev.js", "/api/dev/links"])
async def test_production_node_does_not_reveal_the_dev_page(
    production_node: RunningNode, path: str
) -> None:
    session = await production_node.session()
    method = "POST" if path.startswith("/api/") else "GET"
    async with session.request(method, production_node.url + path, json=LINK) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"


@pytest.mark.parametrize(
    "headers", [{"X-Forwarded-For": "203.0.113.9"}, {"Host": "rebound.example:8080"}]
)
async def test_proxied_or_rebound_request_gets_404(
    dev_node: RunningNode, headers: dict[str, str]
) -> None:
    status, body = await mint(dev_node, LINK, headers=headers)
    assert (status, body["error"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("remote", "headers", "host", "local"),
    [
        ("127.0.0.1", {}, "127.0.0.1:8080", True),
        ("::1", {}, "[::1]:8080", True),
        ("127.0.0.1", {}, "localhost:8080", True),
        ("10.1.2.3", {}, "127.0.0.1:8080", False),
        ("192.0.2.7", {}, "consilium.hospital.example", False),
        (None, {}, "127.0.0.1:8080", False),
        ("127.0.0.1", {"Forwarded": "for=192.0.2.7"}, "127.0.0.1:8080", False),
        ("127.0.0.1", {"X-Real-IP": "192.0.2.7"}, "127.0.0.1:8080", False),
        ("127.0.0.1", {}, "rebound.example:8080", False),
        ("127.0.0.1", {}, None, False),
    ],
)
def test_only_direct_requests_from_this_machine_are_local(
    remote: str | None, headers: dict[str, str], host: str | None, local: bool
) -> None:
    assert is_local_request(remote, headers, host) is local


async def test_adding_dev_routes_twice_is_harmless(tmp_path: Path) -> None:
    app = create_app(node_settings(tmp_path / "data"))
    add_dev_routes(app)
    add_dev_routes(app)
    assert [r.canonical for r in app.router.resources()].count("/dev") == 1
    # The node's whole life, so that its SFU gives aiortc its own ICE classes back for later tests.
    runner = web.AppRunner(app)
    await runner.setup()
    await runner.cleanup()

"""SCIM provisioning against a live node: the token, joiners, leavers closed and refused,
re-activation, departments from the directory deciding who joins a department's room."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from core.errors import ConfigError
from signaling.auditverify import iter_entries
from signaling.http.routes.scim import read_token_digest
from tests.fixtures.scim import SCIM_TOKEN
from tests.fixtures.servers import RunningNode, close_code, node_settings, running_node

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


async def scim(
    node: RunningNode,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = SCIM_TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDict[str], Any]:
    """One SCIM request: status, headers, JSON body (None when empty)."""
    http = await node.session()
    sent = {"Content-Type": "application/scim+json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with http.request(method, node.url + "/scim/v2" + path, json=body, headers=sent) as r:
        text = await r.text()
        return r.status, r.headers.copy(), (None if not text else await r.json(content_type=None))


async def provision(node: RunningNode, user_name: str, **attrs: Any) -> str:
    """Create a User; its SCIM id."""
    status, _, body = await scim(
        node, "POST", "/Users", {"schemas": [USER], "userName": user_name, **attrs}
    )
    assert status == 201, body
    return str(body["id"])


async def set_active(node: RunningNode, user_id: str, active: bool) -> None:
    ops = [{"op": "replace", "path": "active", "value": active}]
    status, _, body = await scim(
        node, "PATCH", f"/Users/{user_id}", {"schemas": [PATCH], "Operations": ops}
    )
    assert status == 200 and body["active"] is active, body


def audit_actions(node: RunningNode, action: str) -> list[Any]:
    return list(iter_entries(node.data_dir / "audit", action=action))


async def test_only_the_provisioning_token_opens_scim(scim_node: RunningNode) -> None:
    admin_jwt = scim_node.token("it-1", "admin", depts=["it"])
    for token in (None, "wrong-" + SCIM_TOKEN, admin_jwt):
        status, headers, body = await scim(scim_node, "GET", "/Users", token=token)
        assert status == 401
        assert headers["Content-Type"].startswith("application/scim+json")
        assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
        assert body["status"] == "401"
        assert headers["WWW-Authenticate"].startswith("Bearer")
    refused = [
        e for e in audit_actions(scim_node, "api_refused") if e.reason == "scim_token_invalid"
    ]
    assert len(refused) == 3
    status, _, body = await scim(scim_node, "GET", "/ServiceProviderConfig")
    assert status == 200 and body["patch"]["supported"] is True


async def test_scim_is_off_without_a_token_file(dev_node: RunningNode) -> None:
    status, headers, body = await scim(dev_node, "GET", "/Users")
    assert status == 404 and headers["Content-Type"].startswith("application/scim+json")
    assert "scim_token_file" in body["detail"]


async def test_joiners_are_listed_filtered_paged_and_unique(scim_node: RunningNode) -> None:
    ids = [
        await provision(scim_node, "alice@h.example", externalId="e-a", displayName="Alice"),
        await provision(scim_node, "bob@h.example", externalId="e-b"),
        await provision(scim_node, "carol@other.example"),
    ]
    status, _, page = await scim(scim_node, "GET", "/Users?startIndex=2&count=1")
    assert status == 200 and page["totalResults"] == 3 and page["itemsPerPage"] == 1
    assert [u["id"] for u in page["Resources"]] == [ids[1]]
    status, _, found = await scim(
        scim_node, "GET", '/Users?filter=userName co "h.example" and externalId pr'
    )
    assert [u["id"] for u in found["Resources"]] == ids[:2]
    status, _, found = await scim(scim_node, "GET", '/Users?filter=userName eq "ALICE@H.EXAMPLE"')
    assert [u["userName"] for u in found["Resources"]] == ["alice@h.example"]
    status, _, bad = await scim(scim_node, "GET", '/Users?filter=userName eqq "x"')
    assert status == 400 and bad["scimType"] == "invalidFilter"
    status, _, clash = await scim(
        scim_node, "POST", "/Users", {"schemas": [USER], "userName": "Alice@h.example"}
    )
    assert status == 409 and clash["scimType"] == "uniqueness"
    status, _, missing = await scim(scim_node, "POST", "/Users", {"schemas": [USER]})
    assert status == 400 and missing["scimType"] == "invalidValue"
    # Bodies that are not a resource at all: each a SCIM error, and the node serves on.
    http = await scim_node.session()
    auth = {"Authorization": f"Bearer {SCIM_TOKEN}", "Content-Type": "application/scim+json"}
    for raw, expected in ((b"{not json", 400), (b"[" * 100_000, 400), (b"[1]", 400),
                          (b"x" * (5 << 20), 413)):  # fmt: skip
        async with http.post(scim_node.url + "/scim/v2/Users", data=raw, headers=auth) as r:
            assert r.status == expected and r.content_type == "application/scim+json"
    status, _, listed = await scim(scim_node, "GET", "/Users")
    assert status == 200 and listed["totalResults"] == 3


async def test_versions_guard_concurrent_writes(scim_node: RunningNode) -> None:
    user_id = await provision(scim_node, "alice@h.example")
    status, headers, user = await scim(scim_node, "GET", f"/Users/{user_id}")
    assert headers["ETag"] == user["meta"]["version"] == 'W/"1"'
    replaced = {"schemas": [USER], "userName": "alice@h.example", "displayName": "Alice"}
    status, headers, _ = await scim(
        scim_node, "PUT", f"/Users/{user_id}", replaced, headers={"If-Match": 'W/"1"'}
    )
    assert status == 200 and headers["ETag"] == 'W/"2"'
    status, _, stale = await scim(
        scim_node, "PUT", f"/Users/{user_id}", replaced, headers={"If-Match": 'W/"1"'}
    )
    assert status == 412, stale


async def test_leaver_is_closed_refused_and_lifted_on_reactivation(
    scim_node: RunningNode,
) -> None:
    user_id = await provision(scim_node, "dr-heart")
    # A specialist waits until a chair opens the room: connected all the same.
    ws, joined = await scim_node.join("dr-heart")
    assert joined["type"] in ("joined", "lobby")
    await set_active(scim_node, user_id, False)
    assert await close_code(ws) == 4401
    _, refused = await scim_node.join("dr-heart")
    assert refused == {"type": "closed", "code": 4401}
    # The directory refuses the person itself, before (and whatever) the revocation list says.
    reasons = [e.reason for e in audit_actions(scim_node, "join_refused")]
    assert reasons == ["deactivated"]
    # The close says "revoked": the web client shows its "access withdrawn" screen (ended.js).
    again = await scim_node.connect()
    await again.send_json({"type": "join", "token": scim_node.token("dr-heart"), "room": "mdt-1"})
    closing = await again.receive(timeout=5.0)
    assert closing.data == 4401 and "revoked" in closing.extra
    # Their tokens open no API either.
    leaver = {"Authorization": f"Bearer {scim_node.token('dr-heart')}"}
    http = await scim_node.session()
    async with http.get(scim_node.url + "/api/rooms/mdt-1/admission", headers=leaver) as r:
        assert r.status == 401
    admin = {"Authorization": f"Bearer {scim_node.token('it-1', 'admin', depts=['it'])}"}
    http = await scim_node.session()
    async with http.get(scim_node.url + "/api/revocations", headers=admin) as r:
        assert [(e["value"], e["by"]) for e in await r.json()] == [("dr-heart", "scim")]
    await set_active(scim_node, user_id, True)
    _, again = await scim_node.join("dr-heart")
    assert again["type"] in ("joined", "lobby")
    async with http.get(scim_node.url + "/api/revocations", headers=admin) as r:
        assert await r.json() == []
    assert [e.sub for e in audit_actions(scim_node, "revocation_lifted")] == ["dr-heart"]


async def test_deleted_user_is_closed_and_refused(scim_node: RunningNode) -> None:
    user_id = await provision(scim_node, "dr-gone")
    ws, joined = await scim_node.join("dr-gone")
    assert joined["type"] in ("joined", "lobby")
    status, _, body = await scim(scim_node, "DELETE", f"/Users/{user_id}")
    assert status == 204 and body is None
    assert await close_code(ws) == 4401
    _, refused = await scim_node.join("dr-gone")
    assert refused == {"type": "closed", "code": 4401}
    status, _, _ = await scim(scim_node, "GET", f"/Users/{user_id}")
    assert status == 404


async def test_reactivation_keeps_a_revocation_made_by_hand(scim_node: RunningNode) -> None:
    user_id = await provision(scim_node, "dr-laptop")
    admin = {"Authorization": f"Bearer {scim_node.token('it-1', 'admin', depts=['it'])}"}
    http = await scim_node.session()
    async with http.post(
        scim_node.url + "/api/revocations", json={"sub": "dr-laptop", "reason": "stolen"},
        headers=admin,
    ) as r:  # fmt: skip
        assert r.status == 201
    await set_active(scim_node, user_id, False)
    await set_active(scim_node, user_id, True)
    _, refused = await scim_node.join("dr-laptop")
    assert refused == {"type": "closed", "code": 4401}
    async with http.get(scim_node.url + "/api/revocations", headers=admin) as r:
        assert [(e["value"], e["by"]) for e in await r.json()] == [("dr-laptop", "it-1")]


async def test_directory_departments_decide_who_joins_a_departments_room(
    scim_node: RunningNode,
) -> None:
    # The chair (not in the directory: their token's departments count) opens a cardiology room.
    chair, opened = await scim_node.join("dr-chair", "chair", depts=["cardiology"])
    assert opened["type"] == "joined"
    heart = await provision(scim_node, "dr-heart")
    status, _, cardiology = await scim(
        scim_node, "POST", "/Groups",
        {"schemas": [GROUP], "displayName": "cardiology", "members": [{"value": heart}]},
    )  # fmt: skip
    assert status == 201, cardiology
    # The directory wins over the token: an "oncology" token of a cardiologist gets in.
    ws, joined = await scim_node.join("dr-heart", depts=["oncology"])
    assert joined["type"] == "joined"
    await ws.close()
    ops = [{"op": "remove", "path": f'members[value eq "{heart}"]'}]
    status, _, moved = await scim(
        scim_node, "PATCH", f"/Groups/{cardiology['id']}", {"schemas": [PATCH], "Operations": ops}
    )
    assert status == 200 and not moved.get("members")
    # Moved out of cardiology: the same cardiology token no longer opens the cardiology room.
    _, refused = await scim_node.join("dr-heart", depts=["cardiology"])
    assert refused == {"type": "closed", "code": 4403}
    assert [e.reason for e in audit_actions(scim_node, "join_refused") if e.sub == "dr-heart"] == [
        "department_not_permitted"
    ]
    status, _, user = await scim(scim_node, "GET", f"/Users/{heart}")
    assert not user.get("groups")
    await chair.close()


async def test_the_token_file_may_hold_only_the_tokens_hash(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    hashed = tmp_path / "scim-token.sha256"
    hashed.write_text("sha256:" + hashlib.sha256(token.encode()).hexdigest() + "\n")
    settings = node_settings(tmp_path / "data", scim_token_file=str(hashed))
    async with running_node(settings) as node:
        status, _, _ = await scim(node, "GET", "/Users", token=token)
        assert status == 200
        status, _, _ = await scim(node, "GET", "/Users", token=hashed.read_text().strip())
        assert status == 401


def test_an_unusable_token_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("guessable\n")
    (tmp_path / "bad-hash").write_text("sha256:abc\n")
    for name in ("short", "bad-hash", "missing"):
        with pytest.raises(ConfigError):
            read_token_digest(tmp_path / name)


async def test_a_large_departments_full_member_list_is_accepted(scim_node: RunningNode) -> None:
    # Above the REST API's 64 KiB body bound: a bridge that PUTs whole groups is not refused.
    members = [{"value": f"{i:032x}"} for i in range(3000)]
    body = {"schemas": [GROUP], "displayName": "nursing", "members": members}
    status, _, created = await scim(scim_node, "POST", "/Groups", body)
    assert status == 201 and len(created["members"]) == 3000

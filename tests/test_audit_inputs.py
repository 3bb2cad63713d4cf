"""JWT-shaped values typed by users (a path, a room id, a revocation, a hold reason) on a real
node: the action and its audit entry happen together, a refusal stays a refusal (never 500), and
the token-shaped text is written as a mark, never as itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from signaling.audit import iter_entries
from signaling.auditformat import TOKEN_MARK
from signaling.auditverify import verify_log
from tests.fixtures.recordings import record_on_node
from tests.fixtures.servers import RunningNode, close_code, node_settings, running_node

# Two base64url parts beginning "eyJ": what a token cut short (or pasted by mistake) looks like.
# It is also a valid room id and a valid subject, so users can send it anywhere.
JWT_SHAPED = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0"


def entries(node: RunningNode, action: str) -> list[Any]:
    return list(iter_entries(node.data_dir / "audit", action=action))


def assert_log_holds_no_token(node: RunningNode) -> None:
    audit_dir = node.data_dir / "audit"
    assert all(b"eyJhbGciOiJIUzI1NiJ9" not in p.read_bytes() for p in audit_dir.glob("*.jsonl"))
    assert node.node is not None
    assert verify_log(audit_dir, node.node.audit_key.public_key()).ok


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    async with running_node(node_settings(tmp_path / "data", media=False)) as node:
        yield node


async def test_a_revocation_of_a_jwt_shaped_subject_is_in_force_and_audited(
    node: RunningNode,
) -> None:
    http = await node.session()
    admin = node.token("it-admin", "admin", rooms=[], depts=["it"])
    response = await http.post(
        node.url + "/api/revocations",
        json={"sub": JWT_SHAPED, "reason": f"pasted {JWT_SHAPED} by mistake"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert response.status == 201, await response.text()
    (entry,) = entries(node, "revoke")
    assert entry.sub == TOKEN_MARK and entry.reason == f"pasted {TOKEN_MARK} by mistake"
    assert_log_holds_no_token(node)


async def test_refusals_with_a_jwt_shaped_path_stay_refusals(node: RunningNode) -> None:
    http = await node.session()
    response = await http.get(node.url + f"/api/rooms/{JWT_SHAPED}/images")
    assert response.status == 401, await response.text()
    outsider = node.token("dr-out", "specialist", rooms=["mdt-1"])
    response = await http.get(
        node.url + f"/api/rooms/{JWT_SHAPED}/images",
        headers={"Authorization": f"Bearer {outsider}"},
    )
    assert response.status == 403, await response.text()
    refused = entries(node, "api_refused")
    assert len(refused) == 2
    assert all(TOKEN_MARK in e.fields["path"] for e in refused)
    assert_log_holds_no_token(node)


async def test_a_join_to_a_jwt_shaped_room_is_refused_and_audited(node: RunningNode) -> None:
    ws, answer = await node.join("dr-heart", "specialist", room=JWT_SHAPED, rooms=["mdt-1"])
    code = answer.get("code") if answer["type"] == "closed" else await close_code(ws)
    assert code == 4403, answer
    (entry,) = entries(node, "join_refused")
    assert entry.room == TOKEN_MARK
    assert_log_holds_no_token(node)


async def test_a_legal_hold_with_a_jwt_shaped_reason_is_placed_and_released_with_entries(
    node: RunningNode,
) -> None:
    assert node.node is not None
    record_on_node(node, "rec-a", seconds=2.0)
    http = await node.session()
    archivist = node.token("dr-arch", "archivist", rooms=[])
    headers = {"Authorization": f"Bearer {archivist}"}
    url = node.url + "/api/recordings/rec-a/hold"
    response = await http.post(url, json={"reason": f"matter {JWT_SHAPED}"}, headers=headers)
    assert response.status == 201, await response.text()
    (held,) = entries(node, "recording_held")
    assert held.reason == f"matter {TOKEN_MARK}"
    response = await http.delete(url, headers=headers)
    assert response.status == 200, await response.text()
    (released,) = entries(node, "recording_released")
    assert released.fields["recording"] == "rec-a"
    assert_log_holds_no_token(node)


def failing_audit(node: RunningNode, monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    """Make the audit log fail (a full disk) for entries of `action`."""
    assert node.node is not None
    log = node.node.audit
    append = log.append

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == action:
            raise OSError(28, "No space left on device")
        return append(name, *args, **kwargs)

    monkeypatch.setattr(log, "append", refuse)


async def test_a_revocation_whose_entry_cannot_be_written_is_not_in_force(
    node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_audit(node, monkeypatch, "revoke")
    http = await node.session()
    admin = {"Authorization": f"Bearer {node.token('it-admin', 'admin', rooms=[], depts=['it'])}"}
    response = await http.post(node.url + "/api/revocations", json={"sub": "dr-heart"},
                               headers=admin)  # fmt: skip
    assert response.status == 500
    monkeypatch.undo()
    response = await http.get(node.url + "/api/revocations", headers=admin)
    assert await response.json() == []
    _, answer = await node.join("dr-heart", "specialist")
    assert answer["type"] in ("joined", "lobby")  # not refused as revoked


async def test_a_legal_hold_whose_entry_cannot_be_written_is_neither_placed_nor_lifted(
    node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert node.node is not None
    record_on_node(node, "rec-a", seconds=2.0)
    http = await node.session()
    headers = {"Authorization": f"Bearer {node.token('dr-arch', 'archivist', rooms=[])}"}
    url = node.url + "/api/recordings/rec-a/hold"
    failing_audit(node, monkeypatch, "recording_held")
    response = await http.post(url, json={"reason": "complaint 7"}, headers=headers)
    assert response.status == 500
    async with http.get(node.url + "/api/recordings/rec-a", headers=headers) as response:
        assert (await response.json())["held"] is False
    monkeypatch.undo()
    response = await http.post(url, json={"reason": "complaint 7"}, headers=headers)
    assert response.status == 201
    failing_audit(node, monkeypatch, "recording_released")
    response = await http.delete(url, headers=headers)
    assert response.status == 500
    async with http.get(node.url + "/api/recordings/rec-a", headers=headers) as response:
        assert (await response.json())["held"] is True

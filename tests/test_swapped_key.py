"""A recording signed by another key than the node's (a swapped audit key, a planted
recording): every archive route reports the failed check in words, never a 500."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fixtures.recordings import record_on_node
from tests.fixtures.servers import node_settings, running_node


async def test_a_recording_signed_by_another_key_is_reported_not_a_server_error(
    tmp_path: Path,
) -> None:
    async with running_node(node_settings(tmp_path / "data", media=False)) as node:
        assert node.node is not None
        record_on_node(node, "rec-a", Ed25519PrivateKey.generate(), seconds=2.0)
        http = await node.session()
        archivist = {"Authorization": f"Bearer {node.token('dr-arch', 'archivist', rooms=[])}"}
        url = node.url + "/api/recordings/rec-a"
        async with http.post(url + "/verify", headers=archivist) as response:
            body = await response.json()
            assert response.status == 200 and not body["ok"]
            assert any("signature is not valid" in p for p in body["problems"])
        for path in ("", "/bundle", "/export"):
            async with http.get(url + path, headers=archivist) as response:
                assert response.status == 409, (path, await response.text())
                body = await response.json()
                assert body["error"] == "integrity_failed"
                assert "signature" in body["message"], body

"""A SCIM leaver across two nodes sharing one real redis-server: deactivated on one node, their
connections on both close at once, and both refuse their token; the directory is one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER
from tests.fixtures.scim import scim_token_file
from tests.fixtures.servers import close_code, node_settings, running_node
from tests.test_scim_live import provision, scim, set_active


async def test_deactivation_closes_the_leaver_on_every_node(redis_url: str, tmp_path: Path) -> None:
    token_file = str(scim_token_file(tmp_path / "secrets"))
    async with running_node(
        node_settings(tmp_path / "a", redis=redis_url, scim_token_file=token_file)
    ) as a:
        trusting_a = {
            "jwks": str(a.idp.jwks_path),
            "jwt_issuer": DEV_ISSUER,
            "jwt_audience": DEV_AUDIENCE,
            "scim_token_file": token_file,
        }
        async with running_node(node_settings(tmp_path / "b", redis=redis_url, **trusting_a)) as b:
            b.idp = a.idp
            user_id = await provision(a, "dr-leaver")
            # The directory is shared: node b serves what node a provisioned.
            status, _, seen = await scim(b, "GET", f"/Users/{user_id}")
            assert status == 200 and seen["userName"] == "dr-leaver"
            # Two meetings at once (one room each: a second join to the same room replaces).
            on_a, first = await a.join("dr-leaver", room="mdt-1")
            on_b, second = await b.join("dr-leaver", room="mdt-2")
            assert first["type"] in ("joined", "lobby") and second["type"] in ("joined", "lobby")

            started = time.monotonic()
            await set_active(a, user_id, False)
            codes = await asyncio.gather(close_code(on_a), close_code(on_b))
            elapsed = time.monotonic() - started
            print(f"SCIM deactivation to both nodes' connections closed: {elapsed * 1000:.0f} ms")
            assert codes == [4401, 4401]
            for node in (a, b):
                _, refused = await node.join("dr-leaver")
                assert refused == {"type": "closed", "code": 4401}

            # Re-activated through the other node: both let the person in again.
            await set_active(b, user_id, True)
            for node in (a, b):
                _, back = await node.join("dr-leaver")
                assert back["type"] in ("joined", "lobby")

        # A node started afterwards, with an empty journal, learns the lifting from Redis.
        trusting_a["scim_token_file"] = token_file
        async with running_node(node_settings(tmp_path / "c", redis=redis_url, **trusting_a)) as c:
            c.idp = a.idp
            _, fresh = await c.join("dr-leaver", room="mdt-3")
            assert fresh["type"] in ("joined", "lobby")

"""`scim2-tester`, the RFC 7643/7644 compliance checker, run against a live node over HTTP."""

from __future__ import annotations

import asyncio

from scim2_tester import Status, check_server

from tests.fixtures.scim import SCIM_TOKEN, NetworkSCIMClient
from tests.fixtures.servers import RunningNode


async def test_scim_endpoint_passes_scim2_tester(scim_node: RunningNode) -> None:
    client = NetworkSCIMClient(scim_node.url + "/scim/v2", SCIM_TOKEN)
    results = await asyncio.to_thread(check_server, client)
    for r in results:
        print(r.status.name, r.resource_type, r.title, r.reason or "")
    failed = [r for r in results if r.status in (Status.ERROR, Status.CRITICAL)]
    assert results
    assert not failed, "\n".join(f"{r.title}: {r.reason}" for r in failed)

"""`scim2-tester`, the RFC 7643/7644 compliance checker, run against a live node over HTTP: the
discovery endpoints and their methods, then create, read (with attributes, in lists, by
search), replace, PATCH add/replace/remove of every attribute and delete, for Users and Groups."""

from __future__ import annotations

import asyncio

from scim2_tester import Status, check_server

from tests.fixtures.scim import SCIM_TOKEN, NetworkSCIMClient
from tests.fixtures.servers import RunningNode

# Outcomes that conform: MUST and SHOULD kept, or a MAY used reasonably.
CONFORMING = {Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE}


async def test_scim_endpoint_passes_scim2_tester(scim_node: RunningNode) -> None:
    client = NetworkSCIMClient(scim_node.url + "/scim/v2", SCIM_TOKEN)
    results = await asyncio.to_thread(check_server, client)
    for r in results:
        print(r.status.name, r.resource_type or "-", r.title, r.reason or "")
    checked = {r.resource_type for r in results if r.resource_type}
    assert checked == {"User", "Group"}, "the checker did not reach both resource types"
    # Nothing skipped, nothing short of conforming (DEVIATION from a SHOULD counts as failing).
    failed = [r for r in results if r.status not in CONFORMING]
    assert not failed, "\n".join(f"{r.status.name} {r.title}: {r.reason}" for r in failed)
    print(f"scim2-tester: {len(results)} checks, all conforming")

"""A client's media session that does not connect is counted on /metrics and logged for IT,
with no name, `sub` or room title in the log line."""

from __future__ import annotations

import logging

import pytest

from tests.fixtures.metrics import samples
from tests.fixtures.servers import RunningNode, next_message


async def _metrics(node: RunningNode) -> str:
    session = await node.session()
    async with session.get(f"{node.url}/metrics") as response:
        return await response.text()


async def test_a_failed_media_session_is_counted_and_logged_without_names(
    dev_node: RunningNode, caplog: pytest.LogCaptureFixture
) -> None:
    ice_failed = 'consilium_media_failures_total{cause="ice_failed"}'
    assert samples(await _metrics(dev_node))[ice_failed] == 0
    ws, joined = await dev_node.join("dr-chen", "chair", name="Dr Chen Wei")
    assert joined["type"] == "joined"
    with caplog.at_level(logging.WARNING, logger="consilium.rooms"):
        await ws.send_json(
            {"type": "media_failed", "cause": "ice_failed", "candidates": ["host", "srflx"]}
        )
        await ws.send_json({"type": "ping", "id": 7})
        await next_message(ws, "pong")
    metrics = samples(await _metrics(dev_node))
    assert metrics[ice_failed] == 1
    assert metrics['consilium_media_failures_total{cause="no_media"}'] == 0
    [record] = [r for r in caplog.records if "did not connect" in r.getMessage()]
    line = record.getMessage()
    assert "ice_failed" in line and "host, srflx" in line and "TURN servers offered: no" in line
    assert "dr-chen" not in line and "Dr Chen Wei" not in line


async def test_an_unknown_cause_is_refused(dev_node: RunningNode) -> None:
    ws, _ = await dev_node.join("dr-chen", "chair")
    await ws.send_json({"type": "media_failed", "cause": "cosmic_rays"})
    msg = await ws.receive(timeout=5)
    assert msg.type.name == "CLOSE" and int(msg.data) == 4400

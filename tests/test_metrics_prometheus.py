"""A real Prometheus (Debian's) scrapes a node while a media session runs, as an operator's does
with the scrape configuration of docs/operations.md ("Metrics"), and answers PromQL about the node
and about the room, which it knows only by its hash."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.testsource import ReplayAudioTrack, ReplayVideoTrack
from signaling.http.node_metrics import room_label, room_label_key
from tests.fixtures.media import Participant
from tests.fixtures.prometheus import PrometheusServer, running_prometheus
from tests.fixtures.servers import RunningNode, eventually, node_settings, running_node

ROOM = "mdt-metrics"
TOKEN = "cluster-metrics-token"


async def join(node: RunningNode, sub: str, role: str) -> Participant:
    ws, joined = await node.join(sub, role, room=ROOM)
    assert joined["type"] == "joined", joined
    participant = Participant(ws, joined, [ReplayAudioTrack(), ReplayVideoTrack()])
    await participant.client.publish()
    return participant


async def value(prometheus: PrometheusServer, expression: str) -> float | None:
    """The single value of an instant query now (None: no series)."""
    result = await asyncio.to_thread(prometheus.query, expression)
    return float(result[0]["value"][1]) if result else None


async def test_prometheus_scrapes_the_node_and_its_rooms_during_a_media_session(
    tmp_path: Path,
) -> None:
    settings = node_settings(tmp_path / "data", ice_host_addresses=["127.0.0.1"],
                             metrics_token=TOKEN)  # fmt: skip
    async with running_node(settings) as node:
        assert node.node is not None
        label = room_label(room_label_key(node.node.settings, node.node.audit_key), ROOM)
        target = node.url.removeprefix("http://")
        chair = await join(node, "dr-chair", "chair")
        onc = await join(node, "dr-onc", "specialist")
        try:
            with running_prometheus(tmp_path / "prometheus", [target], bearer_token=TOKEN) as prom:

                async def up() -> bool:
                    targets = await asyncio.to_thread(prom.targets)
                    return any(t["health"] == "up" for t in targets)

                try:
                    await eventually(up, timeout=10, interval=0.25)
                except AssertionError:
                    raise AssertionError(f"{prom.targets()}\n{prom.output()}") from None
                [scraped] = prom.targets()
                assert scraped["scrapeUrl"] == f"http://{target}/metrics"
                assert scraped["lastError"] == ""

                forwarded = f'consilium_room_forwarded_packets_total{{room="{label}"}}'

                async def forwarding() -> bool:
                    return ((await value(prom, forwarded)) or 0) > 0

                await eventually(forwarding, timeout=10, interval=0.25)
                assert await value(prom, "consilium_ready") == 1
                assert await value(prom, "consilium_draining") == 0
                assert await value(prom, f'consilium_room_participants{{room="{label}"}}') == 2
                assert await value(prom, 'count(consilium_room_participants{room=~".+"})') == 1
                assert (await value(prom, "consilium_sfu_forwarded_packets") or 0) > 0
                moved = 'consilium_media_rooms_moved_total{reason="drain"}'
                assert await value(prom, moved) == 0
        finally:
            await onc.close()
            await chair.close()

"""`/metrics` through prometheus-client: the node's and each room's figures, rooms labelled by a
keyed hash only, and the Grafana dashboard in deploy/grafana/ held to the names a node exposes."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from bot.testsource import ReplayAudioTrack, ReplayVideoTrack
from sfu.ice import uninstall
from sfu.reception import StreamReception
from sfu.server import MediaServer, MediaSettings
from signaling.http.node_metrics import (
    FAMILIES,
    SFU_HELP,
    declared_names,
    room_label,
    room_label_key,
)
from tests.fixtures.media import Participant, pid, record_with_consent
from tests.fixtures.metrics import samples
from tests.fixtures.servers import REPO, RunningNode, eventually, node_settings, running_node

DASHBOARD = REPO / "deploy" / "grafana" / "consilium-dashboard.json"
ROOM = "tumour-board-jane-doe-1957"
"""A room id of the kind a hospital may choose: it names a patient, so it must never show."""
WITNESS = {f.name for f in FAMILIES if f.name.startswith("consilium_audit_witness_")}
"""Exposed only by a node with an audit witness configured."""


def dashboard_expressions() -> list[str]:
    """Every PromQL expression in the dashboard: the panels' and the variables' queries."""
    board = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    found += [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    return found


def dashboard_metric_names() -> set[str]:
    return {name for expr in dashboard_expressions() for name in re.findall(r"consilium_\w+", expr)}


# -- pure: the room label and the declared families -----------------------------------------------


def test_a_room_has_the_same_label_on_every_node_sharing_the_metrics_token(tmp_path: Path) -> None:
    one = node_settings(tmp_path / "a", metrics_token="cluster-metrics-token", media=False)
    two = node_settings(tmp_path / "b", metrics_token="cluster-metrics-token", media=False)
    other = node_settings(tmp_path / "c", metrics_token="another-cluster", media=False)
    # Each node has its own audit key; the label key comes from what the cluster shares.
    key_one = room_label_key(one, Ed25519PrivateKey.generate())
    key_two = room_label_key(two, Ed25519PrivateKey.generate())
    label = room_label(key_one, ROOM)
    assert re.fullmatch(r"[0-9a-f]{12}", label)
    assert room_label(key_two, ROOM) == label
    assert room_label(room_label_key(other, Ed25519PrivateKey.generate()), ROOM) != label
    assert room_label(key_one, ROOM + "x") != label
    assert key_one != b"cluster-metrics-token" and label not in ROOM


def test_a_node_without_the_token_keys_the_label_with_its_own_key(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "a", media=False)
    audit_key = Ed25519PrivateKey.generate()
    assert room_label_key(settings, audit_key) == room_label_key(settings, audit_key)
    assert room_label_key(settings, audit_key) != room_label_key(
        settings, Ed25519PrivateKey.generate()
    )


def test_a_stream_counts_the_packets_it_never_received() -> None:
    reception = StreamReception()
    assert reception.lost == 0
    for seq in (65534, 65535, 2, 3):  # 0 and 1 lost, across the wrap
        reception.count(seq)
    assert reception.lost == 2
    reception.count(0)  # late, not lost after all
    assert reception.lost == 1


@pytest.fixture
def server() -> Iterator[MediaServer]:
    yield MediaServer(MediaSettings(), lambda participant, message: None)
    uninstall()


def test_every_sfu_figure_is_declared_with_help_text(server: MediaServer) -> None:
    bases = {re.sub(r"\{.*\}$", "", key) for key in server.stats()}
    assert bases == set(SFU_HELP), "a new SFU figure needs its HELP text (and docs)"


def test_counters_end_in_total_and_units_are_base_units() -> None:
    for family in FAMILIES:
        assert (family.kind == "counter") == family.name.endswith("_total"), family.name
        assert not re.search(r"_(ms|kbps|milliseconds|kilobytes)", family.name), family.name
        assert family.help.endswith("."), family.name
        assert "participant" not in family.labels and "name" not in family.labels


def test_the_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["uid"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    graphs = [p for p in board["panels"] if p["type"] != "row"]
    assert len(graphs) >= 11
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_the_dashboard_uses_only_metrics_the_node_declares() -> None:
    used = dashboard_metric_names()
    assert {"consilium_room_forwarded_packets_total", "consilium_draining"} <= used
    assert used - declared_names() == set()


# -- a real node with a media session and a recording ----------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    settings = node_settings(
        tmp_path / "data",
        ice_host_addresses=["127.0.0.1"],
        recording_segment_seconds=1.0,
        metrics_token="cluster-metrics-token",
    )
    async with running_node(settings) as node:
        yield node


async def join(node: RunningNode, sub: str, role: str, name: str) -> Participant:
    ws, joined = await node.join(sub, role, room=ROOM, name=name, depts=["oncology"])
    assert joined["type"] == "joined", joined
    participant = Participant(ws, joined, [ReplayAudioTrack(), ReplayVideoTrack()])
    await participant.client.publish()
    return participant


async def scrape(node: RunningNode) -> str:
    http = await node.session()
    async with http.get(f"{node.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return await response.text()


async def test_a_media_session_shows_per_room_figures_under_a_hash_and_no_names(
    node: RunningNode,
) -> None:
    chair = await join(node, "dr-amelia-hartley", "chair", "Dr Amelia Hartley")
    onc = await join(node, "dr-rustam-okonjo", "specialist", "Dr Rustam Okonjo")
    try:
        assert node.node is not None
        label = room_label(room_label_key(node.node.settings, node.node.audit_key), ROOM)
        forwarded = f'consilium_room_forwarded_packets_total{{room="{label}"}}'
        round_trip = f'consilium_room_round_trip_seconds{{room="{label}"}}'

        async def flowing() -> dict[str, float] | None:
            values = samples(await scrape(node))
            return values if values.get(forwarded, 0) > 50 and round_trip in values else None

        await eventually(flowing, timeout=20, interval=0.5)
        await record_with_consent(chair, onc)
        recorded = f'consilium_room_recording_bytes_total{{room="{label}"}}'

        async def recording() -> bool:
            return samples(await scrape(node)).get(recorded, 0) > 0

        await eventually(recording, timeout=10, interval=0.25)
        text = await scrape(node)
        await onc.ws.close()  # they leave the room
        participants = f'consilium_room_participants{{room="{label}"}}'

        async def left() -> dict[str, float] | None:
            values = samples(await scrape(node))
            return values if values.get(participants) == 1 else None

        after = await eventually(left, timeout=10, interval=0.25)
    finally:
        await onc.close()
        await chair.close()

    values = samples(text)
    room = f'{{room="{label}"}}'
    assert values[f"consilium_room_participants{room}"] == 2
    assert values[f"consilium_room_published_tracks{room}"] == 4
    assert values[f"consilium_room_forwarded_bytes_total{room}"] > 1000
    assert values[f"consilium_room_received_packets_total{room}"] >= values[forwarded] / 2
    assert 0 < values[round_trip] < 1
    assert 0 <= values[f"consilium_room_subscriber_loss_ratio{room}"] <= 1
    layers = {k: v for k, v in values.items() if k.startswith("consilium_room_video_subscr")}
    assert sum(layers.values()) == 2, layers  # each participant receives the other's camera
    assert values[f"consilium_room_recordings{room}"] == 1
    assert values["consilium_recording_bytes_total"] >= values[recorded] > 0
    assert values["consilium_sfu_forwarded_packets"] >= values[forwarded]  # older names stay
    assert values['consilium_media_rooms_moved_total{reason="node_lost"}'] == 0
    # Someone leaving takes nothing from the room's counters.
    for counter in ("forwarded_packets", "forwarded_bytes", "received_packets"):
        name = f"consilium_room_{counter}_total{room}"
        assert after[name] >= values[name], counter

    # Every label value is a hash, a cause or reason, a layer, a version or a bucket bound.
    rooms = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            rooms.update(v for k, v in sample.labels.items() if k == "room")
            assert set(sample.labels) <= {"room", "layer", "cause", "reason", "le", "version"}
    assert rooms == {label}
    secrets = [ROOM, "tumour", "jane", "1957", "amelia", "hartley", "rustam", "okonjo",
               "oncology", pid(chair), pid(onc), "cluster-metrics-token", "127.0.0.1"]  # fmt: skip
    for secret in secrets:
        assert secret.lower() not in text.lower(), secret

    # The dashboard's figures are all there (the witness's on a node that has one).
    exposed = {re.sub(r"\{.*\}$", "", key) for key in values}
    assert dashboard_metric_names() - WITNESS - exposed == set()


def test_the_operations_guide_lists_every_family() -> None:
    guide = (REPO / "docs" / "operations.md").read_text()
    section = guide.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in sorted(declared_names()) if f"| `{name}` |" not in section]
    assert not missing, f"docs/operations.md, Metrics, lacks {missing}"

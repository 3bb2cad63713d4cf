"""The node's Prometheus metrics: what `GET /metrics` serves, through `prometheus-client`.

One `CollectorRegistry` per node (never the library's global one: a test process runs several
nodes), holding one collector that reads the node's live figures when Prometheus scrapes: the
counters the SFU, the recorder, the rooms, the webhooks and the audit witness keep anyway. Nothing
is added per packet; the SFU hands plain numbers (`MediaServer.stats`, `MediaServer.room_figures`)
and knows nothing of Prometheus.

A room is labelled only by `room_label`: a keyed hash of its id (room ids may carry a patient's
name). Its key comes from the `metrics_token`, which every node of a cluster shares (the one
Prometheus job scrapes them all with it), so one room has one label on every node and a
dashboard can follow it across nodes; a node without the token keys the hash with its own audit
key (its labels then match no other node's). No participant, name, department or address is a
label. Every family is declared once in `FAMILIES` (docs/operations.md, "Metrics", lists them;
the Grafana dashboard in deploy/grafana/ is checked against them).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core import __version__
from signaling.http.node import Node
from signaling.settings import Settings

log = logging.getLogger("consilium.metrics")

ROOM_LABEL_CONTEXT = b"consilium metrics room label v1"
"""What the room label key is derived for (a key of its own, not the token itself)."""

Kind = Literal["counter", "gauge", "untyped"]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family the node exposes."""

    name: str
    """Its samples' name (a counter's ends in `_total`)."""
    kind: Kind
    """Prometheus type; `untyped` for the SFU's older counters named without `_total`."""
    help: str
    """The HELP line."""
    labels: tuple[str, ...] = ()
    """Label names (`room` is always `room_label`'s hash)."""


ROOM = ("room",)

# fmt: off
FAMILIES: tuple[Family, ...] = (
    # -- the node -----------------------------------------------------------------------------
    Family("consilium_build_info", "gauge", "Always 1; the running release.", ("version",)),
    Family("consilium_ready", "gauge", "1 while the node serves (started, not stopping)."),
    Family("consilium_draining", "gauge", "1 while the node drains (its rooms' media moving off)."),
    Family("consilium_connections", "gauge", "Signalling connections on this node."),
    Family("consilium_rooms_on_node", "gauge", "Rooms with a connection on this node."),
    Family("consilium_pending_connections", "gauge", "WebSockets open but not yet joined."),
    Family("consilium_audit_entries", "untyped", "Entries in this node's audit log."),
    Family("consilium_webhooks_delivered_total", "counter", "Webhook events delivered."),
    Family(
        "consilium_webhooks_dead_lettered_total", "counter",
        "Webhook events given up on (refused, or retried out).",
    ),
    Family(
        "consilium_webhooks_dropped_total", "counter",
        "Webhook events dropped because a subscriber's queue was full.",
    ),
    Family(
        "consilium_audit_witness_sent_total", "counter",
        "Messages sent to the audit log's syslog witness (when one is configured).",
    ),
    Family(
        "consilium_audit_witness_queued", "gauge",
        "Messages waiting for the audit witness (when one is configured).",
    ),
    Family(
        "consilium_audit_witness_dropped_entries_total", "counter",
        "Audit entries the witness queue had no room for (when one is configured).",
    ),
    Family(
        "consilium_media_failures_total", "counter",
        "Media sessions clients reported as not connecting, by cause.", ("cause",),
    ),
    Family(
        "consilium_nodes_lost_total", "counter",
        "Dead nodes this node cleaned up after (their people out, their rooms' media moved).",
    ),
    Family(
        "consilium_media_rooms_moved_total", "counter",
        "Rooms whose media this node sent to another node, by reason: node_lost (a failover), "
        "drain.", ("reason",),
    ),
    Family(
        "consilium_media_connections_moved_total", "counter",
        "Connections on this node whose media moved to another node, by reason.", ("reason",),
    ),
    Family("consilium_recordings", "gauge", "Recordings running on this node."),
    Family(
        "consilium_recording_bytes_total", "counter",
        "Encrypted segment bytes the node's recordings wrote to disk.",
    ),
    # -- each room whose media this node hosts ------------------------------------------------
    Family("consilium_room_participants", "gauge", "Participants whose media is here.", ROOM),
    Family("consilium_room_published_tracks", "gauge", "Tracks published in the room.", ROOM),
    Family(
        "consilium_room_received_packets_total", "counter",
        "RTP packets received from the room's publishers.", ROOM,
    ),
    Family(
        "consilium_room_received_lost_packets_total", "counter",
        "RTP packets the room's publishers sent that never arrived (uplink loss).", ROOM,
    ),
    Family(
        "consilium_room_forwarded_packets_total", "counter",
        "RTP packets forwarded to the room's subscribers.", ROOM,
    ),
    Family(
        "consilium_room_forwarded_bytes_total", "counter",
        "RTP payload bytes forwarded to the room's subscribers.", ROOM,
    ),
    Family(
        "consilium_room_retransmitted_packets_total", "counter",
        "Packets resent to subscribers that reported them lost (NACK answers).", ROOM,
    ),
    Family(
        "consilium_room_late_dropped_packets_total", "counter",
        "Packets kept from subscribers for waiting past the real-time bound.", ROOM,
    ),
    Family(
        "consilium_room_keyframe_requests_total", "counter",
        "Keyframe requests (PLI) sent to the room's publishers: frozen pictures, new "
        "subscribers, layer switches.", ROOM,
    ),
    Family(
        "consilium_room_camera_pauses_total", "counter",
        "Times cameras were paused for a subscriber's link.", ROOM,
    ),
    Family(
        "consilium_room_subscriber_loss_ratio", "gauge",
        "Mean share of packets lost on the way to the room's subscribers, from their latest "
        "receiver reports.", ROOM,
    ),
    Family(
        "consilium_room_round_trip_seconds", "gauge",
        "Mean round trip between the SFU and the room's participants.", ROOM,
    ),
    Family(
        "consilium_room_video_subscriptions", "gauge",
        "Video subscriptions by what they receive: a simulcast layer (0 lowest), single, "
        "hidden, none.", ("room", "layer"),
    ),
    Family("consilium_room_recordings", "gauge", "Recordings of the room running here.", ROOM),
    Family(
        "consilium_room_recording_bytes_total", "counter",
        "Encrypted segment bytes written by the room's running recordings (back to 0 when a "
        "new recording begins).", ROOM,
    ),
)
# fmt: on
"""Every family of the node's own (the SFU's older ones follow, `SFU_HELP`)."""

SFU_PREFIX = "consilium_sfu_"

SFU_HELP: dict[str, str] = {
    "rooms": "Media rooms on this node's SFU.",
    "participants": "Participants whose media this node's SFU hosts.",
    "published_tracks": "Tracks published on this node's SFU.",
    "received_packets": "RTP packets received from publishers, since start.",
    "forwarded_packets": "RTP packets forwarded to subscribers, since start.",
    "retransmitted_packets": "Packets resent to subscribers (NACK answers), since start.",
    "dropped_packets": "Packets refused as malformed or unroutable (connected participants).",
    "duplicate_packets": "Packets dropped as already received, since start.",
    "retransmissions_refused": "Resends refused, by reason, since start.",
    "late_dropped_packets": "Datagrams kept from subscribers for waiting past the bound.",
    "queue_delay_ms_bucket": "Datagrams by time waited before forwarding (ms, cumulative).",
    "socket_receive_buffer_bytes": "Receive buffer the kernel granted each media socket.",
    "socket_send_buffer_bytes": "Send buffer the kernel granted each media socket.",
    "twcc_feedback_packets": "Transport-cc feedback packets sent to publishers, since start.",
    "downlink_estimate_kbps_bucket": "Subscribers by downlink estimate (kbps, cumulative).",
    "downlink_estimate_kbps_sum": "Sum of the subscribers' downlink estimates (kbps).",
    "downlink_estimate_kbps_count": "Subscribers with a downlink estimate.",
    "downlink_probes_sent": "Probe clusters sent (connected subscribers).",
    "downlink_probes_succeeded": "Probe clusters the link carried (connected subscribers).",
    "downlink_probes_failed": "Probe clusters that failed (connected subscribers).",
    "round_trip_ms_bucket": "Subscribers by round trip (ms, cumulative).",
    "round_trip_ms_sum": "Sum of the subscribers' round trips (ms).",
    "round_trip_ms_count": "Subscribers whose round trip is measured.",
    "codec_encoders_created": "Media encoders the process created (0: it forwards only).",
    "codec_decoders_created": "Media decoders the process created (0: it forwards only).",
}
"""The SFU's figures (`MediaServer.stats`) as they were named before this module, each exposed
as `consilium_sfu_<name>`: the names stay (benchmarks and tests read them)."""

SFU_GAUGES = frozenset({
    "rooms", "participants", "published_tracks", "dropped_packets",
    "socket_receive_buffer_bytes", "socket_send_buffer_bytes",
})  # fmt: skip
"""The SFU figures that are gauges; the rest are counters or histogram parts named without
`_total`, exposed untyped so their names stay."""

_STAT_KEY = re.compile(r'(?P<base>[a-z0-9_]+)(?:\{(?P<label>[a-z_]+)="(?P<value>[^"]*)"\})?')


def declared_names() -> set[str]:
    """Every sample name the node may expose (the dashboard's expressions are checked against
    them)."""
    return {f.name for f in FAMILIES} | {SFU_PREFIX + base for base in SFU_HELP}


def room_label_key(settings: Settings, node_key: Ed25519PrivateKey) -> bytes:
    """The key of `room_label`: from the `metrics_token`, the same on every node of a cluster;
    without one, from this node's own audit key (labels then match this node's only)."""
    if settings.metrics_token:
        secret = settings.metrics_token.encode()
    else:
        if settings.redis:
            log.warning(
                "no metrics_token: the room labels in /metrics are this node's own and will "
                "not match other nodes' (set the same metrics_token on every node)"
            )
        secret = node_key.private_bytes_raw()
    return hmac.new(secret, ROOM_LABEL_CONTEXT, hashlib.sha256).digest()


def room_label(key: bytes, room_id: str) -> str:
    """A room's label in the metrics: HMAC-SHA-256 of its id, the first 12 hex digits (a
    dashboard tells rooms apart; nobody can read or guess a room id back from it)."""
    return hmac.new(key, room_id.encode(), hashlib.sha256).hexdigest()[:12]


class _Samples:
    """Values gathered for one scrape, by sample name."""

    def __init__(self) -> None:
        self.by_name: dict[str, list[tuple[tuple[str, ...], float]]] = defaultdict(list)

    def add(self, name: str, value: float, *labels: str) -> None:
        self.by_name[name].append((labels, float(value)))


class NodeCollector(Collector):
    """Reads a node's figures when Prometheus scrapes (`collect`), nothing in between."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.room_key = room_label_key(node.settings, node.audit_key)

    def collect(self) -> Iterator[Metric]:
        """The node's families, then the SFU's, with their values now."""
        samples = _Samples()
        self._node_figures(samples)
        self._room_figures(samples)
        for family in FAMILIES:
            values = samples.by_name.get(family.name)
            if values:
                yield _metric(family, values)
        media = self.node.rooms.media
        if media is not None:
            yield from _sfu_metrics(media.stats())

    def _node_figures(self, s: _Samples) -> None:
        node = self.node
        rooms = node.rooms
        s.add("consilium_build_info", 1, __version__)
        s.add("consilium_ready", node.ready)
        s.add("consilium_draining", rooms.draining)
        s.add("consilium_connections", len(rooms.connections))
        s.add("consilium_rooms_on_node", len(rooms.by_room))
        s.add("consilium_pending_connections", node.door.pending)
        s.add("consilium_audit_entries", node.audit.count)
        s.add("consilium_webhooks_delivered_total", node.webhooks.delivered)
        s.add("consilium_webhooks_dead_lettered_total", node.webhooks.dead_lettered)
        s.add("consilium_webhooks_dropped_total", node.webhooks.dropped)
        if node.witness is not None:
            s.add("consilium_audit_witness_sent_total", node.witness.sent)
            s.add("consilium_audit_witness_queued", node.witness.queued)
            s.add("consilium_audit_witness_dropped_entries_total", node.witness.dropped_entries)
        for cause, count in rooms.media_failures.items():
            s.add("consilium_media_failures_total", count, cause)
        s.add("consilium_nodes_lost_total", rooms.nodes_lost)
        for reason, count in rooms.rooms_moved.items():
            s.add("consilium_media_rooms_moved_total", count, reason)
        for reason, count in rooms.connections_moved.items():
            s.add("consilium_media_connections_moved_total", count, reason)

    def _room_figures(self, s: _Samples) -> None:
        media = self.node.rooms.media
        recorder = self.node.rooms.relay.recorder
        label = self.room_key
        if recorder is not None:
            sinks = list(recorder.sinks.values())
            s.add("consilium_recordings", len(sinks))
            written = [(room_label(label, sink.room_id), sink.bytes_written) for sink in sinks]
            s.add("consilium_recording_bytes_total",
                  recorder.closed_bytes + sum(size for _, size in written))  # fmt: skip
            by_room: dict[str, int] = defaultdict(int)
            for room, size in written:
                by_room[room] += size
            for room, size in by_room.items():
                s.add("consilium_room_recording_bytes_total", size, room)
        if media is None:
            return
        for room_id, f in media.room_figures().items():
            room = room_label(label, room_id)
            s.add("consilium_room_participants", f.participants, room)
            s.add("consilium_room_published_tracks", f.published_tracks, room)
            s.add("consilium_room_received_packets_total", f.received_packets, room)
            s.add("consilium_room_received_lost_packets_total", f.received_lost_packets, room)
            s.add("consilium_room_forwarded_packets_total", f.forwarded_packets, room)
            s.add("consilium_room_forwarded_bytes_total", f.forwarded_bytes, room)
            s.add("consilium_room_retransmitted_packets_total", f.retransmitted_packets, room)
            s.add("consilium_room_late_dropped_packets_total", f.late_dropped_packets, room)
            s.add("consilium_room_keyframe_requests_total", f.keyframe_requests, room)
            s.add("consilium_room_camera_pauses_total", f.camera_pauses, room)
            if f.subscriber_loss is not None:
                s.add("consilium_room_subscriber_loss_ratio", f.subscriber_loss, room)
            if f.round_trip_s is not None:
                s.add("consilium_room_round_trip_seconds", f.round_trip_s, room)
            for layer, count in sorted(f.video_layers.items()):
                s.add("consilium_room_video_subscriptions", count, room, layer)
            s.add("consilium_room_recordings", f.sinks, room)


def _metric(family: Family, values: list[tuple[tuple[str, ...], float]]) -> Metric:
    """One family with its values, as prometheus-client builds it."""
    metric: Metric
    if family.kind == "counter":
        metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
    elif family.kind == "gauge":
        metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
    else:
        metric = Metric(family.name, family.help, "unknown")
        for labels, value in values:
            metric.add_sample(family.name, dict(zip(family.labels, labels, strict=True)), value)
        return metric
    for labels, value in values:
        metric.add_metric(list(labels), value)
    return metric


def _sfu_metrics(stats: dict[str, int]) -> Iterator[Metric]:
    """The SFU's figures under their names of old (`consilium_sfu_<key>`; a key may carry one
    label, `retransmissions_refused{reason="budget"}`)."""
    grouped: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for key, value in stats.items():
        match = _STAT_KEY.fullmatch(key)
        if match is None:
            log.error("SFU figure with an unexpected name left out of /metrics: %s", key)
            continue
        labels = {match["label"]: match["value"]} if match["label"] else {}
        grouped[match["base"]].append((labels, float(value)))
    for base, values in grouped.items():
        name = SFU_PREFIX + base
        kind = "gauge" if base in SFU_GAUGES else "unknown"
        metric = Metric(name, SFU_HELP.get(base, f"The SFU's {base}."), kind)
        for labels, number in values:
            metric.add_sample(name, labels, number)
        yield metric


def node_registry(node: Node) -> CollectorRegistry:
    """A registry of the node's own (not the process-wide default: several nodes may share a
    process in tests) with its collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry


METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
"""The node's registry in the app (`create_app` puts it there; `/metrics` serves it)."""

"""Forwarding benchmark: the SFU's CPU per forwarded RTP packet and video frame, against a relay.

Starts a real `consilium serve` process and drives one room over the real WebSocket protocol with
aiortc peers from this process, then prints one JSON line. The keys `us_per_pkt`, `us_per_frame`,
`baseline_us_per_pkt`, `baseline_us_per_frame`, `ratio`, `frame_ratio`, `fwd_pkts_per_s`,
`cpu_s_per_s`, `latency_p95_ms`, `loss`, `baseline_loss`, `client_cpu_s_per_s` and
`participants` are a contract other tools read; the rest are extras for a human. Of those,
`queue_delay_p95_ms` is how long media waited in the node (the server's histogram of kernel
receive timestamp to forwarding, p95 over the window), `late_dropped_packets` what it dropped
for waiting past `media_max_delay_s`, `retransmitted_ratio` packets resent per packet forwarded,
`retransmissions_refused` NACKed packets not resent (`sfu.retransmit`).

    python bench/forwarding.py --participants 8 --load 2 --no-baseline   # CPU short

    python bench/forwarding.py                                  # 4 participants, all-to-all, 10 s
    python bench/forwarding.py --publishers 4 --subscribers 10  # fan-out: 4 x 10
    python bench/forwarding.py --quick                          # CI smoke: 2 participants, 3 s

Rooms. All-to-all (`--participants N`): everyone publishes and receives the N-1 others. Fan-out
(`--publishers P --subscribers S`): P publishers, each received by the S subscribers; the
subscribers publish nothing and the publishers leave the SFU's subscribe offers unanswered (as
`consilium bot --no-subscribe` does), so exactly P x S subscriptions per kind are forwarded.
Publishers send the pre-encoded 640x480 30 fps ~1 Mbps VP8 test pattern and the Opus tone of
`bot.testsource` (packetised by aiortc, never encoded here); subscribers count what arrives at
their DTLS transport (`sfu.aiortc_hooks.hook_transport` on the client side, receivers started
without their decoder), so no client decodes anything. As a browser does, each subscriber takes
transport-cc in its answer and sends transport-wide feedback on every packet (`sfu.twcc`, every
100 ms or 100 packets): the SFU numbers, reads and estimates from it, the cost browsers cause
(figures before 2026-12-07 had the numbering and no feedback: about 5 us less per packet).

What is measured, over a window that starts once every subscription is flowing (each subscriber
has seen frames on every video track and packets on every audio track) and one more second:
- server CPU: utime + stime of the server process (all its threads) from /proc/<pid>/stat,
  before and after the window (10 ms ticks);
- forwarded packets: `consilium_sfu_forwarded_packets` of GET /metrics before and after;
- forwarded frames: video packets with the marker bit (the last packet of a frame) counted at
  the subscribers, i.e. video frames delivered. Both CPU ratios share the same denominator
  definition, and it is the one unit the relay cannot change (it re-packetises);
- `loss`: 1 - packets the subscribers received / packets the publishers sent x subscribers of
  each publisher, over the window (the SFU forwards packets one for one). `frame_loss` (and
  `baseline_loss`) is the same over media frames: video frames plus Opus packets;
- latency: the publisher's send time of each video packet is stamped where aiortc hands it to
  the DTLS transport (`_send_rtp`, before SRTP), keyed by (publisher, hash of the RTP payload);
  the subscriber's receive time where the transport hands it on after SRTP. The SFU rewrites
  SSRC, sequence number, timestamp, payload type and header extensions but never the payload,
  so the payload is the packet's identity; the publisher is found from the subscriber's side
  through the SSRC's media section in the subscribe offer (its `a=mid`) and the SFU's `tracks`
  message (mid -> participant). Within one publisher a VP8 payload is unique: its descriptor
  carries a 15-bit picture id that advances every frame (18 minutes before it wraps), while
  the clip loops every 2 s and is the same for every publisher - hence the publisher in the
  key. Opus packets of the looping tone repeat, so latency is measured on video only. Both
  stamps use this process's clock, so the figure includes this process's own scheduling delay;
- `client_cpu_s_per_s`: this process's CPU over the window. The machines have 2 cores: the
  clients compete with the server for them; keep that number in mind when reading the others.

The baseline, at the same room size, is what a Python video server usually is: aiortc's own
media pipeline with `aiortc.contrib.media.MediaRelay`. `python bench/forwarding.py
--baseline-server PORT` (started by the bench as its own process) gives every participant a
server-side publish peer, whose receivers decode each published track once, and a subscribe
peer with one `MediaRelay` proxy per track of the others, each re-encoded by its own aiortc
sender. Its signalling is three JSON POSTs (publish offer -> answer, subscribe -> offer,
subscribe answer); the clients are the same `MediaClient`s, hooks and counters. Its encoders
start at the source's 1 Mbps (aiortc's default is 500 kbps, which would halve its packets per
frame and flatter its per-packet cost); its relay proxies are unbuffered, so an encoder that
cannot keep up skips to the newest frame instead of queueing an unbounded backlog. It saturates
the CPU well before the SFU does; it reports what it managed, and its loss. Its packet count is
the `packetsSent` of its senders. The two servers run one after the other, never at once;
`--no-baseline` skips it (those keys are null).

`--load N` starts N busy processes for the SFU's runs (other work taking the CPU: they and the
server share core 0, the clients keep the other cores, so the clients' own starvation is not
what is measured), and measures
the SFU twice: with its time bound (the main keys) and without it, `media_max_delay_s = 0`, the
keys `unbounded_*` (loss, latency p95, queue delay p95, frames per second): late media dropped
against late media delivered, in the same run.

`--simulcast` measures the SFU once more, the same room with every publisher's camera in three
simulcast layers (`bot.simulcast`: 160x120, 320x240 and 640x480, the full one at the clip's
1 Mbps, as a browser sends them; each subscriber is forwarded the one layer its estimate and
tile allow). Its subscribers report every camera's tile at 640x480 (`render_sizes`, as a page
showing each in a large tile) and its window starts once each has climbed to the top layer of
every camera (the first packet of each keyframe names its width; `simulcast_warm_up_s`, up to
60 s), so both runs forward the same 640x480 frames and packets: `simulcast_us_per_pkt` and
`simulcast_us_per_frame` (server CPU per packet and per frame forwarded, the layers it receives
and does not forward included), `simulcast_top_layer_share` (of the video packets received in
the window, those of the top layer), `simulcast_fwd_pkts_per_s`, `simulcast_fwd_frames_per_s`,
`simulcast_cpu_s_per_s`, and `received_pkts_per_s` / `simulcast_received_pkts_per_s` (what the
node received: with simulcast also the layers it forwards to nobody). `--rounds N` (default 3)
measures N such pairs (one stream, then simulcast, each on a fresh node; the main keys are the
first pair's): `simulcast_cost_ratios`, each pair's simulcast over one-stream CPU per forwarded
packet, and `simulcast_cost_ratio`, their median (what simulcast costs per forwarded packet in
the full pipeline, receiving the unforwarded layers included: one run's figure moves by up to
20 % on a quiet two-core machine). No loss or latency for the simulcast run: its video is sent
by bot.simulcast, not through aiortc's sender where the bench counts and stamps what is sent.

`--profile FILE` also records the SFU with py-spy (if installed) over the measured window
(`.svg` flame graph, `.json` speedscope, anything else raw collapsed stacks). py-spy pauses the
server for each sample (for consistent stacks) and takes its own share of the two cores: the
CPU figures of such a run are perturbed.

It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from process import ServerProcess, free_port, percentile_ms

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# bench/signaling.py shares its name with the package: run as `python bench/forwarding.py`, this
# folder comes first on sys.path and `import signaling` would find that file. (`process`, from
# this folder, is imported above, before it goes.)
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH_DIR]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from core.media.keyframes import vp8_keyframe_start  # noqa: E402
from core.media.payloads import parse_vp8_descriptor, vp8_picture_size  # noqa: E402
from core.media.rtp import parse_header  # noqa: E402
from sfu.twcc import SUBSCRIBER_EXTENSION_ID  # noqa: E402

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    from bot.client import MediaClient

ROOM = "bench-forwarding"
SOURCE_BITRATE = 1_000_000
"""Bitrate of the published VP8 clip, and the baseline's encoder bitrate."""
WARM_UP_TIMEOUT_S = 45.0
"""How long subscriptions may take to start flowing before the window starts anyway."""
BASELINE_WARM_UP_TIMEOUT_S = 90.0
"""The same for the relay baseline, which may be starved of CPU."""
SETTLE_S = 1.0
"""Wait between "every subscription flows" and the start of the window."""
WARM_FRAMES = 5
LAYERED_WARM_UP_TIMEOUT_S = 60.0
"""`--simulcast`: how long the subscribers may take to climb to every camera's top layer (REMB
only, as aiortc: the SFU's climbs grow the estimate ~8 %/s) before the window starts anyway."""
"""Frames each video subscription must have delivered before the window starts."""
JOIN_TIMEOUT_S = 20.0
"""How long one join (or one publish) may take."""
LAYERED_SIZE = (640, 480)
"""The simulcast publishers' camera (`--simulcast`): layers of 160x120, 320x240 and 640x480,
the full one at `SOURCE_BITRATE`, as the one-stream clip."""
SENT_GENERATION = 8192
"""Video send stamps kept per publisher generation (two generations: about two minutes)."""


@dataclass(frozen=True)
class BenchConfig:
    """What one run does."""

    publishers: int = 4
    """Participants that publish the clip."""
    subscribers: int = 4
    """Participants that receive (in all-to-all, the same people as the publishers)."""
    all_to_all: bool = True
    """Everyone publishes and receives everyone else (else: fan-out)."""
    seconds: float = 10.0
    """Length of the measured window against the SFU."""
    baseline_seconds: float = 10.0
    """Length of the measured window against the relay baseline."""
    baseline: bool = True
    """Also measure the MediaRelay baseline server."""
    profile: Path | None = None
    """Record the SFU with py-spy over the measured window, into this file."""
    load: int = 0
    """Busy processes (one Python loop each) competing for the CPU during the SFU's runs; with
    any, the SFU is also measured with its time bound off (`media_max_delay_s = 0`)."""
    simulcast: bool = False
    """Also measure the SFU with the publishers' cameras in three simulcast layers (`--simulcast`:
    the `simulcast_*` keys)."""
    layered: bool = False
    """This run's publishers send their camera in simulcast layers (`bot.simulcast`)."""
    rounds: int = 1
    """`--simulcast`: pairs of runs (one stream, then simulcast) measured; the cost ratio is the
    median of the pairs' (one run's figure moves by up to 20 % on a quiet two-core machine)."""

    @property
    def participants(self) -> int:
        """People in the room."""
        return self.publishers if self.all_to_all else self.publishers + self.subscribers

    @property
    def mode(self) -> str:
        """`all-to-all` or `fan-out`."""
        return "all-to-all" if self.all_to_all else "fan-out"

    def roles(self) -> list[tuple[bool, bool]]:
        """(publishes, subscribes) of each participant, publishers first."""
        if self.all_to_all:
            return [(True, True)] * self.publishers
        return [(True, False)] * self.publishers + [(False, True)] * self.subscribers


# -- what the clients count -------------------------------------------------------------------


def vp8_width(payload: bytes) -> int | None:
    """The width of the VP8 keyframe whose first packet's payload this is."""
    size = vp8_picture_size(payload[parse_vp8_descriptor(payload).size :])
    return size[0] if size else None


def payload_offset(data: bytes) -> int:
    """Where an RTP packet's payload starts (after CSRCs and the header extension)."""
    b0 = data[0]
    pos = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        pos += 4 + 4 * int.from_bytes(data[pos + 2 : pos + 4], "big")
    return pos


class PublishedMedia:
    """What one publisher sent, counted where aiortc hands RTP to its DTLS transport."""

    def __init__(self) -> None:
        self.video_ssrc = -1
        self.audio_ssrc = -1
        self.video_packets = 0
        self.video_frames = 0
        self.audio_packets = 0
        self._sent: dict[int, float] = {}
        self._older: dict[int, float] = {}

    def attach(self, pc: RTCPeerConnection) -> None:
        """Count what `pc` (a publish session, offered already) sends, from now on."""
        from sfu import aiortc_hooks as hooks

        transports: dict[int, RTCDtlsTransport] = {}
        for transceiver in pc.getTransceivers():
            ssrc = hooks.sender_ssrcs(transceiver.sender)[0]
            if transceiver.kind == "video":
                self.video_ssrc = ssrc
            else:
                self.audio_ssrc = ssrc
            dtls = hooks.transport_of(transceiver)
            transports[id(dtls)] = dtls
        for dtls in transports.values():
            self._hook(dtls)

    def _hook(self, dtls: RTCDtlsTransport) -> None:
        from core.media.rtp import is_rtcp

        original: Callable[[bytes], Awaitable[None]] = dtls._send_rtp

        async def send_rtp(data: bytes) -> None:
            if not is_rtcp(data):
                self.on_rtp(data)
            await original(data)

        dtls._send_rtp = send_rtp  # type: ignore[method-assign]

    def on_rtp(self, data: bytes) -> None:
        """One RTP packet about to be sent (RTX and unknown streams are not counted)."""
        ssrc = int.from_bytes(data[8:12], "big")
        if ssrc == self.video_ssrc:
            self.video_packets += 1
            if data[1] & 0x80:
                self.video_frames += 1
            self._sent[hash(data[payload_offset(data) :])] = time.perf_counter()
            if len(self._sent) >= SENT_GENERATION:
                self._older, self._sent = self._sent, {}
        elif ssrc == self.audio_ssrc:
            self.audio_packets += 1

    def sent_at(self, payload_hash: int) -> float | None:
        """When the video packet with this payload was sent, if it is still remembered."""
        sent = self._sent.get(payload_hash)
        return sent if sent is not None else self._older.get(payload_hash)


@dataclass(slots=True)
class InboundStream:
    """One SSRC arriving at a subscriber."""

    kind: str
    """`audio`, `video`, or `rtx` (retransmissions, not counted)."""
    mid: str
    """The media section of the subscribe session that carries it."""
    packets: int = 0
    frames: int = 0
    """Video packets with the marker bit: frames delivered."""
    publisher: PublishedMedia | None = None
    """Whose media it is, once known (for latency)."""
    width: int = 0
    """Video: the width of the last keyframe that began arriving (which simulcast layer the
    server forwards now; 0 until one did)."""


class ReceivedMedia:
    """What one subscriber received, counted at its subscribe session's DTLS transport."""

    def __init__(self, client: MediaClient, publishers: dict[str, PublishedMedia]) -> None:
        self.client = client
        self.publishers = publishers
        """Every publisher of the run, by the participant id the server gave it."""
        self.streams: dict[int, InboundStream] = {}
        self.unknown = 0
        """Packets on an SSRC the subscribe offer did not announce."""
        self.sampling = False
        """Record latencies (during the measured window)."""
        self.latencies: list[float] = []
        self.packets_by_width: dict[int, int] = {}
        """Video packets received while sampling, by the width of the layer they belong to."""
        from sfu.twcc import TransportFeedback

        self.feedback = TransportFeedback()
        """Transport-cc feedback on every packet, as a browser sends it (the subscribe answer
        takes transport-cc): the SFU estimates this subscriber's downlink from it."""
        self._dtls: RTCDtlsTransport | None = None
        self._hooked = False
        self._parsed_sdp = ""
        self._announced: dict[int, tuple[str, str]] = {}

    def on_track(self, _track: object) -> None:
        """The subscribe session has (new) transceivers: count their packets, decode nothing."""
        from sfu import aiortc_hooks as hooks

        pc = self.client.subscribe_pc
        for transceiver in pc.getTransceivers():
            hooks.bypass_receiver(transceiver.receiver, lambda _params: None)
            if not self._hooked:
                self._dtls = hooks.transport_of(transceiver)
                hooks.hook_transport(self._dtls, self.on_rtp, None)
                self._hooked = True

    def on_rtp(self, data: bytes, arrival_ms: int, _late: bool) -> None:
        """One decrypted RTP packet from the server."""
        # Per packet of every subscriber in this process, which shares two cores with the server.
        now = time.perf_counter()
        header = parse_header(data)
        number = header.extensions.get(SUBSCRIBER_EXTENSION_ID)
        if number is not None and self.feedback.record(int.from_bytes(number[:2]), arrival_ms):
            from sfu import srtp_send

            assert self._dtls is not None
            for packet in self.feedback.build(1, 0, arrival_ms):
                srtp_send.send_rtcp(self._dtls, packet)
        ssrc = int.from_bytes(data[8:12], "big")
        stream = self.streams.get(ssrc)
        if stream is None:
            stream = self._learn(ssrc)
            if stream is None:
                self.unknown += 1
                return
        stream.packets += 1
        if stream.kind != "video":
            return
        if data[1] & 0x80:
            stream.frames += 1
        payload = data[header.payload_start : header.payload_end]
        if vp8_keyframe_start(payload):
            stream.width = vp8_width(payload) or stream.width
        if not self.sampling:
            return
        self.packets_by_width[stream.width] = self.packets_by_width.get(stream.width, 0) + 1
        publisher = stream.publisher
        if publisher is None:
            owner = self.client.mid_owner.get(stream.mid)
            publisher = stream.publisher = self.publishers.get(owner) if owner else None
            if publisher is None:
                return
        sent = publisher.sent_at(hash(data[header.payload_start :]))  # as the sender hashed it
        if sent is not None:
            self.latencies.append(now - sent)

    def _learn(self, ssrc: int) -> InboundStream | None:
        """A new SSRC: its kind and media section, from the server's latest subscribe offer."""
        from aiortc.sdp import SessionDescription

        description = self.client.subscribe_pc.remoteDescription
        if description is not None and description.sdp != self._parsed_sdp:
            self._parsed_sdp = description.sdp
            for media in SessionDescription.parse(description.sdp).media:
                mid = str(media.rtp.muxId or "")
                for ssrc_info in media.ssrc:
                    self._announced.setdefault(ssrc_info.ssrc, (media.kind, mid))
                for group in media.ssrc_group:
                    if group.semantic == "FID" and len(group.items) == 2:
                        self._announced[int(group.items[1])] = ("rtx", mid)
        announced = self._announced.get(ssrc)
        if announced is None:
            return None
        stream = self.streams[ssrc] = InboundStream(*announced)
        return stream

    def flowing(self, tracks: int, width: int = 0) -> bool:
        """Frames on `tracks` video streams (their layer at least `width` wide) and packets on
        `tracks` audio streams."""
        video = sum(
            1
            for s in self.streams.values()
            if s.kind == "video" and s.frames >= WARM_FRAMES and s.width >= width
        )
        audio = sum(1 for s in self.streams.values() if s.kind == "audio" and s.packets > 0)
        return video >= tracks and audio >= tracks

    def totals(self) -> tuple[int, int, int]:
        """(packets, video frames, audio packets) received so far."""
        packets = frames = audio = 0
        for s in self.streams.values():
            if s.kind == "rtx":
                continue
            packets += s.packets
            frames += s.frames
            if s.kind == "audio":
                audio += s.packets
        return packets, frames, audio


class BenchPeer:
    """One participant of the bench: a `MediaClient`, what it sends and what it receives."""

    def __init__(
        self, name: str, publish: bool, subscribe: bool, publishers: dict[str, PublishedMedia],
        layered: bool = False,
    ) -> None:  # fmt: skip
        from bot.client import MediaClient
        from bot.simulcast import SimulcastSender, encode_layers
        from bot.testsource import ReplayAudioTrack, ReplayVideoTrack

        self.participant_id = name
        self.publish = publish
        self.subscribe = subscribe
        self.publishers = publishers
        self.layered = layered
        simulcast = None
        if publish and layered:  # the camera in three layers, sent by bot.simulcast
            simulcast = SimulcastSender(encode_layers(*LAYERED_SIZE, SOURCE_BITRATE))
            self.tracks = [ReplayAudioTrack()]
        else:
            self.tracks = [ReplayAudioTrack(), ReplayVideoTrack()] if publish else []
        self.client = MediaClient(
            self.send, list(self.tracks), data_channels=False, decode=False, simulcast=simulcast
        )
        self.published = PublishedMedia() if publish else None
        self.received = ReceivedMedia(self.client, publishers) if subscribe else None
        if self.received is not None:
            self.client.subscribe_pc.on("track", self.received.on_track)
        self.errors: list[str] = []

    async def send(self, message: dict[str, Any]) -> None:
        """A media message from the client to the server."""
        raise NotImplementedError

    async def publish_media(self) -> None:
        """Offer the clip and start counting what is sent."""
        if self.published is None:
            return
        await self.client.publish(timeout=JOIN_TIMEOUT_S)
        # setRemoteDescription has only scheduled ICE and DTLS: nothing was sent yet.
        self.published.attach(self.client.publish_pc)
        self.publishers[self.participant_id] = self.published

    async def close(self) -> None:
        """End both sessions and the clip."""
        with contextlib.suppress(Exception):
            await self.client.close()
        for track in self.tracks:
            track.stop()


class SignallingPeer(BenchPeer):
    """A participant of `consilium serve`, over the signalling WebSocket."""

    def __init__(
        self, http: aiohttp.ClientSession, ws_url: str, token: str, name: str, publish: bool,
        subscribe: bool, publishers: dict[str, PublishedMedia], layered: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(name, publish, subscribe, publishers, layered)
        self.http = http
        self.ws_url = ws_url
        self.token = token
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None

    async def join(self) -> None:
        """Join the room (as a chair: no lobby) and publish."""
        ws = self.ws = await self.http.ws_connect(self.ws_url, max_msg_size=0)
        await ws.send_json({"type": "join", "token": self.token, "room": ROOM})
        message = await ws.receive(timeout=JOIN_TIMEOUT_S)
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"join refused: close code {ws.close_code}")
        joined = json.loads(message.data)
        if joined.get("type") != "joined":
            raise RuntimeError(f"join refused: {joined}")
        self.participant_id = str(joined["participant_id"])
        self.reader = asyncio.get_running_loop().create_task(self._read(ws))
        await self.publish_media()

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        if message.get("type") == "answer" and message.get("pc") == "subscribe":
            # Take transport-cc as a browser's answer does (aiortc drops it): the SFU then
            # numbers every packet it sends this subscriber, a cost browsers cause.
            from sfu.twcc import offer_transport_cc

            message = {**message, "sdp": offer_transport_cc(message["sdp"])}
        await self.ws.send_json(message)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            kind = data.get("type")
            try:
                if kind == "offer" and not self.subscribe:
                    continue  # a publisher of a fan-out room declines the others' media
                if kind in ("offer", "answer", "tracks"):
                    await self.client.handle(data)
                    if kind == "tracks" and self.layered and self.subscribe:
                        # As a page showing every camera in a tile of the top layer's size.
                        sizes = {t["mid"]: list(LAYERED_SIZE) for t in data["tracks"]
                                 if t["kind"] == "video"}  # fmt: skip
                        await ws.send_json({"type": "render_sizes", "sizes": sizes})
                elif kind == "error":
                    self.errors.append(f"{data.get('code')}: {data.get('message')}")
            except Exception as exc:
                self.errors.append(f"cannot handle {kind}: {exc!r}")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        await super().close()


class RelayPeer(BenchPeer):
    """A participant of the baseline relay server, over its three JSON POSTs."""

    def __init__(
        self, http: aiohttp.ClientSession, url: str, name: str, publish: bool, subscribe: bool,
        publishers: dict[str, PublishedMedia],
    ) -> None:  # fmt: skip
        super().__init__(name, publish, subscribe, publishers)
        self.http = http
        self.url = url

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.url + path, json=body) as response:
            response.raise_for_status()
            return dict(await response.json())

    async def send(self, message: dict[str, Any]) -> None:
        body = {"id": self.participant_id, "sdp": message["sdp"]}
        if message["type"] == "offer":
            answer = await self._post("/publish", body)
            await self.client.handle({"type": "answer", "pc": "publish", "sdp": answer["sdp"]})
        else:
            await self._post("/answer", body)

    async def receive_others(self) -> None:
        """Ask for everyone else's tracks (once every publisher has published)."""
        if self.subscribe:
            offer = await self._post("/subscribe", {"id": self.participant_id})
            await self.client.handle({"type": "offer", "pc": "subscribe", "sdp": offer["sdp"]})


# -- the servers ------------------------------------------------------------------------------


class MediaServerProcess(ServerProcess):
    """A server this bench measures: it also counts the RTP packets it sent."""

    async def sent_packets(self, http: aiohttp.ClientSession) -> float:
        """RTP packets the server has sent its subscribers so far."""
        raise NotImplementedError

    async def counters(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """The server's own counters (its /metrics), if it has any."""
        return {}


class ServeProcess(MediaServerProcess):
    """`consilium serve`, gathering on loopback, with join bounds opened for the run."""

    name = "consilium serve"

    def __init__(
        self, workdir: Path, config: BenchConfig, settings: dict[str, str] | None = None
    ) -> None:
        self.data_dir = workdir / "data"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSILIUM_")}
        env.update(
            {
                "CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1",
                "CONSILIUM_LOG_LEVEL": "warning",
                "CONSILIUM_JOIN_ATTEMPTS_PER_IP_PER_MIN": "1000000",
                "CONSILIUM_MAX_PENDING_CONNECTIONS": "1000000",
                "CONSILIUM_MAX_PARTICIPANTS_PER_ROOM": str(config.participants + 8),
                # The bench's clients do not ping: keep them for the whole run.
                "CONSILIUM_KEEPALIVE_TIMEOUT_S": "3600",
                **(settings or {}),
            }
        )
        # Under --load the server shares its core with the busy processes (`load_cpus`).
        pin = ["taskset", "-c", ",".join(map(str, SERVER_CPUS))] if config.load else []
        super().__init__(
            [*pin, sys.executable, "-m", "consilium.cli", "serve", "--port", str(port),
             "--data-dir", str(self.data_dir)],
            env, REPO, workdir / "serve.log", port,
        )  # fmt: skip

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """GET /metrics (served to loopback without a token)."""
        async with http.get(self.url + "/metrics") as response:
            response.raise_for_status()
            text = await response.text()
        lines = (line for line in text.splitlines() if line and not line.startswith("#"))
        return {name: float(value) for name, value in (line.split() for line in lines)}

    async def sent_packets(self, http: aiohttp.ClientSession) -> float:
        return (await self.metrics(http))["consilium_sfu_forwarded_packets"]

    async def counters(self, http: aiohttp.ClientSession) -> dict[str, float]:
        return await self.metrics(http)


class RelayProcess(MediaServerProcess):
    """The MediaRelay baseline: this file, run with `--baseline-server PORT`."""

    name = "MediaRelay baseline server"

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        super().__init__(
            [sys.executable, str(Path(__file__).resolve()), "--baseline-server", str(port)],
            dict(os.environ), REPO, workdir / "baseline.log", port,
        )  # fmt: skip

    async def sent_packets(self, http: aiohttp.ClientSession) -> float:
        async with http.get(self.url + "/stats") as response:
            response.raise_for_status()
            return float((await response.json())["packets_sent"])


# -- the baseline server (its own process) ----------------------------------------------------


def serve_baseline(port: int) -> None:
    """Run the MediaRelay baseline server on 127.0.0.1:`port` until SIGTERM."""
    import aiortc.codecs.vpx
    from aiohttp import web
    from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaRelay
    from aiortc.rtcconfiguration import RTCBundlePolicy

    from sfu.ice import IceSettings, install

    install(IceSettings(host_addresses=("127.0.0.1",)))
    # Read when each encoder is created: start at the source's bitrate.
    aiortc.codecs.vpx.DEFAULT_BITRATE = SOURCE_BITRATE
    relay = MediaRelay()
    published: dict[str, list[MediaStreamTrack]] = {}
    sessions: dict[tuple[str, str], RTCPeerConnection] = {}

    def new_session(peer: str, which: str) -> RTCPeerConnection:
        # No iceServers would mean Google's STUN server: none at all, loopback only.
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        sessions[(peer, which)] = pc
        return pc

    async def publish(request: web.Request) -> web.Response:
        body = await request.json()
        pc = new_session(body["id"], "publish")
        tracks = published.setdefault(body["id"], [])

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tracks.append(track)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp})

    async def subscribe(request: web.Request) -> web.Response:
        body = await request.json()
        pc = new_session(body["id"], "subscribe")
        for owner, tracks in published.items():
            if owner != body["id"]:
                for track in tracks:
                    pc.addTrack(relay.subscribe(track, buffered=False))
        await pc.setLocalDescription(await pc.createOffer())
        return web.json_response({"sdp": pc.localDescription.sdp})

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        pc = sessions[(body["id"], "subscribe")]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        return web.json_response({})

    async def stats(request: web.Request) -> web.Response:
        sent = 0
        for (_peer, which), pc in list(sessions.items()):
            if which != "subscribe":
                continue
            for sender in pc.getSenders():
                with contextlib.suppress(Exception):
                    for report in (await sender.getStats()).values():
                        if report.type == "outbound-rtp":
                            sent += report.packetsSent
        return web.json_response({"packets_sent": sent})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def close_sessions(app: web.Application) -> None:
        await asyncio.gather(*(pc.close() for pc in sessions.values()), return_exceptions=True)

    app = web.Application()
    app.add_routes(
        [
            web.post("/publish", publish),
            web.post("/subscribe", subscribe),
            web.post("/answer", answer),
            web.get("/stats", stats),
            web.get("/healthz", healthz),
        ]
    )
    app.on_shutdown.append(close_sessions)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                shutdown_timeout=5.0)  # fmt: skip


# -- one measurement --------------------------------------------------------------------------


@dataclass
class Counts:
    """Every counter of a run at one instant."""

    at: float
    server_user_s: float
    server_system_s: float
    client_cpu_s: float
    server_packets: float
    expected_packets: int
    """Packets sent by the publishers, times the subscribers of each."""
    expected_frames: int
    """Video frames and Opus packets sent by the publishers, times the subscribers of each."""
    received_packets: int
    received_video_frames: int
    received_audio_packets: int
    counters: dict[str, float] = field(default_factory=dict)
    """The server's own counters (`MediaServerProcess.counters`)."""


@dataclass
class Window:
    """What one server did over the measured window."""

    seconds: float
    server_cpu_s: float
    """utime + stime."""
    server_system_s: float
    """stime alone: the kernel's share (UDP sends and receives, epoll)."""
    client_cpu_s: float
    server_packets: float
    expected_packets: int
    expected_frames: int
    received_packets: int
    video_frames: int
    media_frames: int
    """Video frames and audio packets received."""
    latencies: list[float]
    server_rss_kib: int
    warmed_up: bool
    warm_up_s: float
    errors: list[str] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    """How much each of the server's own counters grew over the window."""
    packets_by_width: dict[int, int] = field(default_factory=dict)
    """Video packets the subscribers received, by the width of their layer."""

    def width_share(self, width: int) -> float | None:
        """The share of the video packets received that belong to layers `width` wide or more."""
        wide = sum(n for w, n in self.packets_by_width.items() if w >= width)
        return _ratio(wide, sum(self.packets_by_width.values()))

    @property
    def us_per_pkt(self) -> float | None:
        """Server CPU per packet it sent."""
        return _ratio(self.server_cpu_s * 1e6, self.server_packets)

    @property
    def us_per_frame(self) -> float | None:
        """Server CPU per video frame delivered."""
        return _ratio(self.server_cpu_s * 1e6, self.video_frames)

    @property
    def loss(self) -> float | None:
        """Packets not delivered, of those the publishers sent to each subscriber."""
        return _loss(self.received_packets, self.expected_packets)

    @property
    def frame_loss(self) -> float | None:
        """Video frames and audio packets not delivered."""
        return _loss(self.media_frames, self.expected_frames)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _loss(received: int, expected: int) -> float | None:
    if expected <= 0:
        return None
    # Packets in flight at the window's two edges make it jitter around 0 on a clean run.
    return max(0.0, 1.0 - received / expected)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _client_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


async def counts(
    http: aiohttp.ClientSession, server: MediaServerProcess, peers: list[BenchPeer]
) -> Counts:
    """Read every counter now: the clients' first, together, then the server's."""
    audience = {p.participant_id: _audience(p, peers) for p in peers if p.published is not None}
    expected_packets = expected_frames = 0
    for peer in peers:
        sent = peer.published
        if sent is not None:
            n = audience[peer.participant_id]
            expected_packets += (sent.video_packets + sent.audio_packets) * n
            expected_frames += (sent.video_frames + sent.audio_packets) * n
    received = [p.received.totals() for p in peers if p.received is not None]
    user, system = server.cpu_s()
    snapshot = Counts(
        at=time.monotonic(),
        server_user_s=user,
        server_system_s=system,
        client_cpu_s=_client_cpu_s(),
        server_packets=0.0,
        expected_packets=expected_packets,
        expected_frames=expected_frames,
        received_packets=sum(r[0] for r in received),
        received_video_frames=sum(r[1] for r in received),
        received_audio_packets=sum(r[2] for r in received),
    )
    snapshot.server_packets = await server.sent_packets(http)
    snapshot.counters = await server.counters(http)
    return snapshot


def _audience(publisher: BenchPeer, peers: list[BenchPeer]) -> int:
    """How many participants receive `publisher`."""
    return sum(1 for p in peers if p.subscribe and p is not publisher)


BOUND_S = 0.25
"""The time bound the main run measures (`media_max_delay_s`, the node's default too), set
explicitly so that the figures keep their meaning if the default moves."""


async def measure(
    http: aiohttp.ClientSession,
    server: MediaServerProcess,
    peers: list[BenchPeer],
    seconds: float,
    warm_up_timeout: float,
    profile: Path | None = None,
    width: int = 0,
) -> Window:
    """Wait for every subscription to flow (each video at a layer `width` wide or more), then
    count over `seconds`."""
    publishers = sum(1 for p in peers if p.publish)
    subscribers = [p for p in peers if p.received is not None]
    started = time.monotonic()
    warmed_up = False
    while time.monotonic() - started < warm_up_timeout:
        if all(
            p.received.flowing(publishers - p.publish, width) for p in subscribers if p.received
        ):
            warmed_up = True
            break
        await asyncio.sleep(0.1)
    warm_up_s = time.monotonic() - started
    await asyncio.sleep(SETTLE_S)

    profiler = _start_profiler(server.pid, seconds, profile) if profile else None
    before = await counts(http, server, peers)
    for p in subscribers:
        assert p.received is not None
        p.received.sampling = True
    await asyncio.sleep(seconds)
    after = await counts(http, server, peers)
    for p in subscribers:
        assert p.received is not None
        p.received.sampling = False
    if profiler is not None:
        await asyncio.to_thread(_wait_profiler, profiler)

    return Window(
        seconds=after.at - before.at,
        server_cpu_s=(after.server_user_s + after.server_system_s)
        - (before.server_user_s + before.server_system_s),
        server_system_s=after.server_system_s - before.server_system_s,
        client_cpu_s=after.client_cpu_s - before.client_cpu_s,
        server_packets=after.server_packets - before.server_packets,
        expected_packets=after.expected_packets - before.expected_packets,
        expected_frames=after.expected_frames - before.expected_frames,
        received_packets=after.received_packets - before.received_packets,
        video_frames=after.received_video_frames - before.received_video_frames,
        media_frames=(after.received_video_frames + after.received_audio_packets)
        - (before.received_video_frames + before.received_audio_packets),
        latencies=[t for p in subscribers if p.received for t in p.received.latencies],
        server_rss_kib=server.rss_kib(),
        warmed_up=warmed_up,
        warm_up_s=warm_up_s,
        errors=[e for p in peers for e in p.errors],
        counters={k: v - before.counters.get(k, 0.0) for k, v in after.counters.items()},
        packets_by_width=_sum_counts(
            p.received.packets_by_width for p in subscribers if p.received
        ),
    )


def _received_per_s(window: Window) -> float | None:
    """RTP packets the node received per second over the window (its publishers' layers)."""
    received = window.counters.get("consilium_sfu_received_packets")
    return _round(received / window.seconds, 1) if received is not None else None


def _sum_counts(counts: Iterable[dict[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for each in counts:
        for key, n in each.items():
            total[key] = total.get(key, 0) + n
    return total


def _start_profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy not found: no profile recorded", file=sys.stderr)
        return None
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", "250", "--format", fmt, "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_profiler(profiler: subprocess.Popen[bytes]) -> None:
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()


async def close_all(peers: list[BenchPeer]) -> None:
    """Leave: every peer at once."""
    await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


async def run_sfu(config: BenchConfig, server: ServeProcess) -> tuple[Window, dict[str, float]]:
    """Fill the room on `consilium serve`, measure; the window and the server's last metrics."""
    from signaling.devidp import DevelopmentIdP

    idp = DevelopmentIdP.load_or_create(server.data_dir)
    publishers: dict[str, PublishedMedia] = {}
    peers: list[BenchPeer] = []
    async with aiohttp.ClientSession() as http:
        try:
            for i, (publish, subscribe) in enumerate(config.roles()):
                token = idp.mint(sub=f"bench-{i}", role="chair", depts=["cardiology"],
                                 rooms=[ROOM], ttl_s=3600)  # fmt: skip
                peer = SignallingPeer(http, server.ws_url, token, f"bench-{i}", publish,
                                      subscribe, publishers, config.layered)  # fmt: skip
                peers.append(peer)
                await asyncio.wait_for(peer.join(), JOIN_TIMEOUT_S)
            top = LAYERED_SIZE[0] if config.layered else 0
            timeout = LAYERED_WARM_UP_TIMEOUT_S if config.layered else WARM_UP_TIMEOUT_S
            window = await measure(
                http, server, peers, config.seconds, timeout, config.profile, top
            )
            metrics = await server.metrics(http)
        finally:
            await close_all(peers)
    return window, metrics


async def run_relay(config: BenchConfig, server: RelayProcess) -> Window:
    """The same room, clients and counters against the MediaRelay baseline."""
    publishers: dict[str, PublishedMedia] = {}
    peers: list[RelayPeer] = []
    async with aiohttp.ClientSession() as http:
        try:
            for i, (publish, subscribe) in enumerate(config.roles()):
                peer = RelayPeer(http, server.url, f"bench-{i}", publish, subscribe, publishers)
                peers.append(peer)
                await asyncio.wait_for(peer.publish_media(), JOIN_TIMEOUT_S)
            for peer in peers:
                await asyncio.wait_for(peer.receive_others(), JOIN_TIMEOUT_S)
            return await measure(
                http, server, list(peers), config.baseline_seconds, BASELINE_WARM_UP_TIMEOUT_S
            )
        finally:
            await close_all(list(peers))


QUEUE_DELAY_BUCKET = 'consilium_sfu_queue_delay_ms_bucket{le="'
"""The /metrics histogram of how long media waited in the node (`sfu.queue_delay`)."""


def queue_delay_p95_ms(counters: dict[str, float]) -> float | None:
    """p95 of the media's wait in the node over the window, from the histogram's growth: the
    upper bound of the bucket it falls in (the largest finite bound, 5000, means 5 s or more)."""
    from sfu.queue_delay import percentile_ms as histogram_percentile_ms

    buckets = sorted(
        (float(name[len(QUEUE_DELAY_BUCKET) : -2]), count)
        for name, count in counters.items()
        if name.startswith(QUEUE_DELAY_BUCKET)
    )
    p95 = histogram_percentile_ms(buckets, 0.95)
    if p95 is not None and p95 == float("inf"):
        return max(bound for bound, _ in buckets if bound != float("inf"))
    return p95


def refused_retransmissions(counters: dict[str, float]) -> int:
    """NACKed packets the SFU did not resend over the window (every reason)."""
    prefix = "consilium_sfu_retransmissions_refused"
    return int(sum(v for k, v in counters.items() if k.startswith(prefix)))


SERVER_CPUS = (0,)
"""Under --load: the core the server and the busy processes share; the clients (this process)
keep the others, so what is measured is the server short of CPU, not the clients."""


def start_load(count: int) -> list[subprocess.Popen[bytes]]:
    """`count` busy processes on the server's core: other work taking its CPU. This process
    (the clients) moves to the other cores."""
    if not count:
        return []
    others = set(range(os.cpu_count() or 1)) - set(SERVER_CPUS)
    if others:
        os.sched_setaffinity(0, others)
    pin = ["taskset", "-c", ",".join(map(str, SERVER_CPUS))]
    return [
        subprocess.Popen([*pin, sys.executable, "-c", "while True: pass"]) for _ in range(count)
    ]


def stop_load(hogs: list[subprocess.Popen[bytes]]) -> None:
    """End the busy processes this bench started; this process may use every core again."""
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()
    if hogs:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


# -- the run ----------------------------------------------------------------------------------


def result_line(
    config: BenchConfig,
    ours: Window,
    metrics: dict[str, float],
    baseline: Window | None,
    unbounded: Window | None = None,
    layered: Window | None = None,
) -> dict[str, Any]:
    """The JSON line."""
    us_per_pkt, us_per_frame = ours.us_per_pkt, ours.us_per_frame
    line: dict[str, Any] = {
        "us_per_pkt": _round(us_per_pkt),
        "us_per_frame": _round(us_per_frame),
        "baseline_us_per_pkt": None,
        "baseline_us_per_frame": None,
        "ratio": None,
        "frame_ratio": None,
        "fwd_pkts_per_s": _round(ours.server_packets / ours.seconds, 1),
        "cpu_s_per_s": _round(ours.server_cpu_s / ours.seconds, 3),
        "latency_p95_ms": percentile_ms(ours.latencies, 95),
        "loss": _round(ours.loss, 4),
        "baseline_loss": None,
        "client_cpu_s_per_s": _round(ours.client_cpu_s / ours.seconds, 3),
        "participants": config.participants,
        "mode": config.mode,
        "publishers": config.publishers,
        "subscribers": config.subscribers,
        "seconds": _round(ours.seconds),
        "forwarded_packets": int(ours.server_packets),
        "forwarded_frames": ours.video_frames,
        "fwd_frames_per_s": _round(ours.video_frames / ours.seconds, 1),
        "frame_loss": _round(ours.frame_loss, 4),
        "latency_p50_ms": percentile_ms(ours.latencies, 50),
        "latency_samples": len(ours.latencies),
        "server_kernel_share": _round(_ratio(ours.server_system_s, ours.server_cpu_s), 3),
        "server_rss_mib": round(ours.server_rss_kib / 1024, 1),
        "server_codecs_created": int(
            metrics.get("consilium_sfu_codec_encoders_created", 0)
            + metrics.get("consilium_sfu_codec_decoders_created", 0)
        ),
        "server_dropped_packets": int(metrics.get("consilium_sfu_dropped_packets", 0)),
        "warmed_up": ours.warmed_up,
        "warm_up_s": _round(ours.warm_up_s, 1),
        "cpu_count": os.cpu_count(),
        "queue_delay_p95_ms": queue_delay_p95_ms(ours.counters),
        "late_dropped_packets": int(ours.counters.get("consilium_sfu_late_dropped_packets", 0)),
        "retransmitted_ratio": _round(
            _ratio(
                ours.counters.get("consilium_sfu_retransmitted_packets", 0.0),
                ours.server_packets,
            ),
            4,
        ),
        "retransmissions_refused": refused_retransmissions(ours.counters),
        "socket_receive_buffer_bytes": int(
            metrics.get("consilium_sfu_socket_receive_buffer_bytes", 0)
        ),
        "load": config.load,
    }
    if unbounded is not None:
        line.update(
            {
                "unbounded_loss": _round(unbounded.loss, 4),
                "unbounded_frame_loss": _round(unbounded.frame_loss, 4),
                "unbounded_latency_p95_ms": percentile_ms(unbounded.latencies, 95),
                "unbounded_queue_delay_p95_ms": queue_delay_p95_ms(unbounded.counters),
                "unbounded_fwd_frames_per_s": _round(unbounded.video_frames / unbounded.seconds, 1),
            }
        )
    if ours.errors:
        line["errors"] = ours.errors[:5]
    if layered is not None:
        s_pkt = layered.us_per_pkt
        line.update(
            {
                "simulcast_us_per_pkt": _round(s_pkt),
                "simulcast_us_per_frame": _round(layered.us_per_frame),
                "simulcast_cost_ratio": _round(
                    s_pkt / us_per_pkt if s_pkt and us_per_pkt else None, 3
                ),
                "simulcast_fwd_pkts_per_s": _round(layered.server_packets / layered.seconds, 1),
                "simulcast_fwd_frames_per_s": _round(layered.video_frames / layered.seconds, 1),
                "simulcast_cpu_s_per_s": _round(layered.server_cpu_s / layered.seconds, 3),
                "received_pkts_per_s": _received_per_s(ours),
                "simulcast_received_pkts_per_s": _received_per_s(layered),
                "simulcast_warmed_up": layered.warmed_up,
                "simulcast_warm_up_s": _round(layered.warm_up_s, 1),
                "simulcast_top_layer_share": _round(layered.width_share(LAYERED_SIZE[0]), 3),
            }
        )
        if layered.errors:
            line["simulcast_errors"] = layered.errors[:5]
    if baseline is not None:
        b_pkt, b_frame = baseline.us_per_pkt, baseline.us_per_frame
        line.update(
            {
                "baseline_us_per_pkt": _round(b_pkt),
                "baseline_us_per_frame": _round(b_frame),
                "ratio": _round(b_pkt / us_per_pkt if b_pkt and us_per_pkt else None),
                "frame_ratio": _round(b_frame / us_per_frame if b_frame and us_per_frame else None),
                "baseline_loss": _round(baseline.frame_loss, 4),
                "baseline_seconds": _round(baseline.seconds),
                "baseline_pkts_per_s": _round(baseline.server_packets / baseline.seconds, 1),
                "baseline_frames_per_s": _round(baseline.video_frames / baseline.seconds, 1),
                "baseline_cpu_s_per_s": _round(baseline.server_cpu_s / baseline.seconds, 3),
                "baseline_client_cpu_s_per_s": _round(baseline.client_cpu_s / baseline.seconds, 3),
                "baseline_rss_mib": round(baseline.server_rss_kib / 1024, 1),
                "baseline_warmed_up": baseline.warmed_up,
                "baseline_warm_up_s": _round(baseline.warm_up_s, 1),
            }
        )
    return line


def parse_args(argv: list[str] | None = None) -> BenchConfig | int:
    """The run the command line asks for (or the baseline server's port)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--participants", type=int, help="all-to-all room size (default 4)")
    parser.add_argument("--publishers", type=int, help="fan-out: publishers (default 4)")
    parser.add_argument("--subscribers", type=int, help="fan-out: subscribers (default 10)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window (s)")
    parser.add_argument(
        "--baseline-seconds", type=float, help="the baseline's window (default: --seconds)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 2 participants, 3 s (baseline 3 s)"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the MediaRelay baseline server"
    )
    parser.add_argument("--profile", type=Path, help="record the SFU with py-spy into this file")
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        help="busy processes competing for the CPU; also measures the SFU with its time bound off",
    )
    parser.add_argument(
        "--simulcast",
        action="store_true",
        help="also measure the SFU with every camera in three simulcast layers (simulcast_* keys)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="--simulcast: pairs of one-stream and simulcast runs; the cost ratio is their median",
    )
    parser.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server is not None:
        return int(args.baseline_server)
    fan_out = args.publishers is not None or args.subscribers is not None
    if fan_out and args.participants is not None:
        parser.error("--participants (all-to-all) or --publishers/--subscribers (fan-out)")
    seconds = args.seconds
    baseline_seconds = args.baseline_seconds or seconds
    if args.quick:
        fan_out, args.participants, seconds, baseline_seconds = False, 2, 3.0, 3.0
    if fan_out:
        publishers = 4 if args.publishers is None else args.publishers
        subscribers = 10 if args.subscribers is None else args.subscribers
    else:
        publishers = subscribers = 4 if args.participants is None else args.participants
    if publishers < 1 or subscribers < 1 or (not fan_out and publishers < 2):
        parser.error("a room needs a publisher and someone else to receive it")
    if seconds <= 0 or baseline_seconds <= 0:
        parser.error("--seconds must be positive")
    return BenchConfig(
        publishers=publishers,
        subscribers=subscribers,
        all_to_all=not fan_out,
        seconds=seconds,
        baseline_seconds=baseline_seconds,
        baseline=not args.no_baseline,
        profile=args.profile,
        load=max(0, args.load),
        simulcast=args.simulcast,
        rounds=max(1, args.rounds),
    )


def _run_serve(
    config: BenchConfig, workdir: Path, settings: dict[str, str] | None = None
) -> tuple[Window, dict[str, float]]:
    """One measured run against a fresh `consilium serve`."""
    workdir.mkdir(parents=True)
    server = ServeProcess(workdir, config, settings)
    try:
        server.wait_ready()
        return asyncio.run(run_sfu(config, server))
    except BaseException:
        print(server.output(), file=sys.stderr)
        raise
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (the SFU, then the baseline) and print its JSON line."""
    config = parse_args(argv)
    if isinstance(config, int):
        serve_baseline(config)
        return 0

    from bot.testsource import encode_test_pattern, encode_tone
    from sfu.ice import IceSettings, install

    install(IceSettings(host_addresses=("127.0.0.1",)))
    # Encode the clip now, not inside the first join.
    encode_test_pattern(bitrate=SOURCE_BITRATE)
    encode_tone()
    if config.simulcast:
        from bot.simulcast import encode_layers

        encode_layers(*LAYERED_SIZE, SOURCE_BITRATE)
    workdir = Path(tempfile.mkdtemp(prefix="consilium-bench-forwarding-"))
    started = time.monotonic()
    hogs = start_load(config.load)
    try:
        ours, metrics = _run_serve(
            config, workdir / "bounded", {"CONSILIUM_MEDIA_MAX_DELAY_S": str(BOUND_S)}
        )
        unbounded = None
        if config.load:
            # The baseline of the time bound: the same room, the same load, the bound off.
            unbounded, _ = _run_serve(
                config, workdir / "unbounded", {"CONSILIUM_MEDIA_MAX_DELAY_S": "0"}
            )
        layered = None
        pairs: list[tuple[Window, Window]] = []
        if config.simulcast:
            # The same room with every camera in three layers (each subscriber is forwarded
            # one): the cost of layer selection and switching, against the run above.
            bound = {"CONSILIUM_MEDIA_MAX_DELAY_S": str(BOUND_S)}
            layered, _ = _run_serve(
                dataclasses.replace(config, layered=True), workdir / "simulcast", bound
            )
            pairs.append((ours, layered))
            for n in range(1, config.rounds):  # more pairs, for the cost ratio alone
                one, _ = _run_serve(config, workdir / f"bounded-{n}", bound)
                three, _ = _run_serve(
                    dataclasses.replace(config, layered=True), workdir / f"simulcast-{n}", bound
                )
                pairs.append((one, three))
        stop_load(hogs)

        baseline = None
        if config.baseline:
            relay = RelayProcess(workdir)
            try:
                relay.wait_ready()
                baseline = asyncio.run(run_relay(config, relay))
            except BaseException:
                print(relay.output(), file=sys.stderr)
                raise
            finally:
                relay.stop()
    finally:
        stop_load(hogs)
        shutil.rmtree(workdir, ignore_errors=True)
    line = result_line(config, ours, metrics, baseline, unbounded, layered)
    if pairs:
        ratios = [_ratio(b.us_per_pkt or 0.0, a.us_per_pkt or 0.0) for a, b in pairs]
        known = [r for r in ratios if r is not None]
        line["simulcast_cost_ratios"] = [_round(r, 3) for r in ratios]
        line["simulcast_cost_ratio"] = _round(statistics.median(known), 3) if known else None
        line["simulcast_top_layer_shares"] = [_round(b.width_share(LAYERED_SIZE[0]), 3)
                                              for _, b in pairs]  # fmt: skip
    line["bench_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

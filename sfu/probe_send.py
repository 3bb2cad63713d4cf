"""Sending probe clusters: padding-only RTX packets, paced at a cluster's target rate.

What a probe packet is (RFC 3550 5.1 and 5.3.1, RFC 4588): an RTP packet on a video slot's RTX
stream (its RTX SSRC, RTX payload type, the next number of the RTX stream's own sequence, the
slot's header-extension block with the transport-wide sequence number placeholder first, so the
transport numbers it as it leaves like any other packet), the padding bit set, no payload at
all, and up to 255 bytes of padding whose last byte counts them. No original sequence number:
an RTX payload carries one only when it carries a packet, and this one carries none. libwebrtc
sends its own probes exactly so (`RTPSender::GeneratePadding` makes padding-only packets on the
RTX SSRC, and str0m's notes describe the same packets from Chrome); Chromium's receiver counts
every packet with a transport-wide number into its feedback before demultiplexing it, and its
RTX stream (`RtxReceiveStream`) drops an RTX packet whose payload is shorter than the 2-byte
original sequence number without touching the media stream (tests/test_sfu_probe_browser.py
watches it: the subscriber's video goes on decoding while clusters are sent). Browsers drop
padding cleanly; a padding packet on the media SSRC would have to take media sequence numbers
and shift every later one.

`ProbeSender` paces a cluster over `ProbeCluster.duration_s` in steps of `STEP_S` (the bytes due
by the time each step runs, the last one included: a late timer sends more at once rather than
lowering the rate over the cluster's span, which is what its feedback is measured against),
padding on top of the media so the whole transport runs at the cluster's target, and tells
the estimator (`sfu.probing.ProbeBitrateEstimator`) the stretch of transport-wide numbers its
padding spans. Never on the forwarding path: a cluster is a few dozen packets, a few times a
minute at most.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from core.media.rtp import extension_block
from sfu.downlink import PACKET_OVERHEAD_BYTES, SentPackets
from sfu.forwarder import OutboundSlot
from sfu.probing import ProbeBitrateEstimator, ProbeCluster

STEP_S = 0.005
"""Pacing step: the padding due is sent every this long."""
MAX_PADDING = 255
"""Padding bytes per packet (the padding count is one byte)."""
_HEADER_BYTES = 12


def padding_packet(
    *, ssrc: int, payload_type: int, sequence: int, timestamp: int, extensions: bytes, padding: int
) -> bytes:
    """A padding-only RTP packet: header (padding bit set, and the extension bit when
    `extensions` is not empty), the extension block, no payload, `padding` bytes of padding
    (1-255; the last one says how many)."""
    if not 1 <= padding <= MAX_PADDING:
        raise ValueError("RTP padding is 1 to 255 bytes")
    first = 0xA0 | (0x10 if extensions else 0)
    header = bytes((first, payload_type & 0x7F)) + (sequence & 0xFFFF).to_bytes(2, "big")
    header += (timestamp & 0xFFFFFFFF).to_bytes(4, "big") + (ssrc & 0xFFFFFFFF).to_bytes(4, "big")
    return header + extensions + bytes(padding - 1) + bytes((padding,))


def probe_slot(slots: list[OutboundSlot]) -> OutboundSlot | None:
    """A slot probes can be sent on: video, negotiated with RTX and the transport-wide sequence
    number, ready to send, and carrying video now (every slot shares one transport, so any such
    slot will do; but padding on an idle or hidden slot's RTX stream makes the browser report
    an inbound stream for it, a tile with no frames)."""
    return next((
        slot for slot in slots
        if slot.kind == "video" and slot.ready and slot.rtx_ssrc
        and slot.rtx_payload_type is not None and slot.ext_ids.transport_cc is not None
        and slot.source is not None and not slot.hidden and _carrying(slot)
    ), None)  # fmt: skip


def _carrying(slot: OutboundSlot) -> bool:
    """Whether the slot has begun sending its source (a simulcast one: some layer)."""
    switch = slot.layer_switch
    return slot.started if switch is None else switch.current is not None


class ProbeSender:
    """Sends one subscriber's probe clusters, one after another, paced."""

    __slots__ = ("_active", "_clock", "_queue", "_timer", "media_bps", "packets", "probes", "sent")

    def __init__(
        self,
        sent: SentPackets,
        probes: ProbeBitrateEstimator,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sent = sent
        """The transport's numbering (each probe packet's number is read from it)."""
        self.probes = probes
        """Told of each cluster's stretch of numbers."""
        self._clock = clock
        self._queue: deque[tuple[ProbeCluster, OutboundSlot]] = deque()
        self._active: _Cluster | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.media_bps = 0
        """The media rate the transport carries now (the padding fills up to the target)."""
        self.packets = 0
        """Padding packets sent."""

    def send(self, cluster: ProbeCluster, slot: OutboundSlot) -> None:
        """Send `cluster` on `slot`'s RTX stream, after any cluster under way."""
        self._queue.append((cluster, slot))
        if self._active is None:
            self._next()

    def stop(self) -> None:
        """Stop sending (the subscriber leaves); what is under way is abandoned."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._active is not None:
            self.probes.abandon(self._active.cluster)
            self._active = None
        while self._queue:
            self.probes.abandon(self._queue.popleft()[0])

    def _next(self) -> None:
        if not self._queue:
            self._active = None
            return
        cluster, slot = self._queue.popleft()
        padding_bps = max(cluster.target_bps - self.media_bps, cluster.target_bps // 2)
        self._active = _Cluster(cluster, slot, padding_bps, self._clock())
        self._step()

    def _step(self) -> None:
        self._timer = None
        active = self._active
        if active is None:
            return
        now = self._clock()
        elapsed = now - active.started_at
        duration = active.cluster.duration_s
        done = elapsed >= duration
        # The bytes due by now (a step ahead while under way): a late timer on a busy loop
        # sends more at once, so the rate over the cluster's actual span stays the target
        # (capped: after a long stall the cluster ends, bunched, rather than flooding).
        due = active.padding_bps * min(elapsed if done else elapsed + STEP_S, 3 * duration) / 8
        while active.bytes < due or (done and active.packets < active.cluster.min_packets):
            if not self._send_one(active, now):
                self.probes.abandon(active.cluster)
                self._next()
                return
        if done:
            if active.last is not None:
                self.probes.end(active.cluster, active.last)
            self._next()
            return
        self._timer = asyncio.get_running_loop().call_later(STEP_S, self._step)

    def _send_one(self, active: _Cluster, now: float) -> bool:
        slot = active.slot
        rtx_payload_type = slot.rtx_payload_type
        if not slot.ready or rtx_payload_type is None:
            return False
        extensions = extension_block(slot.ext_ids, slot.mid, None, None)
        packet = padding_packet(
            ssrc=slot.rtx_ssrc, payload_type=rtx_payload_type, sequence=slot.rtx_seq,
            timestamp=slot.last_ts, extensions=extensions, padding=MAX_PADDING,
        )  # fmt: skip
        number = self.sent.next_sequence
        if not slot.send_rtp(packet) or self.sent.next_sequence == number:
            return False  # not sent, or sent without a transport-wide number: no probe
        slot.rtx_seq = (slot.rtx_seq + 1) & 0xFFFF
        if active.last is None:
            self.probes.begin(active.cluster, number, now)
        active.last = number
        active.packets += 1
        active.bytes += len(packet) + PACKET_OVERHEAD_BYTES
        self.packets += 1
        return True


class _Cluster:
    """A cluster being sent."""

    __slots__ = ("bytes", "cluster", "last", "packets", "padding_bps", "slot", "started_at")

    def __init__(
        self, cluster: ProbeCluster, slot: OutboundSlot, padding_bps: int, started_at: float
    ) -> None:
        self.cluster = cluster
        self.slot = slot
        self.padding_bps = padding_bps
        self.started_at = started_at
        self.bytes = 0
        self.packets = 0
        self.last: int | None = None

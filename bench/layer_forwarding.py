"""Simulcast forwarding benchmark: the forwarder's CPU per packet for a camera sent in three
layers, against the same camera sent as one stream, measured in the same run.

In process, no sockets: the forwarder is sans-IO (`sfu/forwarder.py`, `sfu/layered.py`), so the
packets of a 30 fps camera are handed to it as the publish session's receive hook would, with
their arrival times, and every slot's `send_rtp` only counts. What is left is exactly the
per-packet work that simulcast adds: each layer's history and meter, the keyframe check of every
packet, and each slot's `LayerSwitch` (renumbering, the VP8 descriptor rewritten after a
switch). Prints one JSON line:

- `us_per_pkt`: CPU microseconds per packet *sent* to a subscriber, simulcast; the subscribers
  are spread over the layers (a third each) and each moves to the next layer every
  `--switch-every` seconds (5 by default: the choice has hysteresis; 1 is a stress case, every
  slot then spends much of its time waiting for a keyframe with two layers offered to it);
- `baseline_us_per_pkt`: the same for the camera as one stream (only its full layer's packets
  arrive, every subscriber gets them);
- `cost_ratio`: `us_per_pkt / baseline_us_per_pkt` (what simulcast costs per packet sent;
  1: nothing more);
- `us_per_received_pkt` and `baseline_us_per_received_pkt`: per packet arriving from the
  publisher (simulcast receives all three layers, about 1.75 x the packets of the full one);
- `publishers`, `subscribers`, `seconds` (of media simulated), `packets_sent`,
  `baseline_packets_sent`.

    python bench/layer_forwarding.py                    # 4 publishers x 10 subscribers, 10 s
    python bench/layer_forwarding.py --quick            # CI smoke: 1 x 3, 1 s
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path
from random import Random

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.media.rtp import ExtensionIds, parse_header
from core.media.track import TrackInfo
from sfu.forwarder import OutboundSlot, PublishedTrack
from sfu.layered import LayeredTrack

FPS = 30
KEYFRAME_EVERY = 60
"""Frames between keyframes of each layer (a browser sends them more rarely when not asked)."""
PACKETS_PER_FRAME = (1, 2, 4)
"""Packets per frame of each layer (about 150 kbps, 500 kbps, 1 Mbps at 1100 bytes)."""
PAYLOAD_BYTES = 1100
PUBLISHER_IDS = ExtensionIds(mid=1, abs_send_time=2, rid=3)
SUBSCRIBER_IDS = ExtensionIds(mid=4, abs_send_time=5)


def _vp8(picture_id: int, first: bool, keyframe: bool) -> bytes:
    """A VP8 payload: descriptor with a 15-bit picture id and TL0PICIDX, then the frame."""
    descriptor = bytes([0x90 if first else 0x80, 0xC0, 0x80 | picture_id >> 8 & 0x7F,
                        picture_id & 0xFF, picture_id & 0xFF])  # fmt: skip
    if not first:
        return descriptor + bytes(PAYLOAD_BYTES)
    header = b"\x00\x00\x00\x9d\x01\x2a" if keyframe else b"\x01\x00\x00"
    return descriptor + header + bytes(PAYLOAD_BYTES - len(header))


def camera(seconds: float, layers: tuple[int, ...]) -> list[tuple[bytes, int, int]]:
    """The packets of a camera's `layers` (indexes into PACKETS_PER_FRAME), interleaved as they
    arrive: (packet, arrival in ms, layer)."""
    packets = []
    sequences = [1000, 20_000, 40_000]
    for frame in range(int(seconds * FPS)):
        arrival_ms = 1_000_000 + frame * 1000 // FPS
        for layer in layers:
            count = PACKETS_PER_FRAME[layer]
            for part in range(count):
                marker = 0x80 if part == count - 1 else 0
                header = struct.pack(
                    "!BBHII", 0x80, marker | 96, sequences[layer] & 0xFFFF, frame * 3000,
                    1000 + layer,
                )  # fmt: skip
                sequences[layer] += 1
                payload = _vp8(frame & 0x7FFF, part == 0, frame % KEYFRAME_EVERY == 0)
                packets.append((header + payload, arrival_ms, layer))
    return packets


class Counter:
    """A subscriber's transport: counts what it is handed."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, packet: bytes) -> bool:
        self.sent += 1
        return True


def _slot(n: int, counter: Counter, seed: int) -> OutboundSlot:
    return OutboundSlot(
        f"sub{n}", "video", send_rtp=counter, send_rtcp=lambda b: True, mid=b"1",
        ssrc=5000 + n, payload_type=96, ext_ids=SUBSCRIBER_IDS, ready=True,
        rng=Random(seed + n),
    )  # fmt: skip


def run(
    publishers: int, subscribers: int, seconds: float, layered: bool, switch_every: float = 5.0
) -> dict[str, float]:
    """Forward `publishers` cameras to `subscribers` each; CPU seconds and packet counts."""
    counter = Counter()
    layers = ("q", "h", "f") if layered else ()
    work = []
    for p in range(publishers):
        info = TrackInfo("bench", f"pub{p}", f"pub{p}:0", "video", "video/VP8", 90000, 96,
                         layers=layers)  # fmt: skip
        kind = LayeredTrack if layered else PublishedTrack
        track = kind(info, ssrc=1000, rtx_ssrc=None, rtx_payload_type=None,
                     ext_ids=PUBLISHER_IDS, rtcp_ssrc=1, send_rtcp=lambda b: True,
                     sinks=[])  # fmt: skip
        slots = [_slot(n, counter, seed=p * 1000) for n in range(subscribers)]
        for slot in slots:
            slot.assign(track, now=1000.0)
        packets = camera(seconds, (0, 1, 2) if layered else (2,))
        work.append((track, slots, [(data, parse_header(data), ms, layer)
                                    for data, ms, layer in packets]))  # fmt: skip
    received = 0
    started = time.process_time()
    for track, slots, packets in work:
        next_choice = next_tick = 0
        for data, header, arrival_ms, layer in packets:
            if arrival_ms >= next_tick:  # the SFU's tick, every 0.2 s
                track.tick(arrival_ms / 1000)
                next_tick = arrival_ms + 200
            if isinstance(track, LayeredTrack):
                if arrival_ms >= next_choice:  # the subscribers' choices change
                    turn = int(arrival_ms // (switch_every * 1000))
                    for n, slot in enumerate(slots):
                        track.choose(slot, (n + turn) % 3, arrival_ms / 1000)
                    next_choice = arrival_ms + switch_every * 1000
                track.forward_layer(data, header, arrival_ms, layer)
            else:
                track.forward(data, header, arrival_ms)
            received += 1
    cpu = time.process_time() - started
    return {"cpu_s": cpu, "sent": counter.sent, "received": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0, help="media simulated (s)")
    parser.add_argument("--switch-every", type=float, default=5.0,
                        help="seconds between each subscriber's layer changes")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1 x 3, 1 s: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.publishers, args.subscribers, args.seconds = 1, 3, 1.0
    baseline = run(args.publishers, args.subscribers, args.seconds, layered=False)
    ours = run(args.publishers, args.subscribers, args.seconds, True, args.switch_every)
    us = ours["cpu_s"] * 1e6 / max(ours["sent"], 1)
    baseline_us = baseline["cpu_s"] * 1e6 / max(baseline["sent"], 1)
    print(json.dumps({
        "us_per_pkt": round(us, 3),
        "baseline_us_per_pkt": round(baseline_us, 3),
        "cost_ratio": round(us / baseline_us, 3) if baseline_us else None,
        "us_per_received_pkt": round(ours["cpu_s"] * 1e6 / max(ours["received"], 1), 3),
        "baseline_us_per_received_pkt": round(
            baseline["cpu_s"] * 1e6 / max(baseline["received"], 1), 3
        ),
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "seconds": args.seconds,
        "switch_every": args.switch_every,
        "packets_sent": ours["sent"],
        "baseline_packets_sent": baseline["sent"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()

"""Which simulcast layer a subscriber should get: what each layer is, and the rule that picks.

`LayerMeter` watches one simulcast track's layers as they arrive: each layer's bitrate over the
last second, its picture size (read from its VP8 keyframes), and whether it is being sent at all
(a browser whose own estimate drops stops sending its top layers first, and a layer offered
paused sends nothing). `choose_layer` is the rule, the same for every subscriber:

- a tile that is hidden or off screen gets nothing;
- otherwise the smallest layer that covers the tile (no point sending 1280x720 to a 160x90
  thumbnail: a twelve-person room then sends thumbnails, not twelve full streams);
- then the highest of those that fits the subscriber's bandwidth budget, with hysteresis: a
  layer is climbed to only when it fits in `UP_HEADROOM` of the budget, and left only when it
  no longer fits the whole budget, so an estimate wobbling around one layer's rate does not
  switch (and ask for a keyframe) every second;
- the lowest layer being sent is always allowed: a small picture beats a frozen one; a layer
  whose bitrate is not measured yet is not climbed to while a budget is known.

The switch the choice leads to happens at the new layer's next keyframe (`sfu.layers`). Pure:
packet sizes and keyframes in with `now`, a layer index out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.media.h264_sps import rtp_sps, sps_picture_size
from core.media.payloads import parse_vp8_descriptor, vp8_picture_size

ACTIVE_WITHIN_S = 1.0
"""A layer with no packet for this long is taken as not sent (paused by the browser)."""
RATE_WINDOW_S = 1.0
"""How long each layer's bytes are counted for its bitrate."""
UP_HEADROOM = 0.8
"""A subscriber climbs to a layer only when its bitrate fits in this share of the budget."""
SPEAKER_WEIGHT = 3
"""The active speaker's camera gets this many shares of a subscriber's video budget, every other
video one (the speaker is shown large, the rest as thumbnails)."""
AUDIO_BPS = 40_000
"""The least each audio track a subscriber receives is counted at before its video is budgeted
(`audio_reserve`: what it is measured taking on the wire, when more)."""
DOWN_CONFIRM_S = 1.0
"""A step down that only the budget asks for, on a link losing nothing, waits this long
(`confirm_down`)."""
COVERS = 0.9
"""A layer covers a tile when it is at least this share of the tile's width and height (a
slightly smaller picture scaled up is not worth the next layer's bitrate)."""


@dataclass(slots=True)
class LayerState:
    """One simulcast layer as the SFU receives it."""

    width: int = 0
    """Picture width from its latest keyframe (0: not known yet, or neither VP8 nor H.264)."""
    height: int = 0
    """Picture height from its latest keyframe."""
    bitrate: int = 0
    """Bits per second over the last complete window."""
    last_packet_at: float | None = None
    """When its latest packet arrived (None: never)."""
    window_start: float = 0.0
    window_bytes: int = 0

    def active(self, now: float) -> bool:
        """Whether the publisher is sending this layer."""
        return self.last_packet_at is not None and now - self.last_packet_at < ACTIVE_WITHIN_S

    def covers(self, tile: tuple[int, int]) -> bool:
        """Whether its picture is big enough for a tile of `tile` (width, height) pixels."""
        return self.width >= COVERS * tile[0] and self.height >= COVERS * tile[1]


class LayerMeter:
    """One simulcast track's layers as received: bitrate, picture size, sent or not."""

    __slots__ = ("layers",)

    def __init__(self, count: int) -> None:
        self.layers = [LayerState() for _ in range(count)]
        """The layers, lowest first (as `TrackInfo.layers`)."""

    def on_packet(self, layer: int, size: int, now: float) -> None:
        """A packet of `size` payload bytes arrived on `layer` at `now`."""
        # Per received packet of a simulcast track: bench/forwarding.py.
        state = self.layers[layer]
        if state.last_packet_at is None:
            state.window_start = now
        state.last_packet_at = now
        state.window_bytes += size
        elapsed = now - state.window_start
        if elapsed >= RATE_WINDOW_S:
            state.bitrate = int(state.window_bytes * 8 / elapsed)
            state.window_start = now
            state.window_bytes = 0

    def on_keyframe(self, layer: int, payload: bytes, codec: str = "VP8") -> None:
        """The first packet of a keyframe on `layer`: its picture size (VP8: from the frame's
        header; H.264: from the SPS sent in front of the IDR picture; others ignored)."""
        if codec.upper() == "H264":
            sps = rtp_sps(payload)
            size = sps_picture_size(sps) if sps is not None else None
            if size is not None:
                self.layers[layer].width, self.layers[layer].height = size
            return
        try:
            descriptor = parse_vp8_descriptor(payload)
        except ValueError:
            return
        size = vp8_picture_size(payload[descriptor.size :])
        if size is not None:
            self.layers[layer].width, self.layers[layer].height = size


def choose_layer(
    layers: Sequence[LayerState],
    *,
    tile: tuple[int, int] | None,
    budget_bps: int | None,
    current: int | None,
    now: float,
) -> int | None:
    """The layer a subscriber should get (None: nothing). `tile`: the size its page shows the
    track at, in device pixels (None or empty: hidden); `budget_bps`: what its link can take for
    this track (None: no estimate yet); `current`: the layer it gets now."""
    if tile is None or tile[0] <= 0 or tile[1] <= 0:
        return None
    active = [index for index, state in enumerate(layers) if state.active(now)]
    if not active:
        return current  # nothing arrives: nothing to switch to
    # The smallest layer known to cover the tile; when none is, the top one. A layer whose
    # size is not known yet (none of its keyframes seen: a browser sends one only when asked)
    # is taken to be larger than the known ones below it, as simulcast layers ascend; taking
    # the largest known size instead would hold every subscriber at the one layer whose
    # keyframe happened to pass.
    largest = next((index for index in active if layers[index].covers(tile)), active[-1])
    if budget_bps is None:
        return largest
    chosen = active[0]
    for index in active:
        if index > largest:
            break
        staying = current is not None and index <= current
        if not staying and layers[index].bitrate == 0:
            # Not measured yet (its first second is not over: a publisher that just started):
            # not climbed to on a budget, or a subscriber joining with it gets its top layer's
            # keyframe whatever its link.
            continue
        limit = budget_bps if staying else budget_bps * UP_HEADROOM
        if layers[index].bitrate <= limit:
            chosen = index
    return chosen


def budget_to_climb(bitrate: int) -> int:
    """The least whole budget on which `choose_layer` climbs to a layer of `bitrate`:
    `bitrate / UP_HEADROOM` rounded up. (Rounded down, as a track's want once was, the climb's
    own check refused it for most bitrates, and a loaded subscriber flapped between two
    layers below the one its tile wanted.)"""
    budget = math.ceil(bitrate / UP_HEADROOM)
    while budget * UP_HEADROOM < bitrate:  # float rounding
        budget += 1
    return budget


def confirm_down(
    layer: int | None, current: int | None, wanted: int | None, held_since: float | None,
    now: float, *, clean: bool,
) -> tuple[int | None, float | None]:  # fmt: skip
    """Whether a step down to `layer` from `current` happens now: (the layer to take now, since
    when a step down has been held). `wanted`: the layer the tile wants, budget aside;
    `clean`: the link lost (next to) nothing in its last loss window.

    A step down for the tile (it shrank; `wanted` below `current`), for a lossy link, or after
    `DOWN_CONFIRM_S` happens at once. One the budget alone asks for on a clean link (the delay
    detector cut the estimate: a delay spike on Wi-Fi, a relay or a loaded receiver bunching
    packets as often as a narrower link) is held while a probe checks the link
    (`ProbeController.process(confirming=True)`): a link that still carries the layer keeps it
    without a keyframe and seconds on a smaller picture; one that does not is left within
    `DOWN_CONFIRM_S` (a real drop brings loss within a few hundred milliseconds anyway)."""
    cut = (
        layer is not None and current is not None and layer < current
        and wanted is not None and wanted >= current
    )  # fmt: skip
    if not cut or not clean:
        return layer, None
    since = now if held_since is None else held_since
    if now - since >= DOWN_CONFIRM_S:
        return layer, None
    return current, since


def audio_reserve(wire_rates: Iterable[int]) -> int:
    """What a subscriber's audio tracks take from its downlink before video is budgeted: each
    at what it is measured taking on the wire (`OutboundSlot.measure_wire_rate`), at least
    `AUDIO_BPS` (a muted or silent microphone sends little, and may speak up at any moment).
    Measured, not assumed: a browser's 32 kbps Opus takes ~58 kbps on the wire in 20 ms
    packets, stereo or redundant audio (RED) more."""
    return sum(max(rate, AUDIO_BPS) for rate in wire_rates)


def split_budget(
    downlink_bps: int | None,
    weights: Sequence[int],
    audio_bps: int,
    wants: Sequence[int | None] | None = None,
) -> list[int | None]:
    """Each video track's share of a subscriber's downlink estimate (None: no estimate yet,
    no budget), in proportion to `weights` (`SPEAKER_WEIGHT` for the speaker), after its
    audio (`audio_bps`: `audio_reserve`).

    `wants`: per track, the budget past which it has nothing more to gain (the layer its tile
    wants, over `UP_HEADROOM`; None: no bound). A track's share beyond that goes to the others,
    in proportion to their weights (water-filling): the speaker's three shares of a 4 Mbps link
    are more than its top layer takes, and the rest lets the thumbnails climb."""
    if downlink_bps is None:
        return [None] * len(weights)
    video = max(downlink_bps - audio_bps, 0)
    bounds = list(wants) if wants is not None else [None] * len(weights)
    budgets: list[int | None] = [None] * len(weights)
    open_tracks = list(range(len(weights)))
    while open_tracks:
        total = sum(weights[index] for index in open_tracks) or 1
        shares = {index: video * weights[index] // total for index in open_tracks}
        capped = [i for i in open_tracks if (bound := bounds[i]) is not None and shares[i] >= bound]
        if not capped:
            for index in open_tracks:
                budgets[index] = shares[index]
            break
        for index in capped:
            budgets[index] = bounds[index]
            video -= bounds[index] or 0
            open_tracks.remove(index)
    return budgets


def needed_bps(wants: Sequence[int | None], audio_bps: int) -> int | None:
    """The estimate at which every video track gets the budget its tile's layer wants, after
    `audio_bps` of audio (what probing aims at; None: no track's want is known)."""
    known = [want for want in wants if want is not None]
    return sum(known) + audio_bps if known else None

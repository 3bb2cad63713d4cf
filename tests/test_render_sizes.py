"""`render_sizes`: the client tells the SFU the size it shows each received video at. Bounded on
the way in; over the real WebSocket and a real SFU, a hidden tile gets no video and gets it back
(from a keyframe) when shown, on the node hosting the media and relayed from another node."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from signaling import protocol as p
from tests.fixtures.media import Participant, join_over_ws
from tests.fixtures.servers import LOOPBACK_ICE, RunningNode, eventually, two_nodes


def test_render_sizes_are_decoded() -> None:
    msg = p.client_decoder.decode(b'{"type":"render_sizes","sizes":{"1":[320,180],"3":[0,0]}}')
    assert msg == p.RenderSizes(sizes={"1": [320, 180], "3": [0, 0]})


@pytest.mark.parametrize(
    "sizes",
    [
        {"1": [320]},
        {"1": [320, 180, 1]},
        {"1": [-1, 180]},
        {"1": [8193, 180]},
        {"1": ["wide", 180]},
        {"x" * 33: [1, 1]},
        {str(n): [1, 1] for n in range(p.MAX_RENDER_SIZES + 1)},
    ],
)
def test_malformed_render_sizes_are_refused(sizes: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        p.client_decoder.decode(json.dumps({"type": "render_sizes", "sizes": sizes}))


def _video_mid(participant: Participant) -> str:
    return next(
        str(t.mid) for t in participant.client.subscribe_pc.getTransceivers()
        if t.kind == "video" and t.mid is not None
    )  # fmt: skip


def _video_frames(participant: Participant) -> int:
    return participant.client.stats.frames("video")


async def _hide_and_show(viewer: Participant) -> None:
    """The viewer hides the other's camera (frames stop), then shows it again (they resume)."""
    await eventually(lambda: _video_frames(viewer) > 5, timeout=30)
    mid = _video_mid(viewer)
    await viewer.ws.send_json({"type": "render_sizes", "sizes": {mid: [0, 0]}})
    await _until_stalled(viewer)
    await viewer.ws.send_json({"type": "render_sizes", "sizes": {mid: [640, 480]}})
    frames = _video_frames(viewer)
    await eventually(lambda: _video_frames(viewer) > frames + 10, timeout=15)
    assert not [m for m in viewer.messages if m["type"] == "error"]


async def _until_stalled(viewer: Participant, timeout: float = 10.0) -> None:
    """Until no video frame was decoded for a whole second (a hidden tile gets nothing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    frames, since = _video_frames(viewer), loop.time()
    while loop.time() - since < 1.0:
        assert loop.time() < deadline, "video kept flowing to a hidden tile"
        await asyncio.sleep(0.1)
        if _video_frames(viewer) != frames:
            frames, since = _video_frames(viewer), loop.time()


async def test_a_hidden_tile_gets_no_video_until_shown_again(
    dev_node: RunningNode, loopback_ice: None
) -> None:
    async with aiohttp.ClientSession() as http:
        first = await join_over_ws(http, dev_node.url, dev_node.token("dr-a", "chair"), "mdt-1")
        second = await join_over_ws(http, dev_node.url, dev_node.token("dr-b"), "mdt-1")
        try:
            await _hide_and_show(second)
            assert _video_frames(first) > 5, "the other direction never stopped"
        finally:
            await first.close()
            await second.close()


async def test_render_sizes_reach_the_sfu_from_another_node(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None
) -> None:
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, LOOPBACK_ICE)

    def token(sub: str) -> str:
        return idp.mint(sub=sub, role="chair", depts=["cardiology"], rooms=["span"])

    async with aiohttp.ClientSession() as http:
        first = await join_over_ws(http, a.url, token("dr-a"), "span")  # the media's node
        second = await join_over_ws(http, b.url, token("dr-b"), "span")  # relayed
        try:
            await _hide_and_show(second)
        finally:
            await first.close()
            await second.close()

"""Real aiortc peers exchanging real encoded media through the SFU, over loopback."""

from __future__ import annotations

from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import eventually


async def test_two_participants_see_and_hear_each_other(media: MediaHarness) -> None:
    a = await media.join("a", [AudioStreamTrack(), VideoStreamTrack()])
    b = await media.join("b", [AudioStreamTrack(), VideoStreamTrack()])
    await eventually(lambda: b.stats.frames("video") > 10 and a.stats.frames("video") > 10,
                     timeout=20)  # fmt: skip
    await eventually(lambda: b.stats.frames("audio") > 10 and a.stats.frames("audio") > 10,
                     timeout=10)  # fmt: skip
    widths = {t.width for t in b.stats.tracks.values() if t.kind == "video"}
    assert widths == {640}
    assert not media.errors


async def test_h264_room_forwards_h264(loopback_ice: None) -> None:
    from sfu.ice import IceSettings
    from sfu.server import MediaSettings
    from tests.fixtures.media import MediaHarness as Harness

    media = Harness(MediaSettings(video_codecs=("H264",),
                                  ice=IceSettings(host_addresses=("127.0.0.1",))))  # fmt: skip
    await media.server.start()
    try:
        await media.join("a", [VideoStreamTrack()])
        b = await media.join("b", [])
        await eventually(lambda: b.stats.frames("video") > 5, timeout=30)
        track = next(iter(media.server.participants["a"].tracks.values()))
        assert track.info.codec.upper() == "VIDEO/H264"
    finally:
        await media.close()

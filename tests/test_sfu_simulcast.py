"""Simulcast in the publish SDP (sfu/simulcast.py): the layers a browser offers are read, and the
answer accepts them where the RID extension was negotiated. Plain functions, no event loop,
except the last test, which runs aiortc's own offer/answer with the extension hook."""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCSessionDescription

from core.media.rtp import REPAIRED_RID_URI, RID_URI
from sfu import aiortc_hooks as hooks
from sfu.simulcast import SimulcastOffer, answer_simulcast, layer_order, read_simulcast_offers

# The shape of Chromium's offer for a microphone and a camera with sendEncodings q, h, f (no
# SSRC lines for the video: the layers' SSRCs are learned from their RID extension).
CHROMIUM_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS stream",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=sendonly",
        "a=msid:stream mic",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=ssrc:1001 cname:chromium",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:1",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=sendonly",
        "a=msid:stream camera",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rid:q send",
        "a=rid:h send",
        "a=rid:f send",
        "a=simulcast:send q;h;f",
        "",
    ]
)


def _answer(video_lines: list[str], *, port: int = 9) -> str:
    return "\r\n".join(
        ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
         "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=recvonly", "a=rtpmap:111 opus/48000/2",
         f"m=video {port} UDP/TLS/RTP/SAVPF 96", "a=mid:1", *video_lines, ""]
    )  # fmt: skip


ACCEPTING = [
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    f"a=extmap:10 {RID_URI}",
    f"a=extmap:11 {REPAIRED_RID_URI}",
    "a=recvonly",
    "a=rtpmap:96 VP8/90000",
]


def test_chromiums_three_layers_are_read_with_their_extension_ids() -> None:
    offers = read_simulcast_offers(CHROMIUM_OFFER)
    assert list(offers) == ["1"], "the audio section offers no simulcast"
    offer = offers["1"]
    assert offer.rids == ("q", "h", "f") and offer.paused == frozenset()
    assert (offer.rid_extension, offer.repaired_rid_extension) == (10, 11)
    assert offer.extensions == {RID_URI: 10, REPAIRED_RID_URI: 11}


def test_alternatives_paused_layers_and_undeclared_rids() -> None:
    sdp = "\n".join(
        ["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:v", "a=rid:a send", "a=rid:b send",
         "a=rid:c send", "a=rid:r recv", "a=simulcast:send a,x;~b;c;zz recv r"]
    )  # fmt: skip
    offer = read_simulcast_offers(sdp)["v"]
    # First alternative of each stream; `zz` has no a=rid line; the recv direction is not ours.
    assert offer.rids == ("a", "b", "c")
    assert offer.paused == {"b"}
    assert offer.rid_extension is None and offer.extensions == {}


def test_firefoxs_old_draft_syntax_is_read_too() -> None:
    sdp = "\n".join(["m=video 9 UDP/TLS/RTP/SAVPF 120", "a=mid:0", "a=rid:l send",
                     "a=rid:h send", "a=simulcast: send rid=l;h"])  # fmt: skip
    assert read_simulcast_offers(sdp)["0"].rids == ("l", "h")


def test_an_offer_without_simulcast_or_rid_lines_offers_nothing() -> None:
    plain = "\n".join(["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:0", "a=sendonly"])
    assert read_simulcast_offers(plain) == {}
    no_rid_lines = plain + "\na=simulcast:send q;h;f"
    assert read_simulcast_offers(no_rid_lines) == {}


def test_layers_are_ordered_lowest_first_by_their_names() -> None:
    assert layer_order(("f", "h", "q")) == ("q", "h", "f")
    assert layer_order(("h", "l", "m")) == ("l", "m", "h")
    assert layer_order(("2", "0")) == ("0", "2")
    assert layer_order(("hi", "lo")) == ("hi", "lo"), "unknown names keep the offer's order"
    assert SimulcastOffer("1", ("f", "q"), frozenset(), 10, None).layers == ("q", "f")


def test_the_answer_accepts_each_offered_layer() -> None:
    offers = read_simulcast_offers(CHROMIUM_OFFER)
    answer = answer_simulcast(_answer(ACCEPTING), offers)
    video = answer.split("m=video")[1].removesuffix("\r\n").split("\r\n")
    assert video[-4:] == ["a=rid:q recv", "a=rid:h recv", "a=rid:f recv",
                          "a=simulcast:recv q;h;f"]  # fmt: skip
    assert "a=simulcast" not in answer.split("m=video")[0], "audio untouched"
    assert answer.endswith("\r\n") and "\n\n" not in answer.replace("\r\n", "\n")


def test_paused_layers_stay_paused_in_the_answer() -> None:
    offer = SimulcastOffer("1", ("q", "h", "f"), frozenset({"f"}), 10, None)
    answer = answer_simulcast(_answer(ACCEPTING), {"1": offer})
    assert "a=simulcast:recv q;h;~f" in answer and "a=rid:f recv" in answer


def test_no_simulcast_where_the_answer_cannot_tell_layers_apart_or_does_not_receive() -> None:
    offers = read_simulcast_offers(CHROMIUM_OFFER)
    without_rid = [line for line in ACCEPTING if RID_URI not in line]
    assert "simulcast" not in answer_simulcast(_answer(without_rid), offers)
    inactive = [line.replace("recvonly", "inactive") for line in ACCEPTING]
    assert "simulcast" not in answer_simulcast(_answer(inactive), offers)
    assert "simulcast" not in answer_simulcast(_answer(ACCEPTING, port=0), offers)
    assert answer_simulcast(_answer(ACCEPTING), {}) == _answer(ACCEPTING)


async def test_aiortc_answers_chromiums_simulcast_offer_with_the_rid_extensions() -> None:
    pc = RTCPeerConnection()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=CHROMIUM_OFFER, type="offer"))
        offers = read_simulcast_offers(CHROMIUM_OFFER)
        video = next(t for t in pc.getTransceivers() if t.mid == "1")
        hooks.negotiate_extensions(video, offers["1"].extensions)
        for transceiver in pc.getTransceivers():
            transceiver.direction = "recvonly"
        await pc.setLocalDescription(await pc.createAnswer())
        answer = answer_simulcast(pc.localDescription.sdp, offers)
    finally:
        await pc.close()
    audio_part, video_part = answer.split("m=video")
    assert f"a=extmap:10 {RID_URI}" in video_part
    assert f"a=extmap:11 {REPAIRED_RID_URI}" in video_part
    assert "a=simulcast:recv q;h;f" in video_part and "a=rid:h recv" in video_part
    assert RID_URI not in audio_part and "simulcast" not in audio_part

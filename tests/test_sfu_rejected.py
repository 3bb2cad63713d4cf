"""`sfu.rejected`: a subscribe answer that rejects a media section (port 0) made into one aiortc
accepts, from the offer and answer Firefox ESR without H.264 exchanged with the SFU."""

from __future__ import annotations

from aiortc.sdp import SessionDescription

from sfu.rejected import accept_rejections, rejected_mids

SFU_PRINT = ":".join(["51", "68", "78", "2A", "5C", "D1", "D1", "F5"] * 4)
FIREFOX_PRINT = ":".join(["0A", "A2", "7C", "B9", "5A", "B8", "B6", "1F"] * 4)
"""SHA-256 fingerprints (32 bytes)."""

OFFER = """v=0
o=- 4005633656 4005633656 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0 1
a=msid-semantic:WMS *
m=audio 36968 UDP/TLS/RTP/SAVPF 96
c=IN IP4 127.0.0.1
a=sendonly
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=mid:0
a=msid:cbgA2IVvLReJx2CD cbgA2IVvLReJx2CD:0
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=ssrc:1001 cname:abc
a=rtpmap:96 opus/48000/2
a=candidate:1 1 UDP 2130706431 127.0.0.1 36968 typ host
a=end-of-candidates
a=ice-ufrag:t250
a=ice-pwd:RgYEYI9LivnDyhKXjR4ePy
a=fingerprint:sha-256 SFU_PRINT
a=setup:actpass
m=video 36968 UDP/TLS/RTP/SAVPF 99 100
c=IN IP4 127.0.0.1
a=sendonly
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=mid:1
a=msid:cbgA2IVvLReJx2CD cbgA2IVvLReJx2CD:1
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=ssrc-group:FID 2001 2002
a=ssrc:2001 cname:abc
a=ssrc:2002 cname:abc
a=rtpmap:99 H264/90000
a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:100 rtx/90000
a=fmtp:100 apt=99
a=candidate:1 1 UDP 2130706431 127.0.0.1 36968 typ host
a=end-of-candidates
a=ice-ufrag:t250
a=ice-pwd:RgYEYI9LivnDyhKXjR4ePy
a=fingerprint:sha-256 SFU_PRINT
a=setup:actpass
""".replace("\n", "\r\n").replace("SFU_PRINT", SFU_PRINT)

ANSWER = """v=0
o=mozilla...THIS_IS_SDPARTA-99.0 1895808953267187984 0 IN IP4 0.0.0.0
s=-
t=0 0
a=sendrecv
a=fingerprint:sha-256 FIREFOX_PRINT
a=group:BUNDLE 0
a=ice-options:trickle
a=msid-semantic:WMS *
m=audio 59856 UDP/TLS/RTP/SAVPF 96
c=IN IP4 127.0.0.1
a=recvonly
a=end-of-candidates
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=fmtp:96 maxplaybackrate=48000;stereo=1;useinbandfec=1
a=ice-pwd:cacce816f8221336080cc9c1ec24f725
a=ice-ufrag:22884568
a=mid:0
a=rtcp-mux
a=rtpmap:96 opus/48000/2
a=setup:active
a=ssrc:3001 cname:{f00}
m=video 0 UDP/TLS/RTP/SAVPF 120
c=IN IP4 0.0.0.0
a=inactive
a=mid:1
a=rtpmap:120 VP8/90000
""".replace("\n", "\r\n").replace("FIREFOX_PRINT", FIREFOX_PRINT)


def test_a_rejected_section_is_found_by_its_port_zero() -> None:
    assert rejected_mids(ANSWER) == {"1": "video"}
    assert rejected_mids(OFFER) == {}


def test_an_answer_rejecting_nothing_is_left_as_it_is() -> None:
    accepted = ANSWER.replace("m=video 0 UDP/TLS/RTP/SAVPF 120", "m=video 9 UDP/TLS/RTP/SAVPF 99")
    assert accept_rejections(OFFER, accepted, rejected_mids(accepted)) == accepted


def test_the_rejected_section_becomes_an_inactive_bundled_one_with_the_offered_codecs() -> None:
    aiortc_refuses = SessionDescription.parse(ANSWER)
    assert not aiortc_refuses.media[1].ice.usernameFragment  # what aiortc refused

    fixed = accept_rejections(OFFER, ANSWER, rejected_mids(ANSWER))
    description = SessionDescription.parse(fixed)
    audio, video = description.media
    assert [g.items for g in description.group if g.semantic == "BUNDLE"] == [["0", "1"]]
    # The accepted section is untouched; the rejected one takes its transport...
    assert audio.direction == "recvonly" and audio.ice.usernameFragment == "22884568"
    assert video.ice.usernameFragment == "22884568"
    assert video.ice.password == "cacce816f8221336080cc9c1ec24f725"
    assert video.dtls.role == audio.dtls.role == "client"
    assert video.port == audio.port == 59856
    # ...sends and receives nothing, and names the codecs we offered (aiortc matches them).
    assert video.direction == "inactive"
    assert [c.name for c in video.rtp.codecs] == ["H264", "rtx"]
    assert video.ssrc == [] and video.ice_candidates == []
    assert "a=msid:cbgA2IVvLReJx2CD" not in fixed
    assert fixed.endswith("\r\n") and "\r\n\r\n" not in fixed

"""Media sections a subscriber's answer rejects: what aiortc cannot take, made into what it can.

A browser rejects a media section of our subscribe offer it cannot receive by answering it with
port 0 (RFC 8829 5.3.1, RFC 3264 6): Firefox without its downloadable OpenH264 plugin, offered
the video of a room whose codec is H.264, answers `m=video 0 ... a=inactive` with a placeholder
codec, no ICE credentials, and leaves the section out of its BUNDLE group. aiortc refuses such
an answer whole ("ICE username fragment or password is missing"), so the participant would
receive nothing, not even the audio it accepted.

`rejected_mids` finds those sections; `accept_rejections` rewrites each into an inactive
section aiortc takes: our offer's section for that mid (its codecs, so aiortc finds the ones
it offered) with the transport attributes (ICE credentials, fingerprints, DTLS role) of the
first section the answer accepted, inside the bundle. Nothing is sent on an inactive section;
the subscriber marks its kind declined (`sfu.subscriber`).

Pure: SDP text in, SDP text out.
"""

from __future__ import annotations

TRANSPORT_ATTRIBUTES = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")
"""The attributes of the shared transport copied from an accepted section."""
DROPPED_FROM_OFFER = (
    "a=candidate:", "a=end-of-candidates", "a=ssrc", "a=msid:", "a=sendonly", "a=sendrecv",
    "a=recvonly", "a=inactive", "a=ice-", "a=fingerprint:", "a=setup:", "a=rtcp:",
)  # fmt: skip
"""Lines of our offer's section that an answer's inactive section does not carry (the sender's
streams and candidates, its direction) or that it takes from the accepted section."""


def _split(sdp: str) -> tuple[list[str], list[list[str]]]:
    """The session lines and each media section's lines (the `m=` line first)."""
    session: list[str] = []
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        elif line:
            session.append(line)
    return session, sections


def _mid(section: list[str]) -> str | None:
    return next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)


def _rejected(section: list[str]) -> bool:
    parts = section[0].split()
    return len(parts) > 1 and parts[1] == "0"


def _kind(section: list[str]) -> str:
    return section[0][2:].split(" ", 1)[0]


def rejected_mids(answer: str) -> dict[str, str]:
    """The media sections the answer rejects (port 0): mid -> kind (`audio`, `video`, ...)."""
    _, sections = _split(answer)
    return {
        mid: _kind(section)
        for section in sections
        if _rejected(section) and (mid := _mid(section)) is not None
    }


def accept_rejections(offer: str, answer: str, rejected: dict[str, str]) -> str:
    """The answer with each rejected section (`rejected_mids`) replaced by an inactive one
    aiortc accepts (the answer unchanged when it rejects nothing, or accepts nothing to take a
    transport from)."""
    session, sections = _split(answer)
    accepted = next((s for s in sections if not _rejected(s)), None)
    if not rejected or accepted is None:
        return answer
    transport = [line for line in accepted if line.startswith(TRANSPORT_ATTRIBUTES)]
    port = accepted[0].split()[1]
    offered = {_mid(s): s for s in _split(offer)[1]}
    rebuilt = []
    for section in sections:
        mid = _mid(section)
        ours = offered.get(mid) if mid in rejected else None
        if ours is None:
            rebuilt.append(section)
            continue
        m_line = ours[0].split()
        m_line[1] = port
        kept = [line for line in ours[1:] if not line.startswith(DROPPED_FROM_OFFER)]
        rebuilt.append([" ".join(m_line), *kept, "a=inactive", *transport])
    bundle = [mid for s in rebuilt if (mid := _mid(s)) is not None]
    session = [
        f"a=group:BUNDLE {' '.join(bundle)}" if line.startswith("a=group:BUNDLE") else line
        for line in session
    ]
    return "\r\n".join([*session, *(line for s in rebuilt for line in s)]) + "\r\n"

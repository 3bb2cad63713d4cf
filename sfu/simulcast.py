"""Simulcast in the publish session's SDP: what the browser offers, what the SFU answers.

Design note (issue 15, part 3). A browser asked for simulcast (`addTransceiver(track,
{sendEncodings: [{rid: "q", scaleResolutionDownBy: 4}, {rid: "h", ...: 2}, {rid: "f"}]})`)
encodes the camera three times and says so in its offer, in the one video m-section:

    a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
    a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
    a=rid:q send
    a=rid:h send
    a=rid:f send
    a=simulcast:send q;h;f

(RFC 8851 for `a=rid`, RFC 8853 for `a=simulcast`: `;` separates streams, `,` alternatives of
one stream, `~` marks a stream offered paused.) Chromium announces no SSRCs for the layers: each
layer's SSRC is learned from its first packets, which carry the RID header extension (the RTX
packets of a layer carry the repaired-RID extension instead), as the MID extension already
teaches unannounced SSRCs (`sfu.demux`).

The answer accepts by mirroring: the two extensions with the offer's ids, `a=rid:<id> recv` for
each offered layer, and `a=simulcast:recv q;h;f`. That is mediasoup's answer (read in
mediasoup-client's `AnswerMediaSection`: the offer's list under `recv`, each `send` RID turned
`recv`, no restrictions, only extensions the offer has); LiveKit (pion) and Janus are described
the same way by their documentation, not checked line by line here.

Without the `a=simulcast` line the browser falls back to sending one encoding, so answering
nothing is always safe; and the lines are added only where the RID extension was negotiated too,
because layers the SFU cannot tell apart would be worse than one layer. aiortc knows neither
attribute: `sfu.aiortc_hooks` adds the extensions to what aiortc negotiated, and
`answer_simulcast` writes the two attributes into the answer text aiortc produced.

Which layer is low: the RIDs do not say, but the names in use do (`q;h;f` is what LiveKit's and
our client's encodings are called, `l;m;h` and `0;1;2` are common elsewhere), so known name sets
are ordered by their meaning and other names keep the offer's order. The published track then
has up to three layers, lowest first (`TrackInfo.layers`); each subscriber's slot picks one and
switches only at a keyframe of the new layer (`sfu.layers`), with sequence numbers, timestamps
and VP8 picture ids kept continuous, as every SFU above does.

Pure: SDP text in, SDP text or plain values out.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.media.rtp import REPAIRED_RID_URI, RID_URI

KNOWN_LAYER_NAMES = (("q", "h", "f"), ("l", "m", "h"), ("0", "1", "2"), ("low", "mid", "high"))
"""RID name sets whose meaning gives the layer order, each lowest first."""
MAX_LAYERS = 3
"""Layers accepted per track: the most a browser sends for a camera."""


@dataclass(frozen=True, slots=True)
class SimulcastOffer:
    """One m-section of an offer that sends simulcast."""

    mid: str
    """Its media id."""
    rids: tuple[str, ...]
    """The layers' RIDs as offered (the first alternative of each stream)."""
    paused: frozenset[str]
    """RIDs offered paused (`~`): the browser does not send them until told otherwise."""
    rid_extension: int | None
    """Id of the RID header extension in the offer (None: not offered, no simulcast)."""
    repaired_rid_extension: int | None
    """Id of the repaired-RID header extension (None: RTX packets name no layer)."""

    @property
    def layers(self) -> tuple[str, ...]:
        """The RIDs lowest first (`layer_order`)."""
        return layer_order(self.rids)

    @property
    def extensions(self) -> dict[str, int]:
        """The RID extensions offered: `uri -> id`, for the answer to negotiate."""
        found = {RID_URI: self.rid_extension, REPAIRED_RID_URI: self.repaired_rid_extension}
        return {uri: ext_id for uri, ext_id in found.items() if ext_id is not None}


def layer_order(rids: tuple[str, ...]) -> tuple[str, ...]:
    """RIDs lowest layer first: by meaning for a known name set, else as given."""
    present = set(rids)
    for names in KNOWN_LAYER_NAMES:
        if present <= set(names):
            return tuple(name for name in names if name in present)
    return rids


def read_simulcast_offers(sdp: str) -> dict[str, SimulcastOffer]:
    """The m-sections of an offer that send simulcast, by media id.

    A section counts when it has `a=simulcast` with a send direction naming RIDs that its
    `a=rid:<id> send` lines declare; RIDs without a declaration are ignored (RFC 8853 §5.1), and
    at most `MAX_LAYERS` are kept. Malformed lines are skipped, never raised: the offer is the
    client's and aiortc decides whether it is usable.
    """
    offers: dict[str, SimulcastOffer] = {}
    for section in _media_sections(sdp.splitlines()):
        offer = _read_section(section)
        if offer is not None:
            offers[offer.mid] = offer
    return offers


def answer_simulcast(answer: str, offers: dict[str, SimulcastOffer]) -> str:
    """`answer` with simulcast accepted in each section that was offered it, is received
    (`recvonly`) and negotiated the RID extension: `a=rid:<id> recv` per layer and
    `a=simulcast:recv ...` mirroring the offer (paused layers stay marked `~`)."""
    if not offers:
        return answer
    newline = "\r\n" if "\r\n" in answer else "\n"
    lines = answer.splitlines()
    out: list[str] = []
    section: list[str] = []
    for line in lines:
        if line.startswith("m="):
            out.extend(_accept_in(section, offers))
            section = []
        section.append(line)
    out.extend(_accept_in(section, offers))
    text = newline.join(out)
    return text + newline if answer.endswith(("\n", "\r")) else text


def _media_sections(lines: list[str]) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return sections


def _attribute(line: str) -> tuple[str, str] | None:
    if not line.startswith("a="):
        return None
    name, _, value = line[2:].partition(":")
    return name.strip(), value.strip()


def _read_section(section: list[str]) -> SimulcastOffer | None:
    mid = ""
    declared: list[str] = []
    streams: list[str] = []
    paused: set[str] = set()
    extensions: dict[str, int] = {}
    for line in section:
        attribute = _attribute(line)
        if attribute is None:
            continue
        name, value = attribute
        if name == "mid":
            mid = value
        elif name == "rid":
            fields = value.split()
            if len(fields) >= 2 and fields[1] == "send":
                declared.append(fields[0])
        elif name == "extmap":
            fields = value.split()
            if len(fields) >= 2 and fields[0].split("/")[0].isdigit():
                extensions[fields[1]] = int(fields[0].split("/")[0])
        elif name == "simulcast":
            streams, paused = _send_streams(value)
    rids = tuple(rid for rid in streams if rid in declared)[:MAX_LAYERS]
    if not mid or not rids:
        return None
    return SimulcastOffer(
        mid=mid,
        rids=rids,
        paused=frozenset(paused & set(rids)),
        rid_extension=extensions.get(RID_URI),
        repaired_rid_extension=extensions.get(REPAIRED_RID_URI),
    )


def _send_streams(value: str) -> tuple[list[str], set[str]]:
    """The send direction of an `a=simulcast` value: each stream's first alternative, and the
    paused ones. Also reads the draft form Firefox once sent (`send rid=q;h;f`)."""
    fields = value.split()
    streams: list[str] = []
    paused: set[str] = set()
    for direction, listed in zip(fields[::2], fields[1::2], strict=False):
        if direction != "send":
            continue
        listed = listed.removeprefix("rid=")
        for stream in listed.split(";"):
            first = stream.split(",")[0]
            rid = first.removeprefix("~")
            if rid:
                streams.append(rid)
                if first.startswith("~"):
                    paused.add(rid)
    return streams, paused


def _accept_in(section: list[str], offers: dict[str, SimulcastOffer]) -> list[str]:
    """One answer section, with simulcast accepted when it qualifies (see `answer_simulcast`)."""
    if not section or not section[0].startswith("m=") or section[0].split()[1:2] == ["0"]:
        return section
    attributes = [a for a in (_attribute(line) for line in section) if a is not None]
    mid = next((value for name, value in attributes if name == "mid"), None)
    offer = offers.get(mid) if mid is not None else None
    if offer is None or ("recvonly", "") not in attributes:
        return section
    negotiated = any(
        name == "extmap" and value.split()[1:2] == [RID_URI] for name, value in attributes
    )
    if not negotiated or any(name in ("rid", "simulcast") for name, _ in attributes):
        return section
    rids = [f"~{rid}" if rid in offer.paused else rid for rid in offer.rids]
    return [
        *section,
        *(f"a=rid:{rid} recv" for rid in offer.rids),
        "a=simulcast:recv " + ";".join(rids),
    ]

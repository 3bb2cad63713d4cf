"""RTCP feedback as decisions: what a compound RTCP packet asks of the SFU.

Pure: bytes in, a list of typed requests out, in the order the packet carries them; no socket, no
clock. From a subscriber: keyframe requests (PLI, FIR), retransmissions (generic NACK), its
bandwidth estimate (REMB), its loss and its echo of our sender reports (receiver reports). From
a publisher: its sender reports (the clock mapping forwarded for lip sync). `sfu.subscriber` and
`sfu.publisher` apply them to their slots and tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)


@dataclass(frozen=True, slots=True)
class KeyframeRequest:
    """The receiver of `ssrc` wants a keyframe (PLI, or one FIR entry)."""

    ssrc: int
    """The media SSRC the request names (a subscriber's slot)."""


@dataclass(frozen=True, slots=True)
class Retransmit:
    """The receiver of `ssrc` lost these packets (generic NACK)."""

    ssrc: int
    """The media SSRC the NACK names."""
    sequences: tuple[int, ...]
    """The lost sequence numbers, in that stream's numbering."""


@dataclass(frozen=True, slots=True)
class BitrateEstimate:
    """The receiver's estimate of the bitrate it can take (REMB), for these SSRCs."""

    bitrate: int
    """Bits per second."""
    ssrcs: tuple[int, ...]
    """The media SSRCs the estimate covers."""


@dataclass(frozen=True, slots=True)
class Loss:
    """The receiver's loss on `ssrc` since its previous report (a receiver report block)."""

    ssrc: int
    """The media SSRC reported on."""
    fraction_lost: int
    """Lost since the previous report, out of 256."""
    lsr: int = 0
    """The middle 32 bits of the NTP time of the latest sender report received on the stream
    (0: none yet): what the round trip is measured from (`sfu.round_trip`)."""
    dlsr: int = 0
    """How long the receiver held that sender report before this block, in 1/65536 s."""


@dataclass(frozen=True, slots=True)
class SenderReport:
    """A sender's mapping of its RTP clock to wall-clock time (an SR)."""

    ssrc: int
    """The sender's media SSRC."""
    ntp_timestamp: int
    """64-bit NTP time of the report."""
    rtp_timestamp: int
    """The same instant on the stream's RTP clock."""


Feedback = KeyframeRequest | Retransmit | BitrateEstimate | Loss | SenderReport
"""One decision read from RTCP."""


def read_feedback(data: bytes) -> list[Feedback]:
    """Every request a compound RTCP packet carries, in order; ValueError if it is malformed.

    A REMB whose FCI does not parse is skipped (the rest of the compound packet still counts);
    packet types the SFU does not act on are ignored.
    """
    decisions: list[Feedback] = []
    for packet in RtcpPacket.parse(data):
        if isinstance(packet, RtcpPsfbPacket):
            if packet.fmt == RTCP_PSFB_PLI:
                decisions.append(KeyframeRequest(packet.media_ssrc))
            elif packet.fmt == RTCP_PSFB_FIR:
                fci = packet.fci
                for pos in range(0, len(fci) - 7, 8):
                    decisions.append(KeyframeRequest(int.from_bytes(fci[pos : pos + 4], "big")))
            elif packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    continue
                decisions.append(BitrateEstimate(bitrate, tuple(ssrcs)))
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            decisions.append(Retransmit(packet.media_ssrc, tuple(packet.lost)))
        elif isinstance(packet, RtcpRrPacket):
            for report in packet.reports:
                decisions.append(Loss(report.ssrc, report.fraction_lost, report.lsr, report.dlsr))
        elif isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            decisions.append(SenderReport(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp))
    return decisions

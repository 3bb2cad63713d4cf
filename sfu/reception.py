"""What the SFU received of one RTP stream from a publisher: a receiver report block's figures.

The SFU is the publisher's receiver, so it owes the publisher a receiver report (RFC 3550 6.4.2)
for every stream it receives: the browser's own view of its uplink (loss, and the round trip from
the LSR/DLSR echo of its sender reports) comes from those blocks, stream by stream. A camera in
simulcast is three streams, so each layer gets its own `StreamReception` and its own block; one
block for the lowest layer alone leaves the browser blind on the upper layers, which carry most of
its bytes.

Pure: sequence numbers, sender-report times and `now` (seconds of the monotonic clock) come in;
a report block (aiortc's `RtcpReceiverInfo`) comes out. The arithmetic is RFC 3550 A.1 and A.3.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.rtp import RtcpReceiverInfo


@dataclass(slots=True)
class StreamReception:
    """One received stream's counters (RFC 3550 A.1, A.3) and its sender's latest report."""

    received: int = 0
    """Packets received (repeats included, as RFC 3550 counts them)."""
    base_seq: int | None = None
    """The first sequence number received (None: nothing yet)."""
    max_seq: int = 0
    """The highest sequence number received, modulo 2^16."""
    cycles: int = 0
    """Sequence number wraparounds, shifted by 16 bits."""
    last_sr_ntp: int = 0
    """The 64-bit NTP time of the sender's latest report (0: none yet)."""
    last_sr_at: float | None = None
    """When that report arrived."""
    _expected_prior: int = 0
    _received_prior: int = 0

    def count(self, seq: int) -> None:
        """One packet with this sequence number arrived."""
        # Hot path, per received packet: watched by bench/forwarding.py.
        self.received += 1
        if self.base_seq is None:
            self.base_seq = seq
            self.max_seq = seq
        elif ((seq - self.max_seq) & 0xFFFF) < 0x8000:
            if seq < self.max_seq:
                self.cycles += 1 << 16
            self.max_seq = seq

    @property
    def lost(self) -> int:
        """Packets lost in all (expected by sequence number, not received; RFC 3550 A.3), read
        by the node's metrics, never per packet."""
        if self.base_seq is None:
            return 0
        return max(self.cycles + self.max_seq - self.base_seq + 1 - self.received, 0)

    def sender_report(self, ntp: int, now: float) -> None:
        """The stream's sender reported at `ntp` (its 64-bit NTP time); it arrived at `now`."""
        self.last_sr_ntp = ntp
        self.last_sr_at = now

    def report(self, ssrc: int, now: float) -> RtcpReceiverInfo | None:
        """This stream's report block at `now`, on `ssrc` (its SSRC; 0: not known, no block):
        loss since the previous block and in all, the highest sequence number, and the echo of
        the sender's latest report (LSR, and DLSR in 1/65536 s) from which the sender measures
        the round trip. None before any packet."""
        if self.base_seq is None or not ssrc:
            return None
        extended_max = self.cycles + self.max_seq
        expected = extended_max - self.base_seq + 1
        lost = max(expected - self.received, 0)
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior, self._received_prior = expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min((lost_interval << 8) // expected_interval, 255)
        lsr = (self.last_sr_ntp >> 16) & 0xFFFFFFFF
        dlsr = int((now - self.last_sr_at) * 65536) if self.last_sr_at is not None else 0
        return RtcpReceiverInfo(
            ssrc=ssrc, fraction_lost=fraction, packets_lost=min(lost, 0x7FFFFF),
            highest_sequence=extended_max & 0xFFFFFFFF, jitter=0, lsr=lsr,
            dlsr=dlsr & 0xFFFFFFFF,
        )  # fmt: skip

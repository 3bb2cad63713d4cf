"""Receiving media from a socket: SRTP datagrams past aioice's STUN parser, bounded by time.

The socket callback (`_datagram_received`, installed on aioice's `StunProtocol` by
`install_datagram_shortcut`) takes SRTP past the STUN parser to the connection's media hook
(`sfu.aiortc_hooks.hook_transport`), reads what is queued behind it in the same wakeup, and
reads the kernel's receive timestamp once per wakeup: RTP that waited past `queue_delay`'s bound
is handed on marked late (`RtpHandler`'s third argument), so that a recording still stores it
while the forwarder keeps it from live subscribers and asks its publisher for a keyframe
(`sfu.queue_delay`). `srtp_unprotector` is `session.unprotect` without pylibsrtp's per-call
allocation.

Reaches into aioice's and pylibsrtp's internals (checked at each upgrade, with
`sfu.aiortc_hooks`); `tests/test_sfu_hooks.py` and `tests/test_sfu_queue_delay.py` test them.
"""

from __future__ import annotations

import fcntl
import struct
import time
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aioice.ice import StunProtocol
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

from sfu.queue_delay import QueueDelay

_stun_datagram_received = StunProtocol.datagram_received

DATAGRAM_BUFFER = 65536
"""Bytes asked of each `recvfrom` that `_read_queued` makes: every UDP datagram fits (IPv4 and
IPv6 payloads end below 65,536 bytes). Not asyncio's 256 KiB: in a small process that size
costs ~9 us per call to allocate and trim (measured: 8.8 us against 0.65 us for 64 KiB; the
server's larger heap did not show it, so asyncio's own first read is left as it is)."""
DATAGRAMS_PER_WAKEUP = 32
"""Most datagrams one socket's reader callback takes before other sockets and timers run."""

RECHECK_LATE_EVERY = 8
"""While a wakeup's media is late, its wait is measured again every this many datagrams (a
syscall each time), so the tail of a drained backlog is forwarded."""
queue_delay = QueueDelay(max_ms=0)
"""The process's media waiting times and late drops. No bound until the MediaServer sets one
from its settings: a client of these hooks (the benchmark's receivers) measures what arrives,
late or not."""
_SIOCGSTAMPNS = 0x8907
"""Linux ioctl: the receive timestamp (struct timespec) of the last datagram read."""
_TIMESPEC = struct.Struct("@qq")
_TIMESPEC_BUF = bytes(_TIMESPEC.size)
_ioctl = fcntl.ioctl


def _datagram_received(self: StunProtocol, data: bytes | str, addr: tuple[Any, ...]) -> None:
    # Hot path, per received datagram: watched by bench/forwarding.py. SRTP/SRTCP (first byte
    # 128-191) can never be STUN (first two bits zero), so skip aioice's failed STUN parse.
    if data and 127 < data[0] < 192:  # type: ignore[operator]
        receiver = self.receiver
        media = getattr(receiver, "_consilium_media", None)
        if media is not None:
            transport: Any = self.transport
            sock = getattr(transport, "_sock", None)
            waited = _waited_ms(sock) if sock is not None else 0
            late = not queue_delay.fresh(waited)
            if late and not 191 < data[1] < 224:  # type: ignore[operator]
                queue_delay.drop()  # RTP only: RTCP feedback is never held back
                media(data, 1, True)
            else:
                media(data, 1)
            taken = 1 + _read_queued(self, media, late) if sock is not None else 1
            queue_delay.record(waited, taken)
            return
    _stun_datagram_received(self, data, addr)


def _waited_ms(sock: Any) -> int:
    """How long the datagram just read from `sock` waited in the node, in ms: from the
    kernel's receive timestamp (SIOCGSTAMPNS, one syscall per wakeup, ~1 us) to now. 0 when
    unknown: the first datagram of a socket (the call turns its timestamps on), or a step of
    the wall clock the kernel stamps with."""
    try:
        seconds, nanoseconds = _TIMESPEC.unpack(_ioctl(sock.fileno(), _SIOCGSTAMPNS, _TIMESPEC_BUF))
    except OSError:
        return 0
    waited = (time.time_ns() - seconds * 1_000_000_000 - nanoseconds) // 1_000_000
    return waited if 0 <= waited < 60_000 else 0


def _read_queued(protocol: StunProtocol, media: Callable[..., None], late: bool) -> int:
    """Take the datagrams already queued on this socket now, in this callback: a video frame's
    packets arrive back to back, and each event-loop wakeup (epoll, handle, callback) costs
    about as much as unprotecting a packet. Stops at the first EAGAIN; returns how many media
    datagrams it took. `late`: the first datagram of this wakeup waited too long, so the RTP
    queued behind it (which waited about as long) is handed on marked late too; the wait is
    measured again every `RECHECK_LATE_EVERY` datagrams."""
    # Hot path, per event-loop wakeup on a media socket: watched by bench/forwarding.py.
    transport: Any = protocol.transport
    sock = getattr(transport, "_sock", None)
    if sock is None:
        return 0
    recvfrom = sock.recvfrom
    taken = 0
    for _ in range(DATAGRAMS_PER_WAKEUP - 1):
        if transport.is_closing():
            return taken
        try:
            data, addr = recvfrom(DATAGRAM_BUFFER)
        except (BlockingIOError, InterruptedError):
            return taken
        except OSError as exc:
            protocol.error_received(exc)
            return taken
        if data and 127 < data[0] < 192:
            taken += 1
            if late and not taken % RECHECK_LATE_EVERY:
                # The backlog may have drained: forward again as soon as media is fresh.
                late = not queue_delay.fresh(_waited_ms(sock))
            if late and not 191 < data[1] < 224:
                queue_delay.drop()
                media(data, 1, True)
            else:
                media(data, 1)
        else:
            _stun_datagram_received(protocol, data, addr)
    return taken


def install_datagram_shortcut() -> None:
    """Route SRTP datagrams of hooked connections past the STUN parser, reading what is queued
    in the same callback (process-wide, once; connections that are not hooked take aioice's
    path unchanged)."""
    if StunProtocol.datagram_received is not _datagram_received:
        StunProtocol.datagram_received = _datagram_received  # type: ignore[method-assign]


def srtp_unprotector(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """`session.unprotect` without pylibsrtp's per-call allocation (same libsrtp call, same
    buffer); raises `pylibsrtp.Error` as it does."""
    srtp = session._srtp
    cdata = session._cdata  # kept alive by the closure: it frees libsrtp's context
    buffer = session._buffer
    view = memoryview(buffer)
    limit = len(cdata)
    length = _ffi.new("int *")
    unprotect = _lib.srtp_unprotect

    def unprotect_packet(data: bytes) -> bytes:
        # Hot path, per received packet: watched by bench/forwarding.py.
        size = len(data)
        if size > limit:
            raise ValueError("packet is too long")
        length[0] = size
        view[:size] = data
        status = unprotect(srtp[0], cdata, length)
        if status:
            raise pylibsrtp.Error(f"srtp_unprotect failed: {status}")
        return buffer[0 : length[0]]

    return unprotect_packet

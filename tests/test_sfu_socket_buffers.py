"""Media UDP sockets get the configured buffers (sfu.ice), read back as the kernel granted them.

Real loopback sockets, in the suite's network namespace (only `lo` up).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import aioice
import pytest

from sfu import ice
from sfu.ice import IceSettings, SocketBuffers, install, uninstall

LOOPBACK = ("127.0.0.1",)


@pytest.fixture(autouse=True)
def restore_aioice() -> Iterator[None]:
    """install() is process-wide: never let it leak into another test."""
    yield
    uninstall()


def _rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


async def _host_sockets(**settings: object) -> tuple[aioice.Connection, list[socket.socket]]:
    install(IceSettings(host_addresses=LOOPBACK, **settings))  # type: ignore[arg-type]
    connection = aioice.Connection(ice_controlling=True, components=1)
    await connection.gather_candidates()
    socks = [p.transport.get_extra_info("socket") for p in connection._protocols]
    return connection, socks


async def test_host_candidate_sockets_get_the_configured_buffers() -> None:
    wanted = min(1024 * 1024, _rmem_max())
    connection, socks = await _host_sockets(socket_buffer_bytes=wanted)
    try:
        assert socks
        for sock in socks:
            # Linux reports twice what it grants (its bookkeeping).
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * wanted
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 2 * wanted
        assert ice.socket_buffers.receive == wanted
    finally:
        await connection.close()


async def test_zero_leaves_aioices_own_size() -> None:
    connection, socks = await _host_sockets(socket_buffer_bytes=0)
    try:
        # aioice asks 256 KiB to receive.
        assert socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 262144
    finally:
        await connection.close()


def test_a_buffer_capped_by_the_kernel_is_read_back_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    buffers = SocketBuffers()
    wanted = 4 * _rmem_max()  # more than any unprivileged socket is granted
    with caplog.at_level(logging.WARNING, logger="sfu.ice"):
        for _ in range(2):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                buffers.size(sock, wanted)
    assert buffers.receive == _rmem_max()
    warnings = [r for r in caplog.records if "rmem_max" in r.getMessage()]
    assert len(warnings) == 1

"""`consilium serve` over HTTPS/WSS with a certificate the hospital provides."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from signaling.devidp import DevelopmentIdP
from tests.fixtures.certificates import self_signed_certificate
from tests.fixtures.servers import REPO, free_port, next_message


async def test_https_and_wss(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, common_name="127.0.0.1")
    port = free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "consilium.cli", "serve", "--port", str(port), "--data-dir",
         str(data), "--tls-cert", str(cert), "--tls-key", str(key)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(url + "/healthz", ssl=context) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "HTTPS server did not come up"
                await asyncio.sleep(0.1)
            idp = DevelopmentIdP.load_or_create(data)
            token = idp.mint(sub="dr-tls", role="chair", depts=["cardiology"], rooms=["mdt-1"])
            ws = await http.ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=context)
            await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
            assert (await next_message(ws, "joined"))["you"]["sub"] == "dr-tls"
            await ws.close()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
    assert f"serving on https://127.0.0.1:{port}/" in out
    assert "plain HTTP" not in out

"""`consilium serve` over HTTPS/WSS with a certificate the hospital provides."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from signaling.devidp import DevelopmentIdP
from tests.fixtures.servers import REPO, free_port, next_message


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_and_wss(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
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

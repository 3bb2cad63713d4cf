"""A real room recorded and retrieved the way an archivist does it: aiortc participants publish
the bots' pre-encoded VP8 and Opus through a node's SFU with consent and a case marker; the
`consilium recordings` CLI then lists, verifies, exports (ffprobe reads the file) and bundles
it over the REST API; no plaintext media is found anywhere in the data folder."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.testsource import encode_test_pattern, encode_tone
from tests.fixtures.media import send, state
from tests.fixtures.recordings import ffprobe_path
from tests.fixtures.servers import RunningNode, eventually, node_settings, running_node
from tests.test_recording_consent import join

pytestmark = pytest.mark.skipif(ffprobe_path() is None, reason="ffprobe (Debian's ffmpeg) missing")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    settings = node_settings(
        tmp_path / "data", ice_host_addresses=["127.0.0.1"], recording_segment_seconds=1.0,
        export_scratch_dir=tmp_path / "scratch",
    )  # fmt: skip
    async with running_node(settings) as node:
        yield node


async def consilium(node: RunningNode, role: str, *args: str | Path) -> tuple[int, str]:
    """Run the CLI against the node with a token of `role`; (exit status, stdout)."""
    env = {**os.environ, "CONSILIUM_SERVER": node.url,
           "CONSILIUM_TOKEN": node.token(f"user-{role}", role, rooms=[])}  # fmt: skip
    command = [sys.executable, "-m", "consilium.cli", *map(str, args)]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout + done.stderr


def probe(path: Path) -> dict[str, Any]:
    ffprobe = ffprobe_path()
    assert ffprobe is not None
    out = subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


async def record_meeting(node: RunningNode) -> tuple[str, float, float]:
    """Two consenting participants, 5 s recorded, case 2 marked after about 2.5 s.
    Returns the recording id, its length and case 2's length (wall seconds)."""
    chair = await join(node, "dr-chair", "chair")
    onc = await join(node, "dr-onc")
    try:
        await eventually(lambda: min(p.client.stats.frames("video") for p in (chair, onc)) > 3, 20)
        await send(chair, "request_consent")
        await send(chair, "consent", decision="granted")
        await send(onc, "consent", decision="granted")
        await eventually(lambda: set(state(chair).get("consent", {}).values()) == {"granted"}, 5)
        await send(chair, "start_recording")
        await eventually(lambda: state(chair).get("recording") is True, 5)
        recording_id = str(state(chair)["recording_id"])
        started = time.monotonic()
        await send(chair, "mark_case", label="case 1")
        await asyncio.sleep(2.5)
        await share_ct(node, "dr-chair")  # shared while recording: stored with it
        await send(chair, "mark_case", label="case 2")
        marked = time.monotonic()
        await asyncio.sleep(2.5)
        await send(chair, "stop_recording")
        stopped = time.monotonic()
        await eventually(lambda: state(chair).get("recording") is False, 10)
        return recording_id, stopped - started, stopped - marked
    finally:
        await chair.close()
        await onc.close()


def ct_png() -> bytes:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("L", (256, 256), 20)
    ImageDraw.Draw(image).ellipse((64, 64, 192, 192), fill=210)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def share_ct(node: RunningNode, sub: str) -> str:
    import aiohttp

    session = await node.session()
    form = aiohttp.FormData()
    form.add_field("file", ct_png(), filename="ct.png", content_type="image/png")
    headers = {"Authorization": f"Bearer {node.token(sub, 'chair')}"}
    async with session.post(f"{node.url}/api/rooms/mdt-1/images", data=form,
                            headers=headers) as response:  # fmt: skip
        body = await response.json()
        assert response.status == 201, body
        return str(body["image_id"])


def known_plaintext() -> list[bytes]:
    """Byte strings that occur in the test stream's media and nowhere else."""
    video = encode_test_pattern()[0].data
    audio = encode_tone()[5].data
    return [video[200:232], video[700:732], audio[8:28]]


async def test_a_recorded_meeting_is_found_verified_exported_and_bundled(
    node: RunningNode, tmp_path: Path
) -> None:
    recording_id, length_s, case2_s = await record_meeting(node)

    status, out = await consilium(node, "archivist", "recordings", "list", "--json",
                                  "--participant", "dr-onc", "--case", "case 2")  # fmt: skip
    assert status == 0, out
    (listed,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert listed["recording_id"] == recording_id and listed["cases"] == ["case 1", "case 2"]

    status, out = await consilium(node, "archivist", "recordings", "verify", recording_id)
    assert status == 0 and "OK" in out, out

    whole = tmp_path / "meeting.webm"
    status, out = await consilium(node, "archivist", "recordings", "export", recording_id,
                                  "--out", whole)  # fmt: skip
    assert status == 0, out
    info = probe(whole)
    codecs = sorted(s["codec_name"] for s in info["streams"])
    assert codecs == ["opus", "opus", "vp8", "vp8"], codecs
    assert all(s["width"] == 640 for s in info["streams"] if s["codec_type"] == "video")
    media_s = float(info["format"]["duration"]) - float(info["format"]["start_time"])
    assert abs(media_s - length_s) < 0.8, (media_s, length_s)
    sidecar = json.loads(whole.with_name(whole.name + ".annotations.json").read_text())
    assert [c["label"] for c in sidecar["cases"]] == ["case 1", "case 2"]
    assert {c["sub"] for c in sidecar["consent"]} == {"dr-chair", "dr-onc"}

    case2 = tmp_path / "case2.webm"
    status, out = await consilium(node, "archivist", "recordings", "export", recording_id,
                                  "--case", "2", "--out", case2)  # fmt: skip
    assert status == 0, out
    info = probe(case2)
    case_s = float(info["format"]["duration"]) - float(info["format"]["start_time"])
    assert abs(case_s - case2_s) < 0.8, (case_s, case2_s)

    # The shared image is stored with the recording and served watermarked for the archivist.
    import aiohttp

    from imaging.watermark import identify

    assert node.node is not None
    archivist = {"Authorization": f"Bearer {node.token('user-archivist', 'archivist', rooms=[])}"}
    async with aiohttp.ClientSession(headers=archivist) as http:
        async with http.get(f"{node.url}/api/recordings/{recording_id}/images") as response:
            (stored,) = (await response.json())["images"]
        image_url = f"{node.url}/api/recordings/{recording_id}/images/{stored['image_id']}/0"
        async with http.get(image_url) as response:
            assert response.status == 200 and response.content_type == "image/png"
            served = await response.read()
    mark = identify(served, node.node.watermark_key)
    assert mark is not None and mark.viewer == "user-archivist" and mark.room == "mdt-1"

    bundle = tmp_path / "evidence.zip"
    status, out = await consilium(node, "archivist", "recordings", "bundle", recording_id,
                                  "--out", bundle)  # fmt: skip
    assert status == 0 and "--public-key" in out, out
    # The key inside the bundle shows it is whole, not who signed it: only the hospital's key does.
    status, out = await consilium(node, "archivist", "recordings", "verify-bundle", bundle)
    assert status == 3 and "AUTHENTICITY NOT ESTABLISHED" in out, out
    public_pem = node.data_dir / "keys" / "audit-ed25519.pub.pem"
    status, out = await consilium(node, "archivist", "recordings", "verify-bundle", bundle,
                                  "--public-key", public_pem)  # fmt: skip
    assert status == 0 and "OK" in out, out
    import zipfile

    with zipfile.ZipFile(bundle) as members:
        assert f"images/{stored['image_id']}-frame0.png" in members.namelist()
    damaged = bytearray(bundle.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    (tmp_path / "damaged.zip").write_bytes(bytes(damaged))
    status, out = await consilium(node, "archivist", "recordings", "verify-bundle",
                                  tmp_path / "damaged.zip")  # fmt: skip
    assert status == 1 and "FAILED" in out, out

    # A specialist may not export; every export was audited.
    status, out = await consilium(node, "specialist", "recordings", "export", recording_id,
                                  "--out", tmp_path / "no.webm")  # fmt: skip
    assert status == 1 and "HTTP 403" in out, out

    # The archivist holds it for a complaint; retention (an administrator's run) keeps it; the
    # hold is released; the administrator re-wraps every data key under a new KEK.
    status, out = await consilium(node, "archivist", "recordings", "hold", recording_id,
                                  "--reason", "PALS-12")  # fmt: skip
    assert status == 0 and f"held: {recording_id} since" in out and "(PALS-12)" in out, out
    status, out = await consilium(node, "admin", "retention", "run")
    assert status == 0 and "0 recording(s) shredded" in out, out
    status, out = await consilium(node, "archivist", "recordings", "release", recording_id)
    assert status == 0 and f"released: {recording_id} (retention applies again)" in out, out
    status, out = await consilium(node, "admin", "keys", "rotate")
    assert status == 0 and "rotated: " in out and " re-wrapped, " in out, out
    from signaling.audit import iter_entries

    parts = [e.fields["part"] for e in iter_entries(node.data_dir / "audit",
                                                    action="recording_exported")]  # fmt: skip
    assert parts.count("export") == 2 and parts.count("bundle") == 1

    # Plaintext media never touched the disk: not in the recordings, not anywhere else.
    needles = known_plaintext()
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(needle in data for needle in needles), path
    # Exports are deleted once sent (just after the last byte).
    await eventually(lambda: not any((tmp_path / "scratch").iterdir()), 5)
    assert any(needle in whole.read_bytes() for needle in needles), "the check can fail"


async def test_sigkill_mid_recording_loses_at_most_a_segment_and_verify_says_interrupted(
    tmp_path: Path, loopback_ice: None
) -> None:
    import signal

    import aiohttp

    from signaling.devidp import DevelopmentIdP
    from tests.fixtures.media import join_over_ws
    from tests.fixtures.servers import start_serve

    env = {"CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1", "CONSILIUM_RECORDING_SEGMENT_SECONDS": "1"}
    data_dir = tmp_path / "data"
    serve = start_serve(data_dir, env=env)
    idp = DevelopmentIdP.load_or_create(data_dir)
    try:
        async with aiohttp.ClientSession() as http:
            chair = await join_over_ws(
                http, serve.url,
                idp.mint(sub="dr-chair", role="chair", depts=["cardiology"], rooms=["mdt-1"]),
                "mdt-1",
            )  # fmt: skip
            other = await join_over_ws(
                http, serve.url,
                idp.mint(sub="dr-onc", role="specialist", depts=["cardiology"], rooms=["mdt-1"]),
                "mdt-1",
            )  # fmt: skip
            await eventually(lambda: other.client.stats.frames("video") > 3, 20)
            await send(chair, "request_consent")
            await send(chair, "consent", decision="granted")
            await send(other, "consent", decision="granted")
            await eventually(
                lambda: list(state(chair).get("consent", {}).values()) == ["granted"] * 2, 5
            )
            await send(chair, "start_recording")
            await eventually(lambda: state(chair).get("recording") is True, 5)
            recording_id = str(state(chair)["recording_id"])
            await asyncio.sleep(3.5)
            killed_after = 3.5
            serve.stop(signal.SIGKILL)
            await chair.close()
            await other.close()
    finally:
        serve.stop(signal.SIGKILL)

    serve = start_serve(data_dir, env=env)  # recovers the recording at start
    try:
        archivist = idp.mint(sub="arch-1", role="archivist", depts=["records", "cardiology"])
        env_cli = {**os.environ, "CONSILIUM_SERVER": serve.url, "CONSILIUM_TOKEN": archivist}
        verified = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "consilium.cli", "recordings", "verify", recording_id, "--json"],
            env=env_cli, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        report = json.loads(verified.stdout)
        assert verified.returncode == 0 and report["ok"], report
        assert report["interrupted"] and report["status"] == "interrupted"
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "consilium.cli", "recordings", "show", recording_id],
            env=env_cli, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        details = json.loads(shown.stdout)
        video = next(t["stream"] for t in details["tracks"] if t["kind"] == "video")
        kept_s = details["duration_ms"] / 1000
        # Segments close every second: at most the unfinished one (and the start-up) is lost.
        assert kept_s >= killed_after - 1.5, (kept_s, details["streams"][video])
    finally:
        serve.stop()

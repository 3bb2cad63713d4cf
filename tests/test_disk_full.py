"""A full disk during a meeting: nobody loses media or messages, and everyone is told.

The unit tests give the annotation log a file that runs out of space part-way through a record.
The end-to-end test runs `consilium serve` with its data folder on a real 32 MiB tmpfs (in a
private mount namespace, so nothing is mounted on the host), records a room of aiortc peers
sending media, fills the volume with a file and watches what every participant sees.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from annotations.log import AnnotationLog, log_path
from annotations.room import RoomAnnotations
from recorder.diskspace import DiskSpace, failure_code
from recorder.manifest import read_manifest
from recorder.roomkeys import RoomKeys, open_keyring
from recorder.sink import RecordingSettings
from recorder.verify import verify_recording
from sfu.server import MediaSettings
from signaling.audit import iter_entries, load_public_key
from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    OpenTab,
    meet_through_the_lobby,
    no_axe_violations,
    no_page_problems,
    screenshot,
    start_recording_with_consent,
)
from tests.fixtures.disk import FullDisk
from tests.fixtures.media import (
    Participant,
    join_over_ws,
    last,
    pid,
    record_with_consent,
    send,
    state,
)
from tests.fixtures.recordings import VIDEO, FakeClock, record, rtp_packet
from tests.fixtures.servers import REPO, ServeProcess, eventually, start_serve

KEY = bytes(range(32))
MIB = 1024 * 1024


def chat(seq: int) -> bytes:
    """A stamped chat event as the log stores it."""
    event = {"seq": seq, "time": "t", "author": "rad", "client_id": "", "kind": "chat",
             "text": f"message {seq}"}  # fmt: skip
    return json.dumps(event).encode()


def replayed(path: Path) -> list[int]:
    log = AnnotationLog(path, "mdt-1", KEY)
    try:
        return [event.seq for event in log.replay()]
    finally:
        log.close()


def test_a_log_on_a_full_disk_holds_records_back_and_stays_readable(tmp_path: Path) -> None:
    path = tmp_path / "annotations.log"
    clock = [0.0]
    log = AnnotationLog(path, "mdt-1", KEY, clock=lambda: clock[0])
    log.append(1, chat(1))
    log._file = FullDisk(log._file, room=40)  # type: ignore[assignment]  # record 2 is torn
    for seq in range(2, 6):
        log.append(seq, chat(seq))  # never raises
    assert not log.stored and len(log.unwritten) == 4
    # The torn half of record 2 was cut away: the log on disk reads back as record 1.
    assert path.stat().st_size == log._end
    assert replayed(path) == [1]
    log._file.room = 10 * MIB  # space returns
    log.retry()
    assert not log.stored, "retried at most once a second"
    clock[0] += 1.0
    log.retry()
    assert log.stored
    log.close()
    assert replayed(path) == [1, 2, 3, 4, 5]


def test_room_annotations_deliver_on_a_full_disk_and_tell_the_room(tmp_path: Path) -> None:
    clock = [0.0]
    log = AnnotationLog(tmp_path / "a.log", "mdt-1", KEY, clock=lambda: clock[0])
    room = RoomAnnotations("mdt-1", MediaSettings(), log_file=log, clock=lambda: clock[0])
    log._file = FullDisk(log._file, room=0)  # type: ignore[assignment]
    sent = []
    for n in range(40):
        sent += room.handle(
            "rad", frozenset({"chat"}), json.dumps({"type": "chat", "text": f"{n}"})
        )
    events = [d for d in sent if d.kind == "event"]
    notices = [json.loads(d.text) for d in sent if d.kind == "notice"]
    assert len(events) == 40 and all(d.recipients is None for d in events)
    assert notices == [{"type": "storage", "stored": False, "unwritten": 1, "lost": 0}]
    # A joiner hears it with their snapshot.
    synced = room.handle("onc", frozenset(), json.dumps({"type": "sync"}))
    assert [d.kind for d in synced] == ["snapshot", "notice"]
    assert room.retry_storage(force=True) == []  # still full: nothing new to say
    log._file.room = 10 * MIB
    (told,) = room.retry_storage(force=True)
    assert json.loads(told.text) == {"type": "storage", "stored": True, "unwritten": 0, "lost": 0}
    room.close()
    replayed = AnnotationLog(tmp_path / "a.log", "mdt-1", KEY).replay()
    assert [e.text for e in replayed] == [str(n) for n in range(40)]


def test_a_sink_on_a_full_disk_keeps_its_sealed_segments_and_says_where_it_stopped(
    small_volume: tuple[int, Path],
) -> None:
    _, inside = small_volume
    key = Ed25519PrivateKey.generate()
    settings = RecordingSettings(segment_seconds=1.0)
    recorded = record(inside, "rec-full", KEY, key, seconds=3.0, settings=settings, stop=False)
    sink = recorded.sink
    failures: list[BaseException] = []
    sink._on_failure = failures.append
    fill(inside, "filler")
    clock = sink._clock
    assert isinstance(clock, FakeClock)
    deadline = time.monotonic() + 10
    n = 0
    while not failures and time.monotonic() < deadline:  # more video: it cannot be written
        n += 1
        clock.now += 0.02
        sink.on_rtp(VIDEO, rtp_packet(1000 + n, n * 1800, 1111, 1100), 0, False)
        if n % 100 == 0:
            time.sleep(0.01)  # the writer thread's turn
    assert failures and failure_code(failures[0]) == "disk_full"
    (inside / "filler").unlink()  # the watcher's emergency space, in a real node
    manifest = sink.stop(timeout=10)
    assert manifest.status == "failed" and manifest.failure == "disk_full"
    sealed = [segment for segments in manifest.streams.values() for segment in segments]
    assert sealed and manifest.stopped_at_ms == max(segment.last_ms for segment in sealed)
    assert 1000 <= manifest.stopped_at_ms < 3000  # the segments sealed before the disk filled
    report = verify_recording(inside / "rec-full", KEY, key.public_key())
    assert report.ok and report.failed, report.problems  # no unfinished segment left behind
    assert report.stopped_at_ms == manifest.stopped_at_ms
    failed = [(action, outcome, fields) for action, outcome, fields in recorded.audit]
    assert [(a, o) for a, o, _ in failed if o == "error"] == [("recording_failed", "error")]
    assert failed[-1][2]["manifest_sha256"] == sink.last_manifest_sha256


def test_disk_levels_and_failure_codes() -> None:
    space = DiskSpace(reserve_bytes=8 * MIB)
    assert space.level(9 * MIB) == "ok"
    assert space.level(5 * MIB) == "low"
    assert space.level(1 * MIB) == "full"
    assert failure_code(OSError(errno.ENOSPC, "full")) == "disk_full"
    assert failure_code(OSError(errno.EIO, "io")) == "write_failed"


# -- a real full disk ---------------------------------------------------------------------------


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return "needs unshare and nsenter (util-linux)"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
    )
    if probe.returncode != 0:
        return f"unshare -m cannot mount here: {probe.stderr.decode(errors='replace').strip()}"
    return None


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A 32 MiB tmpfs at `tmp_path/data` in a private mount namespace, held by a process: its
    pid (to enter the namespace) and the folder as this process reaches it."""
    reason = _can_mount()
    if reason is not None:
        pytest.skip(reason)
    data = tmp_path / "data"
    data.mkdir()
    holder = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=32m,mode=0700 tmpfs "$0" && echo mounted && exec sleep 100000',
         str(data)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == b"mounted\n"
    inside = Path(f"/proc/{holder.pid}/root") / data.relative_to("/")
    try:
        yield holder.pid, inside
    finally:
        holder.kill()
        holder.wait()


def serve_on_small_volume(holder: int, inside: Path) -> ServeProcess:
    """`consilium serve` with its data folder on the small volume (entered through the holder's
    mount namespace; its log goes beside it): loopback ICE, 1 s segments, an 8 MiB reserve."""
    return start_serve(
        inside,
        env={
            **ICE_ENV,
            "CONSILIUM_RECORDING_SEGMENT_SECONDS": "1",
            "CONSILIUM_DISK_RESERVE_MB": "8",
        },
        prefix=("nsenter", "-t", str(holder), "-m", "--"),
    )


def fill(folder: Path, name: str, leave: int = 0) -> None:
    """Write a file until the volume has `leave` bytes free (0: until ENOSPC)."""
    chunk = bytes(256 * 1024)
    with open(folder / name, "ab", buffering=0) as out:
        while True:
            free = shutil.disk_usage(folder).free
            if leave and free - len(chunk) < leave:
                if free > leave:
                    out.write(chunk[: free - leave])
                return
            try:
                out.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                break
        small = bytes(4096)
        while True:
            try:
                out.write(small)
            except OSError:
                return


def reliable(participant: Participant, type_: str) -> list[dict[str, Any]]:
    return [m for m in participant.client.received() if m.get("type") == type_]


async def test_a_full_disk_fails_the_recording_loudly_and_loses_no_media_or_message(
    small_volume: tuple[int, Path], loopback_ice: None
) -> None:
    holder, inside = small_volume
    serve = await asyncio.to_thread(serve_on_small_volume, holder, inside)
    people: list[Participant] = []
    try:
        idp = DevelopmentIdP.load_or_create(inside)
        async with aiohttp.ClientSession() as http:
            for sub, role in (
                ("dr-chair", "chair"),
                ("dr-onc", "specialist"),
                ("dr-rad", "specialist"),
            ):
                token = idp.mint(sub=sub, role=role, depts=["cardiology"], rooms=["mdt-1"])
                people.append(await join_over_ws(http, serve.url, token, "mdt-1"))
            chair, onc, rad = people
            for person in people:
                await person.client.sync()
            await eventually(lambda: all(p.client.stats.frames("video") > 5 for p in people), 20)
            recording_id = await record_with_consent(chair, onc, rad)
            await asyncio.sleep(2.5)  # a few sealed segments

            # Below the reserve (8 MiB) but above the floor (2 MiB): the chair is warned.
            await asyncio.to_thread(fill, inside, "filler", 5 * MIB)
            await eventually(lambda: last(chair, "storage_low") is not None, 3)
            warning = last(chair, "storage_low")
            assert warning is not None and warning["reserve_mb"] == 8
            assert warning["recording_id"] == recording_id
            assert last(onc, "storage_low") is None and state(chair)["recording"]

            # Now the disk fills up: everyone hears at once that the recording failed.
            await asyncio.to_thread(fill, inside, "filler")
            full_at = time.monotonic()
            for person in people:
                await eventually(lambda p=person: state(p).get("recording") is False, 5)
            told_after = time.monotonic() - full_at
            for person in people:
                assert state(person)["failure"] == "disk_full", state(person)
                assert state(person)["failed_recording_id"] == recording_id
            assert told_after < 2.5, f"told {told_after:.1f} s after the disk filled"

            # The chair's stop comes too late: refused, and not audited as a stop.
            await send(chair, "stop_recording")
            await eventually(
                lambda: any(m["type"] == "error" and m["request"] == "stop_recording"
                            for m in chair.messages), 5)  # fmt: skip

            # Whatever space the failure gave back is taken again: the disk stays full.
            await asyncio.to_thread(fill, inside, "filler2")
            frames = {pid(p): p.client.stats.frames("video") for p in people}
            for n in range(40):
                rad.client.send_json(
                    "consilium-reliable",
                    {"type": "chat", "client_id": f"c{n}", "text": f"full disk message {n}"},
                )
            for person in people:
                await eventually(
                    lambda p=person: sum(1 for e in reliable(p, "event")
                                         if e.get("text", "").startswith("full disk")) == 40,
                    10,
                )  # fmt: skip
                notices = reliable(person, "storage")
                assert notices and notices[0]["stored"] is False, notices
            # Media keeps flowing to everyone, the sender of the messages included (within a
            # few seconds: CI, loaded, once saw one client's frames take more than 1.5 s).
            for person in people:
                await eventually(
                    lambda p=person: p.client.stats.frames("video") > frames[pid(p)] + 10, 10
                )

            # Space returns: the held-back messages are written, and the room is told.
            (inside / "filler").unlink()
            (inside / "filler2").unlink()
            for person in people:
                await eventually(lambda p=person: reliable(p, "storage")[-1]["stored"] is True, 5)
    finally:
        for person in people:
            await person.close()
        await asyncio.to_thread(serve.stop)

    manifest = read_manifest(inside / "recordings" / recording_id)[0]
    assert manifest.status == "failed" and manifest.failure == "disk_full"
    # It stopped where the disk filled, after the 2.5 s recorded before (1991 ms once seen on CI:
    # the first packets reach the recording a moment after its start).
    assert manifest.stopped_at_ms is not None and manifest.stopped_at_ms >= 1500
    public_key = load_public_key(inside / "keys" / "audit-ed25519.pub.pem")
    data_key = open_keyring(inside).unwrap(recording_id)
    report = verify_recording(inside / "recordings" / recording_id, data_key, public_key)
    assert report.ok and report.failed, report.problems
    assert report.stopped_at_ms == manifest.stopped_at_ms

    failed = list(iter_entries(inside / "audit", action="recording_failed"))
    assert [(e.outcome, e.reason) for e in failed] == [("error", "disk_full")]
    assert failed[0].fields["manifest_sha256"]
    stops = list(iter_entries(inside / "audit", action="stop_recording"))
    assert not [e for e in stops if e.fields.get("recording") == recording_id], stops
    verified = subprocess.run(
        [sys.executable, "-m", "consilium.cli", "audit", "verify", "--data-dir", str(inside),
         "--public-key", str(inside / "keys" / "audit-ed25519.pub.pem")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr

    key = RoomKeys(open_keyring(inside)).key_for("mdt-1")
    texts = [e.text for e in AnnotationLog(log_path(inside, "mdt-1"), "mdt-1", key).replay()]
    assert [t for t in texts if str(t).startswith("full disk")] == [
        f"full disk message {n}" for n in range(40)
    ]


async def test_a_chair_who_reconnected_is_still_warned_that_the_disk_runs_low(
    small_volume: tuple[int, Path], loopback_ice: None
) -> None:
    holder, inside = small_volume
    serve = await asyncio.to_thread(serve_on_small_volume, holder, inside)
    people: list[Participant] = []
    try:
        idp = DevelopmentIdP.load_or_create(inside)
        tokens = {
            sub: idp.mint(sub=sub, role=role, depts=["cardiology"], rooms=["mdt-1"])
            for sub, role in (("dr-chair", "chair"), ("dr-onc", "specialist"))
        }
        async with aiohttp.ClientSession() as http:
            for sub in tokens:
                people.append(await join_over_ws(http, serve.url, tokens[sub], "mdt-1"))
            chair, onc = people
            await record_with_consent(chair, onc)
            # The chair's page reloads: a new connection of the same person replaces the first.
            again = await join_over_ws(http, serve.url, tokens["dr-chair"], "mdt-1")
            people.append(again)
            await eventually(lambda: state(again).get("recording") is True, 5)

            await asyncio.to_thread(fill, inside, "filler", 5 * MIB)
            await eventually(lambda: last(again, "storage_low") is not None, 5)
            assert last(onc, "storage_low") is None
    finally:
        for person in people:
            await person.close()
        await asyncio.to_thread(serve.stop)


async def test_pages_say_the_recording_failed_and_chat_is_not_stored_on_a_full_disk(
    small_volume: tuple[int, Path], chromium: OpenTab
) -> None:
    holder, inside = small_volume
    serve = await asyncio.to_thread(serve_on_small_volume, holder, inside)
    try:
        meeting = await meet_through_the_lobby(serve, chromium)
        chair, specialist = meeting.chair, meeting.specialist
        await start_recording_with_consent(meeting)
        await asyncio.sleep(2)

        notice = "document.getElementById('storage-notice')"
        await asyncio.to_thread(fill, inside, "filler", 5 * MIB)
        await chair.until(f"{notice}.textContent.includes('disk is running low')")
        assert await chair.page.locator("#storage-notice").is_visible()
        assert await specialist.page.locator("#storage-notice").is_hidden()
        # The room's recording_state changes (a case is marked): the warning stays.
        await chair.page.fill("#case-label", "Case 2")
        await chair.page.press("#case-label", "Enter")
        await chair.until("document.getElementById('case-list').textContent.includes('Case 2')")
        assert "disk is running low" in await chair.page.locator("#storage-notice").inner_text()

        await asyncio.to_thread(fill, inside, "filler")
        for tab in (chair, specialist):
            await tab.until("document.getElementById('recording-indicator').hidden")
            await tab.until(f'{notice}.textContent.includes("the server\'s disk is full")')
        assert "stopped by itself" in await chair.page.locator("#storage-notice").inner_text()

        await asyncio.to_thread(fill, inside, "filler2")
        await specialist.page.fill("#chat-text", "Written while the disk is full.")
        await specialist.page.press("#chat-text", "Enter")
        for tab in (chair, specialist):
            await tab.until(
                "document.getElementById('chat-list').textContent"
                ".includes('Written while the disk is full.')"
            )
            await tab.until(f"{notice}.textContent.includes('not being stored yet')")
        await no_axe_violations(chair, "storage notice")
        await screenshot(chair, "disk-full-chair")

        (inside / "filler").unlink()
        (inside / "filler2").unlink()
        for tab in (chair, specialist):
            await tab.until(f"!{notice}.textContent.includes('not being stored yet')", timeout_s=10)
            no_page_problems(tab)
    finally:
        await asyncio.to_thread(serve.stop)

"""PACS share benchmark: a CT series from a real Orthanc into a room, against a file upload.

Starts Orthanc with its DICOMweb plugin (tests/fixtures/orthanc.py) loaded with one CT series
(`--slices`, 512x512 16-bit by default, stored in a shuffled order), and a real `consilium serve`
process (development IdP, no media) with the default `max_images_per_room`: the series is ONE
stacked image. A chair and a radiologist join the room over WebSockets. It prints one JSON line:

- `first_slice_s`: from the radiologist's `POST .../pacs/shares` until BOTH participants have
  fetched the first slice shared (the series' first `image_shared` received, then its frame 0,
  watermarked for them, downloaded): the first slice visible to everyone. The aim is under 2 s.
- `all_slices_s`: until both have received `pacs_share_progress` `done` and the series' image
  with every slice.
- `node_peak_rss_mb`: the node process's peak resident memory while sharing (sampled every
  10 ms); `workers_peak_rss_mb` the image workers' (its child processes) together.
- `pacs_images`: images the share made in the room (1: one series, one image);
  `image_updates` and `progress_messages`: the `image_shared` and `pacs_share_progress`
  messages one participant received for it (paced: a few a second, not one per slice).
- `baseline_*`: the same series the way it was shared before a PACS link: the client retrieves
  the whole series from the PACS (WADO-RS, into memory) and uploads each file
  (`POST .../images`, one at a time, each its own image); first slice visible, all, and the
  node's peak RSS, measured in the same run on a second node started afterwards with the same
  settings but a `max_images_per_room` that lets one image per slice in.
- `series_mb`: the series' size as DICOM files; `slices`.

    python bench/pacs_share.py             # 200 slices of 512x512
    python bench/pacs_share.py --quick     # CI smoke: 10 slices of 128x128

It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from signaling.devidp import DevelopmentIdP  # noqa: E402
from tests.fixtures.orthanc import USER, OrthancServer, ct_series, start_orthanc  # noqa: E402
from tests.fixtures.servers import ServeProcess, start_serve  # noqa: E402


def rss_bytes(pid: int) -> int:
    """Resident memory of one process now (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def children(pid: int) -> list[int]:
    """The direct child processes of `pid` (the image workers of a node)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


async def workers_started(pid: int, workers: int = 2, timeout: float = 60.0) -> None:
    """Wait until the node's image workers are running and done loading (their memory has
    stopped growing for a second): a share is timed from a warm node, as in a meeting."""
    deadline = time.monotonic() + timeout
    last, steady_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        pids = children(pid)
        size = sum(rss_bytes(child) for child in pids)
        if size != last or len(pids) < workers:
            last, steady_since = size, time.monotonic()
        elif time.monotonic() - steady_since >= 1.0:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the image workers did not start")


class PeakMemory:
    """Samples a process's and its children's RSS every 10 ms in a thread; the peaks."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.node_peak = 0
        self.workers_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.node_peak = max(self.node_peak, rss_bytes(self.pid))
            workers = sum(rss_bytes(child) for child in children(self.pid))
            self.workers_peak = max(self.workers_peak, workers)
            self._stop.wait(0.01)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Participant:
    """One person in the room: a WebSocket and a bearer token."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str, room: str) -> None:
        self.session = session
        self.url = url
        self.room = room
        self.headers = {"Authorization": f"Bearer {token}"}
        self.token = token
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def join(self) -> None:
        self.ws = await self.session.ws_connect(self.url.replace("http", "ws", 1) + "/ws")
        await self.ws.send_json({"type": "join", "token": self.token, "room": self.room})
        while (await self.next())["type"] != "joined":
            pass

    async def next(self) -> dict[str, Any]:
        assert self.ws is not None
        message = await self.ws.receive(timeout=120)
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"the connection ended: {message.type.name}")
        return dict(json.loads(message.data))

    async def watch(self, slices: int, started: float) -> tuple[float, float]:
        """Seconds from `started` until this person saw the first uploaded slice (frame
        fetched) and until every slice was announced (one image each)."""
        first = 0.0
        announced = 0
        while announced < slices:
            message = await self.next()
            if message["type"] == "image_shared":
                announced += 1
                if announced == 1:
                    await self.fetch(message["image_id"])
                    first = time.monotonic() - started
        return first, time.monotonic() - started

    async def watch_series(self, slices: int, started: float) -> dict[str, Any]:
        """Seconds from `started` until this person saw the series' first slice (frame 0
        fetched) and until the share was `done` with every slice in the one image; the
        messages it took."""
        first = 0.0
        images: set[str] = set()
        frames = updates = progress = 0
        done = False
        while frames < slices or not done:
            message = await self.next()
            if message["type"] == "image_shared":
                updates += 1
                images.add(message["image_id"])
                frames = max(frames, message["frames"])
                if updates == 1:
                    await self.fetch(message["image_id"])
                    first = time.monotonic() - started
            elif message["type"] == "pacs_share_progress":
                progress += 1
                if message["state"] != "running":
                    if message["state"] != "done":
                        raise RuntimeError(f"the share failed: {message}")
                    done = True
        return {"first": first, "all": time.monotonic() - started, "images": len(images),
                "updates": updates, "progress": progress}  # fmt: skip

    async def fetch(self, image_id: str) -> None:
        async with self.session.get(
            f"{self.url}/api/rooms/{self.room}/images/{image_id}", headers=self.headers
        ) as response:
            await response.read()
            assert response.status == 200, response.status


async def meeting(
    session: aiohttp.ClientSession, node: ServeProcess, room: str
) -> tuple[Participant, Participant]:
    idp = DevelopmentIdP.load_or_create(node.data_dir)
    people = []
    for sub, role in (("dr-chair", "chair"), ("dr-rad", "radiologist")):
        token = idp.mint(sub=sub, role=role, depts=["radiology"], rooms=[room], name=sub)
        people.append(Participant(session, node.url, token, room))
    for person in people:
        await person.join()
    return people[0], people[1]


async def pacs_share(
    session: aiohttp.ClientSession, node: ServeProcess, pid: int, study: str, series: str,
    slices: int,
) -> dict[str, float]:  # fmt: skip
    chair, radiologist = await meeting(session, node, "mdt-pacs")
    async with session.post(
        f"{node.url}/api/rooms/mdt-pacs/pacs/search",
        json={"patient_id": "PAT-0001"},
        headers=radiologist.headers,
    ) as response:
        assert response.status == 200, await response.text()  # warms the image workers too
    await workers_started(pid)  # as they are by the time a radiologist has picked a series
    with PeakMemory(pid) as memory:
        started = time.monotonic()
        async with session.post(
            f"{node.url}/api/rooms/mdt-pacs/pacs/shares",
            json={"study_uid": study, "series_uid": series},
            headers=radiologist.headers,
        ) as response:
            assert response.status == 202, await response.text()
        seen = await asyncio.gather(
            chair.watch_series(slices, started), radiologist.watch_series(slices, started)
        )
    return {
        "first_slice_s": round(max(s["first"] for s in seen), 3),
        "all_slices_s": round(max(s["all"] for s in seen), 3),
        "node_peak_rss_mb": round(memory.node_peak / 2**20, 1),
        "workers_peak_rss_mb": round(memory.workers_peak / 2**20, 1),
        "pacs_images": max(s["images"] for s in seen),
        "image_updates": seen[0]["updates"],
        "progress_messages": seen[0]["progress"],
    }


async def upload_share(
    session: aiohttp.ClientSession, node: ServeProcess, pid: int, pacs: OrthancServer,
    study: str, series: str, slices: int,
) -> dict[str, float]:  # fmt: skip
    chair, radiologist = await meeting(session, node, "mdt-upload")
    with PeakMemory(pid) as memory:
        started = time.monotonic()
        watching = asyncio.gather(chair.watch(slices, started), radiologist.watch(slices, started))
        # Before a PACS link: the whole series fetched first, then uploaded file by file.
        files = await asyncio.to_thread(pacs.retrieve_series, study, series)
        for data in files:
            form = aiohttp.FormData()
            form.add_field("file", data, filename="slice.dcm", content_type="application/dicom")
            async with session.post(
                f"{node.url}/api/rooms/mdt-upload/images", data=form, headers=radiologist.headers
            ) as response:
                assert response.status == 201, await response.text()
        seen = await watching
    return {
        "baseline_first_slice_s": round(max(s[0] for s in seen), 3),
        "baseline_all_slices_s": round(max(s[1] for s in seen), 3),
        "baseline_node_peak_rss_mb": round(memory.node_peak / 2**20, 1),
    }


async def run(slices: int, size: int, folder: Path) -> dict[str, Any]:
    pacs = start_orthanc(folder / "orthanc")
    node: ServeProcess | None = None
    try:
        info, instances = ct_series(slices, size=size)
        shuffled = list(instances)  # a modality's sends arrive in any order: so does the PACS's
        random.Random(slices).shuffle(shuffled)
        series_bytes = sum(len(data) for data in shuffled)
        for data in shuffled:
            pacs.store_instance(data)
        del shuffled
        env = {
            "CONSILIUM_MEDIA": "false",
            "CONSILIUM_PACS_URL": pacs.dicomweb_url,
            "CONSILIUM_PACS_USERNAME": USER,
            "CONSILIUM_PACS_PASSWORD_FILE": str(pacs.password_file),
            "CONSILIUM_PACS_MAX_INSTANCES": str(max(slices, 300)),
        }
        result: dict[str, Any] = {"slices": slices, "series_mb": round(series_bytes / 2**20, 1)}
        async with aiohttp.ClientSession() as session:
            node = start_serve(folder / "node" / "data", env=env)  # max_images_per_room default
            result |= await pacs_share(session, node, node.proc.pid, info.study_uid,
                                       info.series_uid, slices)  # fmt: skip
            node.stop()
            # One image per uploaded file: the baseline needs the room bound raised.
            env["CONSILIUM_MAX_IMAGES_PER_ROOM"] = str(slices + 10)
            node = start_serve(folder / "baseline" / "data", env=env)
            result |= await upload_share(session, node, node.proc.pid, pacs, info.study_uid,
                                         info.series_uid, slices)  # fmt: skip
        return result
    finally:
        if node is not None:
            node.stop()
        pacs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each slice")
    parser.add_argument("--quick", action="store_true", help="10 slices of 128x128 (CI smoke)")
    args = parser.parse_args()
    slices, size = (10, 128) if args.quick else (args.slices, args.size)
    folder = Path(tempfile.mkdtemp(prefix="consilium-pacs-bench-"))
    try:
        result = asyncio.run(run(slices, size, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

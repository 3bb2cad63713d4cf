"""The archivist's page (web/archive.html, web/js/archive.js) in a real browser against a real
`consilium serve`.

Two meetings are recorded first, the way people make them: aiortc participants join over /ws,
publish the pre-encoded test pattern and tone, consent, and the chair records; in the tumour
board a CT slice is shared, an arrow is drawn on it and later deleted over the data channel, a
chat message is sent, and two cases are marked. Then an archivist opens `/archive#token=...`:
the token leaves the address bar; both recordings are listed and a department search narrows
them to one; selecting it shows the participants, consent records and cases; the video plays
from a blob: URL; the annotation board shows the arrow (in its author's colour) once the video
passes its time, loses it after the delete and shows it again when seeking back; the chat is
listed with its time; Verify says the recording is intact; Export downloads a WebM file and the
evidence bundle a ZIP. A specialist's token gets the "not allowed" screen. axe finds nothing.
Screenshots go to test-output/web/archive-*.png.
"""

from __future__ import annotations

import asyncio
import io
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image, ImageDraw

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    BrowserTab,
    OpenTab,
    no_axe_violations,
    no_page_problems,
    schedule_room,
    screenshot,
)
from tests.fixtures.media import Participant, join_over_ws, send, state
from tests.fixtures.servers import ServeProcess, eventually
from tests.test_i18n import _PageText

WEB = Path(__file__).resolve().parents[1] / "web"
RECORDING_ENV = {**ICE_ENV, "CONSILIUM_RECORDING_SEGMENT_SECONDS": "1"}
RELIABLE = "consilium-reliable"
ARROW_COLOUR = (0xFF, 0x88, 0x00)
ARROW = {"id": "arrow-1", "type": "arrow", "points": [[40, 40], [200, 150]],
         "color": "#ff8800", "text": "", "layer": "default"}  # fmt: skip
EBML_MAGIC = bytes.fromhex("1a45dfa3")


@dataclass
class RecordedMeeting:
    """A meeting recorded through the server."""

    recording_id: str
    room: str


def _ct_png() -> bytes:
    image = Image.new("L", (320, 240), 30)
    ImageDraw.Draw(image).ellipse((100, 60, 220, 180), fill=200)
    out = io.BytesIO()
    image.convert("RGB").save(out, "PNG")
    return out.getvalue()


async def _share_image(http: aiohttp.ClientSession, url: str, token: str, room: str) -> str:
    form = aiohttp.FormData()
    form.add_field("file", _ct_png(), filename="ct.png", content_type="image/png")
    async with http.post(
        f"{url}/api/rooms/{room}/images", data=form, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        body = await response.json()
        assert response.status in (200, 201), body
        return str(body["image_id"])


async def _record(
    serve: ServeProcess,
    idp: DevelopmentIdP,
    room: str,
    depts: tuple[str, str],
    annotate: bool,
) -> RecordedMeeting:
    """A chair and a specialist (of `depts`) consent and are recorded for a few seconds; with
    `annotate` an arrow is drawn at about 1.2 s and deleted at about 3.2 s, a chat message is
    sent at about 2 s, and case 2 is marked at about 2.5 s."""
    chair_token = idp.mint(sub=f"{room}-chair", role="chair", name="Dr Chen Wei",
                           depts=[depts[0]], rooms=[room])  # fmt: skip
    specialist_token = idp.mint(sub=f"{room}-spec", role="specialist", name="Dr Ana Silva",
                                depts=[depts[1]], rooms=[room])  # fmt: skip
    # Scheduled with both departments (a room opened ad hoc admits only the chair's).
    await asyncio.to_thread(schedule_room, serve.url, chair_token, room, lobby=False,
                            departments=depts)  # fmt: skip
    async with aiohttp.ClientSession() as http:
        chair = await join_over_ws(http, serve.url, chair_token, room)
        specialist = await join_over_ws(http, serve.url, specialist_token, room)
        people: list[Participant] = [chair, specialist]
        try:
            await eventually(lambda: min(p.client.stats.frames("video") for p in people) > 3, 20)
            image_id = await _share_image(http, serve.url, chair_token, room) if annotate else ""
            await chair.client.sync()
            await send(chair, "request_consent")
            await send(chair, "consent", decision="granted")
            await send(specialist, "consent", decision="granted")
            await eventually(lambda: set(state(chair).get("consent", {}).values()) == {"granted"})
            await send(chair, "start_recording")
            await eventually(lambda: state(chair).get("recording") is True)
            recording_id = str(state(chair)["recording_id"])
            await send(chair, "mark_case", label="first patient")
            if annotate:
                await asyncio.sleep(1.2)
                chair.client.send_json(RELIABLE, {
                    "type": "op", "client_id": "c:1", "image_id": image_id, "frame": 0,
                    "op": {"kind": "add", "shape": ARROW},
                })  # fmt: skip
                await asyncio.sleep(0.8)
                chair.client.send_json(RELIABLE, {"type": "chat", "client_id": "c:2",
                                                  "text": "note the margin"})  # fmt: skip
                await asyncio.sleep(0.5)
                await send(chair, "mark_case", label="second patient")
                await asyncio.sleep(0.7)
                chair.client.send_json(RELIABLE, {
                    "type": "op", "client_id": "c:3", "image_id": image_id, "frame": 0,
                    "op": {"kind": "delete", "shape_id": ARROW["id"]},
                })  # fmt: skip
                await asyncio.sleep(1.3)
            else:
                await asyncio.sleep(2.0)
            await send(chair, "stop_recording")
            await eventually(lambda: state(chair).get("recording") is False, 10)
            # The op and the chat were stamped (not refused) by the SFU.
            if annotate:
                stamped = [m for m in chair.client.received(RELIABLE) if m.get("type") == "event"]
                assert [m["kind"] for m in stamped] == ["op", "chat", "op"], stamped
        finally:
            for person in people:
                await person.close()
    return RecordedMeeting(recording_id, room)


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def _archive_state(tab: BrowserTab) -> dict[str, Any]:
    return dict(await tab.page.evaluate("window.consiliumArchive.state()"))


async def _until_loaded(tab: BrowserTab) -> None:
    """The player has the media and annotations of the part chosen (or says why not)."""
    try:
        await tab.until("window.consiliumArchive.state().player.status === 'ready'", 60)
    except AssertionError:
        page = await _archive_state(tab)
        raise AssertionError(f"{page['player']} {page['errors']} {tab.page_errors}") from None


async def _board_pixels(tab: BrowserTab, colour: tuple[int, int, int] | None = None) -> int:
    """How many pixels of the annotation board are in the arrow's colour (or `colour`)."""
    r, g, b = colour or ARROW_COLOUR
    return int(
        await tab.page.evaluate(
            f"""(() => {{
                const c = document.getElementById('annotation-board');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) {{
                    if (Math.abs(d[i] - {r}) < 30 &&
                        Math.abs(d[i + 1] - {g}) < 30 &&
                        Math.abs(d[i + 2] - {b}) < 30) n++;
                }}
                return n;
            }})()"""
        )
    )


async def _seek(tab: BrowserTab, seconds: float) -> None:
    await tab.page.evaluate(
        f"""(() => {{ const v = document.getElementById('archive-video');
            v.pause(); v.currentTime = {seconds}; }})()"""
    )
    await tab.until(
        "(() => { const v = document.getElementById('archive-video');"
        f" return !v.seeking && Math.abs(v.currentTime - {seconds}) < 0.05; }})()"
    )


def test_the_archive_page_has_no_hard_coded_text() -> None:
    """tests/test_i18n.py reads index.html; the archive's page is held to the same rule (its
    module, web/js/archive.js, is among the modules that test scans)."""
    parser = _PageText()
    parser.feed((WEB / "archive.html").read_text(encoding="utf-8"))
    assert parser.text == []
    assert parser.attributes == []


async def test_an_archivist_finds_plays_verifies_and_exports_a_recording(
    serve_process: Any, chromium: OpenTab, loopback_ice: None, tmp_path: Path
) -> None:
    serve = serve_process(env=RECORDING_ENV)
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    board = await _record(serve, idp, "tumour-board", ("oncology", "cardiology"), annotate=True)
    other = await _record(serve, idp, "skin-mdt", ("oncology", "dermatology"), annotate=False)
    # The archive is scoped like rooms: the archivist keeps these departments' records.
    archivist = idp.mint(sub="arch-1", role="archivist", name="Mo Records",
                         depts=["oncology", "cardiology", "dermatology"])  # fmt: skip
    specialist = idp.mint(sub="dr-ana", role="specialist", depts=["cardiology"])

    # The page is served with the same security headers as the meeting's.
    with urllib.request.urlopen(f"{serve.url}/archive", timeout=5) as response:
        headers = response.headers
        assert response.headers.get_content_type() == "text/html"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "media-src 'self' blob:" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
    assert _get(f"{serve.url}/api/recordings", specialist) == 403

    tab = await chromium(f"{serve.url}/archive#token={archivist}", viewport=(1280, 900))
    await tab.until("window.consiliumArchive.state().screen === 'archive'")
    assert "token" not in tab.page.url and tab.page.url.endswith("/archive")
    await tab.until("window.consiliumArchive.state().recordings.length === 2")
    rows = tab.page.locator("#results-body tr")
    assert {await r.get_attribute("data-recording-id") for r in await rows.all()} == {
        board.recording_id,
        other.recording_id,
    }
    assert await tab.page.locator("#search-status").inner_text() == "2 recording(s) found."
    await no_axe_violations(tab, "archive search")
    await screenshot(tab, "archive-list")

    # A search by department narrows the list to the cardiology meeting (keyboard: Enter).
    await tab.page.get_by_label("Department").fill("cardiology")
    await tab.page.get_by_label("Department").press("Enter")
    await tab.until("window.consiliumArchive.state().recordings.length === 1")
    assert (await _archive_state(tab))["recordings"][0]["recording_id"] == board.recording_id
    await tab.page.get_by_label("Department").fill("radiology")
    await tab.page.click("#search-button")
    await tab.until("window.consiliumArchive.state().recordings.length === 0")
    assert await tab.page.locator("#search-status").inner_text() == (
        "No recording matches the search."
    )
    await tab.page.get_by_label("Department").fill("cardiology")
    await tab.page.get_by_label("Case label").fill("second patient")
    await tab.page.click("#search-button")
    await tab.until("window.consiliumArchive.state().recordings.length === 1")

    # Selecting it (keyboard) shows who was there, their consent, the cases; the media loads.
    open_button = tab.page.locator(f"tr[data-recording-id='{board.recording_id}'] button")
    await open_button.focus()
    await tab.page.keyboard.press("Enter")
    await tab.until("window.consiliumArchive.state().detail !== null")
    participants = await tab.page.locator("#participant-list").inner_text()
    assert "Dr Chen Wei (Chair, oncology)" in participants
    assert "Dr Ana Silva (Specialist, cardiology)" in participants
    consent = tab.page.locator("#consent-body tr")
    assert await consent.count() == 2
    for row in await consent.all():
        assert await row.get_attribute("data-decision") == "granted"
        assert "Agreed" in await row.inner_text() and "In the app" in await row.inner_text()
    cases = await tab.page.locator("#case-list").inner_text()
    assert "Case 1: first patient" in cases and "Case 2: second patient" in cases
    assert await tab.page.locator("#recording-interrupted").is_hidden()
    assert await tab.page.locator("#detail-status").inner_text() == "Complete"

    await _until_loaded(tab)
    loaded = await _archive_state(tab)
    assert loaded["player"]["type"].startswith("video/webm") and loaded["player"]["bytes"] > 10_000
    assert [op["op"]["kind"] for op in loaded["ops"]] == ["add", "delete"]
    added_ms, deleted_ms = (op["offset_ms"] for op in loaded["ops"])
    assert 800 < added_ms < deleted_ms
    assert [m["text"] for m in loaded["chat"]] == ["note the margin"]
    assert "note the margin" in await tab.page.locator("#chat-list").inner_text()
    await tab.until("document.getElementById('archive-video').src.startsWith('blob:')")
    # Before the arrow's time the board is empty.
    assert loaded["shapes"] == [] and await _board_pixels(tab) == 0

    # It plays: time advances, frames decode; the arrow appears once its time has come.
    await tab.page.evaluate("document.getElementById('archive-video').play()")
    await tab.until("document.getElementById('archive-video').videoWidth > 0", 20)
    await tab.until(f"window.consiliumArchive.state().videoTime * 1000 > {added_ms + 100}", 20)
    await tab.until("window.consiliumArchive.state().shapes.length === 1")
    shown = (await _archive_state(tab))["shapes"][0]
    assert shown["id"] == ARROW["id"] and shown["color"] == "#ff8800"
    assert await _board_pixels(tab) > 50
    # The shapes are drawn on the shared image itself, stored with the recording.
    await tab.until("window.consiliumArchive.state().images.length === 1")
    caption = await tab.page.locator("#board-caption").inner_text()
    assert "frame 1" in caption and "not kept in the archive" not in caption
    assert await _board_pixels(tab, (200, 200, 200)) > 500, "the CT's bright disc is drawn"
    await tab.page.evaluate("document.getElementById('archive-video').pause()")
    await tab.page.locator(".archive-player").scroll_into_view_if_needed()
    await screenshot(tab, "archive-playing")

    # Past the delete the arrow is gone; seeking back brings it again (the state is recomputed).
    await _seek(tab, deleted_ms / 1000 + 0.3)
    await tab.until("window.consiliumArchive.state().shapes.length === 0")
    assert await _board_pixels(tab) == 0
    await _seek(tab, (added_ms + deleted_ms) / 2000)
    await tab.until("window.consiliumArchive.state().shapes.length === 1")
    assert await _board_pixels(tab) > 50
    chat_ms = loaded["chat"][0]["offset_ms"]
    if (added_ms + deleted_ms) / 2 >= chat_ms:
        assert await tab.page.locator("#chat-list li.said").count() == 1
    await screenshot(tab, "archive-seeked")
    await _seek(tab, added_ms / 1000 - 0.3)
    await tab.until("window.consiliumArchive.state().shapes.length === 0")
    assert await tab.page.locator("#chat-list li.said").count() == 0

    # Verify says it is intact, in words.
    await tab.page.click("#verify-button")
    await tab.until("window.consiliumArchive.state().action.status === 'ok'", 60)
    verified = await tab.page.locator("#action-status").inner_text()
    assert verified.startswith("Verified: the recording is intact"), (verified, tab.page_errors)
    assert (await _archive_state(tab))["verify"]["ok"] is True

    # Export: a WebM file downloads; the evidence bundle is a ZIP.
    async with tab.page.expect_download(timeout=60_000) as waiting:
        await tab.page.click("#export-button")
    download = await waiting.value
    assert download.suggested_filename == f"{board.recording_id}.webm"
    saved = tmp_path / "export.webm"
    await download.save_as(saved)
    assert saved.read_bytes()[:4] == EBML_MAGIC
    async with tab.page.expect_download(timeout=60_000) as waiting:
        await tab.page.click("#bundle-button")
    bundle = await waiting.value
    assert bundle.suggested_filename.endswith(".zip")
    await bundle.save_as(tmp_path / "bundle.zip")
    assert (tmp_path / "bundle.zip").read_bytes()[:4] == b"PK\x03\x04"
    downloads = (await _archive_state(tab))["downloads"]
    assert [(d["kind"], d["magic"]) for d in downloads] == [
        ("export", "1a45dfa3"),
        ("bundle", "504b0304"),
    ]
    await tab.until("document.getElementById('action-status').textContent.startsWith('Downloaded')")

    # Case 2 alone: its media and annotations start at the case marker.
    await tab.page.select_option("#case-select", "2")
    await tab.page.click("#load-button")
    # The load of case 2 has begun (its range is set as it starts; a small case may already be
    # 'ready' by the first look, so the passing 'loading' is not what to wait for).
    await tab.until("window.consiliumArchive.state().player.range === '2'")
    await _until_loaded(tab)
    case2 = await _archive_state(tab)
    assert case2["sidecar"]["export"]["case"] == {"number": 2, "label": "second patient"}
    assert case2["chat"] == []
    # The arrow was drawn in case 1 and still stood when case 2 began: it is on the board from
    # case 2's first frame, until its delete.
    added_in_case, deleted_in_case = (op["offset_ms"] for op in case2["ops"])
    assert added_in_case < 0 < deleted_in_case < deleted_ms
    await tab.until("window.consiliumArchive.state().shapes.length === 1")
    assert await _board_pixels(tab) > 50
    await no_axe_violations(tab, "archive recording")
    await tab.page.locator("#recording-heading").scroll_into_view_if_needed()
    await screenshot(tab, "archive-recording")

    # The page in Chinese.
    await tab.page.select_option("#language-select", "zh-CN")
    await tab.until("document.getElementById('archive-heading').textContent === '录像档案'")
    assert await tab.page.locator("#verify-button").inner_text() == "校验"
    await screenshot(tab, "archive-recording-zh-CN")
    no_page_problems(tab)
    assert (await _archive_state(tab))["errors"] == []

    # Someone who is not an archivist gets the "not allowed" screen, and nothing else.
    refused = await chromium(f"{serve.url}/archive#token={specialist}")
    await refused.until("window.consiliumArchive.state().screen === 'denied'")
    assert "token" not in refused.page.url
    heading = await refused.page.locator("#denied-heading").inner_text()
    assert heading == "You are not allowed to use the archive"
    assert await refused.page.locator("#screen-archive").is_hidden()
    await no_axe_violations(refused, "archive not allowed")
    await screenshot(refused, "archive-not-allowed")
    no_page_problems(refused)

    # No token at all: the link is incomplete.
    bare = await chromium(f"{serve.url}/archive")
    await bare.until("window.consiliumArchive.state().screen === 'denied'")
    assert await bare.page.locator("#denied-heading").inner_text() == "This link is incomplete"


async def test_an_archivist_picks_whose_video_to_watch_finds_by_name_and_holds(
    serve_process: Any, chromium: OpenTab, loopback_ice: None
) -> None:
    serve = serve_process(env=RECORDING_ENV)
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    board = await _record(serve, idp, "tumour-board", ("oncology", "cardiology"), annotate=False)
    archivist = idp.mint(sub="arch-1", role="archivist", name="Mo Records",
                         depts=["oncology", "cardiology"])  # fmt: skip
    tab = await chromium(f"{serve.url}/archive#token={archivist}", viewport=(1280, 900))
    await tab.until("window.consiliumArchive.state().recordings.length === 1")

    # A participant is found by a part of their display name, as well as by their subject.
    participant = tab.page.get_by_label("Participant (name or ID)")
    for query, found in (("chen wei", 1), ("Dr Nobody", 0), ("tumour-board-spec", 1)):
        await participant.fill(query)
        await participant.press("Enter")
        await tab.until(f"window.consiliumArchive.state().recordings.length === {found}")
    await tab.page.locator(f"tr[data-recording-id='{board.recording_id}'] button").click()
    await tab.until("window.consiliumArchive.state().detail !== null")
    detail = (await _archive_state(tab))["detail"]
    cameras = {
        t["participant_id"]: t["track_id"]
        for t in detail["tracks"]
        if t["kind"] == "video" and t["source"] == "camera"
    }
    assert len(cameras) == 2
    names = {p["participant_id"]: p["name"] for p in detail["participant_list"]}

    # By default every video is shown side by side; each plays, the others follow the first.
    await _until_loaded(tab)
    state = await _archive_state(tab)
    assert sorted(g["track_id"] for g in state["grid"]) == sorted(cameras.values())
    await tab.page.evaluate("document.getElementById('archive-video').play()")
    await tab.until(
        "window.consiliumArchive.state().grid.every(g => g.videoWidth > 0 && !g.paused)", 20
    )
    captions = await tab.page.locator("#video-grid figcaption").all_inner_texts()
    assert sorted(captions) == sorted(f"{name} – camera" for name in names.values())
    await _seek(tab, 1.0)
    await tab.until(
        "window.consiliumArchive.state().grid.every(g => g.paused && Math.abs(g.time - 1) < 0.3)"
    )
    await no_axe_violations(tab, "archive video grid")
    await tab.page.locator(".archive-player").scroll_into_view_if_needed()
    await screenshot(tab, "archive-grid")

    # The archivist picks one person's camera: only that video is shown.
    options = await tab.page.locator("#view-select option").all_inner_texts()
    assert options[0] == "Every video side by side" and len(options) == 3
    (specialist_id,) = [pid for pid, name in names.items() if name == "Dr Ana Silva"]
    await tab.page.get_by_label("Watch").select_option(label="Dr Ana Silva – camera")
    await tab.until(
        "(s => s.grid.length === 1 && s.videos[0]?.track_id === "
        f"'{cameras[specialist_id]}')(window.consiliumArchive.state())"
    )
    await _until_loaded(tab)
    state = await _archive_state(tab)
    assert [g["track_id"] for g in state["grid"]] == [cameras[specialist_id]]
    assert await tab.page.locator("#archive-video-caption").inner_text() == "Dr Ana Silva – camera"
    await tab.page.evaluate("document.getElementById('archive-video').play()")
    await tab.until("window.consiliumArchive.state().grid[0].videoWidth > 0", 20)

    # Legal hold: a reason is asked for; placed, it shows (and in the list); then released.
    hold_state = tab.page.locator("#hold-state")
    assert (await hold_state.inner_text()).startswith("No legal hold")
    await tab.page.click("#hold-button")
    await tab.until("document.getElementById('hold-status').textContent.includes('reason')")
    await tab.page.get_by_label("Reason (matter or complaint reference)").fill("Complaint C-17")
    await tab.page.click("#hold-button")
    await tab.until("window.consiliumArchive.state().detail.held === true")
    assert "Complaint C-17" in await hold_state.inner_text()
    assert "arch-1" in await hold_state.inner_text()
    assert await tab.page.locator("#detail-held").inner_text() == "Yes"
    row = tab.page.locator(f"tr[data-recording-id='{board.recording_id}'] td").last
    assert await row.inner_text() == "Yes"
    assert await tab.page.locator("#hold-status").inner_text() == "The legal hold is in place."
    await no_axe_violations(tab, "archive legal hold")
    await screenshot(tab, "archive-hold")
    await tab.page.click("#release-button")
    await tab.until("window.consiliumArchive.state().detail.held === false")
    assert (await hold_state.inner_text()).startswith("No legal hold")
    assert await tab.page.locator("#release-button").is_disabled()
    no_page_problems(tab)
    assert (await _archive_state(tab))["errors"] == []

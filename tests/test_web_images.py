"""Shared images, annotations and chat in real browsers (Debian's Chromium, real `consilium serve`).

The chair (Dr Chen) shares a PNG made here with Pillow; the specialist (Dr Silva) sees it. The
chair draws an arrow and a length measurement; the specialist sees both shapes, stamped with the
chair as author, zooms without moving the chair's view, and sees the chair's laser pointer. The
specialist writes in the chat; the chair sees the message, and the specialist sees the chair's
receipt go from delivered to read once the message is on the chair's screen; the chair answers
privately. The chair saves the annotated image as a PNG, then shares a DICOM CT slice, measures
on it in mm (choosing the tool by keyboard) and undoes a freehand stroke. A trainee who joins late
gets the images, the shapes and the room's chat from the snapshot, and no share button or drawing
tools. A DICOM declaring burned-in annotation is shared only once confirmed. Screenshots:
test-output/web/images-*.png.

The annotation model (stamped operations applied in sequence order) and the data-channel
messages protocol.js builds (against the SFU's own decoders) are checked without a meeting.
"""

from __future__ import annotations

import json
import typing
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file

from annotations.messages import ClientMessage, OpMessage, PointerMessage
from tests.fixtures.browser import (
    ICE_ENV,
    ROOM,
    SCREENSHOTS,
    BrowserTab,
    OpenTab,
    join_from_the_prejoin_screen,
    meet_through_the_lobby,
    no_axe_violations,
    no_page_problems,
    page_state,
    screenshot,
)
from tests.fixtures.servers import RunningNode
from tests.test_images_burnedin import SECRETS, readable, ultrasound

WIDTH, HEIGHT = 640, 480
CT_SMALL = str(get_testdata_file("CT_small.dcm"))
"""A 128×128 CT slice that pydicom ships, with a pixel spacing of 0.661468 mm."""


def _ct_like_png(path: Path) -> Path:
    """A grey 'slice' with a bright round 'lesion': something worth pointing at."""
    image = Image.new("L", (WIDTH, HEIGHT), 30)
    draw = ImageDraw.Draw(image)
    draw.ellipse((80, 60, 560, 420), fill=90)
    draw.ellipse((300, 180, 380, 260), fill=220)
    image.convert("RGB").save(path, "PNG")
    return path


def _images_api_answers(url: str, token: str) -> bool:
    """Whether this server has the shared-image API (issue 6's server part)."""
    request = urllib.request.Request(
        f"{url}/api/rooms/{ROOM}/images", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


async def _drag(tab: BrowserTab, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press at image pixel `start`, move to `end` in steps, release (the viewer's own zoom)."""
    view = await tab.page.evaluate(
        """(() => {
            const r = document.getElementById('image-canvas').getBoundingClientRect();
            const v = window.consilium.state().viewer;
            return { left: r.left + v.x, top: r.top + v.y, scale: v.scale };
        })()"""
    )

    def page_point(p: tuple[float, float]) -> tuple[float, float]:
        return view["left"] + p[0] * view["scale"], view["top"] + p[1] * view["scale"]

    mouse = tab.page.mouse
    await mouse.move(*page_point(start))
    await mouse.down()
    await mouse.move(*page_point(end), steps=8)
    await mouse.up()


def _shapes(state: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(state["annotations"]["shapes"], key=lambda s: s["seq"])


async def test_annotations_apply_in_sequence_order_whatever_came_first(
    dev_node: RunningNode, chromium: OpenTab
) -> None:
    """The client's model: a snapshot, then stamped events; replays and old events change
    nothing; a clear_own removes only its author's shapes on that frame."""
    tab = await chromium(f"{dev_node.url}/")
    await tab.until("document.getElementById('home-heading').textContent.length > 0")
    result = await tab.page.evaluate(
        """import('/js/annotate.js').then(async (a) => {
            const { state } = await import('/js/state.js');
            const shape = (id, author, x) => ({ id, type: 'line', points: [[x, 0], [x, 9]],
                text: '', color: '#ff0000', layer: 'default', image_id: 'img', frame: 0,
                author, seq: 1 });
            a.applySnapshot({ seq: 1, shapes: [shape('s1', 'p1', 1)], chat: [] });
            const event = (seq, author, op, frame = 0) => ({ type: 'event', seq, author,
                client_id: 'c' + seq, kind: 'op', image_id: 'img', frame, op,
                time: '2026-01-01T00:00:00Z' });
            a.applyEvent(event(1, 'p2', { kind: 'delete', shape_id: 's1' }));  // in the snapshot
            a.applyEvent(event(2, 'p2', { kind: 'add', shape: shape('s2', 'p2', 2) }));
            const moved = { kind: 'edit', shape_id: 's1', points: [[5, 5], [6, 6]] };
            a.applyEvent(event(3, 'p1', moved));
            a.applyEvent(event(4, 'p2', { kind: 'add', shape: shape('s3', 'p2', 3) }, 1));
            a.applyEvent(event(3, 'p1', { kind: 'delete', shape_id: 's1' }));  // a duplicate
            a.applyEvent(event(6, 'p2', { kind: 'clear_own' }));  // 5 was someone's private chat
            return { seq: state.annotations.seq,
                     shapes: [...state.annotations.shapes.values()].map(
                        (s) => [s.id, s.author, s.frame, s.seq, s.points]) };
        })"""
    )
    assert result == {
        "seq": 6,
        "shapes": [["s1", "p1", 0, 3, [[5, 5], [6, 6]]], ["s3", "p2", 1, 4, [[3, 0], [3, 9]]]],
    }
    no_page_problems(tab)


async def test_every_data_message_the_client_builds_is_valid_for_the_sfu(
    dev_node: RunningNode, chromium: OpenTab
) -> None:
    """protocol.js declares the data-channel messages; the SFU's own decoders accept each one
    as the client builds it (every shape type and operation, chat, receipt, sync, pointer)."""
    tab = await chromium(f"{dev_node.url}/")
    await tab.until("document.getElementById('home-heading').textContent.length > 0")
    built = await tab.page.evaluate(
        """import('/js/protocol.js').then((m) => {
            const shape = (type, points, text = '') => ({ id: 'a1b2c3', type, points, text,
                color: '#3dd56d', layer: 'default' });
            const two = [[1.5, 2], [30, 40.2]];
            const ops = [
                ...['arrow', 'line', 'ellipse', 'rectangle', 'measure'].map(
                    (type) => ({ kind: 'add', shape: shape(type, two) })),
                { kind: 'add', shape: shape('freehand', [[0, 0], [1, 1], [2, 4]]) },
                { kind: 'add', shape: shape('text', [[5, 5]], 'Portal vein') },
                { kind: 'edit', shape_id: 'a1b2c3', points: two },
                { kind: 'delete', shape_id: 'a1b2c3' },
                { kind: 'clear_own' },
            ];
            const op = (o) => m.dataMessage('op', { client_id: 'c1', image_id: 'img1',
                frame: 0, op: o });
            return {
                declared: Object.keys(m.DATA_MESSAGES),
                reliable: [...ops.map(op),
                    m.dataMessage('chat', { client_id: 'c2', text: 'Hello', to: [] }),
                    m.dataMessage('chat', { client_id: 'c3', text: 'Hi', to: ['p2'] }),
                    m.dataMessage('receipt', { seq: 4, state: 'delivered' }),
                    m.dataMessage('receipt', { seq: 4, state: 'read' }),
                    m.dataMessage('sync', { since: -1 })].map((x) => JSON.stringify(x)),
                lossy: JSON.stringify(m.dataMessage('pointer',
                    { image_id: 'img1', frame: 0, x: 10.5, y: 3 })),
            };
        })"""
    )
    reliable = msgspec.json.Decoder(ClientMessage)
    decoded = [reliable.decode(text) for text in built["reliable"]]  # raises if refused
    kinds = {type(m.op).__name__ for m in decoded if isinstance(m, OpMessage)}
    assert kinds == {"AddOp", "EditOp", "DeleteOp", "ClearOwnOp"}
    msgspec.json.decode(built["lossy"], type=PointerMessage)
    tags = {m.__struct_config__.tag for m in typing.get_args(ClientMessage)}
    assert set(built["declared"]) == tags | {"pointer"}
    no_page_problems(tab)


async def test_two_doctors_share_an_image_draw_on_it_and_chat_and_a_latecomer_catches_up(
    serve_process: Any, chromium: OpenTab, tmp_path: Path
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    chair_token = meeting.idp.mint(
        sub="dr-chen", role="chair", name="Dr Chen Wei", depts=["oncology"], rooms=[ROOM]
    )
    if not _images_api_answers(meeting.serve.url, chair_token):
        pytest.skip("server part not there yet")

    # Only roles with share_image see the share button; the chair shares a PNG.
    assert await chair.page.locator("#share-image-button").is_visible()
    await chair.page.set_input_files("#image-file", str(_ct_like_png(tmp_path / "slice.png")))
    for tab in (chair, specialist):
        await tab.until("window.consilium.state().images.length === 1")
        await tab.until("window.consilium.state().viewer?.scale > 0")  # the frame arrived
    image = (await page_state(chair))["images"][0]
    assert (image["kind"], image["width"], image["height"]) == ("png", WIDTH, HEIGHT)
    assert (await page_state(specialist))["images"][0]["image_id"] == image["image_id"]

    # The chair draws an arrow at the lesion and measures it.
    await chair.page.click("#annotation-tools [data-tool='arrow']")
    await _drag(chair, (200, 120), (310, 200))
    await chair.page.click("#annotation-tools [data-tool='measure']")
    await _drag(chair, (300, 220), (380, 220))
    # Reconciled: both shapes stamped, nothing of mine still pending.
    await chair.until(
        "(s => s.annotations.shapes.length === 2 && s.annotations.pending.length === 0)"
        "(window.consilium.state())"
    )
    await specialist.until("window.consilium.state().annotations.shapes.length === 2")
    seen = _shapes(await page_state(specialist))
    assert [s["type"] for s in seen] == ["arrow", "measure"]
    assert {s["author"] for s in seen} == {meeting.chair_id}
    assert {s["image_id"] for s in seen} == {image["image_id"]}
    for got, drawn in zip(seen[1]["points"], [(300, 220), (380, 220)], strict=True):
        assert got == pytest.approx(drawn, abs=1.5)  # image pixels, whatever the zoom
    assert seen[1]["length_mm"] is None  # a photo: no pixel spacing, so pixels, not mm
    assert _shapes(await page_state(chair)) == seen
    # The specialist zooms in without moving the chair's view.
    chair_view = (await page_state(chair))["viewer"]
    await specialist.page.click("#image-zoom-in")
    await specialist.until(f"window.consilium.state().viewer.scale > {chair_view['scale']}")
    assert (await page_state(chair))["viewer"] == chair_view
    # The chair's laser pointer shows at the specialist's end (never stored: not a shape).
    await chair.page.click("#annotation-tools [data-tool='pointer']")
    box = await chair.page.locator("#image-canvas").bounding_box()
    assert box is not None
    for step in range(10):
        await chair.page.mouse.move(box["x"] + box["width"] / 2 + step * 3, box["y"] + 100)
        await chair.page.wait_for_timeout(40)
    pointer = await specialist.until(f"window.consilium.state().pointers['{meeting.chair_id}']")
    assert pointer["image_id"] == image["image_id"]
    assert (await page_state(specialist))["annotations"]["shapes"] == seen

    # The specialist writes to the room; the chair reads it.
    await specialist.page.fill("#chat-text", "The lesion abuts the portal vein.")
    await specialist.page.press("#chat-text", "Enter")
    await chair.until("window.consilium.state().chat.length === 1")
    message = (await page_state(chair))["chat"][0]
    assert (message["author"], message["text"], message["to"]) == (
        meeting.specialist_id,
        "The lesion abuts the portal vein.",
        [],
    )
    # Delivered at once, read once the message is on the chair's screen.
    receipt = f"window.consilium.state().chat[0]?.receipts['{meeting.chair_id}']"
    assert await specialist.until(receipt) in ("delivered", "read")
    await chair.page.locator("#chat-list li").scroll_into_view_if_needed()
    await specialist.until(f"{receipt} === 'read'")
    await specialist.until(
        "document.querySelector('#chat-list li .chat-receipts').textContent === 'Dr Chen Wei: read'"
    )
    # The chair answers the specialist alone: a private message, with its own receipts.
    await chair.page.check(f"#chat-recipients input[value='{meeting.specialist_id}']")
    await chair.page.fill("#chat-text", "Consent for surgery is still pending.")
    await chair.page.click("#chat-send")
    await specialist.until("window.consilium.state().chat.length === 2")
    assert (await page_state(specialist))["chat"][1]["to"] == [meeting.specialist_id]
    await chair.until(f"window.consilium.state().chat[1]?.receipts['{meeting.specialist_id}']")
    await screenshot(chair, "images-chair")
    await screenshot(specialist, "images-specialist")
    await no_axe_violations(chair, "image viewer with drawing tools and chat")

    # Saved as a PNG: the server's watermarked frame with the shapes drawn over it.
    async with chair.page.expect_download() as download:
        await chair.page.click("#image-export")
    saved = SCREENSHOTS / "images-export.png"
    await (await download.value).save_as(saved)
    exported = Image.open(saved).convert("RGB")
    assert exported.size == (WIDTH, HEIGHT)
    colour = tuple(int(seen[0]["color"][i : i + 2], 16) for i in (1, 3, 5))
    (x0, y0), (x1, y1) = seen[0]["points"]
    xm, ym = int((x0 + x1) / 2), int((y0 + y1) / 2)
    around = {exported.getpixel((xm + dx, ym + dy)) for dx in range(-2, 3) for dy in range(-2, 3)}
    assert colour in around  # the arrow, drawn over the watermarked frame

    # A CT slice (DICOM, de-identified by the server) has a pixel spacing: lengths in mm. The
    # tools are reached by keyboard this time.
    await chair.page.set_input_files("#image-file", CT_SMALL)
    await chair.until("window.consilium.state().images.length === 2")
    ct = (await page_state(chair))["images"][1]
    assert ct["kind"] == "dicom" and ct["pixel_spacing_mm"] == pytest.approx([0.661468] * 2)
    await chair.until(f"window.consilium.state().viewer?.imageId === '{ct['image_id']}'")
    await chair.until("window.consilium.state().viewer.scale > 0")
    await chair.page.focus("#annotation-tools [aria-pressed='true']")
    for key in ("End", "Enter", "ArrowLeft", "Enter"):  # "Select", then "Measure" before it
        await chair.page.keyboard.press(key)
    assert await chair.page.get_attribute("[data-tool='measure']", "aria-pressed") == "true"
    await _drag(chair, (20, 64), (100, 64))
    await chair.until("window.consilium.state().annotations.shapes.length === 3")
    await chair.until("window.consilium.state().annotations.pending.length === 0")
    measured = _shapes(await page_state(chair))[2]
    assert measured["image_id"] == ct["image_id"]
    assert measured["length_mm"] == pytest.approx(80 * 0.661468, abs=1.0)
    # A freehand stroke, taken back with Ctrl+Z: undo deletes my own shape for everyone.
    await chair.page.click("#annotation-tools [data-tool='freehand']")
    await _drag(chair, (30, 30), (90, 40))
    await chair.until("window.consilium.state().annotations.shapes.length === 4")
    await chair.page.focus("#image-canvas")
    await chair.page.keyboard.press("Control+z")
    await chair.until(
        "(s => s.annotations.shapes.length === 3 && s.annotations.pending.length === 0)"
        "(window.consilium.state())"
    )
    assert [s["type"] for s in _shapes(await page_state(chair))] == ["arrow", "measure", "measure"]
    await screenshot(chair, "images-ct-measure")

    # A trainee joins late: images, shapes and the room's chat (not the private message) come
    # from the snapshot; no share button, no tools to draw.
    await specialist.close()
    trainee_token = meeting.idp.mint(
        sub="dr-wu", role="trainee", name="Dr Wu Lan", depts=["oncology"], rooms=[ROOM]
    )
    late = await chromium(f"{meeting.serve.url}/join/{ROOM}#token={trainee_token}")
    await join_from_the_prejoin_screen(late)
    admit = chair.page.locator("#lobby-list .chair-admit")
    await admit.wait_for(state="visible", timeout=10_000)
    await admit.click()
    await late.until("window.consilium.state().screen === 'room'")
    await late.until(
        "(s => s.annotations.synced && s.annotations.shapes.length === 3 && s.chat.length === 1"
        " && s.viewer?.scale > 0)(window.consilium.state())",
        timeout_s=20,
    )
    assert _shapes(await page_state(late)) == _shapes(await page_state(chair))
    assert not await late.page.locator("#share-image-button").is_visible()
    assert not await late.page.locator("#annotation-tools [data-tool='arrow']").is_visible()
    await late.page.locator("#chat-list li").scroll_into_view_if_needed()
    await screenshot(late, "images-latecomer")
    assert json.dumps((await page_state(late))["errors"]) == "[]"

    # A DICOM declaring burned-in annotation is shared only once the chair confirms.
    burned = pydicom.dcmread(CT_SMALL)
    burned.BurnedInAnnotation = "YES"
    burned.save_as(tmp_path / "burned.dcm")
    await chair.page.set_input_files("#image-file", str(tmp_path / "burned.dcm"))  # dismissed
    await chair.until(
        "document.getElementById('image-upload-status').textContent"
        " === 'Not shared: the image has burned-in text.'"
    )
    assert len((await page_state(chair))["images"]) == 2

    async def confirm(dialog: Any) -> None:
        await dialog.accept()

    chair.page.once("dialog", confirm)
    await chair.page.set_input_files("#image-file", str(tmp_path / "burned.dcm"))
    await late.until("window.consilium.state().images.length === 3")
    assert (await page_state(late))["images"][2]["burned_in_confirmed"] is True
    for tab in (chair, late):
        no_page_problems(tab)


async def test_a_held_image_is_covered_with_the_box_tool_and_then_shared(
    serve_process: Any, chromium: OpenTab, tmp_path: Path
) -> None:
    """An ultrasound whose kind usually carries patient details in its pixels is held for
    the uploader: the box tool opens, the chair drags a box over the text band and shares;
    the specialist then sees it, and what the server serves reads no patient detail."""
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist = meeting.chair, meeting.specialist
    (tmp_path / "us.dcm").write_bytes(ultrasound())  # no ImageType: deid's blacklist holds it
    await chair.page.set_input_files("#image-file", str(tmp_path / "us.dcm"))
    await chair.until("document.getElementById('redact-dialog').open", timeout_s=60)
    held = (await page_state(chair))["heldImages"]
    assert len(held) == 1 and held[0]["held"] is True
    assert (await page_state(specialist))["images"] == []
    await chair.until("document.getElementById('redact-canvas').width === 800")
    await screenshot(chair, "images-redact")

    # Drag over the top 90 rows (the name, the MRN and the institution) in frame pixels.
    rect = await chair.page.evaluate(
        "(() => { const r = document.getElementById('redact-canvas').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    left, top, width, height = rect
    scale_x, scale_y = width / 800, height / 600
    await chair.page.mouse.move(left + 1, top + 1)
    await chair.page.mouse.down()
    await chair.page.mouse.move(left + 400 * scale_x, top + 45 * scale_y, steps=5)
    await chair.page.mouse.move(left + width - 1, top + 90 * scale_y, steps=5)
    await chair.page.mouse.up()
    label = await chair.page.get_attribute("#redact-canvas", "aria-label")
    assert label is not None and "1 box" in label
    await chair.page.click("#redact-share")

    for tab in (chair, specialist):
        await tab.until("window.consilium.state().images.length === 1", timeout_s=20)
    assert (await page_state(chair))["heldImages"] == []
    assert not await chair.page.evaluate("document.getElementById('redact-dialog').open")
    image_id = (await page_state(specialist))["images"][0]["image_id"]
    request = urllib.request.Request(
        f"{meeting.serve.url}/api/rooms/{ROOM}/images/{image_id}",
        headers={"Authorization": f"Bearer {meeting.specialist_token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = readable(response.read())
    for secret in SECRETS:
        assert secret not in text
    for tab in (chair, specialist):
        no_page_problems(tab)

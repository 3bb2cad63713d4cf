"""Every way a visit can be refused or ended shows a screen in the person's words, not a close code.

Each screen is produced by the real server (`consilium serve`) doing what it does: an expired
token, a token for another room, a full room and a full server, a revocation through
`consilium revoke`, the chair's deny and lock, the same person opening the link in another
browser, too many messages, silence past the keepalive timeout. Each screen is saved in English
and in Chinese under test-output/web/refused-<kind>[-zh-CN].png.

A refusal the server can give before the join (an expired or revoked token, and each policy
refusal: no second factor, another room, another department, an archivist) is shown before the
camera check: the page asks `/api/rooms/{room}/admission` first and never opens a device.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Error as PlaywrightError

from signaling.devidp import DevelopmentIdP
from signaling.policy import Refusal
from signaling.protocol import JOIN_REFUSED
from tests.fixtures.browser import (
    ICE_ENV,
    ROOM,
    BrowserTab,
    OpenTab,
    join_from_the_prejoin_screen,
    no_page_problems,
    page_state,
    schedule_room,
    screenshot,
)
from tests.fixtures.servers import REPO, ServeProcess

CATALOGUES = {
    lang: json.loads((REPO / "web" / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    for lang in ("en", "zh-CN")
}


async def _shows_ending(
    tab: BrowserTab, kind: str, *, rejoin: bool, words: str | None = None
) -> None:
    """The page ended with `kind`: its heading and text (the catalogue's `words` key, by default
    `ended.<kind>`) in English, then in Chinese (saved)."""
    await tab.until(f"window.consilium.ending() === '{kind}'", timeout_s=15)
    await tab.until("!document.getElementById('screen-ended').hidden")
    key = words or f"ended.{kind}"
    for lang in ("en", "zh-CN"):
        if lang != "en":
            await tab.page.select_option("#language-select", lang)
            await tab.until(f"document.documentElement.lang === '{lang}'")
        catalogue = CATALOGUES[lang]
        heading = json.dumps(catalogue[f"{key}_heading"])
        await tab.until(f"document.getElementById('ended-heading').textContent === {heading}")
        assert await tab.page.locator("#ended-body").inner_text() == catalogue[key]
        assert await tab.page.locator("#rejoin-button").is_visible() == rejoin
        suffix = "" if lang == "en" else f"-{lang}"
        name = key.removeprefix("ended.").removeprefix("refusal_")
        await screenshot(tab, f"refused-{name}{suffix}")
    await tab.page.select_option("#language-select", "en")
    no_page_problems(tab)


# Counts the page's camera and microphone requests from the first script on (before main.js).
COUNT_DEVICE_REQUESTS = """
(() => {
  window.__deviceRequests = 0;
  if (typeof MediaDevices === "undefined") return;
  const original = MediaDevices.prototype.getUserMedia;
  MediaDevices.prototype.getUserMedia = function (constraints) {
    window.__deviceRequests += 1;
    return original.call(this, constraints);
  };
})();
"""


async def _open_counting_devices(chromium: OpenTab, link: str) -> BrowserTab:
    """A browser on `link` whose getUserMedia calls are counted in `window.__deviceRequests`."""
    tab = await chromium("about:blank")
    await tab.context.add_init_script(COUNT_DEVICE_REQUESTS)
    await tab.page.goto(link)
    return tab


async def _refused_before_any_device(tab: BrowserTab) -> None:
    """The page never showed the camera check and never asked for a device."""
    assert await tab.page.evaluate("window.__deviceRequests") == 0
    assert await tab.page.locator("#preview-video").evaluate("v => v.srcObject") is None


def _idp(serve: ServeProcess) -> DevelopmentIdP:
    return DevelopmentIdP.load_or_create(serve.data_dir)


def _chair_token(serve: ServeProcess, room: str = ROOM, sub: str = "dr-chen") -> str:
    return _idp(serve).mint(
        sub=sub, role="chair", name="Dr Chen Wei", depts=["oncology"], rooms=[room]
    )


def _specialist_token(serve: ServeProcess, **claims: Any) -> str:
    claims.setdefault("rooms", [ROOM])
    return _idp(serve).mint(
        sub="dr-ana", role="specialist", name="Dr Ana Silva", depts=["cardiology"], **claims
    )


async def _reopen(tab: BrowserTab, link: str) -> None:
    """Open a join link again (a new page: `goto` alone would only change the fragment)."""
    await tab.page.goto("about:blank")
    await tab.page.goto(link)


async def _in_the_room(chromium: OpenTab, serve: ServeProcess, token: str) -> BrowserTab:
    tab = await chromium(f"{serve.url}/join/{ROOM}#token={token}")
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().screen === 'room'")
    return tab


async def test_an_expired_link_says_it_no_longer_works_before_any_device(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    expired = _specialist_token(serve, ttl_s=-120)
    tab = await _open_counting_devices(chromium, f"{serve.url}/join/{ROOM}#token={expired}")
    await _shows_ending(tab, "expired", rejoin=False)
    await _refused_before_any_device(tab)


# Each policy refusal: who (role and claims, in the scheduled oncology/cardiology tumour board)
# and the words that say what to do.
POLICY_REFUSALS: dict[str, tuple[str, dict[str, Any], str]] = {
    "no second factor": ("chair", {"amr": ("pwd",)}, "ended.refusal_mfa_required"),
    "a link for another room": (
        "specialist",
        {"rooms": ["another-room"]},
        "ended.refusal_room_not_granted",
    ),
    "another department without a grant": (
        "specialist",
        {"depts": ["neurology"]},
        "ended.refusal_department_not_permitted",
    ),
    "an archivist opening a live room": ("archivist", {}, "ended.refusal_archivist"),
}


@pytest.mark.parametrize("case", list(POLICY_REFUSALS))
async def test_each_refusal_says_what_to_do_before_any_device_is_opened(
    serve_process: Any, chromium: OpenTab, case: str
) -> None:
    serve = serve_process(env=ICE_ENV)
    schedule_room(serve.url, _chair_token(serve))
    role, claims, words = POLICY_REFUSALS[case]
    claims = {"depts": ["cardiology"], "rooms": [ROOM], **claims}
    token = _idp(serve).mint(sub="u-refused", role=role, name="Refused Person", **claims)
    tab = await _open_counting_devices(chromium, f"{serve.url}/join/{ROOM}#token={token}")
    await _shows_ending(tab, "not_allowed", rejoin=False, words=words)
    await _refused_before_any_device(tab)
    assert (await page_state(tab))["ended"]["code"] == 4403

    link = tab.page.locator("#ended-link")
    if words != "ended.refusal_archivist":
        assert await link.is_hidden()
        return
    # The archivist is taken to the archive, signed in with the same token.
    assert await link.inner_text() == CATALOGUES["en"]["ended.open_archive"]
    await link.click()
    await tab.until("location.pathname === '/archive'")
    await tab.until("window.consiliumArchive?.state().screen === 'archive'")


async def test_a_refusal_at_the_join_itself_names_its_cause(
    serve_process: Any, chromium: OpenTab
) -> None:
    """The page passed the preflight, then the room's departments refused it (a grant withdrawn,
    a room opened meanwhile): the close's reason code gets the same words."""
    serve = serve_process(env=ICE_ENV)
    tab = await chromium(f"{serve.url}/")
    for reason, words in (
        ("not allowed to join this room: mfa_required", "ended.refusal_mfa_required"),
        ("not allowed to join this room: room_not_granted", "ended.refusal_room_not_granted"),
        ("not allowed to join this room: role_forbidden", None),
        ("not allowed to join this room: whatever_else", None),
        ("the room is locked", None),
    ):
        found = await tab.page.evaluate(
            """(reason) => import('/js/ended.js').then((m) =>
                m.refusalKey(m.refusalOf(4403, reason), 'specialist'))""",
            reason,
        )
        assert found == words, reason


async def test_the_client_knows_every_refusal_the_server_sends(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    tab = await chromium(f"{serve.url}/")
    declared = await tab.page.evaluate(
        "import('/js/protocol.js').then((m) => [m.JOIN_REFUSED, m.REFUSALS])"
    )
    assert declared == [JOIN_REFUSED, [refusal.value for refusal in Refusal]]


async def test_a_link_without_its_token_says_it_is_incomplete(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    tab = await chromium(f"{serve.url}/join/{ROOM}")
    await _shows_ending(tab, "no_token", rejoin=False)


async def test_a_full_room_and_a_full_server_say_so(serve_process: Any, chromium: OpenTab) -> None:
    serve = serve_process(
        env={
            **ICE_ENV,
            "CONSILIUM_MAX_PARTICIPANTS_PER_ROOM": "1",
            "CONSILIUM_MAX_ROOMS_PER_NODE": "1",
        }
    )
    # Somebody (a bare signalling client) takes the room's only place and the server's only room.
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{serve.url}/ws") as ws:
        await ws.send_json(
            {"type": "join", "token": _chair_token(serve, sub="dr-li"), "room": ROOM}
        )
        assert (await ws.receive_json(timeout=5))["type"] == "joined"

        tab = await chromium(f"{serve.url}/join/{ROOM}#token={_chair_token(serve)}")
        await join_from_the_prejoin_screen(tab)
        await _shows_ending(tab, "full", rejoin=True)

        other = "second-board"
        await tab.page.goto(f"{serve.url}/join/{other}#token={_chair_token(serve, other)}")
        await join_from_the_prejoin_screen(tab)
        await _shows_ending(tab, "busy", rejoin=True)


async def test_revoking_the_person_ends_the_visit_and_the_link(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    token = _chair_token(serve)
    tab = await _in_the_room(chromium, serve, token)

    admin = _idp(serve).mint(sub="it-security", role="admin", amr=("pwd", "hwk"))
    revoke = subprocess.run(
        [sys.executable, "-m", "consilium.cli", "revoke", "--server", serve.url,
         "--sub", "dr-chen", "--reason", "left the hospital", "--token", admin],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert revoke.returncode == 0, revoke.stderr
    # Closed with 4401 "revoked" while in the room...
    await _shows_ending(tab, "revoked", rejoin=False)
    assert (await page_state(tab))["ended"] == {"code": 4401, "reason": "revoked"}

    # ...and the same link is refused at the door from now on, before the camera check.
    await tab.context.add_init_script(COUNT_DEVICE_REQUESTS)
    await _reopen(tab, f"{serve.url}/join/{ROOM}#token={token}")
    await _shows_ending(tab, "revoked", rejoin=False)
    await _refused_before_any_device(tab)


async def test_the_chair_denies_from_the_lobby_then_a_knock_on_a_locked_room_is_refused(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    chair_token = _chair_token(serve)
    schedule_room(serve.url, chair_token, ROOM)
    chair = await _in_the_room(chromium, serve, chair_token)
    specialist_link = f"{serve.url}/join/{ROOM}#token={_specialist_token(serve)}"

    specialist = await chromium(specialist_link)
    await join_from_the_prejoin_screen(specialist)
    await specialist.until("window.consilium.state().lobbyReason === 'lobby_enabled'")
    deny = chair.page.locator("#lobby-list .chair-deny")
    await deny.wait_for(state="visible", timeout=10_000)
    assert await deny.inner_text() == "Deny Dr Ana Silva"
    await deny.click()
    await _shows_ending(specialist, "denied", rejoin=False)
    await chair.until("document.querySelectorAll('#lobby-list li').length === 0")
    assert await chair.page.locator("#lobby-empty").is_visible()

    lock = chair.page.locator("#lock-button")
    assert await lock.inner_text() == "Lock the room"
    await lock.click()
    await chair.until("window.consilium.state().room.locked === true")
    await chair.until("document.getElementById('lock-button').textContent === 'Unlock the room'")
    await chair.until(
        "document.getElementById('room-notice').textContent === 'The room is locked.'"
    )
    await _reopen(specialist, specialist_link)
    await join_from_the_prejoin_screen(specialist)
    await _shows_ending(specialist, "locked", rejoin=False)
    assert (await page_state(specialist))["ended"]["code"] == 4403

    # Unlocked, the same person can knock again.
    await lock.click()
    await chair.until("window.consilium.state().room.locked === false")
    await _reopen(specialist, specialist_link)
    await join_from_the_prejoin_screen(specialist)
    await specialist.until("window.consilium.state().lobbyReason === 'lobby_enabled'")
    await chair.page.locator("#lobby-list .chair-admit").wait_for(state="visible", timeout=10_000)
    no_page_problems(chair)


async def test_opening_the_link_in_another_browser_ends_the_first(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    token = _chair_token(serve)
    first = await _in_the_room(chromium, serve, token)
    second = await _in_the_room(chromium, serve, token)
    await _shows_ending(first, "elsewhere", rejoin=True)
    assert (await page_state(first))["ended"]["code"] == 4409
    assert (await page_state(second))["screen"] == "room"


async def test_too_many_messages_are_refused_in_words(
    serve_process: Any, chromium: OpenTab
) -> None:
    # A server that allows very few messages: joining, offering media and a few clicks go over.
    serve = serve_process(
        env={**ICE_ENV, "CONSILIUM_MESSAGES_PER_S": "0.2", "CONSILIUM_MESSAGE_BURST": "4"}
    )
    tab = await _in_the_room(chromium, serve, _chair_token(serve))
    for _ in range(6):  # each click tells the room my microphone state
        if (await page_state(tab))["screen"] != "room":
            break
        with contextlib.suppress(PlaywrightError):  # the room may close between look and click
            await tab.page.click("#mic-button", timeout=2_000)
    await _shows_ending(tab, "rate_limited", rejoin=True)
    assert (await page_state(tab))["ended"] == {"code": 4429, "reason": "too many messages"}


async def test_silence_past_the_keepalive_timeout_ends_and_rejoin_works(
    serve_process: Any, chromium: OpenTab
) -> None:
    # The page pings every 15 s; this server gives up after 3 s without a message.
    serve = serve_process(env={**ICE_ENV, "CONSILIUM_KEEPALIVE_TIMEOUT_S": "3"})
    tab = await _in_the_room(chromium, serve, _chair_token(serve))
    await _shows_ending(tab, "timeout", rejoin=True)
    assert (await page_state(tab))["ended"] == {"code": 4408, "reason": "keepalive missed"}
    await tab.page.click("#rejoin-button")
    await tab.until("window.consilium.state().received.joined === 2")


async def test_every_close_the_server_sends_has_words(
    serve_process: Any, chromium: OpenTab
) -> None:
    """The close codes and reasons of signaling/ (rooms.py, http/ws.py) each map to a screen."""
    closes = [
        (1000, "left", "left"),
        (1001, "", "error"),  # server shutting down: retried first, then this
        (4400, "bad message: ...", "error"),
        (4401, "token expired", "expired"),
        (4401, "bad signature", "expired"),
        (4401, "this token or identity has been revoked", "revoked"),
        (4401, "revoked", "revoked"),
        (4403, "not allowed to join this room: room_not_granted", "not_allowed"),
        (4403, "the room is locked", "locked"),
        (4403, "denied", "denied"),
        (4403, "removed", "removed"),
        (4403, "room closed", "closed"),
        (4404, "the room was closed while joining", "closed"),
        (4408, "keepalive missed", "timeout"),
        (4408, "no join in time", "timeout"),
        (4409, "replaced", "elsewhere"),
        (4411, "ended by the chair", "meeting_ended_by_chair"),
        (4411, "meeting ended", "meeting_ended"),
        (4429, "the room is full", "full"),
        (4429, "the lobby is full", "full"),
        (4429, "this server holds as many rooms as it may", "busy"),
        (4429, "too many messages", "rate_limited"),
        (4500, "server error, try again", "error"),
    ]
    serve = serve_process(env=ICE_ENV)
    tab = await chromium(f"{serve.url}/")
    kinds = await tab.page.evaluate(
        """(closes) => import('/js/ended.js').then((m) =>
            closes.map(([code, reason]) => m.endingKind(code, reason)))""",
        [[code, reason] for code, reason, _ in closes],
    )
    assert kinds == [kind for _, _, kind in closes]
    for kind in {kind for _, _, kind in closes}:
        for catalogue in CATALOGUES.values():
            assert catalogue[f"ended.{kind}_heading"] and catalogue[f"ended.{kind}"]

"""The web client in real Firefox ESR (Debian's `firefox-esr`, over WebDriver BiDi) meeting real
Chromium through a real `consilium serve`: Firefox joins from the pre-join screen with its fake
camera on, the two decode each other's video and hear each other, also through coturn with
relays only; Firefox's signalling connection drops and resumes; its chat reaches Chromium over
the data channel."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    MEDIA_TIMEOUT_S,
    ROOM,
    SCREENSHOTS,
    BrowserTab,
    OpenTab,
    decoding,
    join_from_the_prejoin_screen,
    no_page_problems,
    schedule_room,
    tile,
)
from tests.fixtures.firefox import BiDiError, FirefoxTab, OpenFirefox
from tests.fixtures.servers import ServeProcess, eventually
from tests.fixtures.turnserver import TURN_HOST, TurnServer
from tests.test_turn import relay_env, turn_url
from tests.test_web_speaker import VOICE


@dataclass
class MixedMeeting:
    """Dr Chen (chair) in Chromium and Dr Silva (specialist) in Firefox, in one room."""

    serve: ServeProcess
    chair: BrowserTab
    specialist: FirefoxTab
    chair_id: str
    specialist_id: str


async def evaluate(tab: BrowserTab | FirefoxTab, expression: str) -> Any:
    """A JavaScript expression's value in either browser's page."""
    if isinstance(tab, FirefoxTab):
        return await tab.evaluate(expression)
    return await tab.page.evaluate(expression)


async def received_from(tab: BrowserTab | FirefoxTab, sender: str) -> dict[str, dict[str, Any]]:
    """The page's inbound-rtp stats for `sender`'s camera and microphone, by kind."""
    stats = await evaluate(tab, "window.consilium.stats()")
    return {
        s["kind"]: s
        for s in stats["inbound"]
        if s["participantId"] == sender and s["source"] in ("camera", "microphone")
    }


async def diagnosis(meeting: MixedMeeting) -> str:
    """What both pages, Firefox and the server know, for a failure message."""
    lines = []
    for name, tab in (
        ("chair (Chromium)", meeting.chair),
        ("specialist (Firefox)", meeting.specialist),
    ):
        try:
            lines.append(
                f"--- {name}: state {json.dumps(await evaluate(tab, 'window.consilium.state()'))}"
            )
            lines.append(f"    stats {json.dumps(await evaluate(tab, 'window.consilium.stats()'))}")
        except Exception as exc:  # the page may be gone: say so, keep the rest
            lines.append(f"--- {name}: unreadable ({exc})")
        lines.extend(f"    console {m}" for m in tab.console)
        lines.extend(f"    page error {e}" for e in tab.page_errors)
    lines.append("--- firefox output (tail)")
    lines.append(meeting.specialist.output()[-3000:])
    lines.append("--- server log (tail)")
    lines.append(meeting.serve.output()[-4000:])
    return "\n".join(lines)


async def until_decoding_both_ways(meeting: MixedMeeting) -> None:
    """Each page decodes the other's video and receives their audio, and the decoded frame and
    sample counts keep rising (media flows now, not only once)."""
    pairs = ((meeting.chair, meeting.specialist_id), (meeting.specialist, meeting.chair_id))
    deadline = time.monotonic() + MEDIA_TIMEOUT_S
    before: list[dict[str, dict[str, Any]]] = []
    while time.monotonic() < deadline:
        now = [await received_from(tab, sender) for tab, sender in pairs]
        if (
            before
            and all(decoding(r) for r in now)
            and all(
                r["video"]["framesDecoded"] > b["video"]["framesDecoded"]
                and r["audio"]["totalSamplesReceived"] > b["audio"]["totalSamplesReceived"]
                for r, b in zip(now, before, strict=True)
            )
        ):
            return
        if all(decoding(r) for r in now):
            before = now
        await asyncio.sleep(1.0)
    raise AssertionError(f"no media both ways in time\n{await diagnosis(meeting)}")


async def meet_chromium_and_firefox(
    serve: ServeProcess,
    chromium: OpenTab,
    firefox: OpenFirefox,
    *,
    chromium_args: tuple[str, ...] = (),
    firefox_preload: str | None = None,
    decoding: bool = True,
    **firefox_options: Any,
) -> MixedMeeting:
    """Dr Chen opens the room in Chromium; Dr Silva joins from Firefox's pre-join screen with
    its camera on, knocks, and is admitted by the chair's click; both decode each other (not
    waited for with `decoding=False`). `firefox_preload`: a script run in Firefox's page
    before the client's own."""
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    chair_token = idp.mint(
        sub="dr-chen", role="chair", name="Dr Chen Wei", depts=["oncology"], rooms=[ROOM]
    )
    specialist_token = idp.mint(
        sub="dr-ana", role="specialist", name="Dr Ana Silva", depts=["cardiology"], rooms=[ROOM]
    )
    schedule_room(serve.url, chair_token, ROOM)
    chair = await chromium(f"{serve.url}/join/{ROOM}#token={chair_token}", extra_args=chromium_args)
    await join_from_the_prejoin_screen(chair)
    await chair.until("window.consilium.state().screen === 'room'")

    specialist = await firefox("about:blank", **firefox_options)
    if firefox_preload is not None:
        await specialist.add_preload_script(f"() => {{ {firefox_preload} }}")
    await specialist.goto(f"{serve.url}/join/{ROOM}#token={specialist_token}")
    await specialist.until("window.consilium.state().screen === 'join'")
    assert "token" not in await specialist.url()
    # The camera is on before the click, as people arrive.
    await specialist.until("document.getElementById('preview-video').videoWidth > 0")
    await specialist.click("#join-button")
    await specialist.until("window.consilium.state().lobbyReason === 'lobby_enabled'")
    admit = chair.page.locator("#lobby-list .chair-admit")
    await admit.wait_for(state="visible", timeout=10_000)
    assert "Dr Ana Silva" in await chair.page.locator("#lobby-list").inner_text()
    await admit.click()
    await specialist.until("window.consilium.state().screen === 'room'")
    meeting = MixedMeeting(
        serve,
        chair,
        specialist,
        str(await evaluate(chair, "window.consilium.state().participantId")),
        str(await evaluate(specialist, "window.consilium.state().participantId")),
    )
    if decoding:
        await until_decoding_both_ways(meeting)
    return meeting


async def test_firefox_and_chromium_decode_each_other_through_the_sfu(
    serve_process: Any, chromium: OpenTab, firefox: OpenFirefox
) -> None:
    meeting = await meet_chromium_and_firefox(serve_process(env=ICE_ENV), chromium, firefox)
    # Firefox's camera (the fake one: a coloured frame) arrives at the size it was captured.
    video = (await received_from(meeting.chair, meeting.specialist_id))["video"]
    assert video["frameWidth"] > 0
    for tab in (meeting.chair, meeting.specialist):
        connection = await evaluate(tab, "window.consilium.state().connection")
        assert (connection["publish"], connection["subscribe"]) == ("connected", "connected")
    # What the room looks like in Firefox (look at it: test-output/web/firefox-room.png).
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await meeting.specialist.screenshot(SCREENSHOTS / "firefox-room.png")
    assert meeting.specialist.page_errors == []
    no_page_problems(meeting.chair)


# How each browser names the way its relay candidate reaches the TURN server, by URL transport.
RELAYED = {"udp": "udp", "tcp": "tcp", "tls": "tls"}


@pytest.mark.parametrize("transport", sorted(RELAYED))
async def test_firefox_meets_chromium_through_turn_only(
    transport: str,
    turnserver: TurnServer,
    serve_process: Any,
    chromium: OpenTab,
    firefox: OpenFirefox,
) -> None:
    """A hospital network that lets no direct media through: both browsers may use relays only
    (`iceTransportPolicy: "relay"` from `joined`), over TURN/UDP or TURN/TCP."""
    url = turn_url(turnserver, transport)
    if transport == "tls":
        # Firefox refuses a `turns:` URL naming an IP address ("TLS requires FQDN"): it checks
        # the certificate against a host name, here the one the fixture's certificate names.
        url = url.replace(f"turns:{TURN_HOST}:", "turns:localhost:")
    serve = serve_process(env=relay_env(url, turnserver.secret))
    meeting = await meet_chromium_and_firefox(
        serve,
        chromium,
        firefox,
        chromium_args=turnserver.chromium_trusts_it,
        accept_insecure_certs=True,
    )
    relayed = {"candidateType": "relay", "relayProtocol": RELAYED[transport]}
    for name, tab in (("chair", meeting.chair), ("specialist", meeting.specialist)):
        paths = (await evaluate(tab, "window.consilium.stats()"))["paths"]
        assert paths == {"publish": relayed, "subscribe": relayed}, (
            f"{name}: {paths}\n{await diagnosis(meeting)}"
        )
    # coturn did the relaying, for Firefox's allocations too (the node's REST credentials).
    log = turnserver.output()
    assert ":dr-ana>" in log and ":dr-chen>" in log
    assert "ALLOCATE processed, success" in log


async def test_firefox_resumes_a_dropped_connection_as_the_same_participant(
    serve_process: Any, chromium: OpenTab, firefox: OpenFirefox
) -> None:
    meeting = await meet_chromium_and_firefox(serve_process(env=ICE_ENV), chromium, firefox)
    specialist, chair = meeting.specialist, meeting.chair
    # The socket goes away under the page, as on a network switch (no `leave`).
    await specialist.evaluate("window.consilium.dropConnection()")
    await specialist.until("window.consilium.state().resumes === 1", timeout_s=15)
    state = await specialist.evaluate("window.consilium.state()")
    assert state["participantId"] == meeting.specialist_id
    assert state["received"].get("joined") == 1, "joined again instead of resuming"
    assert state["received"].get("lobby") == 1, "waited in the lobby a second time"
    await chair.until(
        "(window.consilium.state().received.participant_reconnecting ?? 0) >= 2", timeout_s=10
    )
    chair_state = await evaluate(chair, "window.consilium.state()")
    assert chair_state["received"].get("participant_left", 0) == 0
    assert chair_state["reconnecting"] == []
    # The same media sessions still carry media both ways, and the room still reaches Firefox.
    await until_decoding_both_ways(meeting)
    pid = meeting.specialist_id
    await chair.page.click(f"#participant-list li[data-participant-id='{pid}'] .chair-mute")
    await specialist.until("window.consilium.state().media.audioMuted === true", timeout_s=10)
    assert specialist.page_errors == []


async def test_chat_typed_in_firefox_reaches_chromium_over_the_data_channel(
    serve_process: Any, chromium: OpenTab, firefox: OpenFirefox
) -> None:
    meeting = await meet_chromium_and_firefox(serve_process(env=ICE_ENV), chromium, firefox)
    specialist, chair = meeting.specialist, meeting.chair
    await specialist.type("#chat-text", "Echo shows EF 35%")
    await specialist.type("#chat-text", "Enter")
    said = json.dumps("Echo shows EF 35%")
    await chair.until(f"window.consilium.state().chat.some((m) => m.text === {said})", 15)
    # And back: Chromium's answer reaches Firefox.
    await chair.page.fill("#chat-text", "Agreed: refer to cardiology")
    await chair.page.press("#chat-text", "Enter")
    answer = json.dumps("Agreed: refer to cardiology")
    await specialist.until(f"window.consilium.state().chat.some((m) => m.text === {answer})", 15)
    assert specialist.page_errors == []


async def test_the_sfu_hears_firefox_speak_and_makes_it_the_rooms_speaker(
    serve_process: Any, chromium: OpenTab, firefox: OpenFirefox
) -> None:
    """The SFU reads who speaks from Firefox's audio level header extension, as from
    Chromium's: Firefox talks (a voice, not the fake microphone's steady tone, which is no
    speech), the chair is muted, and both pages show Firefox's person as the speaker."""
    # Only where there are media devices: the preload runs in the first about:blank too.
    voice = f"if (navigator.mediaDevices) {VOICE}"
    meeting = await meet_chromium_and_firefox(
        serve_process(env=ICE_ENV), chromium, firefox, firefox_preload=voice
    )
    chair, specialist = meeting.chair, meeting.specialist
    await chair.page.click("#mic-button")
    await chair.until("window.consilium.state().media.audioMuted === true")
    speaker = f"window.consilium.state().activeSpeaker === '{meeting.specialist_id}'"
    try:
        await chair.until(speaker, 15)
        await specialist.until(speaker, 15)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnosis(meeting)}") from None
    await chair.until(
        f'document.querySelector("{tile(meeting.specialist_id)}").dataset.activeSpeaker === "true"'
    )
    assert specialist.page_errors == []


async def test_firefox_turns_its_camera_off_and_on_and_chromium_sees_it_again(
    serve_process: Any, chromium: OpenTab, firefox: OpenFirefox
) -> None:
    """Off is the stopped capture (a placeholder for the others), on is a new capture sent in
    its place (`replaceTrack`, no renegotiation): Chromium decodes Firefox's camera again."""
    meeting = await meet_chromium_and_firefox(serve_process(env=ICE_ENV), chromium, firefox)
    chair, specialist = meeting.chair, meeting.specialist
    theirs = tile(meeting.specialist_id)
    answers = (await specialist.evaluate("window.consilium.state()"))["received"]["answer"]
    await specialist.click("#camera-button")
    await specialist.until(
        "document.getElementById('camera-button').textContent === 'Turn camera on'"
    )
    await chair.until(f"document.querySelector(\"{theirs}\").classList.contains('no-picture')")
    before = (await received_from(chair, meeting.specialist_id))["video"]["framesDecoded"]
    await specialist.click("#camera-button")
    await chair.until(f"!document.querySelector(\"{theirs}\").classList.contains('no-picture')", 15)
    try:
        await chair.until(
            "window.consilium.stats().then((s) => s.inbound.some((i) =>"
            f" i.participantId === '{meeting.specialist_id}' && i.kind === 'video'"
            f" && i.framesDecoded > {before} + 10))",
            15,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnosis(meeting)}") from None
    state = await specialist.evaluate("window.consilium.state()")
    assert state["received"]["answer"] == answers, "renegotiated instead of replacing the track"
    assert state["errors"] == [] and specialist.page_errors == []


async def test_the_firefox_fixture_reports_what_goes_wrong_in_the_page(
    firefox: OpenFirefox,
) -> None:
    """The checks above can fail: an uncaught exception and a console error in Firefox's page
    reach the tab, and a script that throws fails the test with its message."""
    tab = await firefox("about:blank")
    await tab.evaluate("setTimeout(() => { throw new Error('tile without a track') }, 0)")
    await tab.evaluate("console.error('stats: no inbound-rtp')")
    await eventually(lambda: tab.page_errors and tab.console, timeout=10)
    assert any("tile without a track" in e for e in tab.page_errors), tab.page_errors
    assert tab.console == ["error: stats: no inbound-rtp"]
    with pytest.raises(BiDiError, match="consilium is undefined"):
        await tab.evaluate("window.consilium.state()")

"""Recording with consent in real browsers (web/js/recording.js) against a real `consilium serve`.

The chair asks for consent; every page shows the recording notice as a modal dialog (keyboard
operable, focus kept inside and given back); each person agrees or declines, and can change their
answer later from the recording bar; the chair cannot start while anyone has not answered (the
button is disabled, and the server's refusal is shown in words); once started, every page shows
the indicator and who is not recorded; the chair marks a case and stops. The recording on disk
holds every answer, how it was given, and the case. The chair may record a spoken answer for
someone, and the notice is in Chinese for a Chinese browser. Screenshots go to
test-output/web/recording-*.png.
"""

from __future__ import annotations

import asyncio
from typing import Any

from recorder.manifest import read_manifest
from tests.fixtures.browser import (
    ICE_ENV,
    BrowserTab,
    OpenTab,
    admit_another,
    meet_through_the_lobby,
    no_axe_violations,
    no_page_problems,
    page_state,
    recording_id_of,
    screenshot,
    tile,
)

RECORDING_ENV = {**ICE_ENV, "CONSILIUM_RECORDING_SEGMENT_SECONDS": "1"}
"""Short segments: a few seconds of meeting make a recording with segments in every stream."""
NOTICE_VERSION = "2026-12"
"""The server's default notice version (settings.recording_notice_version)."""
RECORDED_S = 2.5
"""How long the meeting is recorded between steps (media reaches the recorder meanwhile)."""


async def text(tab: BrowserTab, selector: str) -> str:
    return str(await tab.page.evaluate(f"document.querySelector({selector!r}).textContent"))


async def until_text(tab: BrowserTab, selector: str, expected: str) -> None:
    """The element's text becomes `expected` (a clear message when it does not)."""
    try:
        await tab.until(f"document.querySelector({selector!r})?.textContent === {expected!r}")
    except AssertionError:
        raise AssertionError(f"{selector}: {await text(tab, selector)!r} != {expected!r}") from None


async def until_notice(tab: BrowserTab, is_open: bool) -> None:
    await tab.until(f"document.getElementById('consent-dialog').open === {str(is_open).lower()}")


async def focused(tab: BrowserTab) -> str:
    return str(await tab.page.evaluate("document.activeElement?.id ?? ''"))


async def has_no_recording_controls(tab: BrowserTab) -> bool:
    """No chair recording control is visible (nor reachable: the panel is hidden)."""
    panel = await tab.page.locator("#recording-panel").is_visible()
    return (
        not panel
        and await tab.page.locator("#recording-panel :is(button, input):visible").count() == 0
    )


async def test_the_chair_records_with_everyones_answer_and_every_page_shows_it(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=RECORDING_ENV)
    meeting = await meet_through_the_lobby(serve, chromium)
    chair, specialist = meeting.chair, meeting.specialist
    nurse, nurse_id = await admit_another(
        meeting, chromium, sub="nurse-li", role="nurse", name="Nurse Li Na"
    )
    everyone = (chair, specialist, nurse)

    # Only the chair (start_recording, stop_recording) has the recording controls.
    assert await chair.page.locator("#recording-panel").is_visible()
    for tab in (specialist, nurse):
        assert await has_no_recording_controls(tab)
    for tab in everyone:
        assert not await tab.page.locator("#recording-bar").is_visible()
    start = chair.page.locator("#start-recording-button")
    assert await start.is_disabled()
    await until_text(chair, "#start-reason", "Ask everyone for consent before you start recording.")

    # The chair asks: every page shows the notice, a modal dialog with its version.
    before = await focused(specialist)
    await chair.page.click("#request-consent-button")
    for tab in everyone:
        await until_notice(tab, True)
    dialog = specialist.page.get_by_role("dialog", name="This meeting may be recorded")
    assert await dialog.is_visible()
    assert "Only the audio and video of people who agree" in await dialog.inner_text()
    await until_text(specialist, "#consent-version", f"Notice version {NOTICE_VERSION}")
    await until_text(specialist, "#consent-current", "You have not answered yet.")
    # The heading has the focus, not an answer: the notice is read before any choice.
    assert await focused(specialist) == "consent-dialog-heading"
    await no_axe_violations(specialist, "recording notice")
    await screenshot(specialist, "recording-dialog")

    # Escape closes it unanswered and gives the focus back; the bar says I am not recorded.
    await specialist.page.keyboard.press("Escape")
    await until_notice(specialist, False)
    assert await focused(specialist) == before
    await until_text(
        specialist,
        "#recording-my-status",
        "The chair has asked to record this meeting. You will not be recorded until you agree.",
    )
    # ...and reopens from the bar; Tab stays inside the dialog; Enter on "I agree" answers.
    await until_text(specialist, "#recording-answer", "Answer the recording notice")
    await specialist.page.focus("#recording-answer")
    await specialist.page.keyboard.press("Enter")
    await until_notice(specialist, True)
    assert await focused(specialist) == "consent-dialog-heading"
    for key, expected in (
        ("Tab", "consent-agree"),
        ("Tab", "consent-decline"),
        ("Tab", "consent-agree"),  # wraps round: the page behind is out of reach
        ("Shift+Tab", "consent-decline"),
        ("Tab", "consent-agree"),
    ):
        await specialist.page.keyboard.press(key)
        assert await focused(specialist) == expected, key
    await specialist.page.keyboard.press("Enter")
    await until_notice(specialist, False)
    assert await focused(specialist) == "recording-answer"
    await until_text(
        specialist,
        "#recording-my-status",
        "The chair has asked to record this meeting. You agreed.",
    )
    await until_text(specialist, "#recording-answer", "Change my answer")

    await chair.page.click("#consent-agree")
    await until_notice(chair, False)

    # The nurse has not answered: the chair sees who, the start button stays disabled.
    row = f"#consent-list li[data-participant-id='{nurse_id}']"
    await chair.until(f"document.querySelector(\"{row}\")?.dataset.consent === 'pending'")
    for pid in (meeting.chair_id, meeting.specialist_id):
        await chair.until(
            f"document.querySelector(\"#consent-list li[data-participant-id='{pid}']\")"
            "?.dataset.consent === 'granted'"
        )
    assert "Nurse Li Na · not answered yet" in await text(chair, row)
    assert await chair.page.locator(f"{row} .verbal-granted").is_visible()
    assert await start.is_disabled()
    await until_text(
        chair,
        "#start-reason",
        "Recording can start once everyone has answered. Waiting for: Nurse Li Na.",
    )
    # Were the button pressed anyway (a stale page), the server's refusal is shown in words.
    await chair.page.evaluate(
        "(() => { const b = document.getElementById('start-recording-button');"
        " b.disabled = false; b.click(); })()"
    )
    await until_text(
        chair,
        "#recording-error",
        "Recording did not start: not everyone has answered the recording notice yet.",
    )
    await chair.until("document.getElementById('start-recording-button').disabled")
    await chair.page.locator("#recording-error").scroll_into_view_if_needed()
    await screenshot(chair, "recording-chair-waiting")

    # The nurse declines: everyone's page marks her tile; the chair may start.
    await nurse.page.click("#consent-decline")
    await until_notice(nurse, False)
    for tab in everyone:
        await until_text(tab, f"{tile(nurse_id)} .tile-recording", "Not recorded (declined)")
        assert not await tab.page.locator(
            f"{tile(meeting.specialist_id)} .tile-recording"
        ).is_visible()
    await chair.until("!document.getElementById('start-recording-button').disabled")
    await until_text(
        chair,
        "#start-reason",
        "Everyone has answered: recording can start. Not recorded, as they declined: Nurse Li Na.",
    )

    # Recording: every page shows the indicator, says so to screen readers, and my own status.
    await start.click()
    for tab in everyone:
        await tab.until("!document.getElementById('recording-indicator').hidden")
        assert await tab.page.locator("#recording-indicator").inner_text() == "Recording"
        await until_text(tab, "#recording-announce", "Recording has started.")
    await until_text(chair, "#recording-error", "")
    await until_text(specialist, "#recording-my-status", "You are being recorded.")
    await until_text(nurse, "#recording-my-status", "You are not being recorded: you declined.")
    assert await has_no_recording_controls(specialist)
    recording_id = await recording_id_of(chair)
    assert recording_id.startswith("rec-tumour-board-")
    await asyncio.sleep(RECORDED_S)
    await no_axe_violations(specialist, "room while recording")
    await no_axe_violations(chair, "chair while recording")
    await screenshot(specialist, "recording-specialist")
    await screenshot(nurse, "recording-nurse-declined")

    # The chair marks the first case; the marked cases are listed.
    await chair.page.fill("#case-label", "Case 1")
    await chair.page.click("#case-button")
    await until_text(chair, "#case-list", "Case 1")
    for tab in everyone:
        await tab.until("window.consilium.state().recording.cases.join() === 'Case 1'")
    await screenshot(chair, "recording-chair")

    # The nurse changes her mind from the bar: recorded from now on, her mark goes.
    await until_text(nurse, "#recording-answer", "Change my answer")
    await nurse.page.click("#recording-answer")
    await until_notice(nurse, True)
    await until_text(
        nurse, "#consent-current", "Your answer now: you did not agree to be recorded."
    )
    await nurse.page.click("#consent-agree")
    await until_text(nurse, "#recording-my-status", "You are being recorded.")
    await chair.until(f'document.querySelector("{tile(nurse_id)} .tile-recording").hidden')
    await asyncio.sleep(RECORDED_S)

    # The chair stops: the indicator goes from every page.
    await chair.page.click("#stop-recording-button")
    for tab in everyone:
        await tab.until("document.getElementById('recording-indicator').hidden")
        await until_text(tab, "#recording-announce", "Recording has stopped.")
    await screenshot(specialist, "recording-stopped")

    # On disk: the signed manifest holds each answer, how and when it was given, and the case.
    manifest = read_manifest(serve.data_dir / "recordings" / recording_id)[0]
    assert manifest.status == "complete"
    answers = {(c.participant_id, c.decision, c.method, c.notice_version) for c in manifest.consent}
    assert (meeting.chair_id, "granted", "client", NOTICE_VERSION) in answers
    assert (meeting.specialist_id, "granted", "client", NOTICE_VERSION) in answers
    nurse_answers = [
        (c.decision, c.method) for c in manifest.consent if c.participant_id == nurse_id
    ]
    assert nurse_answers == [("declined", "client"), ("granted", "client")]
    assert [c.label for c in manifest.cases] == ["Case 1"]
    assert {p.participant_id for p in manifest.participants} == {
        meeting.chair_id,
        meeting.specialist_id,
        nurse_id,
    }
    recorded = {track.participant_id for track in manifest.tracks}
    assert {meeting.chair_id, meeting.specialist_id} <= recorded
    for tab in everyone:
        no_page_problems(tab)
        assert (await page_state(tab))["errors"] == []


async def test_the_chair_records_a_spoken_answer_and_the_notice_is_in_chinese(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=RECORDING_ENV)
    meeting = await meet_through_the_lobby(serve, chromium, locale="zh-CN")
    chair, specialist = meeting.chair, meeting.specialist
    assert await has_no_recording_controls(specialist)

    await chair.page.click("#request-consent-button")
    for tab in (chair, specialist):
        await until_notice(tab, True)
    dialog = specialist.page.get_by_role("dialog", name="本次会议可能会被录制")
    assert await dialog.is_visible()
    assert await specialist.page.locator("#consent-agree").inner_text() == "我同意"
    assert await specialist.page.locator("#consent-decline").inner_text() == "我不同意"
    await no_axe_violations(specialist, "recording notice (zh-CN)")
    await screenshot(specialist, "recording-dialog-zh-CN")
    await chair.page.click("#consent-agree")

    # The specialist answers aloud; the chair records it; the specialist's notice closes.
    row = f"#consent-list li[data-participant-id='{meeting.specialist_id}']"
    verbal = chair.page.locator(f"{row} .verbal-granted")
    await verbal.wait_for(state="visible", timeout=10_000)
    assert await verbal.inner_text() == "Dr Ana Silva 口头同意"
    await verbal.click()
    await until_notice(specialist, False)
    await until_text(specialist, "#recording-my-status", "主持人请求录制本次会议。您已同意。")
    await chair.until(f"document.querySelector(\"{row}\")?.dataset.consent === 'granted'")
    await chair.until("!document.getElementById('start-recording-button').disabled")

    await chair.page.click("#start-recording-button")
    await specialist.until("!document.getElementById('recording-indicator').hidden")
    assert await specialist.page.locator("#recording-indicator").inner_text() == "正在录制"
    await until_text(specialist, "#recording-my-status", "您正在被录制。")
    recording_id = await recording_id_of(chair)
    await asyncio.sleep(RECORDED_S)
    await no_axe_violations(specialist, "room while recording (zh-CN)")
    await screenshot(specialist, "recording-specialist-zh-CN")
    await screenshot(chair, "recording-chair-zh-CN")
    await chair.page.click("#stop-recording-button")
    await specialist.until("document.getElementById('recording-indicator').hidden")

    manifest = read_manifest(serve.data_dir / "recordings" / recording_id)[0]
    spoken = [c for c in manifest.consent if c.participant_id == meeting.specialist_id]
    assert [(c.decision, c.method, c.recorded_by) for c in spoken] == [
        ("granted", "verbal", meeting.chair_id)
    ]
    for tab in (chair, specialist):
        no_page_problems(tab)

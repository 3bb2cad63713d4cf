"""A dropped signalling connection resumes in a real browser (Chromium) against `consilium serve`:
the same participant, the chair never sees them leave, media goes on."""

from __future__ import annotations

from typing import Any

from tests.fixtures.browser import (
    ICE_ENV,
    OpenTab,
    meet_through_the_lobby,
    no_page_problems,
    page_state,
    until_decoding,
)


async def test_a_dropped_connection_resumes_as_the_same_participant_without_leaving(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    specialist, chair = meeting.specialist, meeting.chair
    # The socket goes away under the page, as on a network switch (no `leave`).
    await specialist.page.evaluate("window.consilium.dropConnection()")
    await specialist.until("window.consilium.state().resumes === 1", timeout_s=15)
    state = await page_state(specialist)
    assert state["participantId"] == meeting.specialist_id
    assert state["received"].get("joined") == 1, "joined again instead of resuming"
    assert state["received"].get("lobby") == 1, "waited in the lobby a second time"
    assert state["notice"] != "room.reconnecting"
    # The chair saw them reconnecting, then back; never leaving.
    await chair.until(
        "(window.consilium.state().received.participant_reconnecting ?? 0) >= 2", timeout_s=10
    )
    chair_state = await page_state(chair)
    assert chair_state["received"].get("participant_left", 0) == 0
    assert chair_state["reconnecting"] == []
    # The same media sessions still carry media both ways.
    await until_decoding(meeting)
    # And the room still reaches the resumed page: the chair mutes them.
    pid = meeting.specialist_id
    await chair.page.click(f"#participant-list li[data-participant-id='{pid}'] .chair-mute")
    await specialist.until("window.consilium.state().media.audioMuted === true", timeout_s=10)
    no_page_problems(specialist)
    no_page_problems(chair)


async def test_a_refused_resume_falls_back_to_a_rejoin_without_the_lobby(
    serve_process: Any, chromium: OpenTab
) -> None:
    """Held for less time than the page waits before resuming: the resume is refused (4410)
    and the page joins again, as a new participant, straight into the room."""
    env = {**ICE_ENV, "CONSILIUM_RESUME_GRACE_S": "0.05"}
    meeting = await meet_through_the_lobby(serve_process(env=env), chromium)
    specialist, chair = meeting.specialist, meeting.chair
    await specialist.page.evaluate("window.consilium.dropConnection()")
    await specialist.until("window.consilium.state().received.joined === 2", timeout_s=15)
    await specialist.until("window.consilium.state().screen === 'room'", timeout_s=15)
    state = await page_state(specialist)
    assert state["resumes"] == 0
    assert state["received"].get("lobby") == 1, "waited in the lobby a second time"
    assert state["participantId"] != meeting.specialist_id
    await chair.until(
        "(window.consilium.state().received.participant_left ?? 0) === 1", timeout_s=10
    )
    meeting.specialist_id = state["participantId"]
    await until_decoding(meeting)
    no_page_problems(specialist)

"""Pausing cameras a subscriber's link cannot carry (`sfu.pausing`): the decision, in time."""

from __future__ import annotations

from sfu.layer_choice import UP_HEADROOM
from sfu.pausing import (
    FAILED_RESUME_S,
    PAUSE_AFTER_S,
    RESUME_AFTER_MAX_S,
    RESUME_AFTER_S,
    START_GRACE_S,
    WIRE_OVERHEAD,
    Candidate,
    PauseControl,
)

LOWEST = 85_000
"""A camera's lowest layer (the bench's 160x90 at 80 kbps, as measured)."""


def started(control: PauseControl | None = None) -> PauseControl:
    """A control well past its start (its first decision long before 0)."""
    control = control or PauseControl()
    control.decide(-START_GRACE_S - 10, None, [], loss=0.0)
    return control


def cameras(count: int = 4, speaker: int | None = None) -> list[Candidate]:
    """`count` cameras of one size; `speaker` (an index) weighs three."""
    return [
        Candidate(key, LOWEST, (3 if key == speaker else 1, 640 * 360, -key))
        for key in range(count)
    ]


def test_a_link_that_carries_the_lowest_layers_pauses_nothing_whatever_its_loss() -> None:
    control = started()
    enough = int(4 * LOWEST * WIRE_OVERHEAD) + 1
    assert control.decide(0.0, enough, cameras(), loss=0.4) == set()
    # Random loss on a link whose estimate holds them all (the 800 kbps, 5 % test link).
    for step in range(4):
        assert control.decide(1.0 + step * PAUSE_AFTER_S, 2 * LOWEST, cameras(), loss=0.09) == set()
    assert control.pauses == 0


def overfull(control: PauseControl, at: float, budget: int, candidates: list[Candidate],
             loss: float = 0.5) -> set[int]:  # fmt: skip
    """The link over capacity for `PAUSE_AFTER_S` until `at`: what is paused then."""
    before = at - PAUSE_AFTER_S - 1e-6
    assert control.decide(before, budget, candidates, loss) == control.paused
    return control.decide(at, budget, candidates, loss)


def test_an_overfull_link_pauses_the_least_important_until_the_rest_fits() -> None:
    control = started()
    budget = int(2.5 * LOWEST * WIRE_OVERHEAD)  # room for two
    assert control.decide(0.0, budget, cameras(speaker=3), loss=0.35) == set(), "not yet"
    paused = control.decide(PAUSE_AFTER_S + 1e-6, budget, cameras(speaker=3), loss=0.35)
    assert paused == {1, 2}, "the speaker and the first slot stay; the last slots go"
    assert control.pauses == 1
    # Larger tiles are kept before smaller ones.
    sizes = [Candidate(0, LOWEST, (1, 100, 0)), Candidate(1, LOWEST, (1, 900, -1))]
    assert overfull(started(), 1.0, LOWEST, sizes) == {0}


def test_a_burst_of_loss_pauses_nothing() -> None:
    control = started()
    budget = int(2.5 * LOWEST * WIRE_OVERHEAD)
    assert control.decide(0.0, budget, cameras(), loss=0.35) == set()
    assert control.decide(0.2, budget, cameras(), loss=0.15) == set(), "the burst passed"
    assert control.decide(0.2 + PAUSE_AFTER_S / 2, budget, cameras(), loss=0.35) == set()
    assert control.decide(0.3 + PAUSE_AFTER_S, budget, cameras(), loss=0.15) == set()
    assert control.pauses == 0


def test_one_camera_is_always_kept() -> None:
    control = started()
    assert overfull(control, 1.0, 0, cameras(), loss=0.9) == {1, 2, 3}
    assert overfull(control, 3.0, 0, cameras(), loss=0.9) == {1, 2, 3}, "nothing more to pause"
    assert control.pauses == 1


def test_resumes_what_the_budget_holds_once_the_loss_is_gone() -> None:
    control = started()
    assert overfull(control, 0.0, int(LOWEST * WIRE_OVERHEAD), cameras()) == {1, 2, 3}
    room_for = [int(n * LOWEST * WIRE_OVERHEAD / UP_HEADROOM) + 1 for n in range(5)]
    assert control.decide(1.0, room_for[4], cameras(), loss=0.0) == {1, 2, 3}, "waits first"
    assert control.decide(RESUME_AFTER_S, room_for[4], cameras(), loss=0.12) == {1, 2, 3}, "lossy"
    # The estimate climbing: one more as the budget holds it, most important first ...
    assert control.decide(RESUME_AFTER_S, room_for[2], cameras(), loss=0.0) == {2, 3}
    assert control.decide(RESUME_AFTER_S + 1, room_for[4], cameras(), loss=0.0) == {2, 3}, (
        "not again before the wait"
    )
    # ... a budget that would not hold one more inside the climbing headroom: no resume ...
    assert control.decide(2 * RESUME_AFTER_S, room_for[2], cameras(), loss=0.0) == {2, 3}
    # ... and all that fit at once when the link is back (a probe found it).
    assert control.decide(3 * RESUME_AFTER_S, room_for[4], cameras(), loss=0.0) == set()


def test_a_resume_the_link_cannot_carry_makes_the_next_wait_longer() -> None:
    control = started()
    one = int(1.5 * LOWEST * WIRE_OVERHEAD)
    roomy = 10 * LOWEST
    overfull(control, 0.0, one, cameras(2))
    now, waits = 0.0, []
    for _ in range(6):
        resumed_at = now + control.resume_after_s
        assert control.decide(resumed_at, roomy, cameras(2), loss=0.0) == set()
        # ... and the loss comes back at once: the link could not carry it.
        now = resumed_at + FAILED_RESUME_S / 2
        assert overfull(control, now, one, cameras(2), loss=0.4) == {1}
        waits.append(control.resume_after_s)
    assert waits == [6.0, 12.0, 24.0, 30.0, 30.0, 30.0]
    assert waits[-1] == RESUME_AFTER_MAX_S
    # A later pause long after a resume that held: the wait starts over.
    resumed_at = now + control.resume_after_s
    control.decide(resumed_at, roomy, cameras(2), loss=0.0)
    assert overfull(control, resumed_at + 60, one, cameras(2), loss=0.4) == {1}
    assert control.resume_after_s == RESUME_AFTER_S


def test_once_a_resume_holds_the_rest_follow_without_the_long_wait() -> None:
    """Resumes failed while the link was narrow (the wait grew to its longest); the link comes
    back: the first resume after the long wait holds, and the cameras still paused follow
    `RESUME_AFTER_S` apart as the estimate climbs, not one per long wait."""
    control = started()
    one = int(1.5 * LOWEST * WIRE_OVERHEAD)
    overfull(control, 0.0, one, cameras(4))
    now = 0.0
    while control.resume_after_s < RESUME_AFTER_MAX_S:
        now += control.resume_after_s
        assert control.decide(now, 10 * LOWEST, cameras(4), loss=0.0) == set()
        now += FAILED_RESUME_S / 2
        assert overfull(control, now, one, cameras(4), loss=0.4) == {1, 2, 3}
    # The link is back, the estimate climbing: room for one more camera at a time.
    now += RESUME_AFTER_MAX_S
    two = int(2 * LOWEST * WIRE_OVERHEAD / UP_HEADROOM) + 1
    assert control.decide(now, two, cameras(4), loss=0.0) == {2, 3}
    three = int(3 * LOWEST * WIRE_OVERHEAD / UP_HEADROOM) + 1
    not_yet_held = control.decide(now + RESUME_AFTER_S, three, cameras(4), loss=0.0)
    assert not_yet_held == {2, 3}, "the resume has not held for FAILED_RESUME_S yet"
    assert control.decide(now + FAILED_RESUME_S, three, cameras(4), loss=0.0) == {3}
    four = int(4 * LOWEST * WIRE_OVERHEAD / UP_HEADROOM) + 1
    later = now + FAILED_RESUME_S + RESUME_AFTER_S
    assert control.decide(later - 0.1, four, cameras(4), loss=0.0) == {3}
    assert control.decide(later, four, cameras(4), loss=0.0) == set()


def test_no_estimate_pauses_nothing_and_gone_cameras_are_forgotten() -> None:
    control = started()
    assert overfull(control, 1.0, 0, cameras(), loss=0.9) == {1, 2, 3}
    assert control.decide(1.5, 0, cameras(2), loss=0.9) == {1}, "cameras 2 and 3 left"
    assert control.decide(2.5, None, cameras(2), loss=0.9) == set()


def test_nothing_is_paused_while_the_subscriber_starts() -> None:
    control = PauseControl()
    for step in range(int(START_GRACE_S / PAUSE_AFTER_S)):
        assert control.decide(step * PAUSE_AFTER_S * 0.99, 0, cameras(), loss=0.9) == set()
    assert overfull(control, START_GRACE_S + 1, 0, cameras(), loss=0.9) == {1, 2, 3}

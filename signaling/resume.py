"""Resuming a signalling connection: the rules, with no I/O (issue 15, part 6).

A participant whose WebSocket drops without `leave` is held for `resume_grace_s` instead of
leaving: the room sees them as reconnecting, their media sessions stay as they are, and what the
server sends them meanwhile is kept in their `ReplayBuffer`. A new WebSocket whose first message is
`resume` takes the participant over: the server replays what the client did not process, in order,
and the participant goes on with the same id (no lobby, no consent asked again).

Every server message to a joined participant after `joined` is numbered 1, 2, 3... in the order it
was sent, on this and every connection that resumed it. The number is not carried on the wire:
WebSocket delivery is ordered, so the client counts what it processed and sends that count as
`last_seq`. The executor is `signaling.rooms` (holding, expiring) with `signaling.http.ws`
(the first message); what each refusal closes with is documented in `signaling.protocol`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from core.errors import ConsiliumError

REPLAY_MESSAGES = 256
"""Messages kept per participant for a resume; an older gap is refused (the client rejoins)."""
REPLAY_BYTES = 256 * 1024
"""Bytes of messages kept per participant for a resume (whichever bound is reached first)."""

HOLDING_REASONS = frozenset({"connection_lost", "closed_without_leave"})
"""Why a connection ended that holds its participant: the network, not the person, ended it.

`connection_lost`: the TCP connection went without a close (a network switch, a laptop lid);
`closed_without_leave`: the client closed with a code other than 1000/1001 and sent no `leave`
first. Everything else leaves the room as before: `leave`, removed, revoked, replaced, a bad
message, a slow consumer, shutdown, and a missed keepalive (`timed_out`: silent for
`keepalive_timeout_s`, long enough for a client that meant to come back to have resumed).
"""


def holds(reason: str, *, joined: bool, grace_s: float) -> bool:
    """Whether a connection that ended for `reason` holds its participant for a resume."""
    return joined and grace_s > 0 and reason in HOLDING_REASONS


class ReplayBuffer:
    """The server messages sent to one participant, numbered, the newest kept for a resume."""

    __slots__ = ("_bytes", "_kept", "last_seq", "max_bytes", "max_messages")

    def __init__(self, max_messages: int = REPLAY_MESSAGES, max_bytes: int = REPLAY_BYTES):
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.last_seq = 0
        """The number of the last message sent (0: none since `joined`)."""
        self._kept: deque[str] = deque()
        self._bytes = 0

    def record(self, text: str) -> int:
        """Number one message sent, keep it, and forget the oldest beyond the bounds.

        Hot path, once per server message to a joined participant: watched by
        bench/signaling.py.
        """
        self.last_seq += 1
        kept = self._kept
        kept.append(text)
        self._bytes += len(text)
        while len(kept) > self.max_messages or (self._bytes > self.max_bytes and len(kept) > 1):
            self._bytes -= len(kept.popleft())
        return self.last_seq

    @property
    def first_seq(self) -> int:
        """The number of the oldest message still kept (`last_seq + 1` when none is)."""
        return self.last_seq - len(self._kept) + 1

    def covers(self, last_seq: int) -> bool:
        """Whether a client that processed up to `last_seq` can be given all it missed."""
        return self.first_seq - 1 <= last_seq <= self.last_seq

    def after(self, last_seq: int) -> list[str]:
        """The messages numbered after `last_seq`, oldest first (`covers(last_seq)` first)."""
        missed = self.last_seq - last_seq
        return list(self._kept)[len(self._kept) - missed :] if missed > 0 else []


@dataclass(frozen=True)
class Hold:
    """What the server keeps of a participant while their connection is gone."""

    participant_id: str
    sub: str
    """Whose participant it is: a resume must come with a token of the same identity."""
    resume_token: str
    """The secret the `joined` answer gave the client (random, bound to this participant)."""
    since: float
    """Monotonic time the connection was lost (None of this is kept while connected)."""
    grace_s: float
    """How long the participant is held (`resume_grace_s`)."""

    def expired(self, now: float) -> bool:
        """Whether the grace period is over at `now` (monotonic)."""
        return now - self.since >= self.grace_s


class ResumeRefusal(StrEnum):
    """Why a `resume` was refused (closed with 4410; the client joins again). The value is the
    audit entry's reason and the close reason."""

    UNKNOWN = "unknown_participant"
    """No participant held by that id: never there, already gone, or held by another node that
    is alive (a resume must reach the node that holds it; one whose node was lost is taken over
    by any node, `decide_adoption`)."""
    LATE = "grace_period_over"
    """The participant was held, but longer ago than `resume_grace_s`."""
    BAD_TOKEN = "bad_resume_token"
    """The resume token is not the one this participant was given."""
    OTHER_IDENTITY = "other_identity"
    """The bearer token is valid but names another identity than the participant's."""
    GAP = "messages_lost"
    """The client missed more than the replay buffer keeps (or claims more than was sent)."""


class ResumeRefused(ConsiliumError):
    """A `resume` that cannot take a participant over (4410); the message is the
    `ResumeRefusal`'s value. The client joins again."""

    code = "resume_refused"


def decide(
    hold: Hold | None,
    buffer: ReplayBuffer | None,
    *,
    participant_id: str,
    resume_token: str,
    sub: str,
    last_seq: int,
    now: float,
) -> ResumeRefusal | None:
    """Whether a `resume` (its bearer token already verified as `sub`) takes over the held
    participant; None: it does, else why not."""
    if hold is None or buffer is None or hold.participant_id != participant_id:
        return ResumeRefusal.UNKNOWN
    if not hmac.compare_digest(hold.resume_token.encode(), resume_token.encode()):
        return ResumeRefusal.BAD_TOKEN
    if hold.sub != sub:
        return ResumeRefusal.OTHER_IDENTITY
    if hold.expired(now):
        return ResumeRefusal.LATE
    if not buffer.covers(last_seq):
        return ResumeRefusal.GAP
    return None


# -- a participant whose node was lost (issue 13, part 2) -------------------------------------


def token_digest(resume_token: str) -> str:
    """What the shared state keeps of a resume token (`ParticipantRecord.resume_digest`): enough
    for any node to check a `resume`, not enough to make one."""
    return hashlib.sha256(resume_token.encode()).hexdigest()


@dataclass(frozen=True)
class Lost:
    """A participant held in the shared state since their node was lost (another node may take
    them over: their replay buffer went with the node)."""

    participant_id: str
    sub: str
    resume_digest: str
    lost_at: float
    """Seconds since the epoch (the shared state's clock is wall time: nodes differ)."""
    grace_s: float


def decide_adoption(
    lost: Lost | None, *, participant_id: str, resume_token: str, sub: str, now: float
) -> ResumeRefusal | None:
    """Whether a `resume` (its bearer token already verified as `sub`) takes over a participant
    whose node was lost; None: it does (without a replay), else why not. `now`: wall time."""
    if lost is None or lost.participant_id != participant_id or not lost.resume_digest:
        return ResumeRefusal.UNKNOWN
    if not hmac.compare_digest(lost.resume_digest, token_digest(resume_token)):
        return ResumeRefusal.BAD_TOKEN
    if lost.sub != sub:
        return ResumeRefusal.OTHER_IDENTITY
    if now - lost.lost_at >= lost.grace_s:
        return ResumeRefusal.LATE
    return None

"""Draining a node before it stops (issue 13, part 3): a planned restart ends nobody's meeting.

On SIGTERM, or `consilium drain` (`POST /api/node/drain`), `begin` starts it while the node
still serves HTTP (aiohttp's own SIGTERM handling would close the listener at once: `/readyz`
would not answer and `/healthz` would not stay up); once drained, the node stops as it always
did (recordings closed cleanly, connections closed with 1001):

1. `/readyz` answers 503 at once (a load balancer sends it no new client) while `/healthz` stays
   200; a new signalling connection is closed with 1001 (its client tries again, elsewhere),
   and no room's media is taken here any more (`Rooms.draining`);
2. the media of every room its SFU hosts moves to the least loaded other live node with an SFU
   (`Rooms.move_hosted_media`: the path a dead node's rooms take, `cluster.MediaMoved` with why
   `drain`): every participant's client, whichever node its signalling connection is on, is
   told `media_moved` (reason `drain`) and opens new media sessions on the new node, and each
   node takes its participants off this node's SFU as it moves them;
3. it waits until its SFU hosts nobody, or `drain_timeout_s`;
4. its own joined participants are handed over (`Rooms.hand_over`): held in the shared state
   for a resume, as a lost node's are (the room sees them reconnecting, not leaving);
5. then its own signalling connections close with 1001, and their clients resume through
   another node as the same participants (`Rooms.adopt`; a client that joins again instead
   replaces its held self, as any second connection does).

With no other node (one node, or none with an SFU), nothing moves, nobody is handed over, and the
stop is the old one.
Audited when rooms moved: `node_drained` (rooms moved, participants left behind, seconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from signaling.http.node import Node

log = logging.getLogger("consilium.server")

POLL_S = 0.1
"""How often the SFU is looked at while waiting for it to empty."""


def begin(node: Node) -> None:
    """SIGTERM (`consilium serve` installs it) or `POST /api/node/drain`: unready from now on,
    drain, then stop the process the way SIGTERM stops aiohttp. A second call does nothing."""
    if node.rooms.draining:
        return
    node.rooms.draining = True
    task = asyncio.get_running_loop().create_task(_drain_then_stop(node))
    _running.add(task)
    task.add_done_callback(_running.discard)


_running: set[asyncio.Task[None]] = set()
"""The drain under way (a reference, so it is not collected)."""


async def _drain_then_stop(node: Node) -> None:
    await drain(node)
    asyncio.get_running_loop().call_soon(_stop)


def _stop() -> None:
    """What aiohttp's SIGTERM handler does: leave `run_app` gracefully."""
    raise web.GracefulExit()


async def drain(node: Node) -> None:
    """Move every room's media off this node and wait for its SFU to empty (bounded by
    `drain_timeout_s`), once. Never raises: a stop goes on whatever happens here."""
    rooms = node.rooms
    if rooms.drained:
        return
    rooms.drained = True
    started = time.monotonic()
    rooms.draining = True
    try:
        moved = await rooms.move_hosted_media()
    except Exception:
        log.exception("draining: moving the rooms' media failed; stopping as before")
        moved = 0
    media = rooms.media
    deadline = started + node.settings.drain_timeout_s
    if moved and media is not None:
        # Participants leave the SFU as each node handles the move (no event says "empty").
        while media.participants and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)
    left_behind = len(media.participants) if media is not None else 0
    seconds = round(time.monotonic() - started, 3)
    try:
        handed_over = await rooms.hand_over()
    except Exception:
        log.exception("draining: handing the participants over failed; they join again")
        handed_over = 0
    if not moved and not handed_over:
        return  # nothing here, or no other node to go to: the stop is the old one
    log.warning(
        "drained: rooms moved to other nodes, participants handed over",
        extra={"rooms": moved, "left_behind": left_behind, "handed_over": handed_over,
               "seconds": seconds},
    )  # fmt: skip
    node.audit.append("node_drained", "info", node=node.settings.node_id, rooms_moved=moved,
                      participants_left_behind=left_behind, handed_over=handed_over,
                      seconds=seconds)  # fmt: skip

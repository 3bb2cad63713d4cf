"""Node liveness: which nodes of a cluster are dead, and when this node may say so.

Every node sharing a Redis heartbeats (`StateStore.heartbeat`) every `HEARTBEAT_EVERY_S`: a key
that expires `node_dead_after_s` later. A node whose key has expired is dead (`dead_nodes`): a
SIGKILL, a power cut, a network cut from Redis. Any surviving node then cleans up after it
(`signaling.rooms.Rooms.reap_node`): its participants leave their rooms (everyone told, reason
`node_lost`), its lobby entries go, the rooms whose media it hosted are released; then it is
forgotten. Two nodes may do it at once: every removal is atomic, so each entry is removed and
announced once. A node that stops cleanly (SIGTERM) removes its own entries and forgets itself.

The danger is a false death. When Redis itself was out of reach (stopped, paused, cut off)
for longer than `node_dead_after_s`, every heartbeat key has run out when it comes back, and the
first node to look would take every other live node for dead. So a node only judges others
(`LivenessWatch.may_judge`) after its own heartbeats have succeeded without a failure for
longer than `node_dead_after_s` plus one beat: by then every live node has heartbeated again.
The same wait applies after this node starts (it may have just been out of reach itself), and
after a heartbeat answered late (Redis paused: the answer comes once it runs again).

A heartbeat runs out `node_dead_after_s` after a node's last one: a node that crashed is found
sooner by its connections. Every connection a node makes to Redis carries its name
(`StateStore.connected_nodes`); a node whose heartbeat still runs but which has held no
connection for `GONE_AFTER_S` is dead too (`Disconnections`): the kernel closes a killed
process's sockets at once, while a node that is only slow (a stalled event loop) keeps them.
Where Redis does not say (an ACL without `CLIENT LIST`, a proxy), the heartbeat alone decides.

A Sentinel failover (`signaling.state.sentinel`) is the same danger twice over: the promoted
replica's heartbeat keys may be a few seconds stale (replication is asynchronous), and its
`CLIENT LIST` holds none of the other nodes' connections until each reconnects. So the server
behind the shared state is noted at every look (`StateStore.server_identity`: Redis's run id);
when it changes, this node waits as after a failed heartbeat (`LivenessWatch.server_seen`), and
the watch on connections starts afresh (`Disconnections.clear`) whenever it may not judge.

Pure: times in, decisions out; `signaling.http.tasks.watch_nodes` runs the loop.
"""

from __future__ import annotations

HEARTBEAT_EVERY_S = 1.0
"""How often each node says it is alive."""
CHECK_EVERY_S = 0.25
"""How often a node looks for dead ones (between its heartbeats too)."""
GONE_AFTER_S = 2.0
"""A node with no connection to the shared state for this long, while its heartbeat has not
run out yet, is dead: its process ended (a SIGKILL, a crash: the kernel closed its sockets).
A live node whose connections dropped (a network blip, Redis closing idle clients) makes a new
one within a heartbeat; two heartbeats is the margin."""
NODE_LOST = "node_lost"
"""The `participant_left` reason of a participant whose node died."""


class LivenessWatch:
    """This node's view of its own heartbeats: whether it may judge other nodes dead now."""

    __slots__ = ("_healthy_since", "_server", "dead_after_s")

    def __init__(self, dead_after_s: float) -> None:
        self.dead_after_s = dead_after_s
        self._healthy_since: float | None = None
        """When the current run of successful heartbeats began (None: the last one failed, or
        none yet)."""
        self._server: str | None = None
        """The shared state's server as last seen (`server_seen`)."""

    def beat_ok(self, sent_at: float, now: float) -> None:
        """A heartbeat sent at `sent_at` reached the shared state, answered at `now`. A slow
        answer counts as a failure: the shared state was out of reach for a while (paused,
        cut off, swapping) and the others' heartbeats may have run out meanwhile, theirs
        queued behind this one."""
        if now - sent_at > self.dead_after_s / 2:
            self._healthy_since = None
        elif self._healthy_since is None:
            self._healthy_since = now

    def beat_failed(self) -> None:
        """A heartbeat did not reach it: others' keys may run out meanwhile, through no fault
        of theirs."""
        self._healthy_since = None

    def server_seen(self, server: str | None) -> bool:
        """The shared state answered from `server` (None: it does not say which); whether it
        is another one than before (Sentinel promoted a replica, or Redis restarted). That
        counts as a failure: the heartbeats it holds may be seconds stale (replication is
        asynchronous) and the other nodes have not all reconnected to it yet; judge nobody
        until every live node has had time to heartbeat to it."""
        if server is None:
            return False
        changed = self._server is not None and server != self._server
        if changed:
            self._healthy_since = None
        self._server = server
        return changed

    def may_judge(self, now: float) -> bool:
        """Whether a node whose heartbeat key ran out is really dead, as far as this node can
        tell: its own heartbeats have reached the shared state for longer than any live node
        needs to heartbeat again after an outage."""
        since = self._healthy_since
        return since is not None and now - since >= self.dead_after_s + HEARTBEAT_EVERY_S


def judged_dead(dead: list[str], own_node_id: str) -> list[str]:
    """The nodes to clean up after: every expired one but this node (its own key may have run
    out while it was cut off; it is alive, since it is asking)."""
    return [node_id for node_id in dead if node_id != own_node_id]


def choose_media_node(live: dict[str, int | None], dead: str) -> str | None:
    """Where a room's media moves when the node hosting it died: the live node with an SFU
    hosting the fewest media participants (ties: the lowest node id, so that every node asked
    picks the same one); None when no live node has an SFU. `live`: each live node's load as
    its heartbeat reported it (None: no SFU)."""
    candidates = [(load, node) for node, load in live.items() if load is not None and node != dead]
    return min(candidates)[1] if candidates else None


class Disconnections:
    """Since when each live-looking node has held no connection to the shared state."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def clear(self) -> None:
        """Forget every observation: while this node may not judge (`LivenessWatch`), it does
        not watch either, and a node missing before then is watched afresh (a failover: no
        connection is on the new primary until each node reconnects)."""
        self._since.clear()

    def update(self, now: float, heartbeating: set[str], connected: set[str]) -> list[str]:
        """The nodes to take for dead now: heartbeating (their key has not run out) but with no
        connection for `GONE_AFTER_S`. `heartbeating` excludes this node."""
        for node in list(self._since):
            if node not in heartbeating or node in connected:
                del self._since[node]
        gone = []
        for node in sorted(heartbeating - connected):
            since = self._since.setdefault(node, now)
            if now - since >= GONE_AFTER_S:
                gone.append(node)
                del self._since[node]
        return gone

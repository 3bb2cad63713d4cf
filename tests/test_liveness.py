"""`signaling.liveness`: when a node may judge others dead (pure)."""

from __future__ import annotations

from signaling.liveness import (
    GONE_AFTER_S,
    HEARTBEAT_EVERY_S,
    Disconnections,
    LivenessWatch,
    choose_media_node,
    judged_dead,
)

DEAD_AFTER_S = 4.0


def test_a_node_judges_only_after_a_run_of_good_heartbeats_longer_than_the_timeout() -> None:
    watch = LivenessWatch(DEAD_AFTER_S)
    assert not watch.may_judge(0.0), "nothing sent yet"
    watch.beat_ok(0.0, 0.01)
    assert not watch.may_judge(1.0), "just started: the others may not have beaten yet"
    for t in range(1, 6):
        watch.beat_ok(float(t), t + 0.01)
    assert watch.may_judge(DEAD_AFTER_S + HEARTBEAT_EVERY_S + 0.01)


def test_after_a_failed_or_late_heartbeat_it_waits_again() -> None:
    watch = LivenessWatch(DEAD_AFTER_S)
    watch.beat_ok(0.0, 0.01)
    assert watch.may_judge(10.0)
    watch.beat_failed()  # Redis out of reach: the others' keys may run out meanwhile
    assert not watch.may_judge(10.0)
    watch.beat_ok(11.0, 11.01)
    assert not watch.may_judge(12.0)
    assert watch.may_judge(11.02 + DEAD_AFTER_S + HEARTBEAT_EVERY_S)
    # An answer that came late (Redis paused, then resumed) is no proof of a live link.
    watch.beat_ok(20.0, 20.0 + DEAD_AFTER_S)
    assert not watch.may_judge(30.0)


def test_a_node_never_judges_itself_dead() -> None:
    assert judged_dead(["node-a", "node-b"], "node-a") == ["node-b"]


def test_a_rooms_media_moves_to_the_least_loaded_live_node_with_an_sfu() -> None:
    live = {"node-b": 12, "node-c": 3, "node-d": None, "node-a": 0}
    assert choose_media_node(live, "node-a") == "node-c", "not the dead one, nor one without SFU"
    assert choose_media_node({"node-c": 3, "node-b": 3}, "node-a") == "node-b", "ties: lowest id"
    assert choose_media_node({"node-d": None}, "node-a") is None


def test_a_node_without_a_connection_for_long_enough_is_dead_a_blip_is_not() -> None:
    gone = Disconnections()
    both = {"node-b", "node-c"}
    assert gone.update(0.0, both, {"node-b", "node-c"}) == []
    assert gone.update(1.0, both, {"node-b"}) == [], "node-c just lost its connections"
    assert gone.update(1.5, both, {"node-b", "node-c"}) == [], "and made a new one: a blip"
    assert gone.update(2.0, both, {"node-b"}) == []
    assert gone.update(2.0 + GONE_AFTER_S - 0.01, both, {"node-b"}) == []
    assert gone.update(2.0 + GONE_AFTER_S, both, {"node-b"}) == ["node-c"]
    # Reported once; a node whose heartbeat ran out (forgotten) is no longer watched.
    assert gone.update(5.0, {"node-b"}, {"node-b"}) == []
    assert gone.update(5.0, both, set()) == []
    assert gone.update(5.0 + GONE_AFTER_S, both, set()) == ["node-b", "node-c"]


def test_another_redis_server_behind_the_shared_state_makes_a_node_wait_again() -> None:
    watch = LivenessWatch(DEAD_AFTER_S)
    watch.beat_ok(0.0, 0.01)
    assert watch.server_seen("run-1") is False, "the first server seen is no change"
    assert watch.may_judge(10.0)
    assert watch.server_seen("run-1") is False
    assert watch.server_seen(None) is False, "a server that does not say changes nothing"
    assert watch.may_judge(10.0)
    # Sentinel promoted the replica: its heartbeats may be stale, nobody has reconnected yet.
    assert watch.server_seen("run-2") is True
    assert not watch.may_judge(10.0)
    watch.beat_ok(11.0, 11.01)
    assert not watch.may_judge(11.0 + DEAD_AFTER_S)
    assert watch.may_judge(11.02 + DEAD_AFTER_S + HEARTBEAT_EVERY_S)


def test_connections_missing_before_a_pause_in_judging_are_watched_afresh() -> None:
    gone = Disconnections()
    both = {"node-b", "node-c"}
    assert gone.update(0.0, both, {"node-b"}) == []
    gone.clear()  # a failover: node-c's connection is not on the new primary yet
    assert gone.update(5.0, both, {"node-b"}) == [], "missing since 5 s, not since 0 s"
    assert gone.update(5.0 + GONE_AFTER_S, both, {"node-b"}) == ["node-c"]

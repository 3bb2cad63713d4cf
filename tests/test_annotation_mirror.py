"""The copy of a room's annotation and chat events for the node its media moves to: sealed for
that room and seq alone (signaling/annotation_mirror.py), kept bounded in a real Redis, and taken
over by the new node's room after its own log's last event (RoomAnnotations.adopt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotations.log import AnnotationLog
from annotations.room import RoomAnnotations
from sfu.server import MediaSettings
from signaling.annotation_mirror import AnnotationMirror, mirror_key, seal, unseal
from signaling.state.redis import RedisStore
from tests.test_annotations import CHAIR, KEY, RADIOLOGIST, add, image_info, room

MIRROR_KEY = mirror_key(b"k" * 32)


def test_a_sealed_event_opens_only_for_its_room_and_seq() -> None:
    record = seal(MIRROR_KEY, "mdt-1", 7, b'{"seq":7}')
    assert b'"seq"' not in record
    assert unseal(MIRROR_KEY, "mdt-1", record) == (7, b'{"seq":7}')
    with pytest.raises(ValueError):
        unseal(MIRROR_KEY, "mdt-2", record)  # moved to another room
    moved = (8).to_bytes(8, "big") + record[8:]
    with pytest.raises(ValueError):
        unseal(MIRROR_KEY, "mdt-1", moved)  # renumbered
    with pytest.raises(ValueError):
        unseal(mirror_key(b"o" * 32), "mdt-1", record)  # another cluster's key


async def test_the_copy_in_redis_is_bounded_and_read_back_in_order(redis_url: str) -> None:
    store = RedisStore(redis_url, node_id="node-a")
    try:
        mirror = AnnotationMirror(store, MIRROR_KEY)
        for seq in (1, 2, 3):
            mirror.record("mdt-1", seq, json.dumps({"seq": seq}).encode())
        mirror.record("mdt-2", 1, b'{"seq":1}')
        await mirror.flush()
        assert [s for s, _ in await mirror.history("mdt-1")] == [1, 2, 3]
        assert await mirror.history("mdt-2") == [(1, b'{"seq":1}')]
        assert await mirror.history("mdt-3") == []
        # Bounded: only the newest are kept.
        await store.append_annotations(
            "mdt-1", [seal(MIRROR_KEY, "mdt-1", 4, b'{"seq":4}')], max_records=2, keep_s=60
        )
        assert [s for s, _ in await mirror.history("mdt-1")] == [3, 4]
        # A record of another room slipped into this one is skipped, not applied.
        await store.append_annotations(
            "mdt-1", [seal(MIRROR_KEY, "mdt-2", 5, b"{}")], max_records=10, keep_s=60
        )
        assert [s for s, _ in await mirror.history("mdt-1")] == [3, 4]
    finally:
        await store.close()


def test_a_room_takes_over_what_another_node_stamped_after_its_own_log(tmp_path: Path) -> None:
    stamped: list[tuple[int, bytes]] = []
    first = room(mirror=lambda seq, text: stamped.append((seq, text)))
    first.identify("p-rad", "dr-rad")
    for shape_id in ("s1", "s2"):
        first.handle("p-rad", RADIOLOGIST, add(shape_id))
    first.handle("p-rad", RADIOLOGIST, json.dumps({"type": "chat", "text": "look here"}))
    assert [seq for seq, _ in stamped] == [1, 2, 3]

    # The node taking the room over had seen the first event (its own log), not the others.
    path = tmp_path / "rooms" / "mdt-1" / "annotations.log"
    path.parent.mkdir(parents=True)
    own = RoomAnnotations("mdt-1", MediaSettings(), image_info, AnnotationLog(path, "mdt-1", KEY))
    assert own.adopt(stamped[:1]) == 1
    own.close()
    again = RoomAnnotations("mdt-1", MediaSettings(), image_info, AnnotationLog(path, "mdt-1", KEY))
    assert again.seq == 1
    assert again.adopt([*stamped, (9, b"not json")]) == 2  # the rest, once; junk skipped
    assert again.adopt(stamped) == 0
    snapshot = again.snapshot("p-chair")
    assert snapshot.seq == 3 and {s.id for s in snapshot.shapes} == {"s1", "s2"}
    assert [c.text for c in snapshot.chat] == ["look here"]
    # Written to this node's log: a restart of this node has them too.
    again.close()
    reopened = RoomAnnotations(
        "mdt-1", MediaSettings(), image_info, AnnotationLog(path, "mdt-1", KEY)
    )
    assert reopened.seq == 3 and len(reopened.snapshot("p-chair").shapes) == 2
    # And the room stamps on after them.
    reopened.identify("p-chair", "dr-chair")
    (delivery,) = reopened.handle("p-chair", CHAIR, add("s3"))
    assert delivery.seq == 4
    reopened.close()

"""The annotation log's policy (plain objects given `now`), its gap records after a full disk, and
the authority driven with `now` passed in: no event loop, no clock."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from annotations.authority import AnnotationAuthority
from annotations.log import (
    FSYNC_INTERVAL_S,
    LENGTH_BYTES,
    RETRY_INTERVAL_S,
    AnnotationLog,
    Backlog,
    FlushPolicy,
    LogError,
    LogGap,
    record_seq,
)
from annotations.room import RoomAnnotations
from core.imageref import ImageRef
from sfu.server import MediaSettings
from tests.fixtures.disk import FullDisk

REPO = Path(__file__).resolve().parents[1]
ROLES = tomllib.loads((REPO / "signaling" / "policy.toml").read_text("utf-8"))["roles"]
RADIOLOGIST = frozenset(ROLES["radiologist"])
KEY = bytes(range(32))
STAMP = "2026-03-04T05:06:07.089Z"


def chat(seq: int) -> bytes:
    """A stamped chat event as the log stores it."""
    event = {"type": "event", "seq": seq, "time": STAMP, "author": "rad", "client_id": "",
             "kind": "chat", "text": f"message {seq}"}  # fmt: skip
    return json.dumps(event).encode()


def framed(seq: int, size: int = 100) -> bytes:
    """A framed record of `size` bytes carrying `seq` (contents irrelevant to the backlog)."""
    body = bytes(4) + seq.to_bytes(8, "big") + bytes(size - LENGTH_BYTES - 12)
    return (len(body)).to_bytes(LENGTH_BYTES, "big") + body


def seqs(path: Path) -> tuple[list[int], list[LogGap]]:
    log = AnnotationLog(path, "mdt-1", KEY)
    try:
        return [event.seq for event in log.replay()], log.gaps
    finally:
        log.close()


def overflowed_log(path: Path) -> None:
    """A log whose disk filled after record 1 while records 2..12 came, with room in memory
    for about three: the oldest were dropped, then space returned."""
    clock = [0.0]
    record_bytes = LENGTH_BYTES + 12 + len(chat(10)) + 16  # length, nonce, event, GCM tag
    log = AnnotationLog(path, "mdt-1", KEY, clock=lambda: clock[0],
                        wall_clock=lambda: STAMP, max_unwritten_bytes=3 * record_bytes)  # fmt: skip
    log.append(1, chat(1))
    log._file = FullDisk(log._file, room=0)  # type: ignore[assignment]
    for seq in range(2, 13):
        log.append(seq, chat(seq))
    assert log.lost == 8 and len(log.unwritten) == 3
    log._file.room = 1 << 20  # space returns
    clock[0] += RETRY_INTERVAL_S
    log.retry()
    assert log.stored
    log.close()


# -- the policy, given now -------------------------------------------------------------------------


def test_fsync_is_due_at_most_every_100_ms() -> None:
    policy = FlushPolicy(last_fsync=10.0)
    assert not policy.fsync_due(10.0)
    assert not policy.fsync_due(10.0 + FSYNC_INTERVAL_S * 0.9)
    assert policy.fsync_due(10.0 + FSYNC_INTERVAL_S * 1.1)


def test_held_back_records_are_retried_at_most_every_second_unless_forced() -> None:
    policy = FlushPolicy(last_try=5.0)
    assert not policy.retry_due(5.5)
    assert policy.retry_due(5.5, force=True)
    assert policy.retry_due(5.0 + RETRY_INTERVAL_S)


def test_a_backlog_over_its_bound_drops_the_oldest_and_remembers_the_gap() -> None:
    backlog = Backlog(max_bytes=300)
    for seq in range(1, 4):
        backlog.hold(framed(seq), "t0")
    assert backlog.gap is None and backlog.lost == 0 and backlog.size == 300
    backlog.hold(framed(4), "t1")
    backlog.hold(framed(5), "t2")
    assert [record_seq(r) for r in backlog.records] == [3, 4, 5]
    assert backlog.gap == LogGap(first=1, last=2, time="t1") and backlog.gap.lost == 2
    assert backlog.lost == 2 and backlog.size == 300
    backlog.written()
    assert [record_seq(r) for r in backlog.records] == [4, 5] and backlog.size == 200


def test_a_backlog_always_keeps_the_newest_record() -> None:
    backlog = Backlog(max_bytes=10)
    backlog.hold(framed(1), "t")
    assert len(backlog.records) == 1 and backlog.gap is None
    backlog.hold(framed(2), "t")
    assert [record_seq(r) for r in backlog.records] == [2] and backlog.gap == LogGap(1, 1, "t")


# -- gap records -----------------------------------------------------------------------------------


def test_records_a_full_disk_lost_are_written_down_and_the_log_replays_with_the_loss_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "annotations.log"
    overflowed_log(path)
    events, gaps = seqs(path)
    assert events == [1, 10, 11, 12]
    assert gaps == [LogGap(first=2, last=9, time=STAMP)] and gaps[0].lost == 8
    assert "records lost to a full disk" in caplog.text
    # The room goes on after the gap: its next event is 13, and the log reads back again.
    room = RoomAnnotations("mdt-1", MediaSettings(), None, AnnotationLog(path, "mdt-1", KEY))
    assert room.authority.seq == 12
    chat_message = json.dumps({"type": "chat", "text": "after the gap"})
    (delivery,) = room.handle("rad", RADIOLOGIST, chat_message)
    assert json.loads(delivery.text)["seq"] == 13
    room.close()
    assert seqs(path)[0] == [1, 10, 11, 12, 13]


def test_a_room_whose_log_ends_with_a_gap_stamps_after_it(tmp_path: Path) -> None:
    path = tmp_path / "annotations.log"
    clock = [0.0]
    log = AnnotationLog(path, "mdt-1", KEY, clock=lambda: clock[0], wall_clock=lambda: STAMP,
                        max_unwritten_bytes=1)  # fmt: skip
    log.append(1, chat(1))
    log._file = FullDisk(log._file, room=0)  # type: ignore[assignment]
    for seq in range(2, 6):
        log.append(seq, chat(seq))  # only the newest is kept: 2..4 are lost
    gap_record = LENGTH_BYTES + 12 + len(msgspec.json.encode(LogGap(2, 4, STAMP))) + 16
    log._file.room = gap_record  # room for the gap record, then the disk is full again
    log.retry(force=True)
    log.close()  # record 5 never reached the disk
    assert seqs(path) == ([1], [LogGap(2, 4, STAMP)])
    room = RoomAnnotations("mdt-1", MediaSettings(), None, AnnotationLog(path, "mdt-1", KEY))
    assert room.seq == 4
    (delivery,) = room.handle("rad", RADIOLOGIST, json.dumps({"type": "chat", "text": "on"}))
    assert json.loads(delivery.text)["seq"] == 5
    room.close()
    assert seqs(path) == ([1, 5], [LogGap(2, 4, STAMP)])


def test_a_gap_without_its_record_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "annotations.log"
    overflowed_log(path)
    data = path.read_bytes()
    first = LENGTH_BYTES + int.from_bytes(data[:LENGTH_BYTES], "big")
    gap_end = first + LENGTH_BYTES + int.from_bytes(data[first : first + LENGTH_BYTES], "big")
    path.write_bytes(data[:first] + data[gap_end:])  # the gap record taken out
    with pytest.raises(LogError, match=r"record 2 carries seq 10"):
        AnnotationLog(path, "mdt-1", KEY)


def test_a_gap_record_cannot_be_altered_or_forged(tmp_path: Path) -> None:
    path = tmp_path / "annotations.log"
    overflowed_log(path)
    data = bytearray(path.read_bytes())
    first = LENGTH_BYTES + int.from_bytes(data[:LENGTH_BYTES], "big")
    data[first + LENGTH_BYTES + 20] ^= 1  # inside the gap record's ciphertext
    path.write_bytes(bytes(data))
    with pytest.raises(LogError, match=r"record 2 fails authentication"):
        AnnotationLog(path, "mdt-1", KEY)


def test_a_jump_in_seq_without_a_gap_record_is_refused_even_with_the_right_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "annotations.log"
    log = AnnotationLog(path, "mdt-1", KEY)
    log.append(1, chat(1))
    log.append(10, chat(10))
    log.close()
    with pytest.raises(LogError, match=r"record 2 carries seq 10"):
        AnnotationLog(path, "mdt-1", KEY)


# -- the authority, with now passed in -------------------------------------------------------------


IMAGES = {"ct": ImageRef(frames=2, pixel_spacing_mm=(0.5, 0.5))}


def authority(**bounds: Any) -> AnnotationAuthority:
    def image_info(room_id: str, image_id: str) -> ImageRef | None:
        return IMAGES.get(image_id)

    return AnnotationAuthority("mdt-1", MediaSettings(**bounds), image_info)


def arrow(shape_id: str) -> str:
    shape = {"id": shape_id, "type": "arrow", "points": [[0, 0], [3, 4]]}
    return json.dumps({"type": "op", "image_id": "ct", "frame": 0, "client_id": shape_id,
                       "op": {"kind": "add", "shape": shape}})  # fmt: skip


def test_the_authority_stamps_the_time_it_is_given_and_applies_the_event() -> None:
    annotations = authority()
    (delivery,) = annotations.handle("rad", RADIOLOGIST, arrow("a"), now=0.0, time=STAMP)
    event = json.loads(delivery.text)
    assert event["time"] == STAMP and event["seq"] == delivery.seq == 1
    assert annotations.seq == 1 and ("ct", 0, "a") in annotations.shapes


def test_the_rate_limit_refills_by_the_now_it_is_given() -> None:
    annotations = authority(annotation_ops_per_s=2, annotation_burst=2)
    kinds = [annotations.handle("rad", RADIOLOGIST, arrow(f"s{i}"), 100.0, STAMP)[0].kind
             for i in range(3)]  # fmt: skip
    assert kinds == ["event", "event", "error"]
    assert annotations.handle("rad", RADIOLOGIST, arrow("s3"), 100.4, STAMP)[0].kind == "error"
    assert annotations.handle("rad", RADIOLOGIST, arrow("s4"), 100.5, STAMP)[0].kind == "event"


def test_pointer_positions_are_limited_by_the_now_they_are_given() -> None:
    annotations = authority(pointer_per_s=10.0)
    raw = json.dumps({"type": "pointer", "image_id": "ct", "frame": 0, "x": 1, "y": 2})
    assert annotations.pointer("rad", RADIOLOGIST, raw, 50.0) is not None
    assert annotations.pointer("rad", RADIOLOGIST, raw, 50.0) is None
    assert annotations.pointer("rad", RADIOLOGIST, raw, 50.1) is not None

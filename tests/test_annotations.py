"""The room's annotation and chat authority, without an event loop or a network (sans-IO), and its
encrypted log on disk."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from annotations.authority import Delivery
from annotations.log import AnnotationLog, LogError, log_path
from annotations.room import RoomAnnotations
from core.imageref import ImageRef
from sfu.server import MediaSettings

REPO = Path(__file__).resolve().parents[1]
ROLES = tomllib.loads((REPO / "signaling" / "policy.toml").read_text("utf-8"))["roles"]
RADIOLOGIST = frozenset(ROLES["radiologist"])
TRAINEE = frozenset(ROLES["trainee"])
CHAIR = frozenset(ROLES["chair"]) | {"moderate_annotations"}
IMAGES = {"ct": ImageRef(frames=3, pixel_spacing_mm=(0.5, 0.7)), "photo": ImageRef(1, None)}
KEY = bytes(range(32))


def image_info(room_id: str, image_id: str) -> ImageRef | None:
    return IMAGES.get(image_id)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def room(settings: MediaSettings | None = None, **kwargs: Any) -> RoomAnnotations:
    return RoomAnnotations(
        "mdt-1", settings or MediaSettings(), image_info,
        wall_clock=lambda: "2026-01-01T00:00:00.000Z", **kwargs,
    )  # fmt: skip


def shape(shape_id: str = "s1", kind: str = "arrow", points: Any = None, **extra: Any) -> dict:
    if points is None:
        points = [[1, 2], [30, 40]]
    return {"id": shape_id, "type": kind, "points": points, "color": "#00ff00", **extra}


def op(body: dict, image: str = "ct", frame: int = 0, client_id: str = "c1", **extra: Any) -> str:
    message = {"type": "op", "client_id": client_id, "image_id": image, "frame": frame, "op": body}
    return json.dumps({**message, **extra})


def add(*args: Any, **kwargs: Any) -> str:
    return op({"kind": "add", "shape": shape(*args, **kwargs)})


def only(deliveries: list[Delivery]) -> tuple[Delivery, dict]:
    assert len(deliveries) == 1, deliveries
    return deliveries[0], json.loads(deliveries[0].text)


def error_code(deliveries: list[Delivery], sender: str) -> str:
    delivery, message = only(deliveries)
    assert delivery.kind == "error" and delivery.recipients == (sender,)
    assert message["type"] == "error"
    return str(message["code"])


# -- operations ------------------------------------------------------------------------------------


def test_an_add_is_stamped_with_seq_author_and_time_and_goes_to_everyone() -> None:
    annotations = room()
    delivery, event = only(annotations.handle("rad", RADIOLOGIST, add()))
    assert delivery.kind == "event" and delivery.recipients is None
    assert event["type"] == "event" and event["seq"] == 1 and event["kind"] == "op"
    assert event["author"] == "rad" and event["client_id"] == "c1"
    assert event["time"] == "2026-01-01T00:00:00.000Z"
    assert event["op"]["shape"] == {
        **shape(), "points": [[1.0, 2.0], [30.0, 40.0]], "text": "", "layer": "default",
        "image_id": "ct", "frame": 0, "author": "rad", "seq": 1,
    }  # fmt: skip
    assert annotations.authority.seq == 1 and len(annotations.authority.shapes) == 1


def test_every_shape_type_is_accepted_with_its_number_of_points() -> None:
    annotations = room()
    for kind in ("arrow", "line", "ellipse", "rectangle", "measure"):
        assert only(annotations.handle("rad", RADIOLOGIST, add(kind, kind)))[0].kind == "event"
    text = add("t", "text", [[5, 5]], text="tumour margin")
    assert only(annotations.handle("rad", RADIOLOGIST, text))[0].kind == "event"
    stroke = add("f", "freehand", [[i, i] for i in range(50)])
    assert only(annotations.handle("rad", RADIOLOGIST, stroke))[0].kind == "event"
    assert annotations.authority.seq == 7


@pytest.mark.parametrize(
    "body",
    [
        shape(points=[[1, 2]]),
        shape(kind="text", points=[[1, 2], [3, 4]]),
        shape(kind="freehand", points=[[1, 2]]),
        shape(kind="circle"),
        shape(color="red"),
        shape(color="#12345g"),
        shape(shape_id=""),
        shape(shape_id="x" * 65),
        shape(points=[[1, 2], [1e400, 4]]),
        shape(points=[[1, 2], ["a", 4]]),
        shape(kind="arrow", text="not for arrows"),
    ],
)
def test_malformed_shapes_are_refused_to_the_sender_only(body: dict) -> None:
    annotations = room()
    deliveries = annotations.handle("rad", RADIOLOGIST, op({"kind": "add", "shape": body}))
    assert error_code(deliveries, "rad") == "bad_message"
    assert annotations.authority.seq == 0 and not annotations.authority.shapes


@pytest.mark.parametrize(
    "raw", ["not json", "[]", '{"type": "shout"}', '{"type": "op"}', '{"type": "chat", "text": 1}']
)
def test_non_json_and_unknown_messages_are_refused(raw: str) -> None:
    annotations = room()
    assert error_code(annotations.handle("rad", RADIOLOGIST, raw), "rad") == "bad_message"
    assert annotations.authority.seq == 0


def test_the_error_names_the_client_id_of_the_refused_op() -> None:
    annotations = room()
    _, message = only(annotations.handle("rad", RADIOLOGIST, add(points=[[1, 1]])))
    assert message["client_id"] == "c1"


def test_trainee_without_annotate_is_refused() -> None:
    assert "annotate" not in TRAINEE
    annotations = room()
    assert error_code(annotations.handle("trainee", TRAINEE, add()), "trainee") == "not_allowed"
    assert annotations.authority.seq == 0 and not annotations.authority.shapes


def test_forged_author_seq_and_time_are_ignored() -> None:
    annotations = room()
    forged = op({"kind": "add", "shape": shape(author="chair", seq=99)}, author="chair", seq=99,
                time="1999-01-01T00:00:00Z")  # fmt: skip
    _, event = only(annotations.handle("rad", RADIOLOGIST, forged))
    assert event["author"] == "rad" and event["seq"] == 1
    assert event["time"] == "2026-01-01T00:00:00.000Z"
    assert event["op"]["shape"]["author"] == "rad" and event["op"]["shape"]["seq"] == 1


def test_unknown_image_or_frame_is_refused() -> None:
    annotations = room()
    unknown = op({"kind": "add", "shape": shape()}, image="nope")
    assert error_code(annotations.handle("rad", RADIOLOGIST, unknown), "rad") == "unknown_image"
    past_the_end = op({"kind": "add", "shape": shape()}, frame=3)
    assert error_code(annotations.handle("rad", RADIOLOGIST, past_the_end), "rad") == (
        "unknown_image"
    )


def test_without_an_image_store_every_image_is_unknown() -> None:
    annotations = RoomAnnotations("mdt-1", MediaSettings(), None)
    assert error_code(annotations.handle("rad", RADIOLOGIST, add()), "rad") == "unknown_image"


def test_a_measurement_carries_its_length_in_mm_from_the_pixel_spacing() -> None:
    annotations = room()
    _, event = only(annotations.handle("rad", RADIOLOGIST, add("m", "measure", [[0, 0], [3, 4]])))
    # x is a column (0.7 mm), y a row (0.5 mm): hypot(3 * 0.7, 4 * 0.5)
    assert event["op"]["shape"]["length_mm"] == pytest.approx(2.9, abs=1e-3)
    moved = op({"kind": "edit", "shape_id": "m", "points": [[0, 0], [10, 0]]})
    _, edit = only(annotations.handle("rad", RADIOLOGIST, moved))
    assert edit["op"]["length_mm"] == pytest.approx(7.0)
    assert annotations.authority.shapes["ct", 0, "m"].length_mm == pytest.approx(7.0)
    photo = op({"kind": "add", "shape": shape("p", "measure")}, image="photo")
    _, uncalibrated = only(annotations.handle("rad", RADIOLOGIST, photo))
    assert uncalibrated["op"]["shape"]["length_mm"] is None
    _, arrow = only(annotations.handle("rad", RADIOLOGIST, add("a")))
    assert "length_mm" not in arrow["op"]["shape"]


def test_edit_moves_recolours_and_retexts_a_shape() -> None:
    annotations = room()
    annotations.handle("rad", RADIOLOGIST, add("t", "text", [[5, 5]], text="old"))
    edit = op({"kind": "edit", "shape_id": "t", "points": [[9, 9]], "text": "new",
               "color": "#0000ff"})  # fmt: skip
    _, event = only(annotations.handle("rad", RADIOLOGIST, edit))
    assert event["op"] == {"kind": "edit", "shape_id": "t", "points": [[9.0, 9.0]],
                           "text": "new", "color": "#0000ff"}  # fmt: skip
    stored = annotations.authority.shapes["ct", 0, "t"]
    assert (stored.points, stored.text, stored.color, stored.seq) == ([(9, 9)], "new", "#0000ff", 2)


def test_edit_and_delete_of_unknown_shapes_are_refused() -> None:
    annotations = room()
    for body in ({"kind": "edit", "shape_id": "x", "color": "#000000"},
                 {"kind": "delete", "shape_id": "x"}):  # fmt: skip
        assert error_code(annotations.handle("rad", RADIOLOGIST, op(body)), "rad") == (
            "unknown_shape"
        )


def test_only_the_author_or_a_moderator_deletes_or_edits_a_shape() -> None:
    annotations = room()
    annotations.handle("rad", RADIOLOGIST, add("s1"))
    delete = op({"kind": "delete", "shape_id": "s1"})
    edit = op({"kind": "edit", "shape_id": "s1", "color": "#000000"})
    assert error_code(annotations.handle("surgeon", RADIOLOGIST, delete), "surgeon") == (
        "not_allowed"
    )
    assert error_code(annotations.handle("surgeon", RADIOLOGIST, edit), "surgeon") == (
        "not_allowed"
    )
    assert only(annotations.handle("chair", CHAIR, edit))[0].kind == "event"
    assert only(annotations.handle("chair", CHAIR, delete))[0].kind == "event"
    assert not annotations.authority.shapes
    annotations.handle("rad", RADIOLOGIST, add("s2"))
    own = op({"kind": "delete", "shape_id": "s2"})
    assert only(annotations.handle("rad", RADIOLOGIST, own))[0].kind == "event"


def test_clear_own_deletes_only_the_senders_shapes_on_that_frame() -> None:
    annotations = room()
    annotations.handle("rad", RADIOLOGIST, add("a"))
    annotations.handle("rad", RADIOLOGIST, op({"kind": "add", "shape": shape("b")}, frame=1))
    annotations.handle("surgeon", RADIOLOGIST, add("c"))
    _, event = only(annotations.handle("rad", RADIOLOGIST, op({"kind": "clear_own"})))
    assert event["op"] == {"kind": "clear_own"}
    assert set(annotations.authority.shapes) == {("ct", 1, "b"), ("ct", 0, "c")}


def test_a_shape_id_cannot_be_added_twice_on_the_same_frame() -> None:
    annotations = room()
    annotations.handle("rad", RADIOLOGIST, add("s1"))
    assert error_code(annotations.handle("surgeon", RADIOLOGIST, add("s1")), "surgeon") == (
        "bad_message"
    )


# -- bounds ----------------------------------------------------------------------------------------


def test_an_op_over_the_size_bound_is_refused() -> None:
    annotations = room(MediaSettings(annotation_max_bytes=200))
    big = add("t", "text", [[1, 1]], text="x" * 300)
    assert error_code(annotations.handle("rad", RADIOLOGIST, big), "rad") == "too_large"
    assert annotations.authority.seq == 0


def test_a_freehand_stroke_over_the_points_bound_is_refused() -> None:
    annotations = room(MediaSettings(annotation_max_points=10))
    stroke = add("f", "freehand", [[i, i] for i in range(11)])
    assert error_code(annotations.handle("rad", RADIOLOGIST, stroke), "rad") == "too_large"


def test_ops_over_the_rate_bound_are_refused_then_allowed_again() -> None:
    clock = Clock()
    annotations = room(MediaSettings(annotation_ops_per_s=10, annotation_burst=5), clock=clock)
    kinds = [only(annotations.handle("rad", RADIOLOGIST, add(f"s{i}")))[0].kind for i in range(6)]
    assert kinds == ["event"] * 5 + ["error"]
    assert error_code(annotations.handle("rad", RADIOLOGIST, add("s9")), "rad") == "rate_limited"
    # others are unaffected
    assert only(annotations.handle("surgeon", RADIOLOGIST, add("o")))[0].kind == "event"
    clock.now += 0.1
    assert only(annotations.handle("rad", RADIOLOGIST, add("s10")))[0].kind == "event"


def test_shapes_per_image_are_bounded() -> None:
    annotations = room(MediaSettings(annotation_max_shapes_per_image=3))
    for i in range(3):
        annotations.handle("rad", RADIOLOGIST, op({"kind": "add", "shape": shape(f"s{i}")},
                                                   frame=i))  # fmt: skip
    assert error_code(annotations.handle("rad", RADIOLOGIST, add("s4")), "rad") == "too_many_shapes"
    annotations.handle("rad", RADIOLOGIST, op({"kind": "delete", "shape_id": "s0"}))
    assert only(annotations.handle("rad", RADIOLOGIST, add("s4")))[0].kind == "event"


def test_chat_over_the_length_bound_is_refused() -> None:
    annotations = room(MediaSettings(chat_max_chars=10))
    long = json.dumps({"type": "chat", "client_id": "m", "text": "x" * 11, "to": []})
    assert error_code(annotations.handle("rad", TRAINEE, long), "rad") == "too_large"


def test_pointer_positions_are_rate_limited_and_relayed_with_the_sender() -> None:
    clock = Clock()
    annotations = room(clock=clock)
    raw = json.dumps({"type": "pointer", "image_id": "ct", "frame": 0, "x": 1.5, "y": 2})
    relayed = [annotations.pointer("rad", RADIOLOGIST, raw) for _ in range(10)]
    sent = [r for r in relayed if r is not None]
    assert 1 <= len(sent) <= 3
    assert json.loads(sent[0]) == {"type": "pointer", "image_id": "ct", "frame": 0, "x": 1.5,
                                   "y": 2.0, "from": "rad"}  # fmt: skip
    clock.now += 1.0
    count = sum(annotations.pointer("rad", RADIOLOGIST, raw) is not None for _ in range(100))
    assert count <= 3
    total = 0
    for _ in range(100):  # a steady stream at 100/s for 1 s
        clock.now += 0.01
        total += annotations.pointer("rad", RADIOLOGIST, raw) is not None
    assert 25 <= total <= 33
    assert annotations.pointer("trainee", TRAINEE, raw) is None
    assert annotations.authority.seq == 0, "pointers are never stamped nor stored"


# -- chat and receipts -----------------------------------------------------------------------------


def chat(text: str, to: list[str] | None = None, client_id: str = "m1") -> str:
    return json.dumps({"type": "chat", "client_id": client_id, "text": text, "to": to or []})


def receipt(seq: int, state: str) -> str:
    return json.dumps({"type": "receipt", "seq": seq, "state": state})


def test_any_participant_may_chat_to_the_room() -> None:
    annotations = room()
    delivery, event = only(annotations.handle("trainee", TRAINEE, chat("hello")))
    assert delivery.recipients is None
    assert event == {"type": "event", "seq": 1, "time": "2026-01-01T00:00:00.000Z",
                     "author": "trainee", "client_id": "m1", "kind": "chat", "text": "hello",
                     "to": []}  # fmt: skip


def test_a_private_chat_goes_only_to_its_sender_and_recipients() -> None:
    annotations = room()
    delivery, _ = only(annotations.handle("rad", RADIOLOGIST, chat("see slice 40", ["surgeon"])))
    assert delivery.recipients == ("rad", "surgeon")
    assert [c.text for c in annotations.snapshot("surgeon").chat] == ["see slice 40"]
    assert [c.text for c in annotations.snapshot("rad").chat] == ["see slice 40"]
    assert annotations.snapshot("nurse").chat == []
    assert annotations.snapshot("nurse").seq == 1


def test_receipts_go_to_the_chat_author_and_are_monotonic() -> None:
    annotations = room()
    annotations.handle("rad", RADIOLOGIST, chat("see slice 40", ["surgeon", "nurse"]))
    delivery, event = only(annotations.handle("surgeon", RADIOLOGIST, receipt(1, "delivered")))
    assert delivery.recipients == ("rad", "surgeon")
    assert (event["kind"], event["ref"], event["state"], event["author"]) == (
        "receipt", 1, "delivered", "surgeon"
    )  # fmt: skip
    assert annotations.handle("surgeon", RADIOLOGIST, receipt(1, "delivered")) == []
    only(annotations.handle("surgeon", RADIOLOGIST, receipt(1, "read")))
    assert annotations.handle("surgeon", RADIOLOGIST, receipt(1, "delivered")) == [], (
        "read implies delivered: no going back"
    )
    only(annotations.handle("nurse", RADIOLOGIST, receipt(1, "read")))  # read implies delivered
    assert annotations.authority.chat[1].receipts == {"surgeon": "read", "nurse": "read"}
    assert annotations.snapshot("rad").chat[0].receipts == {"surgeon": "read", "nurse": "read"}
    assert annotations.snapshot("nurse").chat[0].receipts == {"nurse": "read"}


def test_receipts_cannot_be_forged_by_another_participant() -> None:
    annotations = room()
    annotations.handle("rad", RADIOLOGIST, chat("for the surgeon only", ["surgeon"]))
    assert error_code(annotations.handle("nurse", RADIOLOGIST, receipt(1, "read")), "nurse") == (
        "not_allowed"
    )
    assert error_code(annotations.handle("rad", RADIOLOGIST, receipt(1, "read")), "rad") == (
        "not_allowed"
    )
    forged = json.dumps({"type": "receipt", "seq": 1, "state": "read", "author": "surgeon"})
    assert error_code(annotations.handle("nurse", RADIOLOGIST, forged), "nurse") == "not_allowed"
    assert error_code(annotations.handle("surgeon", RADIOLOGIST, receipt(7, "read")),
                      "surgeon") == "bad_message"  # fmt: skip
    annotations.handle("rad", RADIOLOGIST, add())
    assert error_code(annotations.handle("surgeon", RADIOLOGIST, receipt(2, "read")),
                      "surgeon") == "bad_message"  # fmt: skip
    assert annotations.authority.chat[1].receipts == {}


def test_anyone_but_the_author_may_acknowledge_a_room_wide_message() -> None:
    annotations = room()
    annotations.handle("rad", RADIOLOGIST, chat("all: next case"))
    delivery, _ = only(annotations.handle("trainee", TRAINEE, receipt(1, "read")))
    assert delivery.recipients == ("rad", "trainee")


# -- snapshot and sync -----------------------------------------------------------------------------


def test_sync_answers_the_snapshot_to_the_sender_only() -> None:
    annotations = room()
    annotations.handle("rad", RADIOLOGIST, add("s1"))
    annotations.handle("rad", RADIOLOGIST, chat("hi"))
    delivery, snapshot = only(annotations.handle("late", TRAINEE, '{"type":"sync","since":-1}'))
    assert delivery.kind == "snapshot" and delivery.recipients == ("late",)
    assert snapshot["type"] == "snapshot" and snapshot["seq"] == 2
    assert [s["id"] for s in snapshot["shapes"]] == ["s1"]
    assert snapshot["shapes"][0]["author"] == "rad"
    assert snapshot["chat"][0]["text"] == "hi" and snapshot["chat"][0]["receipts"] == {}


# -- convergence: clients applying events on top of a snapshot -------------------------------------


class ClientState:
    """What a web client keeps: shapes from a snapshot, then events applied in seq order."""

    def __init__(self, snapshot: dict) -> None:
        self.seq = snapshot["seq"]
        self.shapes = {(s["image_id"], s["frame"], s["id"]): s for s in snapshot["shapes"]}
        self.chat = [c["seq"] for c in snapshot["chat"]]
        """The seqs of the chat messages this client saw."""

    def apply(self, event: dict) -> None:
        assert event["seq"] > self.seq, "no duplicate, in order"
        self.seq = event["seq"]
        if event["kind"] == "chat":
            self.chat.append(event["seq"])
        if event["kind"] != "op":
            return
        where, body = (event["image_id"], event["frame"]), event["op"]
        if body["kind"] == "add":
            self.shapes[(*where, body["shape"]["id"])] = dict(body["shape"])
        elif body["kind"] == "delete":
            del self.shapes[(*where, body["shape_id"])]
        elif body["kind"] == "clear_own":
            for key in [k for k, s in self.shapes.items()
                        if k[:2] == where and s["author"] == event["author"]]:  # fmt: skip
                del self.shapes[key]
        else:
            current = self.shapes[(*where, body["shape_id"])]
            for name in ("points", "text", "color", "length_mm"):
                if name in body:
                    current[name] = body[name]
            current["seq"] = event["seq"]


def annotations_snapshot(annotations: RoomAnnotations) -> str:
    return msgspec.json.encode(annotations.snapshot("observer")).decode()


def server_shapes(annotations: RoomAnnotations) -> dict:
    snapshot = json.loads(annotations_snapshot(annotations))
    return {(s["image_id"], s["frame"], s["id"]): s for s in snapshot["shapes"]}


PARTICIPANTS = ("p0", "p1", "p2")
PERMS = {"p0": CHAIR, "p1": RADIOLOGIST, "p2": RADIOLOGIST}


class ConcurrentAnnotators(RuleBasedStateMachine):
    """Three participants send ops concurrently (valid, refused and conflicting); each client
    syncs at a random point and applies the events that reach it; all converge to the server."""

    def __init__(self) -> None:
        super().__init__()
        self.annotations = room(MediaSettings(annotation_ops_per_s=1e9, annotation_burst=10**9))
        self.clients: dict[str, ClientState | None] = dict.fromkeys(PARTICIPANTS)
        self.counter = 0

    def _send(self, sender: str, raw: str) -> None:
        for delivery in self.annotations.handle(sender, PERMS[sender], raw):
            if delivery.kind == "snapshot":
                self.clients[sender] = ClientState(json.loads(delivery.text))
            elif delivery.kind == "event":
                targets = delivery.recipients or PARTICIPANTS
                for target in targets:
                    client = self.clients.get(target)
                    if client is not None:  # not synced yet: its snapshot will cover it
                        client.apply(json.loads(delivery.text))

    @rule(sender=st.sampled_from(PARTICIPANTS))
    def sync(self, sender: str) -> None:
        self._send(sender, '{"type": "sync", "since": -1}')

    @rule(sender=st.sampled_from(PARTICIPANTS), frame=st.integers(0, 1),
          kind=st.sampled_from(["arrow", "measure", "freehand", "text"]))  # fmt: skip
    def add(self, sender: str, frame: int, kind: str) -> None:
        self.counter += 1
        points = {"text": [[1, 1]], "freehand": [[1, 1], [2, 2], [3, 5]]}.get(
            kind, [[0, 0], [3, 4]]
        )
        body = shape(f"{sender}-{self.counter}", kind, points, text="t" if kind == "text" else "")
        self._send(sender, op({"kind": "add", "shape": body}, frame=frame))

    def _target(self, data: st.DataObject) -> tuple[str, int, str] | None:
        keys = sorted(self.annotations.authority.shapes)
        if not keys:
            return None
        return data.draw(st.sampled_from(keys))

    @rule(sender=st.sampled_from(PARTICIPANTS), data=st.data())
    def edit(self, sender: str, data: st.DataObject) -> None:
        target = self._target(data)
        if target is None:
            return
        kind = self.annotations.authority.shapes[target].type
        points = {"text": [[7, 7]], "freehand": [[0, 0], [9, 9]]}.get(kind, [[2, 2], [8, 8]])
        body = {"kind": "edit", "shape_id": target[2], "points": points, "color": "#123456"}
        self._send(sender, op(body, image=target[0], frame=target[1]))

    @rule(sender=st.sampled_from(PARTICIPANTS), data=st.data())
    def delete(self, sender: str, data: st.DataObject) -> None:
        target = self._target(data)
        if target is not None:
            body = {"kind": "delete", "shape_id": target[2]}
            self._send(sender, op(body, image=target[0], frame=target[1]))

    @rule(sender=st.sampled_from(PARTICIPANTS), frame=st.integers(0, 1))
    def clear_own(self, sender: str, frame: int) -> None:
        self._send(sender, op({"kind": "clear_own"}, frame=frame))

    @rule(sender=st.sampled_from(PARTICIPANTS), to=st.lists(st.sampled_from(PARTICIPANTS)))
    def chat(self, sender: str, to: list[str]) -> None:
        self._send(sender, chat("hello", to))

    @rule(sender=st.sampled_from(PARTICIPANTS), garbage=st.text(max_size=30))
    def garbage(self, sender: str, garbage: str) -> None:
        before = self.annotations.authority.seq
        self._send(sender, garbage)
        assert self.annotations.authority.seq == before

    @rule(sender=st.sampled_from(PARTICIPANTS), data=st.data())
    def receipt(self, sender: str, data: st.DataObject) -> None:
        if self.annotations.authority.chat:
            seq = data.draw(st.sampled_from(sorted(self.annotations.authority.chat)))
            self._send(sender, receipt(seq, data.draw(st.sampled_from(["delivered", "read"]))))

    @invariant()
    def every_synced_client_has_the_server_state(self) -> None:
        expected = server_shapes(self.annotations)
        for name, client in self.clients.items():
            if client is not None:
                assert client.shapes == expected
                visible = [c.seq for c in self.annotations.snapshot(name).chat]
                assert client.chat == visible, "each sees exactly the chat addressed to them"


TestConcurrentAnnotators = ConcurrentAnnotators.TestCase
TestConcurrentAnnotators.settings = hypothesis_settings(
    max_examples=150, stateful_step_count=60, deadline=None
)


# -- the log on disk -------------------------------------------------------------------------------


def logged_room(data_dir: Path, **kwargs: Any) -> RoomAnnotations:
    log_file = AnnotationLog(log_path(data_dir, "mdt-1"), "mdt-1", KEY)
    return room(log_file=log_file, **kwargs)


def test_the_state_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    annotations = logged_room(tmp_path)
    annotations.handle("rad", RADIOLOGIST, add("a"))
    annotations.handle("rad", RADIOLOGIST, add("m", "measure"))
    annotations.handle("rad", RADIOLOGIST, op({"kind": "edit", "shape_id": "m",
                                                "points": [[0, 0], [3, 4]]}))  # fmt: skip
    annotations.handle("rad", RADIOLOGIST, op({"kind": "delete", "shape_id": "a"}))
    annotations.handle("rad", RADIOLOGIST, chat("private", ["surgeon"]))
    annotations.handle("surgeon", RADIOLOGIST, receipt(5, "read"))
    before = annotations_snapshot(annotations)
    annotations.close()
    again = logged_room(tmp_path)
    assert again.authority.seq == 6
    assert annotations_snapshot(again) == before
    assert again.snapshot("rad").chat[0].receipts == {"surgeon": "read"}
    _, event = only(again.handle("rad", RADIOLOGIST, add("b")))
    assert event["seq"] == 7
    again.close()
    assert logged_room(tmp_path).authority.seq == 7


def test_no_plaintext_annotation_or_chat_touches_disk(tmp_path: Path) -> None:
    annotations = logged_room(tmp_path)
    annotations.handle("rad", RADIOLOGIST, chat("Mrs Example, MRN 4417-XYZ"))
    annotations.handle("rad", RADIOLOGIST, add("t", "text", [[1, 1]], text="lesion-QQ91"))
    annotations.close()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [tmp_path / "rooms" / "mdt-1" / "annotations.log"]
    for path in files:
        data = path.read_bytes()
        for secret in (b"4417-XYZ", b"lesion-QQ91", b"Example", b"rad", b"chat"):
            assert secret not in data


def test_a_torn_last_record_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    annotations = logged_room(tmp_path)
    for i in range(3):
        annotations.handle("rad", RADIOLOGIST, add(f"s{i}"))
    annotations.close()
    path = log_path(tmp_path, "mdt-1")
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size - 5)  # the process died in the middle of writing record 3
    again = logged_room(tmp_path)
    assert again.authority.seq == 2 and set(again.authority.shapes) == {
        ("ct", 0, "s0"),
        ("ct", 0, "s1"),
    }
    assert "torn" in caplog.text
    _, event = only(again.handle("rad", RADIOLOGIST, add("s9")))
    assert event["seq"] == 3
    again.close()
    assert logged_room(tmp_path).authority.seq == 3, "appends continue after the last good record"


@pytest.mark.parametrize("damage", ["flip", "swap", "wrong_key", "wrong_room"])
def test_any_other_bad_record_is_an_error_naming_its_seq(tmp_path: Path, damage: str) -> None:
    annotations = logged_room(tmp_path)
    for i in range(3):
        annotations.handle("rad", RADIOLOGIST, add(f"s{i}"))
    annotations.close()
    path = log_path(tmp_path, "mdt-1")
    data = bytearray(path.read_bytes())
    record = len(data) // 3
    if damage == "flip":
        data[record + 40] ^= 1  # inside record 2's ciphertext
        path.write_bytes(bytes(data))
    elif damage == "swap":
        path.write_bytes(bytes(data[record : 2 * record] + data[:record] + data[2 * record :]))
    key, room_id = KEY, "mdt-1"
    if damage == "wrong_key":
        key = bytes(32)
    if damage == "wrong_room":
        (tmp_path / "rooms" / "mdt-2").mkdir()
        path.rename(log_path(tmp_path, "mdt-2"))
        room_id = "mdt-2"
    with pytest.raises(LogError, match=r"record [12]\b"):
        AnnotationLog(log_path(tmp_path, room_id), room_id, key)


def test_a_room_id_that_is_not_a_folder_name_is_refused(tmp_path: Path) -> None:
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(ValueError):
            log_path(tmp_path, bad)


def test_records_are_flushed_at_once_and_fsynced_at_most_every_100_ms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []
    real_fsync: Callable[[int], None] = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd))[-1])
    clock = Clock()
    log_file = AnnotationLog(log_path(tmp_path, "mdt-1"), "mdt-1", KEY, clock=clock)
    annotations = room(log_file=log_file, settings=MediaSettings(annotation_burst=1000))
    path = log_path(tmp_path, "mdt-1")
    annotations.handle("rad", RADIOLOGIST, add("s0"))
    sizes = [path.stat().st_size]
    for i in range(1, 20):
        annotations.handle("rad", RADIOLOGIST, add(f"s{i}"))
        sizes.append(path.stat().st_size)
    assert sizes == sorted(set(sizes)), "each record is on disk (in the OS) at once"
    assert len(syncs) == 1 and log_file.dirty
    clock.now += 0.1
    annotations.handle("rad", RADIOLOGIST, add("s20"))
    assert len(syncs) == 2 and not log_file.dirty
    annotations.handle("rad", RADIOLOGIST, add("s21"))
    annotations.close()
    assert len(syncs) == 3, "closing fsyncs what is left"


# -- one person across connections -----------------------------------------------------------------


def test_a_reconnected_participant_still_owns_their_shapes() -> None:
    annotations = room()
    annotations.identify("rad-1", "dr-rad")
    annotations.handle("rad-1", RADIOLOGIST, add("mine"))
    annotations.identify("rad-2", "dr-rad")  # the same person after a network blip
    annotations.identify("other", "dr-other")
    edit = op({"kind": "edit", "shape_id": "mine", "color": "#0000ff"}, client_id="c2")
    assert error_code(annotations.handle("other", RADIOLOGIST, edit), "other") == "not_allowed"
    _, event = only(annotations.handle("rad-2", RADIOLOGIST, edit))
    assert event["author"] == "rad-2" and event["author_user"] == "dr-rad"
    only(annotations.handle("rad-2", RADIOLOGIST, op({"kind": "clear_own"}, client_id="c3")))
    assert annotations.authority.shapes == {}


def test_a_private_message_follows_its_recipient_across_a_reconnect(tmp_path: Path) -> None:
    path = log_path(tmp_path, "mdt-1")
    annotations = room(log_file=AnnotationLog(path, "mdt-1", KEY))
    annotations.identify("rad", "dr-rad")
    annotations.identify("surgeon-1", "dr-surgeon")
    annotations.handle("rad", RADIOLOGIST, chat("consent pending", ["surgeon-1"]))
    annotations.identify("surgeon-2", "dr-surgeon")
    assert [c.text for c in annotations.snapshot("surgeon-2").chat] == ["consent pending"]
    delivery, _ = only(annotations.handle("surgeon-2", RADIOLOGIST, receipt(1, "read")))
    assert set(delivery.recipients or ()) >= {"rad", "surgeon-2"}
    assert annotations.snapshot("rad").chat[0].receipts == {"surgeon-2": "read"}
    # Someone else is still refused, and a restarted room still knows who was who.
    annotations.identify("nurse", "dr-nurse")
    assert annotations.snapshot("nurse").chat == []
    assert annotations.log is not None
    annotations.log.close()
    again = room(log_file=AnnotationLog(path, "mdt-1", KEY))
    again.identify("surgeon-3", "dr-surgeon")
    assert [c.text for c in again.snapshot("surgeon-3").chat] == ["consent pending"]
    assert again.snapshot("surgeon-3").chat[0].receipts == {"surgeon-3": "read"}

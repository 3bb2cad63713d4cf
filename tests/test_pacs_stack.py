"""A series as one stacked image (imaging.stack, ImageStore.share_slice): slices addressed by
arrival, ordered by anatomy, refused when they do not fit, updates paced. No event loop."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from core.imageref import ImageRef
from imaging.deidentify import replace_uid
from imaging.stack import (
    SeriesStacks,
    SliceImage,
    SlicePlace,
    SliceRefused,
    SliceStack,
    UpdatePacer,
    anatomical_order,
    slice_place,
)
from imaging.store import ImageStore, SharedImage, room_uid_secret
from recorder.roomkeys import RoomKeys, open_keyring
from tests.fixtures.orthanc import ct_series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal along -x
CT = SliceImage("dicom", 1, 256, 256, "image/png")


def axial(z: float, number: int | None = None) -> SlicePlace:
    return SlicePlace("s", (0.0, 0.0, z), AXIAL, number)


# -- ordering ---------------------------------------------------------------------------------


def test_slices_sort_along_the_normal_whatever_their_numbers_or_arrival() -> None:
    # The modality numbered them head to feet, the PACS sent them shuffled.
    places = [axial(10.0, 3), axial(30.0, 1), axial(0.0, 4), axial(20.0, 2)]
    assert anatomical_order(places) == (2, 0, 3, 1)  # z = 0, 10, 20, 30


def test_an_oblique_or_sagittal_series_sorts_along_its_own_normal() -> None:
    places = [SlicePlace("s", (x, 5.0, 7.0), SAGITTAL, None) for x in (2.0, -4.0, 9.0)]
    # The normal is -x: ascending along it is descending x.
    assert anatomical_order(places) == (2, 0, 1)


def test_without_positions_the_instance_number_orders_and_unnumbered_come_last() -> None:
    places = [SlicePlace("s", None, None, 5), SlicePlace("s", None, None, None),
              SlicePlace("s", None, None, 2), SlicePlace("s", None, None, None)]  # fmt: skip
    assert anatomical_order(places) == (2, 0, 1, 3)


def test_one_slice_without_a_position_or_another_orientation_falls_back_to_numbers() -> None:
    no_position = [axial(10.0, 1), axial(0.0, 2), SlicePlace("s", None, AXIAL, 3)]
    assert anatomical_order(no_position) == (0, 1, 2)
    turned = [axial(10.0, 1), axial(0.0, 2), SlicePlace("s", (0.0, 0.0, 5.0), SAGITTAL, 3)]
    assert anatomical_order(turned) == (0, 1, 2)


def test_equal_positions_keep_a_total_deterministic_order() -> None:
    places = [axial(0.0, 2), axial(0.0, 1), axial(0.0, None)]
    assert anatomical_order(places) == (2, 1, 0)  # by number (absent as 0), then arrival


def test_a_header_is_read_forgivingly() -> None:
    ds = Dataset()
    ds.SeriesInstanceUID = "2.25.1"
    ds.ImagePositionPatient = [1, 2, 3]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.InstanceNumber = "7"
    assert slice_place(ds) == SlicePlace("2.25.1", (1.0, 2.0, 3.0), AXIAL, 7)
    broken = Dataset()
    broken.ImagePositionPatient = [1, 2]  # two values: no position
    assert slice_place(broken) == SlicePlace("", None, None, None)
    assert SlicePlace("s", None, (1.0, 0.0, 0.0, 1.0, 0.0, 0.0), None).normal is None


# -- addressing -------------------------------------------------------------------------------


def test_a_frame_index_keeps_its_slice_while_the_order_changes_around_it() -> None:
    stack = SliceStack("img", CT, max_frames=10, expected=4)
    assert stack.add(axial(20.0)) == 0
    assert stack.order() == (0,) and stack.pending == 3
    # Someone draws on frame 0. Slices below it arrive: it moves down the order, still frame 0.
    assert stack.add(axial(10.0)) == 1
    assert stack.add(axial(0.0)) == 2
    assert stack.order() == (2, 1, 0)
    assert stack.add(axial(30.0)) == 3
    assert stack.order() == (2, 1, 0, 3) and stack.pending == 0
    assert stack.places[0] == axial(20.0)


def test_a_slice_that_does_not_fit_the_series_is_refused_with_its_reason() -> None:
    stack = SliceStack("img", CT, max_frames=2)
    assert stack.refusal(CT) is None
    assert stack.refusal(SliceImage("dicom", 1, 512, 512, "image/png")) == "slice_size_differs"
    assert stack.refusal(SliceImage("jpeg", 1, 256, 256, "image/jpeg")) == "slice_kind_differs"
    assert stack.refusal(SliceImage("dicom", 30, 256, 256, "image/png")) == (
        "multi_frame_in_series"
    )
    stack.add(axial(0.0))
    stack.add(axial(1.0))
    assert stack.refusal(CT) == "series_frame_limit"


def test_a_study_gets_one_stack_per_series() -> None:
    stacks = SeriesStacks(max_frames=100, expected={"a": 3, "b": 2})
    first = stacks.start("img-a", SlicePlace("a", None, None, 1), CT)
    assert stacks.stack_for("a") is first and stacks.stack_for("b") is None
    assert first.pending == 2
    stacks.start("img-b", SlicePlace("b", None, None, 1), CT)
    assert [s.image_id for s in stacks.stacks()] == ["img-a", "img-b"]


def test_updates_are_paced_to_a_few_a_second() -> None:
    pacer = UpdatePacer(interval_s=0.25)
    assert pacer.changed(now=100.0) == 0.0  # the first slice: at once
    pacer.sent(100.0)
    assert not pacer.dirty
    assert pacer.changed(now=100.1) == pytest.approx(0.15)  # wait; later changes ride along
    assert pacer.changed(now=100.2) == pytest.approx(0.05)
    assert pacer.dirty
    pacer.sent(100.25)
    assert pacer.changed(now=101.0) == 0.0  # a slow PACS: each slice announced at once


# -- in the store -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    keys = RoomKeys(open_keyring(tmp_path))
    return ImageStore(tmp_path, keys.key_for, max_images_per_room=2)


def bright_row(png: bytes) -> int:
    """Each test slice has its own bright row (its InstanceNumber): which slice a frame is."""
    with Image.open(io.BytesIO(png)) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    return int(pixels.mean(axis=1).argmax())


def shuffled_series(slices: int, size: int = 64) -> tuple[str, list[bytes]]:
    """A series' UID (as the PACS knows it) and its instances in a shuffled arrival order."""
    info, instances = ct_series(slices, size=size)
    shuffled = list(instances)
    random.Random(slices).shuffle(shuffled)
    return info.series_uid, shuffled


def stacks_for(store: ImageStore, series_uid: str, count: int) -> SeriesStacks:
    """What the share route builds: the PACS's count by the series UID replaced for the room."""
    secret = room_uid_secret(store.room_key("mdt-1"), "mdt-1")
    return SeriesStacks(max_frames=100, expected={replace_uid(series_uid, secret): count})


def share(store: ImageStore, data: bytes, stacks: SeriesStacks) -> SharedImage:
    return store.share_slice("mdt-1", data, stacks, shared_by_participant="p-1", uploader="dr")


def instance_number(data: bytes) -> int:
    return int(pydicom.dcmread(io.BytesIO(data)).InstanceNumber)


def test_a_shuffled_series_is_one_image_with_its_slices_in_anatomical_order(
    store: ImageStore, tmp_path: Path
) -> None:
    series_uid, arrivals = shuffled_series(6)
    assert [instance_number(d) for d in arrivals] != [1, 2, 3, 4, 5, 6]
    stacks = stacks_for(store, series_uid, 6)
    first = share(store, arrivals[0], stacks)
    assert (first.frames, first.slice_order, first.frames_pending) == (1, (0,), 5)
    pending = [share(store, data, stacks).frames_pending for data in arrivals[1:]]
    assert pending == [4, 3, 2, 1, 0]
    (image,) = store.list("mdt-1")  # max_images_per_room=2: the series counts once
    assert image.frames == 6 and image.image_id == first.image_id
    # Frame k is the k-th arrival for ever; scrolling slice_order walks z = 5, 10, ... 30.
    rows = [bright_row(store.frame("mdt-1", image.image_id, i)[0]) for i in range(6)]
    assert rows == [instance_number(data) for data in arrivals]
    assert [rows[i] for i in image.slice_order] == [1, 2, 3, 4, 5, 6]
    assert store.lookup("mdt-1", image.image_id) == ImageRef(6, image.pixel_spacing_mm)
    # Read back by a fresh store (a node restart): the same image.
    again = ImageStore(tmp_path, RoomKeys(open_keyring(tmp_path)).key_for)
    assert again.list("mdt-1") == [image]


def test_a_slice_of_another_size_is_refused_and_the_series_kept(store: ImageStore) -> None:
    series_uid, arrivals = shuffled_series(3)
    stacks = stacks_for(store, series_uid, 4)
    share(store, arrivals[0], stacks)
    _info, other = ct_series(1, size=32)
    odd = pydicom.dcmread(io.BytesIO(next(other)))
    odd.SeriesInstanceUID = series_uid  # a slice of the same series, another matrix
    out = io.BytesIO()
    odd.save_as(out, enforce_file_format=True)
    with pytest.raises(SliceRefused) as refused:
        share(store, out.getvalue(), stacks)
    assert refused.value.reason == "slice_size_differs"
    for data in arrivals[1:]:
        share(store, data, stacks)
    (image,) = store.list("mdt-1")
    assert (image.frames, image.frames_pending) == (3, 1)


def test_a_share_that_stops_leaves_a_complete_image_of_what_arrived(
    store: ImageStore, tmp_path: Path
) -> None:
    series_uid, arrivals = shuffled_series(5)
    stacks = stacks_for(store, series_uid, 5)
    share(store, arrivals[0], stacks)
    record = share(store, arrivals[1], stacks)
    assert record.frames_pending == 3
    done = store.finish_stack("mdt-1", record.image_id)
    assert (done.frames, done.frames_pending, len(done.slice_order)) == (2, 0, 2)
    assert store.list("mdt-1") == [done]
    # A node that stopped mid-share: what is on disk is read back as complete.
    share(store, arrivals[2], stacks)
    again = ImageStore(tmp_path, RoomKeys(open_keyring(tmp_path)).key_for)
    (reloaded,) = again.list("mdt-1")
    assert (reloaded.frames, reloaded.frames_pending) == (3, 0)

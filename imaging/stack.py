"""A series shared as one stacked image: how its slices are addressed and ordered as they arrive.

Sans-IO: no file, no clock, no loop. The store (`ImageStore.share_slice`) asks these objects what
to do with each slice it has de-identified; the PACS share (`signaling.http.routes.pacs`) asks
`UpdatePacer` when to tell the room.

Addressing. A slice's frame index is its ARRIVAL index in the image (0 for the first slice that
arrived, 1 for the next...) and never changes: annotations are keyed by image id and frame, and
somebody may draw on slice 0 while slice 150 is still on its way, so an index handed out must
mean the same pixels for the life of the image. The anatomical order is published beside it as
`slice_order`: the stored frame indexes sorted as a radiologist scrolls (see `anatomical_order`),
recomputed over what has arrived each time a slice comes in. The viewer pages through
`slice_order`, fetches and annotates by frame index. The first slice is therefore viewable the
moment it is stored (no waiting for the series to know where it goes), and a slice that turns
out to lie before it only changes the viewer's position label, never what an index shows.

The sort keys live in the share's `SeriesStacks` while it runs (the share is the only writer of
its images); the store keeps the resulting `slice_order`, which is final once the share ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_PARALLEL = 0.999
"""Cosine above which two slice normals count as the same direction (about 2.5 degrees)."""


class SliceRefused(ValueError):
    """An instance cannot be a slice of its series' stacked image (`reason` says why: a
    different size or kind, several frames of its own, the image's frame limit); the share
    skips it, names the reason in its progress and goes on. Never an answer to a request, so
    not a `ConsiliumError`."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"this instance cannot join its series ({reason})")
        self.reason = reason
        """The reason code (`slice_refusal`'s, or `series_frame_limit`)."""


@dataclass(frozen=True, slots=True)
class SlicePlace:
    """Where one slice lies, read from its de-identified header (PS3.3 C.7.6.2)."""

    series: str
    """Its SeriesInstanceUID as replaced for the room (groups a study's slices by series)."""
    position: tuple[float, float, float] | None = None
    """ImagePositionPatient: the top-left pixel's centre in the patient's frame, in mm."""
    orientation: tuple[float, float, float, float, float, float] | None = None
    """ImageOrientationPatient: the row and column direction cosines."""
    instance_number: int | None = None
    """InstanceNumber: the modality's numbering (not always spatial, sometimes absent)."""

    @property
    def normal(self) -> tuple[float, float, float] | None:
        """The unit normal of the slice plane (row × column), or None without orientation."""
        if self.orientation is None:
            return None
        rx, ry, rz, cx, cy, cz = self.orientation
        n = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
        length = math.sqrt(sum(v * v for v in n))
        if length < 1e-6:
            return None
        return (n[0] / length, n[1] / length, n[2] / length)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers


def slice_place(dataset: Any) -> SlicePlace:
    """The place of a (de-identified) DICOM dataset; missing or malformed attributes are None."""
    position = _floats(dataset.get("ImagePositionPatient"), 3)
    orientation = _floats(dataset.get("ImageOrientationPatient"), 6)
    try:
        number: int | None = int(dataset.get("InstanceNumber"))
    except (TypeError, ValueError):
        number = None
    return SlicePlace(
        series=str(dataset.get("SeriesInstanceUID", "") or ""),
        position=position,  # type: ignore[arg-type]
        orientation=orientation,  # type: ignore[arg-type]
        instance_number=number,
    )


def anatomical_order(places: Sequence[SlicePlace]) -> tuple[int, ...]:
    """The indexes of `places` (arrival order) in the order a radiologist scrolls them.

    By position along the slice normal (ascending: for an axial series in the usual orientation,
    feet to head) when every slice has a position and they share one orientation: that is where
    the slices are in the patient, whatever order the modality numbered them or the PACS sent
    them in (WADO-RS promises no order, and InstanceNumber may restart, run backwards or repeat
    across acquisitions). Otherwise by InstanceNumber, slices without one last; ties keep their
    arrival order, so the result is a total, deterministic order.
    """
    indexes = range(len(places))
    normal = places[0].normal if places else None
    geometric = normal is not None and all(
        p.position is not None
        and (n := p.normal) is not None
        and abs(sum(a * b for a, b in zip(n, normal, strict=True))) > _PARALLEL
        for p in places
    )
    if geometric and normal is not None:

        def along(i: int) -> tuple[float, int, int]:
            position = places[i].position
            assert position is not None
            distance = sum(a * b for a, b in zip(position, normal, strict=True))
            number = places[i].instance_number
            return (round(distance, 4), number if number is not None else 0, i)

        return tuple(sorted(indexes, key=along))

    def numbered(i: int) -> tuple[int, int, int]:
        number = places[i].instance_number
        return (0 if number is not None else 1, number or 0, i)

    return tuple(sorted(indexes, key=numbered))


@dataclass(frozen=True, slots=True)
class SliceImage:
    """What the store learnt of a de-identified slice: enough to tell whether it stacks."""

    kind: str
    """`dicom`, `png` or `jpeg`."""
    frames: int
    """Its own frames (a slice of a stack has exactly one)."""
    width: int
    """Columns in pixels."""
    height: int
    """Rows in pixels."""
    media_type: str
    """MIME type of its rendered frame."""


@dataclass
class SliceStack:
    """One series being stacked into one image: its geometry and the places of its slices."""

    image_id: str
    """The stacked image."""
    first: SliceImage
    """The first slice stored: every later slice must match it."""
    max_frames: int
    """Frames the image may hold (`ImageLimits.max_frames`)."""
    expected: int = 0
    """Instances the PACS said the series has (0: not known)."""
    places: list[SlicePlace] = field(default_factory=list)
    """Each stored frame's place, by frame index (= arrival order)."""

    def refusal(self, image: SliceImage) -> str | None:
        """Why `image` cannot join this stack (a reason code for the progress), or None."""
        if len(self.places) >= self.max_frames:
            return "series_frame_limit"
        return slice_refusal(image, self.first)

    def add(self, place: SlicePlace) -> int:
        """Record a stored slice; its frame index."""
        self.places.append(place)
        return len(self.places) - 1

    def order(self) -> tuple[int, ...]:
        """Frame indexes in anatomical order (see `anatomical_order`)."""
        return anatomical_order(self.places)

    @property
    def pending(self) -> int:
        """Slices still expected (0 when complete or not known)."""
        return max(0, self.expected - len(self.places))


def slice_refusal(image: SliceImage, first: SliceImage | None = None) -> str | None:
    """Why `image` cannot be a slice of a stack (of `first`'s, when given), or None."""
    if image.frames != 1:
        return "multi_frame_in_series"
    if first is None:
        return None
    if image.kind != first.kind or image.media_type != first.media_type:
        return "slice_kind_differs"
    if (image.width, image.height) != (first.width, first.height):
        return "slice_size_differs"
    return None


@dataclass
class SeriesStacks:
    """The stacks of one share from the PACS, by series (a study share makes one per series)."""

    max_frames: int
    """Frames one image may hold."""
    expected: dict[str, int] = field(default_factory=dict)
    """Instances per series as the PACS counted them, by the series UID replaced for the room."""
    by_series: dict[str, SliceStack] = field(default_factory=dict)
    """The stacks started so far."""

    def stack_for(self, series: str) -> SliceStack | None:
        """The stack of `series`, if its first slice is stored."""
        return self.by_series.get(series)

    def start(self, image_id: str, place: SlicePlace, first: SliceImage) -> SliceStack:
        """A new stack whose frame 0 is `first` (stored as `image_id`)."""
        stack = SliceStack(image_id, first, self.max_frames, self.expected.get(place.series, 0))
        stack.add(place)
        self.by_series[place.series] = stack
        return stack

    def stacks(self) -> list[SliceStack]:
        """Every stack, in the order started."""
        return list(self.by_series.values())


@dataclass
class UpdatePacer:
    """When to tell the room that a stack grew: at once if the last update is `interval_s`
    old, else once at the end of the interval (changes in between ride along). Bounds the
    room's `image_shared` / `pacs_share_progress` traffic to a few messages a second however
    fast slices arrive, while a slow PACS's every slice is still announced."""

    interval_s: float = 0.25
    """Shortest time between two updates."""
    last_sent: float = -math.inf
    """When the last update went out (the caller's clock)."""
    dirty: bool = False
    """A change is not yet announced."""

    def changed(self, now: float) -> float:
        """Note a change; seconds to wait before announcing it (0: now)."""
        self.dirty = True
        return max(0.0, self.last_sent + self.interval_s - now)

    def sent(self, now: float) -> None:
        """An update went out at `now` carrying every change so far."""
        self.last_sent = now
        self.dirty = False

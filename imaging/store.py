"""Shared images of a room: de-identified, rendered, encrypted at rest, listed and read back.

An upload becomes a `SharedImage` in `ImageStore.share`: `imaging.deidentify` removes what
identifies the patient, every frame is rendered for the browser (a lossless PNG, or the cleaned
JPEG of a photo), and each frame and a small metadata record are written encrypted under the
room's data key (`recorder.roomkeys`), in the segment cipher's container (`recorder.segments`):

    <data_dir>/rooms/<room_id>/images/<image_id>/meta.seg          the SharedImage, as JSON
    <data_dir>/rooms/<room_id>/images/<image_id>/frame-000000.seg  frame 0, and so on

Each object's cipher context names the room, the image and the frame, so an object copied to
another room, image or position fails to decrypt. Plaintext is only ever in memory: an image is
written in a hidden folder and renamed into place once complete, so a crash never leaves half
an image listed. A series from the PACS is the exception that grows in place
(`share_slice`, `imaging.stack`): its first slice is stored as above, each later one is written
as the next frame file (atomically, by rename) before the record that counts it is replaced, so
a reader never sees a frame the record does not have, and a crash leaves the slices that had
arrived. Everything here is synchronous file I/O and CPU work: the server runs it off the event
loop. Watermarking per viewer happens when a frame is served, not here.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from core.errors import Conflict, IntegrityError, NotFound, RateLimited
from core.imageref import ImageRef
from core.rooms import valid_room_id
from imaging.burnedin import Box
from imaging.pacs_source import DicomSource
from imaging.prepare import PreparedImage, image_title, prepare_image, redact_frame
from imaging.sniff import DEFAULT_LIMITS, FrameNotFound, ImageLimits
from imaging.stack import SeriesStacks, SliceImage, SlicePlace, SliceRefused, slice_refusal
from recorder.segments import decrypt_segment, open_segment_writer, segment_context

__all__ = [
    "ImageNotHeld", "ImageStore", "PreparedImage", "SharedImage", "TooManyImages", "UnknownImage",
    "image_title", "prepare_image", "redact_frame", "room_uid_secret",
]  # fmt: skip
"""`PreparedImage`, `prepare_image`, `image_title` and `redact_frame` live in `imaging.prepare`;
named here too, where the store's callers have always found them."""

log = logging.getLogger("consilium.images")

IMAGE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
"""What an image id looks like (ids are `secrets.token_urlsafe(16)`): never a path."""
META_FILE = "meta.seg"
"""The encrypted metadata record in an image's folder."""
_PARTIAL_PREFIX = ".partial-"
_CONTEXT_TRACK_META = "image-meta"
_CONTEXT_TRACK_FRAME = "image-frame"
_UID_SECRET_LABEL = b"consilium-dicom-uid-secret\x00"


class UnknownImage(NotFound):
    """No such image in this room (or never shared, or deleted by retention)."""

    code = "unknown_image"


class ImageNotHeld(Conflict):
    """Redaction was asked for an image that is not (or no longer) held."""

    code = "image_not_held"


class TooManyImages(RateLimited):
    """The room already holds as many shared images as it may."""

    code = "too_many_images"


_ANNOUNCED = (
    "image_id", "kind", "frames", "width", "height", "pixel_spacing_mm", "shared_by", "title",
    "burned_in_confirmed", "slice_order", "frames_pending",
)  # fmt: skip
"""The fields of `SharedImage.to_wire` that the `image_shared` message carries."""


@dataclass(frozen=True, slots=True)
class SharedImage:
    """One shared image of a room: what participants see of it, and what the store keeps."""

    image_id: str
    """Random id (URL-safe), unique per room."""
    kind: Literal["dicom", "png", "jpeg"]
    """What was uploaded, by content."""
    frames: int
    """Addressable frames (1 for photos and single-frame DICOM)."""
    width: int
    """Columns in pixels."""
    height: int
    """Rows in pixels."""
    pixel_spacing_mm: tuple[float, float] | None
    """Row and column spacing in mm for measurements; None when the image has none."""
    shared_by: str
    """Participant id of whoever shared it."""
    title: str
    """Modality and series description left after de-identification, or "Image"."""
    burned_in_confirmed: bool
    """The DICOM declared burned-in identifiers and the uploader confirmed sharing it."""
    media_type: str
    """MIME type of each stored frame: `image/png` or `image/jpeg`."""
    shared_at: float
    """When it was shared, seconds since the epoch (sharing order, retention)."""
    removed_tags: int
    """How many attributes or metadata items de-identification removed or replaced."""
    uploader: str = ""
    """`sub` of whoever shared it: the only one who sees it while it is held."""
    held: bool = False
    """Burned-in text may remain (`imaging.burnedin`): only the uploader sees the image
    until they redact what is left and confirm; it is not announced, listed or recorded."""
    held_reasons: tuple[str, ...] = ()
    """Why it is held: `text_remains`, `deid_blacklist`, `deid_whole_image`."""
    text_blanked: int = 0
    """Regions blanked by the burned-in text check (device regions and text read)."""
    redacted: int = 0
    """Boxes the uploader blanked by hand before releasing a held image."""
    slice_order: tuple[int, ...] = ()
    """A series shared from the PACS as one stacked image (`imaging.stack`): its frame indexes
    (arrival order, never renumbered) in anatomical order. Empty: frames in index order."""
    frames_pending: int = 0
    """Slices of a stacked series still on their way from the PACS (0: complete)."""
    source: DicomSource | None = None
    """For an image shared from the PACS, the original UIDs of each frame (annotations are
    written back against them, `imaging.presentation_state`); None for an upload. Kept in the
    encrypted record only: never in `to_wire` or the announcement."""

    def to_wire(self) -> dict[str, Any]:
        """The JSON object of the REST API (`201` body, list entries)."""
        return {
            "image_id": self.image_id,
            "kind": self.kind,
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "shared_by": self.shared_by,
            "title": self.title,
            "burned_in_confirmed": self.burned_in_confirmed,
            "held": self.held,
            "held_reasons": list(self.held_reasons),
            "text_blanked": self.text_blanked,
            "slice_order": list(self.slice_order),
            "frames_pending": self.frames_pending,
        }

    def announcement(self) -> dict[str, Any]:
        """The fields of the `image_shared` message every participant of the room receives
        (signalling declares the message; the store does not speak the wire protocol): the REST
        API's fields without the hold's (`held`, `held_reasons`, `text_blanked`)."""
        wire = self.to_wire()
        return {name: wire[name] for name in _ANNOUNCED}

    def encode(self) -> bytes:
        """The metadata record as stored (JSON, encrypted by the store)."""
        record = asdict(self)
        record["source"] = self.source.to_record() if self.source else None
        return json.dumps(record, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> SharedImage:
        """The record `encode` wrote."""
        raw = json.loads(data)
        spacing = raw.get("pixel_spacing_mm")
        raw["pixel_spacing_mm"] = (float(spacing[0]), float(spacing[1])) if spacing else None
        raw["held_reasons"] = tuple(raw.get("held_reasons", ()))
        raw["slice_order"] = tuple(raw.get("slice_order", ()))
        source = raw.get("source")
        raw["source"] = DicomSource.from_record(source) if source else None
        return cls(**raw)


def room_uid_secret(room_key: bytes, room_id: str) -> bytes:
    """The secret that replaces DICOM UIDs in one room: the same UID maps alike within the
    room (two slices of a series stay one series), differently in any other room."""
    return hmac.new(room_key, _UID_SECRET_LABEL + room_id.encode(), hashlib.sha256).digest()


def _context(room_id: str, image_id: str, track: str, index: int) -> bytes:
    return segment_context(f"room-image:{room_id}:{image_id}", track, index)


def _naming_every_frame(source: DicomSource | None, frames: int) -> DicomSource | None:
    """`source` if it names each of an image's `frames`, else None (no guessing)."""
    return source if source is not None and len(source.frames) == frames else None


def _stacked_source(
    stacked: DicomSource | None, slice_source: DicomSource | None, frames: int
) -> DicomSource | None:
    """The per-frame sources of a stacked image of `frames` frames once a slice is appended:
    None as soon as any slice's are missing or of another series."""
    if stacked is None or slice_source is None or len(stacked.frames) != frames:
        return None
    try:
        return DicomSource.stacked([stacked, slice_source])
    except ValueError:
        return None


def _frame_file(index: int) -> str:
    return f"frame-{index:06d}.seg"


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class ImageStore:
    """Each room's shared images under `<data_dir>/rooms/`, encrypted with the room's key.

    Thread-safe: uploads run in worker threads while the event loop lists and reads. The
    metadata of a room is read from disk once and then kept in memory.
    """

    def __init__(
        self,
        data_dir: Path,
        room_key: Callable[[str], bytes],
        *,
        max_images_per_room: int = 100,
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> None:
        self.root = Path(data_dir) / "rooms"
        self.room_key = room_key
        """The room's 32-byte data key (`RoomKeys.key_for`)."""
        self.max_images_per_room = max_images_per_room
        self.limits = limits
        self._lock = threading.Lock()
        self._rooms: dict[str, builtins.list[SharedImage]] = {}
        self._pending: dict[str, int] = {}

    # -- paths ---------------------------------------------------------------------------------

    def images_dir(self, room_id: str) -> Path:
        """The folder of a room's images (`UnknownImage` for an id that is not a room id)."""
        if not valid_room_id(room_id):
            raise UnknownImage("no such room")
        return self.root / room_id / "images"

    def _image_dir(self, room_id: str, image_id: str) -> Path:
        if not IMAGE_ID_PATTERN.match(image_id):
            raise UnknownImage("no such image in this room")
        return self.images_dir(room_id) / image_id

    # -- sharing -------------------------------------------------------------------------------

    def share(
        self,
        room_id: str,
        data: bytes,
        *,
        shared_by_participant: str,
        uploader: str = "",
        uid_secret: bytes | None = None,
        confirm_burned_in: bool = False,
        prepare: Callable[..., PreparedImage] = prepare_image,
        source: DicomSource | None = None,
    ) -> SharedImage:
        """De-identify, render, encrypt and store an uploaded image; the stored record.

        `uid_secret` replaces DICOM UIDs (default: derived from the room's data key, see
        `room_uid_secret`). `prepare` does the decoding (`prepare_image`, here or in an image
        worker). Raises what `deidentify` raises (`UnsupportedImage`, `ImageTooLarge`,
        `BurnedInAnnotation`) and `TooManyImages`. `source`: the original UIDs of an instance
        from the PACS (`imaging.pacs_source`), kept only when they name every frame.
        """
        self.images_dir(room_id)
        self._reserve(room_id)
        try:
            image = self._prepare(room_id, data, prepare, uid_secret, confirm_burned_in)
            source = _naming_every_frame(source, len(image.frames))
            return self._store_new(room_id, image, shared_by_participant, uploader, source=source)
        finally:
            self._unreserve(room_id)

    def share_slice(
        self,
        room_id: str,
        data: bytes,
        stacks: SeriesStacks,
        *,
        shared_by_participant: str,
        uploader: str,
        prepare: Callable[..., PreparedImage] = prepare_image,
        source: DicomSource | None = None,
    ) -> SharedImage:
        """One instance of a series from the PACS, through the upload's path (`_prepare`): the
        next frame of its series' stacked image (`imaging.stack`: appended, never renumbered),
        or frame 0 of a new one. The record returned is the stacked image as it now stands.

        A held instance becomes an image of its own, held for the sharer as an upload is; one
        that cannot stack raises `SliceRefused` (nothing stored). Only the share calls this, one
        instance at a time, so a stack has one writer; the record is replaced, never edited.
        `source`: the instance's original UIDs (`imaging.pacs_source`), appended to the stacked
        image's per-frame sources (dropped for the whole image if one slice lacks them, so a
        frame never maps to another slice's instance).
        """
        image = self._prepare(room_id, data, prepare)
        source = _naming_every_frame(source, len(image.frames))
        if image.burned_in_text.held:
            self._reserve(room_id)
            try:
                return self._store_new(room_id, image, shared_by_participant, uploader,
                                       source=source)  # fmt: skip
            finally:
                self._unreserve(room_id)
        one = SliceImage(image.kind, len(image.frames), image.width, image.height,
                         image.media_type)  # fmt: skip
        place = image.place or SlicePlace(series="")
        stack = stacks.stack_for(place.series)
        if stack is None:
            if reason := slice_refusal(one):
                raise SliceRefused(reason)
            pending = max(0, stacks.expected.get(place.series, 0) - 1)
            self._reserve(room_id)  # a series counts once against max_images_per_room
            try:
                record = self._store_new(room_id, image, shared_by_participant, uploader,
                                         slice_order=(0,), frames_pending=pending,
                                         source=source)  # fmt: skip
            finally:
                self._unreserve(room_id)
            stacks.start(record.image_id, place, one)
            return record
        if reason := stack.refusal(one):
            raise SliceRefused(reason)
        record = self.info(room_id, stack.image_id)
        key = self.room_key(room_id)
        index = record.frames
        context = _context(room_id, record.image_id, _CONTEXT_TRACK_FRAME, index)
        self._replace(self._image_dir(room_id, record.image_id) / _frame_file(index),
                      image.frames[0], key, context)  # fmt: skip
        stack.add(place)
        return self._update(room_id, record, frames=index + 1, slice_order=stack.order(),
                            frames_pending=stack.pending,
                            source=_stacked_source(record.source, source, index))  # fmt: skip

    def finish_stack(self, room_id: str, image_id: str) -> SharedImage:
        """A stacked image whose share ended (done, failed or cancelled): no slice is pending;
        it keeps the slices that arrived."""
        record = self.info(room_id, image_id)
        return record if not record.frames_pending else self._update(room_id, record,
                                                                     frames_pending=0)  # fmt: skip

    def _prepare(
        self,
        room_id: str,
        data: bytes,
        prepare: Callable[..., PreparedImage],
        uid_secret: bytes | None = None,
        confirm_burned_in: bool = False,
    ) -> PreparedImage:
        """De-identified and rendered by `prepare`, UIDs replaced for the room (the one path
        every image takes, uploaded or from the PACS)."""
        key = self.room_key(room_id)
        return prepare(
            data,
            uid_secret=uid_secret or room_uid_secret(key, room_id),
            confirm_burned_in=confirm_burned_in,
            limits=self.limits,
        )

    def _store_new(
        self,
        room_id: str,
        image: PreparedImage,
        shared_by_participant: str,
        uploader: str,
        **stacked: Any,
    ) -> SharedImage:
        """Encrypt and store a prepared image as a new one (in a hidden folder renamed into
        place once complete); `stacked`: a stack's `slice_order` and `frames_pending`, and the
        image's `source` (`imaging.pacs_source`)."""
        images_dir = self.images_dir(room_id)
        key = self.room_key(room_id)
        image_id = secrets.token_urlsafe(16)
        images_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = images_dir / f"{_PARTIAL_PREFIX}{image_id}"
        stored = False
        try:
            partial.mkdir(mode=0o700)
            for index, frame in enumerate(image.frames):
                self._write(
                    partial / _frame_file(index),
                    frame,
                    key,
                    _context(room_id, image_id, _CONTEXT_TRACK_FRAME, index),
                )
            record = SharedImage(
                image_id=image_id,
                kind=image.kind,
                frames=len(image.frames),
                width=image.width,
                height=image.height,
                pixel_spacing_mm=image.pixel_spacing_mm,
                shared_by=shared_by_participant,
                title=image.title,
                burned_in_confirmed=image.burned_in_confirmed,
                media_type=image.media_type,
                shared_at=time.time(),
                removed_tags=image.removed_tags,
                uploader=uploader,
                held=image.burned_in_text.held,
                held_reasons=image.burned_in_text.reasons,
                text_blanked=len(image.burned_in_text.blanked),
                **stacked,
            )
            self._write(
                partial / META_FILE,
                record.encode(),
                key,
                _context(room_id, image_id, _CONTEXT_TRACK_META, 0),
            )
            os.replace(partial, images_dir / image_id)
            stored = True
            with self._lock:
                self._load(room_id).append(record)
            return record
        finally:
            if not stored:
                shutil.rmtree(partial, ignore_errors=True)

    def _update(self, room_id: str, record: SharedImage, **changes: Any) -> SharedImage:
        """Replace an image's record (on disk atomically, then in memory); the new record."""
        updated = replace(record, **changes)
        self._replace(
            self._image_dir(room_id, record.image_id) / META_FILE,
            updated.encode(),
            self.room_key(room_id),
            _context(room_id, record.image_id, _CONTEXT_TRACK_META, 0),
        )
        with self._lock:
            records = self._load(room_id)
            for position, known in enumerate(records):
                if known.image_id == record.image_id:
                    records[position] = updated
        return updated

    def _unreserve(self, room_id: str) -> None:
        with self._lock:
            self._pending[room_id] -= 1
            if not self._pending[room_id]:
                del self._pending[room_id]

    def _reserve(self, room_id: str) -> None:
        """Count an upload in flight against the room's bound (so parallel ones cannot pass it)."""
        with self._lock:
            held = len(self._load(room_id)) + self._pending.get(room_id, 0)
            if held >= self.max_images_per_room:
                raise TooManyImages(
                    "this room holds as many shared images as it may",
                    limit=self.max_images_per_room,
                )
            self._pending[room_id] = self._pending.get(room_id, 0) + 1

    @staticmethod
    def _write(path: Path, plaintext: bytes, key: bytes, context: bytes) -> None:
        with open(path, "xb", opener=_private_opener) as sink:
            with open_segment_writer(sink, key, context) as writer:
                writer.write(plaintext)
            sink.flush()
            os.fsync(sink.fileno())

    # -- reading -------------------------------------------------------------------------------

    def list(self, room_id: str, *, uploader: str | None = None) -> builtins.list[SharedImage]:
        """The room's shared images in sharing order; with `uploader`, that person's held
        images as well (nobody else sees an image while it is held)."""
        self.images_dir(room_id)
        with self._lock:
            return [
                r
                for r in self._load(room_id)
                if not r.held or (uploader is not None and r.uploader == uploader)
            ]

    def visible(self, room_id: str, image_id: str, viewer: str) -> SharedImage:
        """One image's record if `viewer` (a `sub`) may see it: a shared image, or a held one
        they uploaded; `UnknownImage` otherwise (a held image does not exist for others)."""
        record = self.info(room_id, image_id)
        if record.held and record.uploader != viewer:
            raise UnknownImage("no such image in this room")
        return record

    def release(
        self, room_id: str, image_id: str, uploader: str, boxes: Sequence[tuple[int, Box]]
    ) -> SharedImage:
        """The uploader's redaction of a held image: blank `boxes` (frame, box) and share it.

        `UnknownImage` unless `uploader` uploaded this held image; `FrameNotFound` for a box
        on a frame the image does not have. Frames are replaced one by one (each atomically)
        before the record says the image is shared, so a crash leaves it held.
        """
        record = self.visible(room_id, image_id, uploader)
        if not record.held:
            raise ImageNotHeld("this image is not held for redaction")
        key = self.room_key(room_id)
        folder = self._image_dir(room_id, image_id)
        by_frame: dict[int, builtins.list[Box]] = {}
        for index, box in boxes:
            if not 0 <= index < record.frames:
                raise FrameNotFound(f"frame {index} does not exist", frames=record.frames)
            by_frame.setdefault(index, []).append(box)
        for index, frame_boxes in sorted(by_frame.items()):
            context = _context(room_id, image_id, _CONTEXT_TRACK_FRAME, index)
            path = folder / _frame_file(index)
            plain = decrypt_segment(path.read_bytes(), key, context)
            redacted = redact_frame(plain, record.media_type, frame_boxes)
            self._replace(path, redacted, key, context)
        return self._update(room_id, record, held=False, redacted=len(boxes))

    def _replace(self, path: Path, plaintext: bytes, key: bytes, context: bytes) -> None:
        fresh = path.with_name(path.name + ".new")
        fresh.unlink(missing_ok=True)
        self._write(fresh, plaintext, key, context)
        os.replace(fresh, path)

    def info(self, room_id: str, image_id: str) -> SharedImage:
        """One image's record; `UnknownImage` if the room has no such image."""
        self._image_dir(room_id, image_id)
        with self._lock:
            for record in self._load(room_id):
                if record.image_id == image_id:
                    return record
        raise UnknownImage("no such image in this room")

    def frame(self, room_id: str, image_id: str, index: int) -> tuple[bytes, str]:
        """Frame `index` of an image, decrypted, and its media type (not yet watermarked)."""
        record = self.info(room_id, image_id)
        if not 0 <= index < record.frames:
            raise FrameNotFound(f"frame {index} does not exist", frames=record.frames)
        path = self._image_dir(room_id, image_id) / _frame_file(index)
        try:
            ciphertext = path.read_bytes()
        except FileNotFoundError:
            raise UnknownImage("no such image in this room") from None
        context = _context(room_id, image_id, _CONTEXT_TRACK_FRAME, index)
        return decrypt_segment(ciphertext, self.room_key(room_id), context), record.media_type

    def lookup(self, room_id: str, image_id: str) -> ImageRef | None:
        """What the SFU needs of an image to check and measure annotations; None if unknown."""
        try:
            record = self.info(room_id, image_id)
        except NotFound:
            return None
        if record.held:  # nobody draws on an image the room cannot see
            return None
        return ImageRef(frames=record.frames, pixel_spacing_mm=record.pixel_spacing_mm)

    def _load(self, room_id: str) -> builtins.list[SharedImage]:
        """The room's records, read from disk on first use (call with the lock held)."""
        records = self._rooms.get(room_id)
        if records is not None:
            return records
        records = []
        images_dir = self.root / room_id / "images"
        if images_dir.is_dir():
            key = self.room_key(room_id)
            for folder in images_dir.iterdir():
                if folder.name.startswith(_PARTIAL_PREFIX):
                    # Left by a crash mid-upload: never listed, cleared now.
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                if not IMAGE_ID_PATTERN.match(folder.name):
                    continue
                context = _context(room_id, folder.name, _CONTEXT_TRACK_META, 0)
                try:
                    meta = decrypt_segment((folder / META_FILE).read_bytes(), key, context)
                    record = SharedImage.decode(meta)
                    # Read from disk: no share of this process is adding to it (a share that
                    # stopped with the node keeps the slices that arrived).
                    records.append(replace(record, frames_pending=0))
                except (OSError, IntegrityError, ValueError, TypeError, KeyError) as exc:
                    # One damaged image must not hide the room's others; it stays on disk.
                    log.error("shared image %s/%s unreadable: %s", room_id, folder.name, exc)
            records.sort(key=lambda r: (r.shared_at, r.image_id))
        self._rooms[room_id] = records
        return records

    # -- retention -----------------------------------------------------------------------------

    def delete_room(self, room_id: str) -> builtins.list[str]:
        """Delete every image of the room (its data is being removed); the ids deleted.

        Only the images go: the room's data key and its other data are left alone.
        """
        images_dir = self.images_dir(room_id)
        with self._lock:
            deleted = [r.image_id for r in self._load(room_id)]
            shutil.rmtree(images_dir, ignore_errors=True)
            self._rooms.pop(room_id, None)
        with contextlib.suppress(OSError):
            images_dir.parent.rmdir()  # the room's folder, if nothing else is in it
        return deleted

    def delete_expired(self, older_than: float) -> dict[str, builtins.list[str]]:
        """Delete every image shared before `older_than` (epoch seconds), in every room; the
        ids deleted, by room."""
        deleted: dict[str, builtins.list[str]] = {}
        if not self.root.is_dir():
            return deleted
        for room_dir in sorted(self.root.iterdir()):
            room_id = room_dir.name
            if not valid_room_id(room_id) or not (room_dir / "images").is_dir():
                continue
            with self._lock:
                records = self._load(room_id)
                expired = [r for r in records if r.shared_at < older_than]
                for record in expired:
                    shutil.rmtree(room_dir / "images" / record.image_id, ignore_errors=True)
                    records.remove(record)
            if expired:
                deleted[room_id] = [r.image_id for r in expired]
            if not records:
                with contextlib.suppress(OSError):
                    (room_dir / "images").rmdir()
        return deleted

"""A room's annotations as the SFU drives them: the authority, the clocks, and the log.

`AnnotationAuthority` decides (sans-IO) and `AnnotationLog` keeps the records; `RoomAnnotations`
is the thin executor between them that the SFU holds per room: it reads the clocks, hands each
message to the authority, writes each stamped event to the log (never raising: see
`AnnotationLog.append`) and tells the room (`storage`) when its log stops or starts being written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import msgspec

from annotations.authority import AnnotationAuthority, AnnotationBounds, Delivery, Recipients
from annotations.log import AnnotationLog, utc_now
from annotations.messages import Event, Snapshot, StorageNotice, encode
from core.imageref import ImageRef

_event_decoder = msgspec.json.Decoder(Event)


class RoomAnnotations:
    """One room's annotation authority with its log and clocks: what the SFU calls."""

    def __init__(
        self,
        room_id: str,
        settings: AnnotationBounds,
        image_info: Callable[[str, str], ImageRef | None] | None = None,
        log_file: AnnotationLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = utc_now,
        mirror: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self.authority = AnnotationAuthority(room_id, settings, image_info)
        self.log = log_file
        self.mirror = mirror
        """Told every stamped event (seq, JSON) as it is stamped: the copy another node takes
        the room over from when this one is lost (`signaling.annotation_mirror`)."""
        self.clock = clock
        """Monotonic seconds, for the rate limits."""
        self.wall_clock = wall_clock
        """The server time stamped on each event."""
        self.storing = True
        """What the room was last told (`StorageNotice`): whether its log is being written."""
        if log_file is not None:
            for event in log_file.replay():
                self.authority.apply(event)
            # A gap can be the last thing on disk (the disk filled again right after it).
            self.authority.skip_to(log_file.last_seq)

    def adopt(self, records: Iterable[tuple[int, bytes]]) -> int:
        """Take over the events another node stamped in this room after this one's last (its
        media moved here): applied in order and written to this node's log. Returns how many;
        records that do not decode are skipped (`LogError` is for this node's own log)."""
        adopted = 0
        for seq, text in sorted(records):
            if seq <= self.authority.seq:
                continue
            try:
                event = _event_decoder.decode(text)
            except msgspec.DecodeError:
                continue
            if event.seq != seq:
                continue
            self.authority.apply(event)
            if self.log is not None:
                self.log.append(seq, text)
            adopted += 1
        return adopted

    @property
    def seq(self) -> int:
        """The room's last stamped sequence number."""
        return self.authority.seq

    def identify(self, participant_id: str, user: str) -> None:
        """`participant_id` is `user` (the token's subject): called when they join."""
        self.authority.identify(participant_id, user)

    def handle(self, sender: str, permissions: frozenset[str], raw: str) -> list[Delivery]:
        """One message from `sender`'s reliable channel: the deliveries it causes, in order, with
        a `storage` notice when the log just stopped (or started) being written. Hot path, per
        annotation op: watched by bench/annotations.py."""
        deliveries = self.authority.handle(sender, permissions, raw, self.clock(),
                                           self.wall_clock())  # fmt: skip
        if self.mirror is not None and deliveries and deliveries[0].kind == "event":
            self.mirror(deliveries[0].seq, deliveries[0].text.encode())
        log_file = self.log
        if log_file is None or not deliveries:
            return deliveries
        delivery = deliveries[0]
        if delivery.kind == "event":
            log_file.append(delivery.seq, delivery.text.encode())  # never raises
            if log_file.stored != self.storing:
                deliveries.append(self.storage_notice())
        elif delivery.kind == "snapshot" and not log_file.stored:
            deliveries.append(self.storage_notice((sender,)))
        return deliveries

    def snapshot(self, participant_id: str) -> Snapshot:
        """The room's state as `participant_id` may see it (`AnnotationAuthority.snapshot`)."""
        return self.authority.snapshot(participant_id)

    def storage_notice(self, recipients: Recipients = None) -> Delivery:
        """Tell the room (or `recipients`) whether its log is being written (`StorageNotice`)."""
        log_file = self.log
        assert log_file is not None
        if recipients is None:
            self.storing = log_file.stored
        notice = StorageNotice(log_file.stored, len(log_file.unwritten), log_file.lost)
        return Delivery(recipients, encode(notice), "notice", "")

    def retry_storage(self, force: bool = False) -> list[Delivery]:
        """Write what a full disk held back (see `AnnotationLog.retry`); when it all went, the
        notice that tells the room so."""
        if self.log is None:
            return []
        self.log.retry(force)
        return [self.storage_notice()] if self.log.stored != self.storing else []

    def pointer(self, sender: str, permissions: frozenset[str], raw: str) -> str | None:
        """A pointer position from `sender` (`AnnotationAuthority.pointer`, now)."""
        return self.authority.pointer(sender, permissions, raw, self.clock())

    def forget(self, participant_id: str) -> None:
        """A participant left: drop their rate-limit state."""
        self.authority.forget(participant_id)

    def close(self) -> None:
        """Sync and close the log."""
        if self.log is not None:
            self.log.close()

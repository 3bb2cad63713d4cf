"""Data channels: a participant's channels, and the room's relay through its annotations.

The path of an annotation op is one straight line: a participant's data channel
(`DataChannels`) → the room's `AnnotationRelay` → the annotation authority
(`annotations.authority.RoomAnnotations`: checked, stamped, logged) → its deliveries → the
recipients' channels (and each stamped event to the room's sinks while recording). Pointer
positions take the lossy channel: rate-limited and relayed to the others, never stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiortc import RTCDataChannel

from annotations.authority import AnnotationError, Delivery
from annotations.log import FSYNC_INTERVAL_S, RETRY_INTERVAL_S
from annotations.messages import LOSSY, RELIABLE, error_text
from annotations.room import RoomAnnotations
from core.codes import ErrorCode
from sfu.sinks import MediaSink
from sfu.types import ReportError

log = logging.getLogger("consilium.sfu.session")  # one log for a participant's media parts

DATA_LABELS = {RELIABLE: True, LOSSY: False}
"""Data-channel labels the SFU serves, and whether each is reliable and ordered: annotations
and chat on the reliable one (`annotations.authority`), pointer positions on the lossy one."""


class DataChannels:
    """One participant's data channels on their publish session: accepted, watched, sent on."""

    __slots__ = (
        "channels",
        "closed",
        "participant_id",
        "permissions",
        "relay",
        "report_error",
        "synced",
    )

    def __init__(
        self,
        participant_id: str,
        permissions: frozenset[str],
        relay: AnnotationRelay,
        report_error: ReportError,
    ) -> None:
        self.participant_id = participant_id
        self.permissions = permissions
        self.relay = relay
        self.report_error = report_error
        """Tells the participant over signalling: `(code, message, request)`."""
        self.channels: dict[str, RTCDataChannel] = {}
        """Open channels by label."""
        self.synced = False
        """Asked for its annotation snapshot (`sync`): stamped events are sent from then on."""
        self.closed = False
        """The participant's media is closing: channels closing now are not an error."""

    def accept(self, channel: RTCDataChannel) -> None:
        """A channel the client opened on its publish session (unknown labels are refused)."""
        if channel.label not in DATA_LABELS:
            log.info("data channel with an unknown label refused", extra={"label": channel.label})
            channel.close()
            return
        self.channels[channel.label] = channel
        if DATA_LABELS[channel.label]:
            self.synced = False  # a new reliable channel: events again after its `sync`

        @channel.on("close")
        def on_close() -> None:
            if self.channels.get(channel.label) is not channel:
                return  # replaced by a newer channel, or the session is closing
            del self.channels[channel.label]
            if self.closed or not DATA_LABELS[channel.label]:
                return
            # No more events can reach this participant: it is out of step until it opens a new
            # channel and asks `sync` again. Tell it (over signalling, which still works).
            self.synced = False
            log.warning("reliable data channel closed", extra={"participant": self.participant_id})
            self.report_error(
                ErrorCode.DATA_CHANNEL_CLOSED,
                "the annotations and chat channel closed: open a new one and sync",
                "data",
            )

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            # Hot path, per annotation op: watched by bench/annotations.py.
            if isinstance(message, bytes):
                self.send(RELIABLE, error_text("bad_message", "messages are JSON text"))
                return
            self.relay.receive(self, channel.label, message)

    def send(self, label: str, message: str) -> None:
        """Send one message (JSON text) on the channel `label`, if open."""
        channel = self.channels.get(label)
        if channel is not None and channel.readyState == "open":
            channel.send(message)


class AnnotationRelay:
    """A room's data-channel traffic: hands it to the room's annotations and sends what they
    deliver to the participants' channels (and stamped events to the room's sinks)."""

    def __init__(self, room_id: str, annotations: RoomAnnotations, sinks: list[MediaSink]) -> None:
        self.room_id = room_id
        self.annotations = annotations
        self.sinks = sinks
        """The room's sinks (the same list the room keeps): a recording gets every event."""
        self.participants: dict[str, DataChannels] = {}
        """Each participant's channels, by participant id."""
        self._fsync: asyncio.TimerHandle | None = None

    def join(self, channels: DataChannels, user: str) -> None:
        """A participant entered: deliveries reach their channels; `user` names them in the
        annotations (authors), when known."""
        if user:
            self.annotations.identify(channels.participant_id, user)
        self.participants[channels.participant_id] = channels

    def leave(self, participant_id: str) -> None:
        """A participant is leaving: nothing more is sent to them."""
        self.participants.pop(participant_id, None)

    def forget(self, participant_id: str) -> None:
        """A participant's channels are closed: the annotations drop their rate-limit state."""
        self.annotations.forget(participant_id)

    def receive(self, sender: DataChannels, label: str, message: str) -> None:
        """A data-channel message. Reliable: to the room's annotations (checked, stamped,
        logged), then each delivery to its recipients and each stamped event to the sinks.
        Lossy: a pointer position, rate-limited and relayed to the others, never stored."""
        annotations = self.annotations
        if label == LOSSY:
            try:
                relayed = annotations.pointer(sender.participant_id, sender.permissions, message)
            except AnnotationError as exc:
                sender.send(RELIABLE, error_text(exc.code, str(exc)))
                return
            if relayed is not None:
                for participant in self.participants.values():
                    if participant is not sender:
                        participant.send(LOSSY, relayed)
            return
        for delivery in annotations.handle(sender.participant_id, sender.permissions, message):
            self.deliver(delivery, sender)
        log_file = annotations.log
        if log_file is not None and (log_file.dirty or log_file.unwritten) and self._fsync is None:
            self._fsync = asyncio.get_running_loop().call_later(FSYNC_INTERVAL_S, self._sync_log)

    def deliver(self, delivery: Delivery, sender: DataChannels | None) -> None:
        """Send one delivery of the annotations on the recipients' reliable channels. Stamped
        events go only to participants that asked for their snapshot (`sync`): the snapshot
        covers whatever came before, so nobody sees a gap or a duplicate."""
        if delivery.kind == "notice":  # not stamped: to each recipient, synced or not
            for participant in self.participants.values():
                if delivery.recipients is None or participant.participant_id in delivery.recipients:
                    participant.send(RELIABLE, delivery.text)
            return
        if delivery.kind != "event":
            assert sender is not None  # a snapshot or an error answers someone
            if delivery.kind == "snapshot":
                sender.synced = True
            sender.send(RELIABLE, delivery.text)
            return
        for sink in self.sinks:
            sink.on_data(self.room_id, delivery.author, RELIABLE, delivery.text)
        recipients = delivery.recipients
        if recipients is None:
            targets: Iterable[DataChannels] = self.participants.values()
        else:
            targets = (p for p in map(self.participants.get, recipients) if p is not None)
        for participant in targets:
            if participant.synced:
                participant.send(RELIABLE, delivery.text)

    def _sync_log(self) -> None:
        self._fsync = None
        annotations = self.annotations
        if annotations.log is not None:
            annotations.log.sync()
            # Records a full disk held back: tried again until written, then the room is told.
            for delivery in annotations.retry_storage():
                self.deliver(delivery, None)
            if annotations.log.unwritten:
                self._fsync = asyncio.get_running_loop().call_later(
                    RETRY_INTERVAL_S, self._sync_log
                )

    def close(self) -> None:
        """The room's media ends (emptied): fsync and close its log."""
        if self._fsync is not None:
            self._fsync.cancel()
            self._fsync = None
        self.annotations.close()

"""One participant's media with the SFU: a publish session and a subscribe session.

Why two peer connections: the client is always the offerer on `publish` (its camera, microphone,
screen and data channels) and the SFU always the offerer on `subscribe` (everyone else's media).
Neither side ever has to answer an offer while its own is outstanding, so there is no glare to
resolve, and people joining or leaving only renegotiate the subscribe session — which reuses idle
transceivers, so it renegotiates only when it needs more of them.

`ParticipantMedia` owns the parts, one job each: `sfu.publisher` (the publish session and its
tracks), `sfu.subscriber` (the subscribe session and its slots), `sfu.datachannels` (the data
channels). It watches both sessions and answers for the participant as a whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.sdp import candidate_from_sdp

from core.codes import ErrorCode
from sfu import ice_restart
from sfu.datachannels import AnnotationRelay, DataChannels
from sfu.events import MediaRefused
from sfu.forwarder import PublishedTrack
from sfu.ice_restart import IceRestart
from sfu.publisher import Publisher
from sfu.subscriber import Subscriber
from sfu.types import MediaError, Notify, ParticipantRoom

log = logging.getLogger("consilium.sfu.session")


class ParticipantMedia:
    """The SFU side of one participant: what they publish and what they receive."""

    # Slots, and the sessions call back through `self` (`SessionOwner`), not bound methods:
    # every participant has one of these (and a publisher, a subscriber and data channels),
    # media or not (bench/signaling.py's kib_per_participant).
    __slots__ = (
        "closed",
        "data",
        "greeted",
        "notify",
        "participant_id",
        "permissions",
        "publisher",
        "restarting",
        "room",
        "subscriber",
    )

    def __init__(
        self,
        room: ParticipantRoom,
        relay: AnnotationRelay,
        participant_id: str,
        permissions: frozenset[str],
        notify: Notify,
        configuration: RTCConfiguration,
        *,
        muted: dict[str, bool] | None = None,
    ) -> None:
        self.room = room
        self.participant_id = participant_id
        self.permissions = permissions
        self.notify = notify
        self.publisher = Publisher(room, participant_id, permissions, configuration, self)
        if muted is not None:
            self.publisher.muted.update(muted)
        self.subscriber = Subscriber(room, participant_id, configuration, notify, self)
        self.data = DataChannels(participant_id, permissions, relay, self.report_error)
        self.closed = False
        self.restarting: frozenset[str] = frozenset()
        """The sessions (`publish`, `subscribe`) whose ICE restart is under way."""
        self.greeted = False
        """Told, at its first publish offer, whose media in the room is reconnecting."""

    @property
    def tracks(self) -> dict[str, PublishedTrack]:
        """Published tracks by the publish session's mid."""
        return self.publisher.tracks

    @property
    def channels(self) -> dict[str, RTCDataChannel]:
        """Open data channels by label."""
        return self.data.channels

    @property
    def synced(self) -> bool:
        """Asked for its annotation snapshot (`sync`): stamped events are sent from then on."""
        return self.data.synced

    @property
    def dropped(self) -> int:
        """Packets refused as malformed or unroutable (a misbehaving peer shows here)."""
        return self.publisher.dropped + self.subscriber.dropped

    def session_opened(self, pc: RTCPeerConnection, which: str) -> None:
        """Watch a new session's state; take the publish session's data channels."""
        if which == "publish":
            pc.on("datachannel", self.data.accept)
        pc.on("connectionstatechange", lambda: self._on_state(pc, which))

    def ice_restart_began(self, restart: IceRestart, which: str) -> None:
        """An ICE restart of the `which` session began: the room sees this participant's media
        as reconnecting from the first of its sessions' restarts until the last is over (a
        network change restarts both, and they end apart)."""
        restart.ended = lambda: self._ice_restart_ended(which)
        if not self.restarting:
            self.room.media_reconnecting(self.participant_id, True)
        self.restarting = self.restarting | {which}

    def _ice_restart_ended(self, which: str) -> None:
        """The `which` session's restart is over: the room sees the media back with the last."""
        self.restarting = self.restarting - {which}
        if not self.restarting:
            self.room.media_reconnecting(self.participant_id, False)

    async def publish_offer(self, sdp: str, *, screen: Sequence[str] = ()) -> str:
        """Apply the client's publish offer; returns the SFU's answer (`Publisher.offer`).

        The first one also tells the participant whose media in the room is reconnecting now
        (`participant_reconnecting`, `media` true): a client offers only after reading its
        `joined`, so the news comes after the roster it amends, whichever node signals it."""
        if not self.greeted:
            self.greeted = True
            self.room.tell_newcomer(self.participant_id)
        return await self.publisher.offer(sdp, screen=screen)

    async def subscribe_answer(self, sdp: str) -> None:
        """Apply the client's answer to our subscribe offer."""
        await self.subscriber.answer(sdp)

    async def restart_ice(self) -> None:
        """Restart ICE on the subscribe session (the SFU re-offers with new credentials); the
        client restarts the publish session itself, with an offer (`Publisher.offer`)."""
        await self.subscriber.restart_ice()

    def subscribe(self, track: PublishedTrack) -> None:
        """Receive `track` (on an idle slot of its kind, or a new one)."""
        self.subscriber.subscribe(track)

    def unsubscribe(self, track: PublishedTrack) -> None:
        """Stop receiving `track`; its slot stays, idle, for the next publisher."""
        self.subscriber.unsubscribe(track)

    async def add_candidate(
        self, which: str, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        """A trickled ICE candidate from the client (empty: end of candidates)."""
        pc = self.publisher.pc if which == "publish" else self.subscriber.pc
        if pc is None:
            raise MediaError(f"no {which} session to add a candidate to")
        text = candidate.strip()
        if text.startswith("candidate:"):
            text = text[len("candidate:") :]
        if not text:
            return  # end of candidates: aioice checks what it has
        try:
            # aiortc's parser asserts on too few fields; addIceCandidate raises ValueError
            # without sdpMid and sdpMLineIndex: the client's mistake, answered, not a crash.
            ice = candidate_from_sdp(text)
            ice.sdpMid = sdp_mid
            ice.sdpMLineIndex = sdp_mline_index
            await pc.addIceCandidate(ice)
        except (ValueError, IndexError, AssertionError) as exc:
            raise MediaError(f"unusable ICE candidate: {str(exc)[:100] or 'malformed'}") from None

    def set_muted(self, kind: str, muted: bool) -> None:
        """Stop (or resume) forwarding this participant's audio or video."""
        self.publisher.set_muted(kind, muted)

    def tick(self, now: float, report: bool, speaker: str | None = None) -> None:
        """Periodic RTCP towards the publisher (`Publisher.tick`); the simulcast layers this
        participant receives (`Subscriber.tick`; `speaker`: the room's active speaker)."""
        self.publisher.tick(now, report)
        self.subscriber.tick(now, speaker)

    def show(self, sizes: dict[str, tuple[int, int]], now: float, speaker: str | None) -> None:
        """The sizes the page shows its received tracks at, by subscribe media id
        (`Subscriber.show`)."""
        self.subscriber.show(sizes, now, speaker)

    def send_data(self, label: str, message: str) -> None:
        """Send one message (JSON text) on this participant's data channel `label`, if open."""
        self.data.send(label, message)

    def _on_state(self, pc: RTCPeerConnection, which: str) -> None:
        # A session whose network died may never say "failed": when consent freshness (RFC 7675)
        # runs out, aioice closes the ICE connection, the DTLS transport closes on the read error,
        # and aiortc closes the peer connection ("closed"). Only close() closes ours on purpose.
        if pc.connectionState in ("failed", "closed") and not self.closed:
            log.info("media session failed", extra={"participant": self.participant_id})
            self.report_error(ErrorCode.MEDIA_FAILED, f"the {which} media session failed", which)
            asyncio.get_running_loop().create_task(self.room.remove(self.participant_id))

    def report_error(self, code: ErrorCode, message: str, request: str) -> None:
        """Tell the participant a request failed (an `error` message)."""
        self.notify(MediaRefused(code=code, message=message, request=request))

    async def close(self) -> None:
        """End both sessions and stop every track and slot."""
        if self.closed:
            return
        self.closed = True
        self.data.closed = True
        self.publisher.end_tracks()
        self.subscriber.stop()
        for pc in (self.publisher.pc, self.subscriber.pc):
            if pc is not None:
                ice_restart.abandon_pending(pc)
        await self.publisher.close()
        await self.subscriber.close()


def bundle_configuration(ice_servers: list[Any]) -> RTCConfiguration:
    """Peer-connection settings for SFU sessions: everything on one transport (max-bundle)."""
    return RTCConfiguration(iceServers=ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)

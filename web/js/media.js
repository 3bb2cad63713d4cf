// The two media sessions with the SFU (docs/protocol.md, `offer`): `publish` carries my camera,
// microphone and screen share; `subscribe` carries everyone else's, offered by the SFU.

import { changed, state } from "./state.js";

const DATA_CHANNELS = {
  "consilium-reliable": {},
  "consilium-lossy": { ordered: false, maxRetransmits: 0 },
};
const SPEAKING_LEVEL = 0.02; // inbound-rtp audioLevel (0..1) above which a tile shows speaking
const STATS_INTERVAL_MS = 500;

/** Publish and subscribe sessions for one signalling connection. */
export class MediaSessions {
  constructor(signalling, iceServers, onRemoteMedia) {
    this.signalling = signalling;
    this.iceServers = iceServers;
    this.onRemoteMedia = onRemoteMedia;
    this.publishPc = null;
    this.subscribePc = null;
    this.screenTransceiver = null;
    this.lastStats = new Map();
    this.statsTimer = setInterval(() => this.pollStats(), STATS_INTERVAL_MS);
  }

  peerConnection(which) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle" });
    pc.addEventListener("icecandidate", ({ candidate }) =>
      this.signalling.candidate(which, candidate),
    );
    pc.addEventListener("connectionstatechange", () => {
      state.connection[which] = pc.connectionState;
      changed();
    });
    return pc;
  }

  /** Offer my camera and microphone (either may be missing: then I only watch and listen). */
  async publish(stream) {
    this.publishPc = this.peerConnection("publish");
    for (const track of stream?.getTracks() ?? []) {
      this.publishPc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    }
    for (const [label, options] of Object.entries(DATA_CHANNELS)) {
      this.publishPc.createDataChannel(label, options);
    }
    await this.offerPublish();
  }

  async offerPublish() {
    await this.publishPc.setLocalDescription();
    const screen = this.screenTransceiver?.mid ? [this.screenTransceiver.mid] : [];
    this.signalling.offer("publish", this.publishPc.localDescription.sdp, screen);
  }

  async onAnswer(sdp) {
    await this.publishPc?.setRemoteDescription({ type: "answer", sdp });
  }

  async onOffer(sdp) {
    if (this.subscribePc === null) {
      this.subscribePc = this.peerConnection("subscribe");
      this.subscribePc.addEventListener("track", () => this.onRemoteMedia());
    }
    await this.subscribePc.setRemoteDescription({ type: "offer", sdp });
    await this.subscribePc.setLocalDescription();
    this.signalling.answer("subscribe", this.subscribePc.localDescription.sdp);
    this.onRemoteMedia();
  }

  /** Start a screen share: an extra sendonly transceiver, named in the offer's `screen`. */
  async startScreen(track) {
    if (this.screenTransceiver) {
      await this.screenTransceiver.sender.replaceTrack(track);
      this.screenTransceiver.direction = "sendonly";
    } else {
      this.screenTransceiver = this.publishPc.addTransceiver(track, { direction: "sendonly" });
    }
    await this.offerPublish();
  }

  async stopScreen() {
    if (!this.screenTransceiver) return;
    await this.screenTransceiver.sender.replaceTrack(null);
    this.screenTransceiver.direction = "inactive";
    await this.offerPublish();
  }

  /** Replace my camera or microphone track (a device picked again) without renegotiating. */
  async replaceTrack(kind, track) {
    const transceiver = this.publishPc
      ?.getTransceivers()
      .find((t) => t !== this.screenTransceiver && t.sender.track?.kind === kind);
    await transceiver?.sender.replaceTrack(track);
  }

  /** Remote tracks by participant: {participantId: {camera: [tracks], screen: [tracks]}}. */
  remoteTracks() {
    const byParticipant = new Map();
    for (const { mid, participant_id: pid, source } of state.tracks) {
      const transceiver = this.subscribePc?.getTransceivers().find((t) => t.mid === mid);
      if (!transceiver) continue;
      if (!byParticipant.has(pid)) byParticipant.set(pid, { camera: [], screen: [] });
      byParticipant.get(pid)[source === "screen" ? "screen" : "camera"].push(
        transceiver.receiver.track,
      );
    }
    return byParticipant;
  }

  /** Inbound statistics per subscribe mid, with the participant and source it carries now. */
  async stats() {
    const inbound = [];
    if (this.subscribePc === null) return { inbound };
    const owner = new Map(state.tracks.map((t) => [t.mid, t]));
    (await this.subscribePc.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      const track = owner.get(s.mid);
      inbound.push({
        mid: s.mid,
        participantId: track?.participant_id ?? null,
        source: track?.source ?? null,
        kind: s.kind,
        packetsReceived: s.packetsReceived ?? 0,
        packetsLost: s.packetsLost ?? 0,
        framesDecoded: s.framesDecoded ?? 0,
        frameWidth: s.frameWidth ?? 0,
        totalSamplesReceived: s.totalSamplesReceived ?? 0,
        audioLevel: s.audioLevel ?? 0,
        jitter: s.jitter ?? 0,
      });
    });
    return { inbound };
  }

  /** Speaking indicator and connection quality from the subscribe session's statistics. */
  async pollStats() {
    const { inbound } = await this.stats();
    const speaking = new Set(state.speaking.has(state.participantId) ? [state.participantId] : []);
    const quality = new Map();
    for (const s of inbound) {
      if (!s.participantId) continue;
      const before = this.lastStats.get(s.mid);
      this.lastStats.set(s.mid, s);
      if (s.kind === "audio") {
        const flowing = before && s.totalSamplesReceived > before.totalSamplesReceived;
        if (flowing && s.audioLevel > SPEAKING_LEVEL) speaking.add(s.participantId);
      }
      if (before && s.packetsReceived > before.packetsReceived) {
        const lost = s.packetsLost - before.packetsLost;
        const got = s.packetsReceived - before.packetsReceived;
        const poor = lost / (lost + got) > 0.05 || s.jitter > 0.1;
        if (poor || !quality.has(s.participantId)) {
          quality.set(s.participantId, poor ? "poor" : "good");
        }
      }
    }
    const same =
      speaking.size === state.speaking.size && [...speaking].every((p) => state.speaking.has(p));
    const sameQuality =
      quality.size === state.quality.size &&
      [...quality].every(([p, q]) => state.quality.get(p) === q);
    if (same && sameQuality) return;
    state.speaking = speaking;
    state.quality = quality;
    changed();
  }

  close() {
    clearInterval(this.statsTimer);
    this.publishPc?.close();
    this.subscribePc?.close();
    state.connection.publish = "closed";
    state.connection.subscribe = "closed";
  }
}

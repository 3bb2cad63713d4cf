// The two media sessions with the SFU (docs/protocol.md, `offer`): `publish` carries my camera,
// microphone and screen share; `subscribe` carries everyone else's, offered by the SFU.

import { DATA_CHANNELS, dataChannels } from "./protocol.js";
import { assess, FrameWindow, incoming, LossWindow } from "./quality.js";
import { changed, state } from "./state.js";

// A tile shows speaking while the mean audio level (0..1) over a statistics interval is above
// this, and for a moment after: the level comes from totalAudioEnergy, not the instantaneous
// audioLevel, which a poll can sample between two syllables every time.
const SPEAKING_LEVEL = 0.03;
const SPEAKING_HOLD_MS = 1000;
const STATS_INTERVAL_MS = 500;

// My camera, sent in simulcast layers (rid, lowest first: the SFU orders q;h;f by these names,
// sfu/simulcast.py) so the SFU forwards each person the one that fits their tile and link: a
// thumbnail, a half-size tile, the speaker shown large. Answered without simulcast (a room
// whose codec the SFU does not layer), the browser keeps only the first encoding: then it is
// set back to the full picture (`fullPictureIfSingle`).
export const CAMERA_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];
// Chromium (libwebrtc) encodes three layers of a picture 540 lines high or more, two from 270,
// and drops the top ones beyond that: asked for q, h and f of a 640×360 camera it never sends
// f (measured), and the large tile would get a 320×180 picture. So a camera gets the top layers
// that its height allows.
const LAYERS_FROM_HEIGHT = [
  [540, 3],
  [270, 2],
];
// What devices.js asks cameras for; a camera off at joining is sent in layers for this size.
const CAMERA_HEIGHT = 360;

/** The simulcast encodings for a camera `height` pixels high (none below two layers). */
export function cameraEncodings(height = CAMERA_HEIGHT) {
  const count = LAYERS_FROM_HEIGHT.find(([lines]) => height >= lines)?.[1] ?? 1;
  if (count < 2) return undefined;
  return CAMERA_LAYERS.slice(CAMERA_LAYERS.length - count).map((layer) => ({ ...layer }));
}

/** Publish and subscribe sessions for one signalling connection. */
export class MediaSessions {
  /** `ice`: the peer connections' `{ iceServers, iceTransportPolicy }` from `joined` ("relay":
   * media only through TURN, for networks that block UDP). */
  constructor(signalling, ice, onRemoteMedia) {
    this.signalling = signalling;
    this.iceServers = ice.iceServers;
    this.iceTransportPolicy = ice.iceTransportPolicy;
    this.onRemoteMedia = onRemoteMedia;
    this.publishPc = null;
    this.subscribePc = null;
    this.screenTransceiver = null;
    this.lastStats = new Map();
    // "mid participant-id" → LossWindow of that track's inbound packets. Per track, not summed
    // over a person's tracks: their video's loss is mostly repaired (NACK), their audio's is not,
    // and the audio's is what one hears.
    this.loss = new Map();
    this.frames = new Map(); // participant id → FrameWindow of their camera video
    this.uplinkLoss = new LossWindow(); // what the SFU reports lost of what I send
    this.spoke = new Map(); // participant id → when their audio was last above SPEAKING_LEVEL
    this.closed = false;
    this.statsTimer = setInterval(() => {
      // A session closed meanwhile has no statistics to read: nothing to report then.
      this.pollStats().catch((err) => this.closed || state.errors.push(`stats: ${err}`));
    }, STATS_INTERVAL_MS);
  }

  peerConnection(which) {
    const pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy,
      bundlePolicy: "max-bundle",
    });
    pc.addEventListener("icecandidate", ({ candidate }) =>
      this.signalling.candidate(which, candidate),
    );
    pc.addEventListener("connectionstatechange", () => {
      state.connection[which] = pc.connectionState;
      changed();
    });
    return pc;
  }

  /** Offer my camera and microphone (either may be missing: then I only watch and listen);
   * `cameraOff`: I turned my camera off (there is a video sender for when it comes back). */
  async publish(stream, cameraOff = false) {
    this.publishPc = this.peerConnection("publish");
    for (const track of stream?.getTracks() ?? []) {
      this.publishPc.addTransceiver(track, MediaSessions.sending(track, stream));
    }
    if (stream && cameraOff && !stream.getVideoTracks().length) {
      // My camera is off (stopped): a video sender without a track, for when it is turned on
      // (in layers too: turning it on is `replaceTrack`, with no new offer).
      this.publishPc.addTransceiver("video", MediaSessions.sending(null, stream));
    }
    // Annotations, chat and pointers (protocol.js `dataChannels`; it asks for a snapshot with
    // `sync` as soon as the ordered channel opens).
    for (const [label, options] of Object.entries(DATA_CHANNELS)) {
      dataChannels.attach(this.publishPc.createDataChannel(label, options));
    }
    await this.offerPublish();
  }

  /** Open the ordered data channel again (it closed while the session lives: no annotation or
   * chat event reaches me any more). True once it is open (it asks `sync` on opening), false if
   * it does not open in `timeoutMs` (then only joining again helps). */
  async reopenData(timeoutMs = 5000) {
    const label = "consilium-reliable";
    const current = dataChannels.channels.get(label);
    if (this.closed || !this.publishPc) return true;
    if (current && (current.readyState === "open" || current.readyState === "connecting")) {
      return true;
    }
    const channel = this.publishPc.createDataChannel(label, DATA_CHANNELS[label]);
    dataChannels.attach(channel);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(channel.readyState === "open"), timeoutMs);
      channel.addEventListener("open", () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  async offerPublish() {
    await this.publishPc.setLocalDescription();
    const screen = this.screenTransceiver?.mid ? [this.screenTransceiver.mid] : [];
    this.signalling.offer("publish", this.publishPc.localDescription.sdp, screen);
  }

  /** How a camera or microphone track is sent (null: the camera, off for now): the camera
   * in simulcast layers. */
  static sending(track, stream) {
    const init = { direction: "sendonly", streams: [stream] };
    if (track?.kind !== "audio") {
      const encodings = cameraEncodings(track?.getSettings().height);
      if (encodings) init.sendEncodings = encodings;
    }
    return init;
  }

  async onAnswer(sdp) {
    await this.publishPc?.setRemoteDescription({ type: "answer", sdp });
    await this.fullPictureIfSingle();
  }

  /** A camera the SFU answered without simulcast is sent as the one encoding the browser kept,
   * the first (a quarter-size picture): send the full picture on it instead. */
  async fullPictureIfSingle() {
    for (const transceiver of this.publishPc?.getTransceivers() ?? []) {
      if (transceiver === this.screenTransceiver || transceiver.receiver.track.kind !== "video") {
        continue;
      }
      const params = transceiver.sender.getParameters();
      const [only] = params.encodings ?? [];
      if (params.encodings?.length !== 1 || (only.scaleResolutionDownBy ?? 1) === 1) continue;
      only.scaleResolutionDownBy = 1;
      delete only.maxBitrate;
      await transceiver.sender.setParameters(params);
    }
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

  /** Start a screen share: an extra sendonly transceiver, named in the offer's `screen`. One
   * encoding, never layers: text must stay sharp, so the browser keeps the resolution and drops
   * frame rate when the link is short. */
  async startScreen(track) {
    track.contentHint = "detail";
    if (this.screenTransceiver) {
      await this.screenTransceiver.sender.replaceTrack(track);
      this.screenTransceiver.direction = "sendonly";
    } else {
      this.screenTransceiver = this.publishPc.addTransceiver(track, { direction: "sendonly" });
    }
    const sender = this.screenTransceiver.sender;
    const params = sender.getParameters();
    if (params.degradationPreference !== "maintain-resolution") {
      params.degradationPreference = "maintain-resolution";
      // Where the browser cannot set it, the "detail" hint asks for the same.
      await sender.setParameters(params).catch(() => {});
    }
    await this.offerPublish();
  }

  async stopScreen() {
    if (!this.screenTransceiver) return;
    await this.screenTransceiver.sender.replaceTrack(null);
    this.screenTransceiver.direction = "inactive";
    await this.offerPublish();
  }

  /** Replace my camera or microphone track (a device picked again, the camera turned off with
   * `null` or on again) without renegotiating. */
  async replaceTrack(kind, track) {
    const transceiver = this.publishPc
      ?.getTransceivers()
      .find((t) => t !== this.screenTransceiver && t.receiver.track.kind === kind);
    await transceiver?.sender.replaceTrack(track);
  }

  /** Remote tracks by participant: {participantId: {camera: [tracks], screen: [tracks]}}. */
  remoteTracks() {
    const byParticipant = new Map();
    for (const { mid, participant_id: pid, source } of state.tracks) {
      const transceiver = this.subscribePc?.getTransceivers().find((t) => t.mid === mid);
      if (!transceiver) continue;
      if (!byParticipant.has(pid)) byParticipant.set(pid, { camera: [], screen: [] });
      const sources = byParticipant.get(pid);
      sources[source === "screen" ? "screen" : "camera"].push(transceiver.receiver.track);
    }
    return byParticipant;
  }

  /** Inbound statistics per subscribe mid, with the participant and source it carries now, and
   * the local end of each session's selected path (`paths.publish`, `paths.subscribe`). */
  async stats() {
    const inbound = [];
    const paths = {};
    if (this.publishPc) paths.publish = MediaSessions.localPath(await this.publishPc.getStats());
    if (this.subscribePc === null) return { inbound, paths };
    const owner = new Map(state.tracks.map((t) => [t.mid, t]));
    const report = await this.subscribePc.getStats();
    paths.subscribe = MediaSessions.localPath(report);
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      const track = owner.get(s.mid);
      inbound.push({
        mid: s.mid,
        participantId: track?.participant_id ?? null,
        source: track?.source ?? null,
        kind: s.kind,
        codec: report.get(s.codecId)?.mimeType ?? null,
        packetsReceived: s.packetsReceived ?? 0,
        packetsLost: s.packetsLost ?? 0,
        framesDecoded: s.framesDecoded ?? 0,
        frameWidth: s.frameWidth ?? 0,
        // Chromium's own freeze count (a frame gap over max(3 × the mean gap, mean + 150 ms));
        // null where the browser has none: then the stalls are read from framesDecoded.
        freezeCount: s.freezeCount ?? null,
        totalFreezesDuration: s.totalFreezesDuration ?? null,
        totalSamplesReceived: s.totalSamplesReceived ?? 0,
        audioLevel: s.audioLevel ?? 0,
        totalAudioEnergy: s.totalAudioEnergy ?? 0,
        totalSamplesDuration: s.totalSamplesDuration ?? 0,
        jitter: s.jitter ?? 0,
      });
    });
    return { inbound, paths };
  }

  /** The local candidate of a session's selected ICE candidate pair: its type (host, srflx,
   * relay) and, for a relay, how it reaches the TURN server (udp, tcp, tls); null before one is
   * selected. */
  static localPath(report) {
    let path = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        const local = report.get(report.get(s.selectedCandidatePairId)?.localCandidateId);
        if (local) {
          path = { candidateType: local.candidateType, relayProtocol: local.relayProtocol ?? null };
        }
      }
    });
    return path;
  }

  /** The round-trip time of a session's selected ICE candidate pair, in ms; else the receiver
   * reports' (remote-inbound-rtp `roundTripTime`); null when neither is known yet. */
  static roundTripMs(report) {
    let rtt = null;
    let reported = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        const pair = report.get(s.selectedCandidatePairId);
        if (pair?.currentRoundTripTime !== undefined) rtt = pair.currentRoundTripTime * 1000;
      }
      if (s.type === "remote-inbound-rtp" && s.roundTripTime !== undefined) {
        reported = Math.max(reported ?? 0, s.roundTripTime * 1000);
      }
    });
    return rtt ?? reported;
  }

  /** The loss the SFU reports on what I send (0..1): the largest `fractionLost` of its receiver
   * reports on my streams, else the share lost of my cumulative counters over the last samples
   * (remote-inbound-rtp `packetsLost`, outbound-rtp `packetsSent`). */
  uplinkLossOf(report) {
    let fraction = null;
    let sent = 0;
    let lost = 0;
    report.forEach((s) => {
      if (s.type !== "remote-inbound-rtp") return;
      if (s.fractionLost !== undefined) fraction = Math.max(fraction ?? 0, s.fractionLost);
      lost += s.packetsLost ?? 0;
      sent += report.get(s.localId)?.packetsSent ?? 0;
    });
    this.uplinkLoss.add(Math.max(0, sent - lost), lost);
    return fraction ?? this.uplinkLoss.fraction();
  }

  /** Speaking indicator and connection quality from the sessions' statistics. */
  async pollStats() {
    const { inbound } = await this.stats();
    const publishReport = this.publishPc ? await this.publishPc.getStats() : null;
    const subscribeReport = this.subscribePc ? await this.subscribePc.getStats() : null;
    // My round trip to the SFU: either session's path (the same with max-bundle to one node).
    const rttMs =
      (subscribeReport && MediaSessions.roundTripMs(subscribeReport)) ??
      (publishReport && MediaSessions.roundTripMs(publishReport)) ??
      null;
    const uplinkLoss = publishReport ? this.uplinkLossOf(publishReport) : null;
    const now = performance.now();
    const speaking = new Set(state.speaking.has(state.participantId) ? [state.participantId] : []);
    const losses = new Map(); // participant id → the largest loss of their tracks (0..1)
    const seen = new Set();
    const figures = new Map(); // participant id → {frozen, fps, jitterMs} of their camera
    for (const s of inbound) {
      if (!s.participantId) continue;
      const before = this.lastStats.get(s.mid);
      this.lastStats.set(s.mid, s);
      if (s.kind === "audio" && before) {
        const duration = s.totalSamplesDuration - before.totalSamplesDuration;
        const energy = s.totalAudioEnergy - before.totalAudioEnergy;
        if (duration > 0 && Math.sqrt(energy / duration) > SPEAKING_LEVEL) {
          this.spoke.set(s.participantId, now);
        }
      }
      if (now - (this.spoke.get(s.participantId) ?? -Infinity) < SPEAKING_HOLD_MS) {
        speaking.add(s.participantId);
      }
      const key = `${s.mid} ${s.participantId}`;
      seen.add(key);
      if (!this.loss.has(key)) this.loss.set(key, new LossWindow());
      this.loss.get(key).add(s.packetsReceived, s.packetsLost);
      const loss = this.loss.get(key).fraction();
      const most = losses.get(s.participantId) ?? null;
      losses.set(s.participantId, loss === null ? most : Math.max(most ?? 0, loss));
      const theirs = figures.get(s.participantId) ?? { frozen: null, fps: null, jitterMs: null };
      figures.set(s.participantId, theirs);
      if (s.source === "screen") continue; // a shared screen may stand still: not a freeze
      if (s.kind === "audio") theirs.jitterMs = s.jitter * 1000;
      const person = state.participants.get(s.participantId);
      if (s.kind === "video" && !person?.video_muted) {
        if (!this.frames.has(s.participantId)) this.frames.set(s.participantId, new FrameWindow());
        const frames = this.frames.get(s.participantId);
        frames.add(now, s);
        theirs.frozen = frames.frozen();
        theirs.fps = frames.fps();
      } else if (s.kind === "video") {
        this.frames.delete(s.participantId); // camera off: start again when it is back
      }
    }
    for (const key of this.loss.keys()) if (!seen.has(key)) this.loss.delete(key);
    // `layer` (the simulcast layer received against the one wanted) is for the SFU to tell.
    const streams = [...losses].map(([pid, loss]) =>
      incoming({ participantId: pid, loss, ...figures.get(pid) }),
    );
    const { mine, others } = assess({ uplinkLoss, rttMs, streams });
    const quality = new Map([...others].filter(([, q]) => q.rating !== null));
    if (mine.rating !== null && state.participantId) quality.set(state.participantId, mine);
    const same =
      speaking.size === state.speaking.size && [...speaking].every((p) => state.speaking.has(p));
    const said = (q) => JSON.stringify(q);
    const sameQuality =
      quality.size === state.quality.size &&
      [...quality].every(([p, q]) => said(state.quality.get(p)) === said(q));
    if (same && sameQuality) return;
    state.speaking = speaking;
    state.quality = quality;
    changed();
  }

  close() {
    this.closed = true;
    clearInterval(this.statsTimer);
    this.publishPc?.close();
    this.subscribePc?.close();
    state.connection.publish = "closed";
    state.connection.subscribe = "closed";
  }
}

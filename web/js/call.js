// One visit to a room: the signalling connection, the media sessions, the room events, and
// coming back by itself after a network blip: first a `resume` of the same participant (media
// sessions kept, nothing missed), then, if the server refuses it, a rejoin (the server lets an
// admitted person skip the lobby). Media whose network changed restarts ICE on the same
// sessions (`restartMedia`); only if media is not back in time does the page rejoin.

import { closeDevices, localMedia, startCamera, stopCamera } from "./devices.js";
import { t } from "./i18n.js";
import { imageShared, loadImages } from "./images.js";
import { loadPacs, pacsShareProgress } from "./pacs.js";
import { MediaSessions } from "./media.js";
import { CLOSE, OBJECTS, SignallingConnection, dataChannels, withDefaults } from "./protocol.js";
import {
  consentRequested,
  leftRoom,
  recordingRefused,
  recordingState,
  resetRecording,
  storageLow,
} from "./recording.js";
import { changed, state } from "./state.js";

const MAX_RECONNECTS = 5;
const RECONNECT_DELAY_MS = [500, 1000, 2000, 4000, 8000];
// Closes after which trying again makes sense; the others are final (refusals, replaced, left).
const RETRY_CODES = new Set([CLOSE.goingAway, CLOSE.abnormal, CLOSE.serverError]);
// A socket gone without a close frame, or closed by a node going away (1001), is resumed first
// (the server holds the participant for its `resume_grace_s`, another node takes over one whose
// node was lost or drained); a short pause lets a network switch settle.
const RESUME_DELAY_MS = 300;
// How long an ICE restart may take to bring both media sessions back before the page rejoins.
const ICE_RESTART_TIMEOUT_MS = 10_000;
const RESTART_POLL_MS = 100;
const RESTART_SETTLE_MS = 5000;

/** The room notice's key for a refused request: the code's own words (what happened, what to
 * do), or the generic refusal for a code this client has no words for (a newer server). */
export function refusalNotice(code) {
  const key = `room.error_${code}`;
  return t(key) === key ? "room.refused" : key;
}

/** The id of a session's selected ICE candidate pair (a restart that worked selects a pair of
 * the new generation), or null. */
async function selectedPair(pc) {
  if (!pc || pc.signalingState === "closed") return null;
  let id = null;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) id = s.selectedCandidatePairId;
  });
  return id;
}

/** A ParticipantInfo with its defaults filled (the server leaves default fields out). */
function person(info) {
  return withDefaults(OBJECTS.ParticipantInfo, info);
}

/** A RoomState with its defaults filled. */
function roomState(info) {
  return withDefaults(OBJECTS.RoomState, info);
}

export class Call {
  constructor(token, roomId) {
    this.token = token;
    this.roomId = roomId;
    this.signalling = null;
    this.media = null;
    this.leaving = false;
    this.pending = Promise.resolve(); // messages are handled one at a time, in order
    this.screenTrack = null;
    this.cameraBusy = false; // a camera turned off or on is still being stopped or opened
    // What a resume needs ({participantId, resumeToken, lastSeq}): lastSeq counts the messages
    // received after `joined` (docs/protocol.md, `resume`); null before joining, or when the
    // server gave no resume token.
    this.session = null;
    this.resuming = false; // a resume is under way on a new socket
    // An ICE restart under way ({media, reason, startedAt, pairs, timer, poll, publishOwed}), or
    // null; `restartPending`: one was asked for while the socket was away (sent once it is back).
    this.iceRestart = null;
    this.restartPending = false;
    this.restartedAt = null; // when the last restart brought media back (performance.now())
    dataChannels.on("closed", () => this.recoverData());
  }

  /** My annotations and chat channel closed (I saw it close, or the SFU said so): open a new
   * one, which syncs; if it does not open, join again (the room lets me back in at once). */
  async recoverData() {
    const media = this.media;
    if (!media || this.leaving) return;
    if (await media.reopenData()) return;
    if (this.media === media && !this.leaving) {
      this.fail("data channel: could not open it again; joining again");
      this.dropConnection();
    }
  }

  connect() {
    this.signalling?.abandon();
    this.media?.close();
    this.media = null;
    state.connection.signalling = "connecting";
    if (state.screen !== "room" || state.reconnects === 0) {
      state.screen = "lobby";
      state.lobbyReason = state.reconnects ? "reconnecting" : "connecting";
    }
    changed();
    this.signalling = new SignallingConnection({
      onOpen: () => {
        state.connection.signalling = "open";
        changed();
      },
      onMessage: (msg) => {
        this.count(msg);
        this.pending = this.pending
          .then(() => this.handle(msg))
          .catch((err) => this.fail(`${msg.type}: ${err}`));
      },
      onClose: (code, reason) => this.closed(code, reason),
    });
    this.signalling.open(this.token, this.roomId);
  }

  /** Keep the count a resume sends, as each message arrives (handling may lag behind). */
  count(msg) {
    if (msg.type === "joined") {
      this.session = msg.resume_token
        ? { participantId: msg.participant_id, resumeToken: msg.resume_token, lastSeq: 0 }
        : null;
    } else if (msg.type !== "resumed" && this.session) {
      this.session.lastSeq += 1;
    }
  }

  fail(text) {
    state.errors.push(text);
    console.error(text);
  }

  async handle(msg) {
    state.received[msg.type] = (state.received[msg.type] ?? 0) + 1;
    switch (msg.type) {
      case "joined":
        return this.joined(msg);
      case "lobby":
        state.participantId = msg.participant_id;
        state.screen = "lobby";
        state.lobbyReason = msg.reason;
        break;
      case "knock":
        state.lobby.set(msg.participant.participant_id, person(msg.participant));
        break;
      case "lobby_left":
        state.lobby.delete(msg.participant_id);
        break;
      case "participant_joined":
        state.participants.set(msg.participant.participant_id, person(msg.participant));
        break;
      case "participant_left":
        state.participants.delete(msg.participant_id);
        state.reconnecting.delete(msg.participant_id);
        state.mediaReconnecting.delete(msg.participant_id);
        break;
      case "participant_reconnecting": {
        // Two independent sources: signalling holding a dropped connection, and the SFU
        // restarting ICE (`media`); the tile shows reconnecting while either says so.
        const held = msg.media ? state.mediaReconnecting : state.reconnecting;
        if (msg.reconnecting) held.add(msg.participant_id);
        else held.delete(msg.participant_id);
        break;
      }
      case "media_moved":
        return this.moveMedia();
      case "resumed":
        this.resuming = false;
        state.connection.signalling = "open";
        if (state.notice === "room.reconnecting") state.notice = "";
        state.resumes += 1;
        if (msg.replayed === false) {
          // My node was lost and another took me over: nothing was replayed, and a `joined`
          // follows with the room as it is now. My media sessions went with that node's hold:
          // close them; `joined` opens new ones (same participant, no lobby, consent kept).
          this.stopRestart();
          this.restartPending = false;
          this.media?.close();
          this.media = null;
          state.tracks = [];
          break;
        }
        if (this.restartPending) this.restartMedia("resumed");
        break;
      case "participant_updated":
        this.updated(person(msg.participant), msg.by);
        break;
      case "room_updated":
        state.room = roomState(msg.room);
        break;
      case "tracks":
        state.tracks = msg.tracks.map((track) => withDefaults(OBJECTS.TrackInfo, track));
        break;
      case "active_speaker":
        state.activeSpeaker = msg.participant_id;
        break;
      case "offer":
        if (msg.pc === "subscribe") await this.media?.onOffer(msg.sdp);
        break;
      case "answer":
        if (msg.pc === "publish") await this.media?.onAnswer(msg.sdp);
        if (msg.pc === "publish" && this.iceRestart?.publishOwed) {
          this.iceRestart.publishOwed = false;
          await this.media?.offerPublish(); // the restart's offer, held back until now
        }
        break;
      case "image_shared":
        imageShared(msg);
        break;
      case "pacs_share_progress":
        pacsShareProgress(msg);
        break;
      case "consent_requested":
        consentRequested(msg);
        break;
      case "recording_state":
        recordingState(msg);
        break;
      case "storage_low":
        storageLow(msg);
        break;
      case "error":
        if (msg.code === "data_channel_closed") {
          this.recoverData();
          break;
        }
        if (recordingRefused(msg)) break;
        state.notice = refusalNotice(msg.code);
        this.fail(`server refused ${msg.request || "a request"}: ${msg.code}: ${msg.message}`);
        break;
      default:
        return;
    }
    changed();
  }

  async joined(msg) {
    state.participantId = msg.participant_id;
    state.permissions = msg.permissions;
    state.room = roomState(msg.room);
    state.participants = new Map(msg.participants.map((p) => [p.participant_id, person(p)]));
    state.participants.set(msg.participant_id, person(msg.you));
    // Those held for a resume since their node was lost (others say so as it changes).
    state.reconnecting = new Set(
      msg.participants.filter((p) => p.reconnecting).map((p) => p.participant_id),
    );
    state.mediaReconnecting = new Set();
    state.lobby = new Map(msg.lobby.map((p) => [p.participant_id, person(p)]));
    state.tracks = [];
    resetRecording();
    state.screen = "room";
    state.lobbyReason = null;
    state.reconnects = 0;
    changed();
    // Images shared before I joined, or while I was away.
    loadImages().catch((err) => this.fail(`images: ${err}`));
    loadPacs().catch(() => {}); // no PACS panel: the meeting does not depend on it
    // A rejoin keeps my own mute choices: tell the room again.
    if (state.media.audioMuted || state.media.videoMuted) {
      this.signalling.setMedia({
        audioMuted: state.media.audioMuted,
        videoMuted: state.media.videoMuted,
      });
    }
    this.ice = { iceServers: msg.ice_servers, iceTransportPolicy: msg.ice_transport_policy };
    localMedia.onTrackReplaced = (kind, track) => this.media?.replaceTrack(kind, track);
    await this.openMedia();
  }

  /** Open my media sessions with the SFU hosting the room: publish my camera, microphone and
   * screen share (and the data channels); the SFU offers the subscribe session. */
  async openMedia() {
    const media = new MediaSessions(this.signalling, this.ice, () => changed());
    this.media = media;
    // Join may be pressed (and the chair may admit) before the camera and microphone are open:
    // publish what the devices give, not an offer without them.
    await localMedia.ready;
    if (this.media !== media) return; // moved again, or left, meanwhile
    await media.publish(localMedia.stream, state.media.videoMuted);
    if (this.screenTrack) await media.startScreen(this.screenTrack);
  }

  /** `media_moved`: the node hosting the room's media was lost and another took the room.
   * My sessions lead nowhere: close them and open new ones there (an ICE restart under way
   * toward the dead node is dropped). The room, consent and this signalling connection stay:
   * no rejoin, no lobby. */
  async moveMedia() {
    if (this.leaving || state.screen !== "room" || !this.media) return;
    this.stopRestart();
    this.restartPending = false;
    this.media.close();
    this.media = null;
    state.tracks = [];
    state.mediaReconnecting = new Set();
    state.mediaMoves = (state.mediaMoves ?? 0) + 1;
    // A recording ran on the lost node: it ended there (what it stored stays in that node's
    // archive). Say so; the new node then says where the room's recording stands (it continues
    // it as a new recording, consent standing, when the lost node had kept the room's state).
    if (state.recording.recording) {
      recordingState({
        recording: false,
        failure: "node_lost",
        failed_recording_id: state.recording.recording_id,
      });
    } else {
      recordingState({ recording: false });
    }
    if (state.notice === "room.reconnecting") state.notice = "";
    changed();
    await this.openMedia();
  }

  /** My network changed (connectivity.js: ICE disconnected or failed, the browser back online):
   * restart ICE on my media sessions, keeping the room, consent and annotations. The publish
   * session offers new ICE credentials (`restartIce()`); the SFU re-offers the subscribe session
   * (`restart_ice`). "Reconnecting…" shows meanwhile; without media back in time, join again. */
  restartMedia(reason) {
    const media = this.media;
    if (!media || this.leaving || state.screen !== "room" || this.iceRestart?.media === media) {
      return;
    }
    if (this.resuming || state.connection.signalling !== "open") {
      this.restartPending = true; // nothing can be sent yet: once the socket is back
      return;
    }
    this.restartPending = false;
    const restart = {
      media,
      reason,
      startedAt: performance.now(),
      // Back when each session has selected a pair of the new generation: its state says
      // "connected" on the dead pair until Chromium notices, and always on a working one.
      pairs: null,
      timer: setTimeout(() => this.restartTimedOut(media), ICE_RESTART_TIMEOUT_MS),
      poll: setInterval(() => this.checkRestart().catch(() => {}), RESTART_POLL_MS),
    };
    this.iceRestart = restart;
    state.iceRestarts = (state.iceRestarts ?? 0) + 1;
    state.notice = "room.reconnecting";
    changed();
    this.sendRestart(media, restart).catch((err) => this.fail(`ICE restart: ${err}`));
  }

  async sendRestart(media, restart) {
    restart.pairs = {
      publish: await selectedPair(media.publishPc),
      subscribe: await selectedPair(media.subscribePc),
    };
    const publish = media.publishPc;
    if (publish && publish.signalingState !== "closed") {
      publish.restartIce();
      // An offer still waiting for its answer carries the old credentials: the next one, with
      // the new ones, is made once that answer is in (`answerApplied`).
      if (publish.signalingState === "stable") await media.offerPublish();
      else restart.publishOwed = true;
    }
    if (media.subscribePc) this.signalling.restartIce("subscribe");
  }

  /** Whether the restart under way brought both media sessions back; if so, say so. */
  async checkRestart() {
    const restart = this.iceRestart;
    if (!restart?.pairs || restart.checking) return;
    restart.checking = true;
    try {
      const sessions = { publish: restart.media.publishPc, subscribe: restart.media.subscribePc };
      for (const [name, pc] of Object.entries(sessions)) {
        if (!pc) continue;
        // Not iceConnectionState: Chromium may report the old pair's loss ("disconnected")
        // for seconds after media moved to the new one.
        const pair = await selectedPair(pc);
        if (pair === null || pair === restart.pairs[name]) return;
      }
    } finally {
      restart.checking = false;
    }
    if (this.iceRestart !== restart) return;
    this.stopRestart();
    this.restartedAt = performance.now();
    state.iceRestartMs = Math.round(this.restartedAt - restart.startedAt);
    if (state.notice === "room.reconnecting" && !this.resuming) state.notice = "";
    changed();
  }

  /** Whether a restart brought media back a moment ago: Chromium may still report the old
   * pair's loss ("disconnected") for a few seconds, which is no reason to restart again. */
  restartedRecently() {
    return performance.now() - (this.restartedAt ?? -Infinity) < RESTART_SETTLE_MS;
  }

  stopRestart() {
    if (!this.iceRestart) return;
    clearTimeout(this.iceRestart.timer);
    clearInterval(this.iceRestart.poll);
    this.iceRestart = null;
  }

  restartTimedOut(media) {
    if (this.iceRestart?.media !== media || this.leaving) return;
    this.stopRestart();
    console.warn("media did not come back after an ICE restart; joining again");
    state.iceRestartFallbacks = (state.iceRestartFallbacks ?? 0) + 1;
    this.rejoin();
  }

  /** Join again as the same identity (the room lets an admitted person straight back in): new
   * media sessions, when the old ones could not be restarted. */
  rejoin() {
    this.session = null; // not a resume: it would keep the media sessions that failed
    this.resuming = false;
    this.signalling?.abandon();
    this.closed(CLOSE.abnormal, "");
  }

  /** Someone's state changed; if it is me and a chair muted me, follow (and say so). */
  updated(person, by) {
    state.participants.set(person.participant_id, person);
    if (person.participant_id !== state.participantId) return;
    if (person.audio_muted && !state.media.audioMuted) {
      this.setTracks("audio", false);
      state.media.audioMuted = true;
      if (by) state.notice = "room.muted_by_chair";
    }
    if (person.video_muted && !state.media.videoMuted) {
      state.media.videoMuted = true;
      stopCamera().catch((err) => this.fail(`camera: ${err}`));
      if (by) state.notice = "room.camera_off_by_chair";
    }
  }

  setTracks(kind, enabled) {
    for (const track of localMedia.stream?.getTracks() ?? []) {
      if (track.kind === kind) track.enabled = enabled;
    }
  }

  toggleMic() {
    const muted = !state.media.audioMuted;
    state.media.audioMuted = muted;
    this.setTracks("audio", !muted);
    this.signalling.setMedia({ audioMuted: muted });
    changed();
  }

  /** Turn my camera off (capture stops: the light goes off) or on (the device is asked again,
   * and its new track replaces the sender's). */
  async toggleCamera() {
    if (this.cameraBusy) return;
    this.cameraBusy = true;
    try {
      if (!state.media.videoMuted) {
        state.media.videoMuted = true;
        this.signalling.setMedia({ videoMuted: true });
        changed();
        await stopCamera();
      } else if (await startCamera()) {
        state.media.videoMuted = false;
        this.signalling.setMedia({ videoMuted: false });
        changed();
      } else {
        state.notice = "room.camera_failed";
        changed();
      }
    } finally {
      this.cameraBusy = false;
    }
  }

  async toggleScreen() {
    if (this.screenTrack) return this.stopScreen();
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch (err) {
      state.notice = "room.share_failed";
      changed();
      return;
    }
    this.screenTrack = stream.getVideoTracks()[0];
    this.screenTrack.addEventListener("ended", () => this.stopScreen());
    state.media.sharing = true;
    changed();
    await this.media?.startScreen(this.screenTrack);
  }

  async stopScreen() {
    const track = this.screenTrack;
    if (!track) return;
    this.screenTrack = null;
    track.stop();
    state.media.sharing = false;
    changed();
    await this.media?.stopScreen();
  }

  leave() {
    this.leaving = true;
    this.resuming = false;
    this.stopRestart();
    const signalling = this.signalling;
    signalling.leave();
    // The server closes with 1000; if it does not answer, close from here. This connection,
    // not `this.signalling`: by then Join again may have opened the next one.
    setTimeout(() => signalling.abandon(), 2000);
    this.end(CLOSE.normal, "left");
  }

  closed(code, reason) {
    state.connection.signalling = "closed";
    if (this.resuming) {
      // Refused (4410: held no longer, or too much missed) or not through: join again.
      this.resuming = false;
      this.session = null;
      if (code === CLOSE.resumeRefused) code = CLOSE.abnormal;
    } else if (
      (code === CLOSE.abnormal || code === CLOSE.goingAway) &&
      this.session &&
      !this.leaving &&
      state.screen === "room"
    ) {
      // The room, my media sessions and my tile stay; the socket comes back under me (a node
      // stopping for an upgrade, 1001, has handed me over: another node takes me on).
      this.resuming = true;
      state.notice = "room.reconnecting";
      changed();
      setTimeout(() => {
        if (this.resuming) this.signalling.open(this.token, this.roomId, { ...this.session });
      }, RESUME_DELAY_MS);
      return;
    }
    leftRoom();
    this.media?.close();
    this.media = null;
    this.stopRestart();
    this.restartPending = false;
    const retry = RETRY_CODES.has(code) && !this.leaving && state.reconnects < MAX_RECONNECTS;
    if (retry) {
      const delay = RECONNECT_DELAY_MS[state.reconnects];
      state.reconnects += 1;
      state.screen = "lobby";
      state.lobbyReason = "reconnecting";
      changed();
      setTimeout(() => this.connect(), delay);
      return;
    }
    this.end(code, reason);
  }

  end(code, reason) {
    if (state.ended) return;
    leftRoom();
    this.media?.close();
    this.media = null;
    this.stopScreen();
    // The visit is over: every camera and microphone track stops (the camera light goes off).
    localMedia.onTrackReplaced = null;
    closeDevices();
    state.ended = { code, reason };
    state.screen = "ended";
    changed();
  }

  /** What the room tells automation: inbound statistics of the subscribe session. */
  async stats() {
    return this.media ? this.media.stats() : { inbound: [] };
  }

  remoteTracks() {
    return this.media ? this.media.remoteTracks() : new Map();
  }

  /** Simulate a network blip (automation): drop the socket as if the network went away. */
  dropConnection() {
    this.signalling?.abandon();
    this.closed(CLOSE.abnormal, "");
  }
}

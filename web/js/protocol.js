// The wire protocol (docs/protocol.md): one WebSocket to /ws, JSON messages named by `type`,
// and the SFU's two data channels (annotations, chat, pointers), JSON messages named the same way.
// The only module that builds or sends messages; the rest of the client calls these functions.
// The declarations below mirror the server's (signaling/protocol.py, msgspec Structs);
// tests/test_web_protocol.py checks that they match, field for field and default for default.

import { dpopProof } from "./dpop.js";

const PING_INTERVAL_MS = 15_000; // docs/protocol.md: one ping every 15 s

/** Close codes (docs/protocol.md, "Close codes"; 1006 is the browser's own: no close frame). */
export const CLOSE = {
  normal: 1000,
  goingAway: 1001,
  abnormal: 1006,
  badMessage: 4400,
  notAuthenticated: 4401,
  notAllowed: 4403,
  notFound: 4404,
  timedOut: 4408,
  replaced: 4409,
  resumeRefused: 4410,
  meetingEnded: 4411,
  rateLimited: 4429,
  serverError: 4500,
};

/** The close reason (4403) of a join the policy refuses, then `: ` and a code of REFUSALS; the
 * admission preflight answers the same code as `reason` (signaling/protocol.py JOIN_REFUSED). */
export const JOIN_REFUSED = "not allowed to join this room";

/** Why the policy refuses, as the server says it (signaling/policy.py `Refusal`). */
export const REFUSALS = [
  "mfa_required",
  "room_not_granted",
  "department_not_permitted",
  "separation_of_duties",
  "role_forbidden",
  "unknown_role",
  "unknown_action",
];

/** A field with no default: the sender must give it. */
export const REQUIRED = "<required>";

/** What the client sends: each message's fields and their defaults. */
export const CLIENT_MESSAGES = {
  join: { token: REQUIRED, room: REQUIRED, dpop: "" },
  resume: {
    token: REQUIRED,
    participant_id: REQUIRED,
    resume_token: REQUIRED,
    last_seq: REQUIRED,
    dpop: "",
  },
  ping: { id: null },
  leave: {},
  admit: { participant_id: REQUIRED },
  deny: { participant_id: REQUIRED, reason: "" },
  mute: { participant_id: REQUIRED, kind: "audio" },
  remove: { participant_id: REQUIRED, reason: "" },
  set_media: { audio_muted: null, video_muted: null },
  update_room: { lobby: null, locked: null },
  end_meeting: {},
  offer: { sdp: REQUIRED, pc: "publish", screen: [] },
  answer: { sdp: REQUIRED, pc: "publish" },
  candidate: { candidate: REQUIRED, pc: "publish", sdp_mid: null, sdp_mline_index: null },
  restart_ice: { pc: "subscribe" },
  request_consent: {},
  consent: { decision: REQUIRED, notice_version: "" },
  verbal_consent: { participant_id: REQUIRED, decision: "granted" },
  start_recording: { recording_class: "mdt" },
  stop_recording: {},
  mark_case: { label: REQUIRED },
  media_failed: { cause: REQUIRED, pc: "publish", candidates: [] },
  render_sizes: { sizes: REQUIRED },
};

/** What the server sends; it leaves out every field that has its default. */
export const SERVER_MESSAGES = {
  joined: {
    participant_id: REQUIRED,
    you: REQUIRED,
    permissions: REQUIRED,
    room: REQUIRED,
    participants: REQUIRED,
    lobby: [],
    ice_servers: [],
    ice_transport_policy: "all",
    resume_token: "",
  },
  resumed: { participant_id: REQUIRED, last_seq: REQUIRED, replayed: true },
  participant_reconnecting: { participant_id: REQUIRED, reconnecting: REQUIRED, media: false },
  media_moved: { reason: REQUIRED },
  lobby: { room: REQUIRED, reason: REQUIRED, participant_id: REQUIRED },
  knock: { participant: REQUIRED },
  lobby_left: { participant_id: REQUIRED, outcome: REQUIRED },
  participant_joined: { participant: REQUIRED },
  participant_left: { participant_id: REQUIRED, reason: "left" },
  participant_updated: { participant: REQUIRED, by: "" },
  room_updated: { room: REQUIRED },
  pong: { id: null, server_time: 0 },
  tracks: { tracks: REQUIRED },
  active_speaker: { participant_id: REQUIRED },
  error: { code: REQUIRED, message: REQUIRED, request: "" },
  image_shared: {
    image_id: REQUIRED,
    kind: REQUIRED,
    frames: REQUIRED,
    width: REQUIRED,
    height: REQUIRED,
    pixel_spacing_mm: null,
    shared_by: REQUIRED,
    title: REQUIRED,
    burned_in_confirmed: false,
    slice_order: [],
    frames_pending: 0,
  },
  pacs_share_progress: {
    share_id: REQUIRED,
    state: REQUIRED,
    shared: REQUIRED,
    total: REQUIRED,
    title: "",
    shared_by: "",
    error: "",
    skipped: 0,
    skipped_reasons: [],
    images: [],
  },
  consent_requested: { notice_version: REQUIRED, requested_by: "" },
  recording_state: {
    recording: REQUIRED,
    recording_id: "",
    started_at: "",
    requested: false,
    consent: {},
    cases: [],
    notice_version: "",
    failure: "",
    failed_recording_id: "",
  },
  storage_low: { free_mb: REQUIRED, reserve_mb: REQUIRED, recording_id: "" },
  offer: CLIENT_MESSAGES.offer,
  answer: CLIENT_MESSAGES.answer,
  candidate: CLIENT_MESSAGES.candidate,
};

/** The objects inside messages (ParticipantInfo in `joined`, `knock`...). */
export const OBJECTS = {
  ParticipantInfo: {
    participant_id: REQUIRED,
    sub: REQUIRED,
    name: REQUIRED,
    role: REQUIRED,
    depts: REQUIRED,
    org: "",
    audio_muted: false,
    video_muted: false,
    waiting: false,
    reconnecting: false,
  },
  RoomState: {
    room_id: REQUIRED,
    departments: REQUIRED,
    lobby: false,
    locked: false,
    title: "",
    recording: false,
    cases: [],
  },
  RoomCase: {
    case_id: REQUIRED,
    label: "",
  },
  TrackInfo: {
    mid: REQUIRED,
    participant_id: REQUIRED,
    kind: REQUIRED,
    track_id: REQUIRED,
    source: "camera",
    paused: false,
  },
};

/** `value` with the defaults of `declaration` filled in where it leaves a field out. */
export function withDefaults(declaration, value) {
  const filled = {};
  for (const [field, fallback] of Object.entries(declaration)) {
    if (field in value) filled[field] = value[field];
    else if (fallback !== REQUIRED) filled[field] = structuredClone(fallback);
  }
  return { ...value, ...filled };
}

/** A client message as sent: only declared fields, every required one present. */
export function clientMessage(type, fields = {}) {
  const declaration = CLIENT_MESSAGES[type];
  if (!declaration) throw new Error(`not a client message: ${type}`);
  for (const field of Object.keys(fields)) {
    if (!(field in declaration)) throw new Error(`${type} has no field ${field}`);
  }
  for (const [field, fallback] of Object.entries(declaration)) {
    if (fallback === REQUIRED && fields[field] === undefined) {
      throw new Error(`${type} needs ${field}`);
    }
  }
  return { type, ...fields };
}

/** One signalling connection: `join` (or `resume`) first, pings while open, messages to
 * `onMessage`. Opened again on the same object for a resume: the media sessions keep it. */
export class SignallingConnection {
  constructor({ onOpen, onMessage, onClose }) {
    this.onOpen = onOpen;
    this.onMessage = onMessage;
    this.onClose = onClose;
    this.ws = null;
    this.pingTimer = null;
    this.pingId = 0;
  }

  /** Open a socket and join `room`; with `resume` ({participantId, resumeToken, lastSeq}),
   * take over that participant instead (docs/protocol.md, `resume`). */
  open(token, room, resume = null) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    this.ws = ws;
    ws.addEventListener("open", async () => {
      // Signed in (no token): a proof by this browser's device key, for a session bound to it
      // (dpop.js; a browser cannot set the upgrade's headers, so it goes in the message).
      const proof = token ? null : await dpopProof("GET", ws.url);
      if (this.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
      const binding = proof ? { dpop: proof } : {};
      if (resume) {
        this.send("resume", {
          token,
          participant_id: resume.participantId,
          resume_token: resume.resumeToken,
          last_seq: resume.lastSeq,
          ...binding,
        });
      } else {
        this.send("join", { token, room, ...binding });
      }
      this.pingTimer = setInterval(
        () => this.send("ping", { id: ++this.pingId }),
        PING_INTERVAL_MS,
      );
      this.onOpen?.();
    });
    ws.addEventListener("message", (event) => {
      // An abandoned socket's last messages are not this connection's (a resume counts them).
      if (this.ws !== ws) return;
      const message = JSON.parse(event.data);
      const declaration = SERVER_MESSAGES[message.type];
      // A message type this client does not know (a newer server) is passed on unfilled.
      this.onMessage(declaration ? withDefaults(declaration, message) : message);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return; // abandoned: its pings already stopped, a newer one may ping
      clearInterval(this.pingTimer);
      this.onClose(event.code, event.reason);
    });
  }

  /** Drop the socket without reporting its close (used before a rejoin). */
  abandon() {
    const ws = this.ws;
    this.ws = null;
    clearInterval(this.pingTimer);
    ws?.close();
  }

  /** Send one message (dropped when the socket is not open: the close handler takes over). */
  send(type, fields = {}) {
    const message = clientMessage(type, fields);
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  leave() {
    this.send("leave");
  }
  admit(participantId) {
    this.send("admit", { participant_id: participantId });
  }
  deny(participantId) {
    this.send("deny", { participant_id: participantId });
  }
  mute(participantId, kind = "audio") {
    this.send("mute", { participant_id: participantId, kind });
  }
  remove(participantId) {
    this.send("remove", { participant_id: participantId });
  }
  setMedia({ audioMuted = null, videoMuted = null }) {
    this.send("set_media", { audio_muted: audioMuted, video_muted: videoMuted });
  }
  updateRoom({ lobby = null, locked = null }) {
    this.send("update_room", { lobby, locked });
  }
  endMeeting() {
    this.send("end_meeting");
  }
  requestConsent() {
    this.send("request_consent");
  }
  consent(decision, noticeVersion = "") {
    this.send("consent", { decision, notice_version: noticeVersion });
  }
  verbalConsent(participantId, decision = "granted") {
    this.send("verbal_consent", { participant_id: participantId, decision });
  }
  startRecording(recordingClass = "mdt") {
    this.send("start_recording", { recording_class: recordingClass });
  }
  stopRecording() {
    this.send("stop_recording");
  }
  markCase(label) {
    this.send("mark_case", { label });
  }
  mediaFailed(cause, pc, candidates = []) {
    this.send("media_failed", { cause, pc, candidates });
  }
  /** The size each received video is shown at, by subscribe mid: `{mid: [width, height]}` in
   * device pixels, `[0, 0]` for a hidden tile (the SFU then forwards it nothing). */
  renderSizes(sizes) {
    this.send("render_sizes", { sizes });
  }
  offer(pc, sdp, screen = []) {
    this.send("offer", { pc, sdp, screen });
  }
  answer(pc, sdp) {
    this.send("answer", { pc, sdp });
  }
  restartIce(pc = "subscribe") {
    // The publish session restarts with its own offer (restartIce()); the SFU offers subscribe.
    this.send("restart_ice", { pc });
  }
  candidate(pc, candidate) {
    // A null candidate ends gathering: sent as an empty `candidate`.
    this.send("candidate", {
      pc,
      candidate: candidate?.candidate ?? "",
      sdp_mid: candidate?.sdpMid ?? null,
      sdp_mline_index: candidate?.sdpMLineIndex ?? null,
    });
  }
}

// -- the data channels (docs/protocol.md, "Annotations and chat"): one JSON object per message --

/** The two data channels of the publish session, and how each is opened. */
export const DATA_CHANNELS = {
  "consilium-reliable": {},
  "consilium-lossy": { ordered: false, maxRetransmits: 0 },
};

/** What the client sends on the data channels: each message's fields and their defaults. */
export const DATA_MESSAGES = {
  op: { client_id: REQUIRED, image_id: REQUIRED, frame: 0, op: REQUIRED },
  chat: { client_id: REQUIRED, text: REQUIRED, to: [] },
  receipt: { seq: REQUIRED, state: REQUIRED },
  sync: { since: -1 },
  pointer: { image_id: REQUIRED, frame: 0, x: REQUIRED, y: REQUIRED },
};

/** On which channel each data message goes: everything ordered, except the pointer. */
const LOSSY = new Set(["pointer"]);

/** The data channels to the SFU: `sync` when the ordered one opens, messages to handlers by type.
 * Channels of an earlier connection are replaced by the next connection's. */
export class DataChannels {
  constructor() {
    this.channels = new Map(); // label → RTCDataChannel
    this.handlers = new Map(); // message type → [handler]
    this.outbox = []; // ordered messages sent while the channel was not open
  }

  /** Subscribe to one message type from the SFU ("snapshot", "event", "error", "pointer"). */
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
  }

  emit(type, value) {
    for (const handler of this.handlers.get(type) ?? []) handler(value);
  }

  /** Take over a channel just created; the ordered one asks for a snapshot as it opens. */
  attach(channel) {
    this.channels.set(channel.label, channel);
    channel.addEventListener("message", (event) => {
      if (this.channels.get(channel.label) !== channel) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message.type === "string") this.emit(message.type, message);
    });
    if (channel.label !== "consilium-reliable") return;
    // The ordered channel closing while it is the current one: events stop (call.js recovers).
    channel.addEventListener("close", () => {
      if (this.channels.get(channel.label) === channel) this.emit("closed", channel);
    });
    channel.addEventListener("open", () => {
      if (this.channels.get(channel.label) !== channel) return;
      this.emit("open", channel);
      channel.send(JSON.stringify(dataMessage("sync", { since: -1 })));
      for (const text of this.outbox.splice(0)) channel.send(text);
    });
  }

  /** Take back an ordered message still waiting for its channel; true when it was waiting. */
  withdraw(type, fields) {
    const at = this.outbox.indexOf(JSON.stringify(dataMessage(type, fields)));
    if (at >= 0) this.outbox.splice(at, 1);
    return at >= 0;
  }

  /** Send one message; a pointer is dropped when its channel is not open, the rest wait. */
  send(type, fields) {
    const text = JSON.stringify(dataMessage(type, fields));
    const label = LOSSY.has(type) ? "consilium-lossy" : "consilium-reliable";
    const channel = this.channels.get(label);
    if (channel?.readyState === "open") channel.send(text);
    else if (!LOSSY.has(type)) this.outbox.push(text);
  }
}

/** A data-channel message as sent: only declared fields, every required one present. */
export function dataMessage(type, fields = {}) {
  const declaration = DATA_MESSAGES[type];
  if (!declaration) throw new Error(`not a data message: ${type}`);
  for (const field of Object.keys(fields)) {
    if (!(field in declaration)) throw new Error(`${type} has no field ${field}`);
  }
  for (const [field, fallback] of Object.entries(declaration)) {
    if (fallback === REQUIRED && fields[field] === undefined) {
      throw new Error(`${type} needs ${field}`);
    }
  }
  return { type, ...fields };
}

/** The one set of data channels of this page. */
export const dataChannels = new DataChannels();

/** The claims of a JWT, decoded WITHOUT verification: for display only (the server verifies). */
export function decodeClaims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

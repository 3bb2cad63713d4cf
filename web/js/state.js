// The one place for client state. Modules read `state` and call `changed()` after writing it;
// renderers registered with `onChange` redraw from it.

/** Everything the client knows; `snapshot()` is what automation reads. */
export const state = {
  screen: "home", // home | signin | join | lobby | room | ended
  signIn: null, // {provider, returnPath, error}: the sign-in screen (signin.js)
  signedIn: false, // true: joined through a sign-in session (its cookie), not a link's token
  lang: "en",
  roomId: null,
  claims: {}, // the token's claims, decoded without verification: display only
  participantId: null,
  permissions: [],
  room: null, // RoomState
  participants: new Map(), // participant id → ParticipantInfo (others and me)
  reconnecting: new Set(), // participant ids the server holds while their connection is back
  mediaReconnecting: new Set(), // participant ids whose media is restarting ICE (the SFU says)
  lobby: new Map(), // participant id → ParticipantInfo waiting (chairs only)
  tracks: [], // the last `tracks` message
  lobbyReason: null, // connecting | reconnecting | lobby_enabled | room_not_open
  media: { audioMuted: false, videoMuted: false, sharing: false },
  connection: { signalling: "closed", publish: "new", subscribe: "new" },
  mediaProblem: null, // {cause, pc, candidates, turn}: a media session failing (connectivity.js)
  speaking: new Set(), // participant ids whose audio level is above the threshold
  activeSpeaker: null, // the room's dominant speaker as the SFU decides it (`active_speaker`)
  // My choice of layout (layout.js): choice "grid" | "speaker" | null (not chosen: the grid, or
  // the presenter layout while a screen is shared); pinned: the key of the tile I pinned, or null.
  layout: { choice: null, pinned: null },
  quality: new Map(), // participant id → {rating: "good" | "fair" | "poor", problems} (quality.js)
  ended: null, // {kind, code, reason}
  endedByMe: false, // I ended the meeting for everyone (chair.js): the ended screen says so
  reconnects: 0,
  resumes: 0, // how many times my connection resumed (`resumed`) in this visit
  notice: "", // i18n key of the last notice shown in the room
  errors: [],
  received: {}, // message type → how many arrived (diagnostics for automation)
  images: [], // shared images in sharing order (the `image_shared` fields), images.js
  heldImages: [], // my uploads held until I cover their text (images.js, redact.js)
  viewer: null, // {imageId, frame, scale, x, y}: my own view of one image (nobody else's)
  annotations: {
    seq: -1, // the last sequence number applied (snapshot or event)
    shapes: new Map(), // shape id → stamped shape (as the SFU ordered them)
    pending: [], // my operations sent and not yet stamped: {client_id, image_id, frame, op}
    synced: false, // a snapshot arrived on this connection
  },
  chat: [], // messages in sequence order: {seq, time, author, client_id, text, to, receipts}
  pointers: new Map(), // participant id → {image_id, frame, x, y, at}: their laser pointer
  recording: noRecording(), // the last `recording_state` (recording.js)
  consentNotice: null, // {version, asked}: the recording notice shown to me, or null
  recordingError: null, // {code, request}: the server's last refusal of a recording request
  recordingAnnounced: "", // i18n key last said in the recording live region
  storageLow: null, // {free_mb, reserve_mb}: the server's disk is running low (to the chair)
  notStored: false, // the SFU cannot store annotations and chat now (its disk is full)
};

/** The room's recording before any `recording_state`: not recording, nobody asked. */
export function noRecording() {
  return {
    recording: false,
    recording_id: "",
    started_at: "",
    requested: false,
    consent: {}, // participant id → "granted" | "declined" | "pending"
    cases: [],
    notice_version: "",
    failure: "", // "disk_full" | "write_failed" | "node_lost": the last recording stopped by itself
    failed_recording_id: "",
  };
}

const renderers = [];

/** Register a function to call after every change. */
export function onChange(render) {
  renderers.push(render);
}

let scheduled = false;

/** Note that state changed: renderers run once, on the next animation frame or soon after. */
export function changed() {
  if (scheduled) return;
  scheduled = true;
  // A timer too: animation frames stop in background tabs, the page must still follow.
  const run = () => {
    if (!scheduled) return;
    scheduled = false;
    for (const render of renderers) render(state);
  };
  requestAnimationFrame(run);
  setTimeout(run, 100);
}

/** A plain-JSON copy of the state for automation (window.consilium.state()). */
export function snapshot() {
  return {
    ...state,
    participants: [...state.participants.values()],
    lobby: [...state.lobby.values()],
    speaking: [...state.speaking],
    reconnecting: [...state.reconnecting],
    mediaReconnecting: [...state.mediaReconnecting],
    quality: Object.fromEntries(state.quality),
    annotations: {
      ...state.annotations,
      shapes: [...state.annotations.shapes.values()],
    },
    pointers: Object.fromEntries(state.pointers),
  };
}

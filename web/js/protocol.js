// The wire protocol (docs/protocol.md): one WebSocket to /ws, JSON messages named by `type`.
// The only module that builds or sends messages; the rest of the client calls these functions.

const PING_INTERVAL_MS = 15_000; // docs/protocol.md: one ping every 15 s

/** Close codes (docs/protocol.md, "Close codes"). */
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
  rateLimited: 4429,
  serverError: 4500,
};

/** One signalling connection: `join` first, pings while open, messages to `onMessage`. */
export class SignallingConnection {
  constructor({ onOpen, onMessage, onClose }) {
    this.onOpen = onOpen;
    this.onMessage = onMessage;
    this.onClose = onClose;
    this.ws = null;
    this.pingTimer = null;
    this.pingId = 0;
  }

  open(token, room) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.send({ type: "join", token, room });
      this.pingTimer = setInterval(
        () => this.send({ type: "ping", id: ++this.pingId }),
        PING_INTERVAL_MS,
      );
      this.onOpen?.();
    });
    ws.addEventListener("message", (event) => this.onMessage(JSON.parse(event.data)));
    ws.addEventListener("close", (event) => {
      clearInterval(this.pingTimer);
      if (this.ws === ws) this.onClose(event.code, event.reason);
    });
  }

  /** Drop the socket without reporting its close (used before a rejoin). */
  abandon() {
    const ws = this.ws;
    this.ws = null;
    clearInterval(this.pingTimer);
    ws?.close();
  }

  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  leave() {
    this.send({ type: "leave" });
  }
  admit(participantId) {
    this.send({ type: "admit", participant_id: participantId });
  }
  deny(participantId) {
    this.send({ type: "deny", participant_id: participantId });
  }
  mute(participantId, kind = "audio") {
    this.send({ type: "mute", participant_id: participantId, kind });
  }
  remove(participantId) {
    this.send({ type: "remove", participant_id: participantId });
  }
  setMedia({ audioMuted = null, videoMuted = null }) {
    this.send({ type: "set_media", audio_muted: audioMuted, video_muted: videoMuted });
  }
  updateRoom({ lobby = null, locked = null }) {
    this.send({ type: "update_room", lobby, locked });
  }
  offer(pc, sdp, screen = []) {
    this.send({ type: "offer", pc, sdp, screen });
  }
  answer(pc, sdp) {
    this.send({ type: "answer", pc, sdp });
  }
  candidate(pc, candidate) {
    // A null candidate ends gathering: sent as an empty `candidate`.
    this.send({
      type: "candidate",
      pc,
      candidate: candidate?.candidate ?? "",
      sdp_mid: candidate?.sdpMid ?? null,
      sdp_mline_index: candidate?.sdpMLineIndex ?? null,
    });
  }
}

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

// The built-in media test page: join a room, publish camera and microphone, show everyone else.
// Opened as /test.html#token=<JWT>&room=<room>: the fragment never reaches a server or a log,
// and is removed from the address bar once read. A test bench, not the web client.

const PING_INTERVAL_MS = 15_000; // docs/protocol.md: one ping every 15 s
const DATA_CHANNELS = {
  "consilium-reliable": {},
  "consilium-lossy": { ordered: false, maxRetransmits: 0 },
};

/** What automation reads (window.consiliumTest.state). */
const state = {
  status: "starting", // starting | lobby | joined | closed
  participantId: null,
  closeCode: null,
  tracks: [], // the last `tracks` message: which participant each subscribe mid carries
  connection: { publish: "new", subscribe: "new" },
  channels: {}, // data-channel label → readyState
  received: [], // data-channel messages from the SFU: {label, message} (message parsed JSON)
  errors: [],
};

const statusText = document.getElementById("status");
const localVideo = document.getElementById("local-video");
const localLabel = document.getElementById("local-label");
const remotes = document.getElementById("remotes");
const alone = document.getElementById("alone");

const names = new Map(); // participant id → display name
const remoteViews = new Map(); // participant id → {figure, video}
const channels = new Map(); // label → RTCDataChannel (on the publish session)
let ws = null;
let iceServers = [];
let publishPc = null;
let subscribePc = null;
let pending = Promise.resolve(); // messages are handled one at a time, in order

function setStatus(status, text) {
  state.status = status;
  statusText.dataset.state = status;
  statusText.textContent = text;
}

function fail(text) {
  state.errors.push(text);
  console.error(text);
}

function send(message) {
  if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function peerConnection(which) {
  const pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
  pc.addEventListener("icecandidate", ({ candidate }) => {
    // A null (or empty) candidate ends gathering: sent as an empty `candidate`.
    send({
      type: "candidate",
      pc: which,
      candidate: candidate?.candidate ?? "",
      sdp_mid: candidate?.sdpMid ?? null,
      sdp_mline_index: candidate?.sdpMLineIndex ?? null,
    });
  });
  pc.addEventListener("connectionstatechange", () => {
    state.connection[which] = pc.connectionState;
    console.info(`${which} session: ${pc.connectionState}`);
  });
  return pc;
}

async function publish() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: true,
    video: { width: 640, height: 360 },
  });
  localVideo.srcObject = stream;
  publishPc = peerConnection("publish");
  for (const track of stream.getTracks()) {
    publishPc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
  }
  for (const [label, options] of Object.entries(DATA_CHANNELS)) {
    const channel = publishPc.createDataChannel(label, options);
    state.channels[label] = channel.readyState;
    for (const event of ["open", "close"]) {
      channel.addEventListener(event, () => (state.channels[label] = channel.readyState));
    }
    if (label === "consilium-reliable") {
      // The room's stamped events (chat, annotations) follow the snapshot this asks for.
      channel.addEventListener("open", () => channel.send(JSON.stringify({ type: "sync" })));
    }
    channel.addEventListener("message", (event) => {
      state.received.push({ label, message: JSON.parse(event.data) });
    });
    channels.set(label, channel);
  }
  await publishPc.setLocalDescription();
  send({ type: "offer", pc: "publish", sdp: publishPc.localDescription.sdp });
}

async function answerSubscribe(sdp) {
  if (subscribePc === null) {
    subscribePc = peerConnection("subscribe");
    subscribePc.addEventListener("track", () => showRemotes());
  }
  await subscribePc.setRemoteDescription({ type: "offer", sdp });
  await subscribePc.setLocalDescription();
  send({ type: "answer", pc: "subscribe", sdp: subscribePc.localDescription.sdp });
  showRemotes();
}

function remoteLabel(participantId) {
  return `${names.get(participantId) || "Participant"} (${participantId})`;
}

function addRemoteView(participantId) {
  const figure = document.createElement("figure");
  const video = document.createElement("video");
  const caption = document.createElement("figcaption");
  caption.id = `label-${remoteViews.size}-${Date.now()}`;
  caption.textContent = remoteLabel(participantId);
  video.autoplay = true;
  video.playsInline = true;
  video.setAttribute("aria-labelledby", caption.id);
  figure.dataset.participantId = participantId;
  figure.append(video, caption);
  remotes.append(figure);
  const view = { figure, video, caption };
  remoteViews.set(participantId, view);
  return view;
}

/** One <video> per remote participant, holding the tracks `tracks` says are theirs. */
function showRemotes() {
  const byParticipant = new Map();
  for (const { mid, participant_id: participantId } of state.tracks) {
    const transceiver = subscribePc?.getTransceivers().find((t) => t.mid === mid);
    if (!transceiver) continue;
    if (!byParticipant.has(participantId)) byParticipant.set(participantId, []);
    byParticipant.get(participantId).push(transceiver.receiver.track);
  }
  for (const [participantId, view] of remoteViews) {
    if (!byParticipant.has(participantId)) {
      view.figure.remove();
      remoteViews.delete(participantId);
    }
  }
  for (const [participantId, tracks] of byParticipant) {
    const view = remoteViews.get(participantId) ?? addRemoteView(participantId);
    view.caption.textContent = remoteLabel(participantId);
    const shown = view.video.srcObject?.getTracks() ?? [];
    if (shown.length !== tracks.length || tracks.some((t) => !shown.includes(t))) {
      view.video.srcObject = new MediaStream(tracks);
    }
  }
  alone.hidden = remoteViews.size > 0;
}

async function handle(msg) {
  switch (msg.type) {
    case "joined":
      state.participantId = msg.participant_id;
      iceServers = msg.ice_servers ?? [];
      for (const p of msg.participants) names.set(p.participant_id, p.name);
      localLabel.textContent = `You: ${msg.you.name || "unnamed"} (${msg.participant_id})`;
      setStatus("joined", `Joined room ${msg.room.room_id} as ${msg.participant_id}.`);
      if (publishPc === null) await publish();
      break;
    case "lobby":
      setStatus(
        "lobby",
        msg.reason === "room_not_open"
          ? "Waiting for a chair to open the room."
          : "Waiting in the lobby for a chair to admit you.",
      );
      break;
    case "participant_joined":
      names.set(msg.participant.participant_id, msg.participant.name);
      break;
    case "answer":
      // The server leaves `pc` out when it is "publish".
      if ((msg.pc ?? "publish") === "publish") {
        await publishPc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      }
      break;
    case "offer":
      if (msg.pc === "subscribe") await answerSubscribe(msg.sdp);
      break;
    case "tracks":
      state.tracks = msg.tracks;
      showRemotes();
      break;
    case "error":
      fail(`server refused ${msg.request || "a request"}: ${msg.code}: ${msg.message}`);
      break;
    default:
      break;
  }
}

function connect(token, room) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws`);
  let pingTimer = null;
  let pingId = 0;
  ws.addEventListener("open", () => {
    setStatus("starting", `Joining room ${room}…`);
    send({ type: "join", token, room });
    pingTimer = setInterval(() => send({ type: "ping", id: ++pingId }), PING_INTERVAL_MS);
  });
  ws.addEventListener("message", (event) => {
    const msg = JSON.parse(event.data);
    pending = pending.then(() => handle(msg)).catch((err) => fail(`${msg.type}: ${err}`));
  });
  ws.addEventListener("close", (event) => {
    clearInterval(pingTimer);
    state.closeCode = event.code;
    const reason = event.reason ? `: ${event.reason}` : "";
    setStatus("closed", `Connection closed (code ${event.code}${reason}).`);
    publishPc?.close();
    subscribePc?.close();
  });
}

async function stats() {
  const inbound = [];
  if (subscribePc !== null) {
    const owner = new Map(state.tracks.map((t) => [t.mid, t.participant_id]));
    (await subscribePc.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      inbound.push({
        mid: s.mid,
        participantId: owner.get(s.mid) ?? null,
        kind: s.kind,
        packetsReceived: s.packetsReceived ?? 0,
        framesDecoded: s.framesDecoded ?? 0,
        frameWidth: s.frameWidth ?? 0,
        totalSamplesReceived: s.totalSamplesReceived ?? 0,
      });
    });
  }
  return { inbound };
}

function sendData(label, text) {
  channels.get(label).send(text);
}

window.consiliumTest = { state, stats, sendData };

const fragment = new URLSearchParams(location.hash.slice(1));
history.replaceState(null, "", location.pathname);
const token = fragment.get("token");
const room = fragment.get("room");
if (token && room) {
  connect(token, room);
} else {
  setStatus("closed", "Open this page as /test.html#token=<token>&room=<room>.");
}

// Media that cannot connect is never silent. Once in the room, my media sessions with the SFU
// must connect within a few seconds; when ICE fails, or they do not connect in time, the room
// says so in words (what failed and what IT should check), and the server is told once per
// session and cause (`media_failed`: counted on /metrics and logged without names).
// Media that did connect and then lost its path (a network change: Wi-Fi to 4G, a laptop lid, a
// VPN) is restarted instead (call.js `restartMedia`, an ICE restart): when a session's ICE is
// "disconnected" for DISCONNECTED_GRACE_MS or "failed", or the browser says the network changed.

import { t } from "./i18n.js";
import { changed, state } from "./state.js";

/** How long a media session may take to connect after it starts (ICE, then DTLS). */
export const CONNECT_TIMEOUT_MS = 8000;
const CHECK_INTERVAL_MS = 1000;
const SESSIONS = ["publish", "subscribe"];
// "disconnected" often heals by itself within a second or two (a burst of loss); longer, the
// path is gone and waiting for "failed" (tens of seconds in Chromium) would only freeze media.
const DISCONNECTED_GRACE_MS = 2000;

const box = document.getElementById("media-problem");
const heading = document.getElementById("media-problem-heading");
const body = document.getElementById("media-problem-body");
const details = document.getElementById("media-problem-details");

let call = null;
let sessions = null; // the MediaSessions being watched: a new one on every (re)join
let startedAt = new Map(); // session → when it started connecting (performance.now())
let reported = new Set(); // `${session}:${cause}` told to the server for these sessions
const watchedPcs = new WeakSet(); // peer connections whose ICE state is followed
const connectedOnce = new WeakSet(); // ...that have connected at least once (restartable)

/** Watch the call's media sessions (call.js `Call`: its `media` and `signalling`). */
export function initConnectivity(watched) {
  call = watched;
  setInterval(check, CHECK_INTERVAL_MS);
  // The browser's own word that the network changed: restart at once, not after a timeout.
  window.addEventListener("online", () => networkChanged("online"));
  navigator.connection?.addEventListener?.("change", () => networkChanged("network_change"));
}

function networkChanged(reason) {
  const media = call?.media;
  if (media && [media.publishPc, media.subscribePc].some((pc) => pc && connectedOnce.has(pc))) {
    call.restartMedia(reason);
  }
}

/** Follow a session's ICE state: a connected session that loses its path is restarted. */
function watchIce(pc) {
  if (!pc || watchedPcs.has(pc)) return;
  watchedPcs.add(pc);
  let grace = null;
  const changedIce = () => {
    const ice = pc.iceConnectionState;
    clearTimeout(grace);
    if (ice === "connected" || ice === "completed") {
      connectedOnce.add(pc);
      call?.checkRestart().catch(() => {}); // a session closed meanwhile: nothing to check
    } else if (connectedOnce.has(pc) && ice === "failed") {
      call?.restartMedia("ice_failed");
    } else if (connectedOnce.has(pc) && ice === "disconnected") {
      const stillDisconnected = () => {
        if (pc.iceConnectionState !== "disconnected") return;
        // Just restarted: the old pair's loss, reported late; look again in a while.
        if (call?.restartedRecently()) grace = setTimeout(stillDisconnected, DISCONNECTED_GRACE_MS);
        else call?.restartMedia("ice_disconnected");
      };
      grace = setTimeout(stillDisconnected, DISCONNECTED_GRACE_MS);
    }
  };
  pc.addEventListener("iceconnectionstatechange", changedIce);
  changedIce();
}

/** A failing session, as {cause, pc}, or null: `failed` at once, else too long connecting. */
function problemNow(now) {
  // A session that lost its path is being restarted: "Reconnecting…" says so meanwhile.
  if (call?.iceRestart) return null;
  for (const pc of SESSIONS) {
    if (state.connection[pc] === "failed") return { cause: "ice_failed", pc };
  }
  for (const pc of SESSIONS) {
    const since = startedAt.get(pc);
    const connected = state.connection[pc] === "connected";
    if (since !== undefined && !connected && now - since > CONNECT_TIMEOUT_MS) {
      return { cause: "no_media", pc };
    }
  }
  return null;
}

function check() {
  const media = state.screen === "room" ? call?.media : null;
  if (media !== sessions) {
    sessions = media;
    startedAt = new Map();
    reported = new Set();
  }
  let problem = null;
  if (media) {
    const now = performance.now();
    // The publish session starts with the room (it carries the data channels, even without a
    // camera); the subscribe session when the SFU first offers something to receive.
    if (media.publishPc && !startedAt.has("publish")) startedAt.set("publish", now);
    if (media.subscribePc && !startedAt.has("subscribe")) startedAt.set("subscribe", now);
    watchIce(media.publishPc);
    watchIce(media.subscribePc);
    problem = problemNow(now);
  }
  const shown = state.mediaProblem;
  if (problem?.cause !== shown?.cause || problem?.pc !== shown?.pc) {
    state.mediaProblem = problem && { ...problem, candidates: [], turn: hasTurn(media) };
    changed();
    if (problem) report(media, state.mediaProblem);
  }
}

function hasTurn(media) {
  const urls = (media?.iceServers ?? []).flatMap((server) => [server.urls].flat());
  return urls.some((url) => /^turns?:/.test(url));
}

/** The kinds of local candidate a session gathered (no addresses): host, srflx, relay. */
async function candidateKinds(pc) {
  const kinds = new Set();
  try {
    (await pc.getStats()).forEach((s) => {
      if (s.type === "local-candidate" && s.candidateType) kinds.add(s.candidateType);
    });
  } catch {
    // A closed session has no statistics: report what is known.
  }
  return [...kinds].sort();
}

async function report(media, problem) {
  const key = `${problem.pc}:${problem.cause}`;
  if (reported.has(key)) return;
  reported.add(key);
  const pc = problem.pc === "publish" ? media.publishPc : media.subscribePc;
  problem.candidates = pc ? await candidateKinds(pc) : [];
  changed();
  call.signalling?.mediaFailed(problem.cause, problem.pc, problem.candidates);
}

/** The notice in the room: shown while a media session is failing. */
export function renderConnectivity(s) {
  const problem = s.screen === "room" ? s.mediaProblem : null;
  box.hidden = problem === null;
  if (!problem) return;
  box.dataset.cause = problem.cause;
  heading.textContent = t(`media.${problem.cause}_heading`);
  body.textContent = t(`media.${problem.cause}`);
  details.textContent = t("media.details", {
    cause: problem.cause,
    pc: problem.pc,
    candidates: problem.candidates.join(", ") || t("media.none"),
    turn: t(problem.turn ? "media.turn_yes" : "media.turn_no"),
  });
}

// The router: reads the join link, shows one screen at a time, and wires the modules together.
// Reached as /join/<room>#token=<JWT>: the token stays in the fragment (never in a request line,
// a server log or a Referer) and leaves the address bar as soon as it is read. Reached as
// /join/<room> with no token, it offers the sign-in at the hospital's provider (signin.js); a
// signed-in browser joins with an empty token and its session cookie.

import { initAnnotate, renderAnnotate } from "./annotate.js";
import { Call } from "./call.js";
import { initChair, renderChair } from "./chair.js";
import { initChat, renderChat } from "./chat.js";
import { initConnectivity, renderConnectivity } from "./connectivity.js";
import { localMedia, openDevices, translatePickers } from "./devices.js";
import {
  endingKind,
  forgetEnding,
  initEnded,
  isMeetingEnd,
  rememberEnding,
  rememberedEnding,
  renderEnded,
  setLinkToken,
} from "./ended.js";
import { clearGrid, renderGrid } from "./grid.js";
import { preferredLanguage, setLanguage, t } from "./i18n.js";
import { initImages, renderImages } from "./images.js";
import { initPacs } from "./pacs.js";
import { initPacsWrite, renderPacsWrite } from "./pacswrite.js";
import { checkAdmission, renderJoin, showJoin } from "./join.js";
import { initLobby, renderLobby } from "./lobby.js";
import { dataChannels, decodeClaims } from "./protocol.js";
import { initRoom, renderRoom } from "./room.js";
import { initDeviceBinding } from "./dpop.js";
import {
  fetchSignIn,
  initSignOut,
  renderSignIn,
  signInErrorText,
  takeSignInError,
} from "./signin.js";
import { changed, onChange, snapshot, state } from "./state.js";
import { initView } from "./view.js";

const SCREENS = ["home", "signin", "join", "lobby", "room", "ended"];
const languageSelect = document.getElementById("language-select");
const roomTitle = document.getElementById("room-title");
const connectionStatus = document.getElementById("connection-status");
const roomCases = document.getElementById("room-cases");
const roomCasesList = document.getElementById("room-cases-list");

let call = null;
let shownScreen = null;
let signInInfo = null; // what /auth/session said, when the visit has no link token
let homeSignInError = null; // a failed sign-in that came back to the home page, or null

function render(s) {
  for (const name of SCREENS) {
    document.getElementById(`screen-${name}`).hidden = s.screen !== name;
  }
  roomTitle.textContent = s.room?.title || s.roomId || "";
  renderCases(s.room?.cases ?? []);
  languageSelect.value = s.lang;
  if (s.screen === "signin") renderSignIn(s.signIn);
  if (s.screen === "home") renderHomeError();
  if (s.screen === "join") renderJoin();
  if (s.screen === "lobby") renderLobby(s);
  if (s.screen === "room") {
    renderRoom(s);
    renderChair(s);
    renderImages(s);
    renderAnnotate(s);
    renderPacsWrite(s);
    renderChat(s);
    renderGrid(s, localMedia.stream, call?.remoteTracks() ?? new Map());
  } else {
    clearGrid();
  }
  renderConnectivity(s);
  if (s.screen === "ended") renderEnded(s);
  // The meeting ended (the chair, or its schedule): a reload of this page shows it again.
  if (s.screen === "ended" && isMeetingEnd(s.ended)) {
    rememberEnding(s.roomId, { ...s.ended, byMe: s.endedByMe });
  }
  if (s.screen === "ended" && s.signedIn && endingKind(s.ended?.code, s.ended?.reason) === "expired") {
    // The sign-in session ended (its lifetime, or a sign-out elsewhere): sign in again, and
    // come back to this room.
    queueMicrotask(() => showSignIn(signInInfo ?? {}, "session_expired"));
  }
  connectionStatus.textContent = "";
  if (shownScreen !== s.screen) {
    shownScreen = s.screen;
    // Move keyboard and screen-reader focus to the new screen's heading.
    const heading = document.querySelector(`#screen-${s.screen} h1`);
    heading?.setAttribute("tabindex", "-1");
    heading?.focus({ preventScroll: true });
  }
}

/** A failed sign-in that came back to the home page, in the page's language. */
function renderHomeError() {
  const problem = document.getElementById("home-signin-error");
  problem.hidden = homeSignInError === null;
  problem.textContent = homeSignInError === null ? "" : signInErrorText(homeSignInError);
}

/** A scheduled meeting's case list: each case's reference and its label, in the HIS's order. */
function renderCases(cases) {
  roomCases.hidden = cases.length === 0;
  const shown = cases.map((c) => (c.label ? `${c.case_id}: ${c.label}` : c.case_id));
  const current = [...roomCasesList.children].map((item) => item.textContent);
  if (shown.join("\n") === current.join("\n")) return;
  roomCasesList.replaceChildren(
    ...shown.map((text) => {
      const item = document.createElement("li");
      item.textContent = text;
      return item;
    }),
  );
}

/** The "Sign in with <hospital>" screen (`info` from /auth/session), coming back to this room,
 * with the reason the last attempt failed (or null). */
function showSignIn(info, error) {
  state.signIn = { provider: info.provider_name || "", returnPath: location.pathname, error };
  state.screen = "signin";
  changed();
}

/** The home page; `signInError`: a sign-in that came back here failed (its page is unknown,
 * e.g. an old callback opened in another browser), said in the person's language. */
async function showHome(signInError = null) {
  homeSignInError = signInError;
  state.screen = "home";
  changed();
  const status = document.getElementById("home-status");
  status.textContent = t("home.checking");
  try {
    const info = await fetch("/api/info").then((r) => r.json());
    status.textContent = t("home.ready", { version: info.version });
    document.getElementById("home-dev").hidden = !info.dev_mode;
  } catch {
    status.textContent = t("home.unreachable");
  }
}

/** The room and token from `/join/<room>#token=<JWT>`; the fragment is removed at once (no
 * token in the address bar, history or a copied link). The token is kept for this tab only
 * (sessionStorage, gone when the tab closes), so a reload brings the person back to the
 * pre-join screen instead of "no token"; the server still checks it on every visit. */
function readJoinLink() {
  const match = location.pathname.match(/^\/join\/([^/]+)\/?$/);
  const roomId = match ? decodeURIComponent(match[1]) : null;
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (location.hash) history.replaceState(null, "", location.pathname);
  let token = fragment.get("token");
  if (roomId && token) forgetEnding(roomId); // a new link: a new visit
  if (roomId) {
    const key = `consilium.token.${roomId}`;
    try {
      if (token) sessionStorage.setItem(key, token);
      else token = sessionStorage.getItem(key);
    } catch {
      // Storage switched off: a reload asks for the link again, as before.
    }
  }
  return { roomId, token };
}

async function start() {
  const signInError = takeSignInError(); // before the link's fragment is cleared
  const { roomId, token } = readJoinLink();
  onChange(render);
  state.lang = await setLanguage(preferredLanguage());
  languageSelect.addEventListener("change", async () => {
    state.lang = await setLanguage(languageSelect.value, true);
    await translatePickers();
    changed();
  });
  if (!roomId) return showHome(signInError);
  state.roomId = roomId;
  const over = rememberedEnding(roomId);
  if (over) {
    // This tab saw the meeting end: say so again rather than joining (or reconnecting).
    state.ended = { code: over.code, reason: over.reason };
    state.endedByMe = over.byMe;
    state.screen = "ended";
    changed();
    return;
  }
  if (!token) {
    // No link: the person may have signed in at the hospital's provider (a session cookie), or
    // may do so now. Its device key binds the sign-in and signs its calls (dpop.js).
    await initDeviceBinding();
    signInInfo = await fetchSignIn();
    if (signInInfo?.enabled && (!signInInfo.signed_in || signInError !== null)) {
      return showSignIn(signInInfo, signInError);
    }
    if (!signInInfo?.signed_in) {
      state.ended = { code: "no_token", reason: "" };
      state.screen = "ended";
      changed();
      return;
    }
    state.signedIn = true;
    state.claims = {
      sub: signInInfo.sub,
      name: signInInfo.name,
      role: signInInfo.role,
      dept: signInInfo.dept,
    };
    initSignOut(document.getElementById("signout-button"), location.pathname);
  } else {
    state.claims = decodeClaims(token);
  }
  setLinkToken(token ?? "");
  // A refusal is said before the camera check: no device is opened for a visit that cannot be.
  const refused = await checkAdmission(token ?? "", roomId);
  if (refused) {
    state.ended = refused;
    state.screen = "ended";
    changed();
    return;
  }
  call = new Call(token ?? "", roomId);
  initLobby(call);
  initRoom(call);
  initChair(call);
  initImages(call);
  initPacs(call);
  initPacsWrite(call);
  initAnnotate();
  initChat();
  initConnectivity(call);
  initView(call);
  initEnded(() => {
    state.ended = null;
    state.notice = "";
    call.leaving = false;
    // The devices were closed when the visit ended; the join waits for them (Call.joined).
    openDevices();
    call.connect();
  });
  await showJoin(() => call.connect());
}

/** The test hook: automation reads state and statistics without `eval` (the CSP forbids it). */
window.consilium = {
  state: snapshot,
  stats: () => call?.stats() ?? { inbound: [] },
  ending: () => (state.ended ? endingKind(state.ended.code, state.ended.reason) : null),
  dropConnection: () => call?.dropConnection(),
  closeDataChannel: () => dataChannels.channels.get("consilium-reliable")?.close(),
};

start().catch((err) => {
  state.errors.push(String(err));
  console.error(err);
});

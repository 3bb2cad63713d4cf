// The waiting screens: connecting, reconnecting, in the lobby, or the room is not open yet.

import { t } from "./i18n.js";

const heading = document.getElementById("lobby-heading");
const body = document.getElementById("lobby-body");
const leaveButton = document.getElementById("lobby-leave");

/** Wire the lobby's leave button to the call. */
export function initLobby(call) {
  leaveButton.addEventListener("click", () => call.leave());
}

const TEXT = {
  connecting: ["lobby.connecting_heading", "lobby.connecting"],
  reconnecting: ["lobby.reconnecting_heading", "lobby.reconnecting"],
  lobby_enabled: ["lobby.waiting_heading", "lobby.lobby_enabled"],
  room_not_open: ["lobby.room_not_open_heading", "lobby.room_not_open"],
};

/** Draw the waiting screen for `state.lobbyReason`. */
export function renderLobby(state) {
  const [title, text] = TEXT[state.lobbyReason] ?? TEXT.connecting;
  heading.textContent = t(title);
  body.textContent = t(text, { n: state.reconnects });
}

// The chair's controls: admit or deny people waiting in the lobby, mute or remove participants,
// lock the room. Each is shown only if the permission is in `joined.permissions`; the server
// refuses them anyway (an `error`, shown as a notice).

import { t } from "./i18n.js";

const panel = document.getElementById("chair-panel");
const lobbyList = document.getElementById("lobby-list");
const lobbyEmpty = document.getElementById("lobby-empty");
const lockButton = document.getElementById("lock-button");

let call = null;
let locked = false;

/** Wire the chair's buttons to the call. */
export function initChair(theCall) {
  call = theCall;
  lockButton.addEventListener("click", () => setLocked(!locked));
}

/** Let someone in from the lobby. */
export function admit(participantId) {
  call.signalling.admit(participantId);
}

/** Refuse someone waiting in the lobby. */
export function deny(participantId) {
  call.signalling.deny(participantId);
}

/** Mute a participant's microphone. */
export function mute(participantId) {
  call.signalling.mute(participantId, "audio");
}

/** Remove a participant from the room. */
export function remove(participantId) {
  call.signalling.remove(participantId);
}

/** Lock the room (nobody else may join, not even through the lobby) or unlock it. */
export function setLocked(lock) {
  call.signalling.updateRoom({ locked: lock });
}

function button(text, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

/** Mute/remove buttons for one participant's row, as far as my permissions go. */
export function chairButtons(state, person) {
  const buttons = [];
  if (person.participant_id === state.participantId) return buttons;
  const name = person.name || person.sub;
  const pid = person.participant_id;
  if (state.permissions.includes("mute_others") && !person.audio_muted) {
    buttons.push(button(t("chair.mute", { name }), "chair-mute", () => mute(pid)));
  }
  if (state.permissions.includes("remove_participant")) {
    buttons.push(button(t("chair.remove", { name }), "chair-remove danger", () => remove(pid)));
  }
  return buttons;
}

/** The lobby list and the lock button. */
export function renderChair(state) {
  const mayAdmit = state.permissions.includes("admit");
  panel.hidden = !mayAdmit;
  if (!mayAdmit) return;
  locked = Boolean(state.room?.locked);
  lockButton.textContent = t(locked ? "chair.unlock" : "chair.lock");
  const rows = [];
  for (const person of state.lobby.values()) {
    const li = document.createElement("li");
    li.dataset.participantId = person.participant_id;
    const name = person.name || person.sub;
    const label = document.createElement("span");
    label.className = "person";
    label.textContent = t("chair.knock", { name });
    const pid = person.participant_id;
    li.append(
      label,
      button(t("chair.admit", { name }), "chair-admit primary", () => admit(pid)),
      button(t("chair.deny", { name }), "chair-deny", () => deny(pid)),
    );
    rows.push(li);
  }
  replaceRows(lobbyList, rows);
  lobbyEmpty.hidden = rows.length > 0;
}

/** Replace a list's rows only if what they say changed (keeps keyboard focus in place). */
export function replaceRows(list, rows) {
  const key = (li) => li.dataset.participantId + "|" + li.textContent;
  const now = [...list.children].map(key).join("\n");
  if (now !== rows.map(key).join("\n")) list.replaceChildren(...rows);
}

// The chair's controls: admit or deny people waiting in the lobby, mute or remove participants
// (a removal is confirmed first), lock the room, end the meeting for everyone (confirmed first). Each is shown only if the permission is in `joined.permissions`; the server
// refuses them anyway (an `error`, shown as a notice).

import { t } from "./i18n.js";
import { state as appState } from "./state.js";

const panel = document.getElementById("chair-panel");
const lobbyList = document.getElementById("lobby-list");
const lobbyEmpty = document.getElementById("lobby-empty");
const lockButton = document.getElementById("lock-button");
const participantList = document.getElementById("participant-list");
const removeDialog = document.getElementById("remove-dialog");
const removeHeading = document.getElementById("remove-dialog-heading");
const removeBody = document.getElementById("remove-dialog-body");
const removeConfirm = document.getElementById("remove-confirm");
const removeCancel = document.getElementById("remove-cancel");
const endButton = document.getElementById("end-meeting-button");
const endDialog = document.getElementById("end-dialog");
const endConfirm = document.getElementById("end-confirm");
const endCancel = document.getElementById("end-cancel");

let call = null;
let locked = false;
let removing = null; // {participantId, opener}: the removal the dialog asks to confirm
// The participant list's buttons are one tab stop (a roving tabindex): Tab reaches the list
// once, the arrow keys move between its buttons. This is the button that has the stop.
let roving = { participantId: null, kind: null };

/** Wire the chair's buttons to the call. */
export function initChair(theCall) {
  call = theCall;
  lockButton.addEventListener("click", () => setLocked(!locked));
  participantList.addEventListener("keydown", moveInList);
  participantList.addEventListener("focusin", (event) => {
    if (event.target instanceof HTMLButtonElement) stopAt(event.target);
  });
  removeConfirm.addEventListener("click", () => {
    if (removing) remove(removing.participantId);
    removeDialog.close();
  });
  removeCancel.addEventListener("click", () => removeDialog.close());
  endButton.addEventListener("click", () => {
    endDialog.showModal();
    // The safe choice has the focus: Enter by habit does not end anyone's meeting.
    endCancel.focus();
  });
  endConfirm.addEventListener("click", () => {
    if (endDialog.open) endMeeting();
    endDialog.close();
  });
  endCancel.addEventListener("click", () => endDialog.close());
  endDialog.addEventListener("close", () => {
    if (endButton.isConnected && !endButton.hidden) endButton.focus();
  });
  removeDialog.addEventListener("close", () => {
    // The close event is queued: after Escape and a quick Enter on Remove, it arrives when the
    // dialog already asks again, and must not forget that newer question.
    if (removeDialog.open) return;
    // Back to where the chair was (or to the list, when that row is gone).
    const opener = removing?.opener;
    removing = null;
    if (opener?.isConnected) opener.focus();
    else currentStop()?.focus();
  });
}

/** Ask the chair to confirm removing someone: a removal cannot be taken back. */
function confirmRemove(participantId, name, opener) {
  removing = { participantId, opener };
  removeHeading.textContent = t("chair.remove_heading", { name });
  removeBody.textContent = t("chair.remove_body", { name });
  removeDialog.showModal();
  // The safe choice has the focus: Enter by habit does not remove anyone.
  removeCancel.focus();
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

/** End the meeting for everyone: asked once (a second click while the server closes sends
 * nothing more); the server closes every connection, mine too, with 4411. */
export function endMeeting() {
  if (appState.endedByMe) return;
  appState.endedByMe = true;
  endButton.disabled = true;
  call.signalling.endMeeting();
}

/** Lock the room (nobody else may join, not even through the lobby) or unlock it. */
export function setLocked(lock) {
  call.signalling.updateRoom({ locked: lock });
}

function button(text, className, onClick, kind = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.dataset.kind = kind;
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
    buttons.push(button(t("chair.mute", { name }), "chair-mute", () => mute(pid), "mute"));
  }
  if (state.permissions.includes("remove_participant")) {
    const opener = button(
      t("chair.remove", { name }),
      "chair-remove danger",
      () => confirmRemove(pid, name, opener),
      "remove",
    );
    buttons.push(opener);
  }
  return buttons;
}

/** The participant list's rows, with its buttons as one tab stop (keeps the focus in place). */
export function renderParticipantRows(rows) {
  const focused = participantList.contains(document.activeElement);
  replaceRows(participantList, rows);
  const stop = currentStop();
  for (const b of participantList.querySelectorAll("button")) b.tabIndex = b === stop ? 0 : -1;
  if (focused && stop && !participantList.contains(document.activeElement)) stop.focus();
}

function rowButtons(li) {
  return [...li.querySelectorAll("button")];
}

/** The button holding the list's tab stop: the one last moved to, or the closest left. */
function currentStop() {
  const rows = [...participantList.children].filter((li) => rowButtons(li).length);
  const row = rows.find((li) => li.dataset.participantId === roving.participantId);
  if (row) {
    const buttons = rowButtons(row);
    return buttons.find((b) => b.dataset.kind === roving.kind) ?? buttons[0];
  }
  const first = rows[0] ? rowButtons(rows[0]) : [];
  return first.find((b) => b.dataset.kind === roving.kind) ?? first[0] ?? null;
}

function stopAt(b) {
  roving = { participantId: b.closest("li").dataset.participantId, kind: b.dataset.kind };
  for (const other of participantList.querySelectorAll("button")) {
    other.tabIndex = other === b ? 0 : -1;
  }
}

/** Arrow keys: up and down to the same button of the row above or below (Mute to Mute), left
 * and right within a row; Home and End to the first and last row. */
function moveInList(event) {
  const from = event.target;
  if (!(from instanceof HTMLButtonElement)) return;
  const rows = [...participantList.children].filter((li) => rowButtons(li).length);
  const r = rows.indexOf(from.closest("li"));
  const inRow = rowButtons(rows[r]);
  const c = inRow.indexOf(from);
  const sameKind = (li) => {
    const buttons = rowButtons(li);
    return buttons.find((b) => b.dataset.kind === from.dataset.kind) ?? buttons[0];
  };
  let to = null;
  if (event.key === "ArrowDown" && r + 1 < rows.length) to = sameKind(rows[r + 1]);
  else if (event.key === "ArrowUp" && r > 0) to = sameKind(rows[r - 1]);
  else if (event.key === "ArrowRight") to = inRow[c + 1] ?? null;
  else if (event.key === "ArrowLeft") to = inRow[c - 1] ?? null;
  else if (event.key === "Home") to = sameKind(rows[0]);
  else if (event.key === "End") to = sameKind(rows[rows.length - 1]);
  else return;
  event.preventDefault();
  if (!to) return;
  stopAt(to);
  to.focus();
}

/** The lobby list and the lock button. */
export function renderChair(state) {
  const mayAdmit = state.permissions.includes("admit");
  panel.hidden = !mayAdmit;
  if (!mayAdmit) return;
  endButton.hidden = !state.permissions.includes("remove_participant");
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

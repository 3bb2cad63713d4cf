// In the room: my microphone, camera and screen-share controls, leave, the participant list and
// notices. The grid (grid.js) and the chair's controls (chair.js) draw the rest.

import { chairButtons, replaceRows } from "./chair.js";
import { roleName, t } from "./i18n.js";

const micButton = document.getElementById("mic-button");
const cameraButton = document.getElementById("camera-button");
const screenButton = document.getElementById("screen-button");
const leaveButton = document.getElementById("leave-button");
const participantList = document.getElementById("participant-list");
const notice = document.getElementById("room-notice");

/** Wire the controls to the call. */
export function initRoom(call) {
  micButton.addEventListener("click", () => call.toggleMic());
  cameraButton.addEventListener("click", () => call.toggleCamera());
  screenButton.addEventListener("click", () => call.toggleScreen());
  leaveButton.addEventListener("click", () => call.leave());
  screenButton.hidden = !navigator.mediaDevices?.getDisplayMedia;
}

/** Buttons, participant list and notice from the state. */
export function renderRoom(state) {
  const { audioMuted, videoMuted, sharing } = state.media;
  micButton.textContent = t(audioMuted ? "room.unmute_mic" : "room.mute_mic");
  micButton.setAttribute("aria-pressed", String(audioMuted));
  cameraButton.textContent = t(videoMuted ? "room.start_camera" : "room.stop_camera");
  cameraButton.setAttribute("aria-pressed", String(videoMuted));
  screenButton.textContent = t(sharing ? "room.stop_share" : "room.share_screen");
  screenButton.setAttribute("aria-pressed", String(sharing));
  screenButton.hidden =
    !navigator.mediaDevices?.getDisplayMedia || !state.permissions.includes("share_screen");

  const rows = [];
  for (const person of state.participants.values()) {
    const li = document.createElement("li");
    li.dataset.participantId = person.participant_id;
    const name = person.name || person.sub;
    const label = document.createElement("span");
    label.className = "person";
    const who = person.participant_id === state.participantId ? t("room.you", { name }) : name;
    const mic = person.audio_muted ? t("tile.mic_muted") : t("tile.mic_on");
    label.textContent = `${who} · ${roleName(person.role)} · ${mic}`;
    li.append(label, ...chairButtons(state, person));
    rows.push(li);
  }
  replaceRows(participantList, rows);
  notice.textContent = state.notice ? t(state.notice) : "";
}

// In the room: my microphone, camera and screen-share controls, leave, the participant list, my
// device pickers and notices. The grid (grid.js), the chair's controls (chair.js) and the
// recording's indicator, notice and controls (recording.js) draw the rest.

import { chairButtons, renderParticipantRows } from "./chair.js";
import { addMeter, addPickers } from "./devices.js";
import { roleName, t } from "./i18n.js";
import { initRecording, notRecordedKey, renderRecording } from "./recording.js";

const micButton = document.getElementById("mic-button");
const cameraButton = document.getElementById("camera-button");
const screenButton = document.getElementById("screen-button");
const leaveButton = document.getElementById("leave-button");
const notice = document.getElementById("room-notice");
const knockNotice = document.getElementById("knock-notice");

/** Wire the controls to the call. */
export function initRoom(call) {
  micButton.addEventListener("click", () => call.toggleMic());
  cameraButton.addEventListener("click", () => call.toggleCamera());
  screenButton.addEventListener("click", () => call.toggleScreen());
  leaveButton.addEventListener("click", () => call.leave());
  addPickers(
    document.getElementById("room-camera-select"),
    document.getElementById("room-microphone-select"),
  );
  addMeter(document.getElementById("room-mic-meter"));
  initRecording(call);
}

/** A control's words say what pressing it does; `data-off` marks a device I turned off. */
function control(button, off, key) {
  button.textContent = t(key);
  button.dataset.off = String(off);
}

/** Buttons, participant list and notices from the state. */
export function renderRoom(state) {
  const { audioMuted, videoMuted, sharing } = state.media;
  control(micButton, audioMuted, audioMuted ? "room.unmute_mic" : "room.mute_mic");
  control(cameraButton, videoMuted, videoMuted ? "room.start_camera" : "room.stop_camera");
  control(screenButton, false, sharing ? "room.stop_share" : "room.share_screen");
  screenButton.classList.toggle("active", sharing);
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
    const camera = person.video_muted ? ` · ${t("tile.camera_off")}` : "";
    const notRecorded = notRecordedKey(state, person.participant_id);
    const recorded = notRecorded ? ` · ${t(notRecorded)}` : "";
    label.textContent = `${who} · ${roleName(person.role)} · ${mic}${camera}${recorded}`;
    li.append(label, ...chairButtons(state, person));
    rows.push(li);
  }
  renderParticipantRows(rows);
  renderRecording(state);
  const shown = state.notice || (state.room?.locked ? "room.locked_notice" : "");
  notice.textContent = shown ? t(shown) : "";
  const waiting = [...state.lobby.values()].map((p) => p.name || p.sub);
  knockNotice.textContent = waiting.length
    ? t("chair.knock", { name: waiting[waiting.length - 1] })
    : "";
}

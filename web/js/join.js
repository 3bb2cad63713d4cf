// The pre-join screen: camera preview, device pickers, microphone level, and who the link says
// I am. Also owns my local camera and microphone for the rest of the visit.

import { roleName, t } from "./i18n.js";
import { changed, state } from "./state.js";

const VIDEO = { width: 640, height: 360 };
const SPEAKING_LEVEL = 0.04; // RMS of the microphone signal above which I count as speaking

const preview = document.getElementById("preview-video");
const previewError = document.getElementById("preview-error");
const cameraSelect = document.getElementById("camera-select");
const microphoneSelect = document.getElementById("microphone-select");
const meter = document.getElementById("mic-meter");
const joinButton = document.getElementById("join-button");

/** My camera and microphone: one stream, replaced when a device is picked. */
export const localMedia = {
  stream: null,
  level: 0,
  error: null,
  onTrackReplaced: null, // (kind, track) => void, set by the room once publishing
};

let audioContext = null;
let analyser = null;
let analysedTrack = null;

async function openDevices() {
  const constraints = {
    audio: microphoneSelect.value ? { deviceId: { exact: microphoneSelect.value } } : true,
    video: cameraSelect.value ? { ...VIDEO, deviceId: { exact: cameraSelect.value } } : VIDEO,
  };
  try {
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    const old = localMedia.stream;
    localMedia.stream = stream;
    localMedia.error = null;
    if (old) {
      for (const track of stream.getTracks()) {
        track.enabled = !(track.kind === "audio" ? state.media.audioMuted : state.media.videoMuted);
        localMedia.onTrackReplaced?.(track.kind, track);
      }
      for (const track of old.getTracks()) track.stop();
    }
  } catch (err) {
    localMedia.error = err.name || String(err);
  }
  preview.srcObject = localMedia.stream;
  previewError.hidden = localMedia.error === null;
  previewError.textContent = localMedia.error ? t("join.no_devices", { error: localMedia.error }) : "";
  await listDevices();
  watchLevel();
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const inUse = new Map(
    (localMedia.stream?.getTracks() ?? []).map((tr) => [tr.kind, tr.getSettings().deviceId]),
  );
  fill(cameraSelect, devices.filter((d) => d.kind === "videoinput"), inUse.get("video"));
  fill(microphoneSelect, devices.filter((d) => d.kind === "audioinput"), inUse.get("audio"));
}

function fill(select, devices, selected) {
  select.replaceChildren();
  if (devices.length === 0) {
    select.append(new Option(t("join.device_default"), ""));
  }
  devices.forEach((device, i) => {
    const label = device.label || t("join.device_unnamed", { n: i + 1 });
    select.append(new Option(label, device.deviceId, false, device.deviceId === selected));
  });
}

/** The microphone level, from an AudioContext analyser on the current microphone track. */
function watchLevel() {
  const track = localMedia.stream?.getAudioTracks()[0];
  if (!track || track === analysedTrack) return;
  analysedTrack = track;
  audioContext ??= new AudioContext();
  analyser = audioContext.createAnalyser();
  analyser.fftSize = 1024;
  audioContext.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  audioContext.resume();
}

const samples = new Float32Array(1024);

function measure() {
  if (analyser) {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    localMedia.level = state.media.audioMuted ? 0 : rms;
    meter.value = Math.min(1, localMedia.level * 4);
    const speaking = localMedia.level > SPEAKING_LEVEL;
    if (state.participantId && speaking !== state.speaking.has(state.participantId)) {
      if (speaking) state.speaking.add(state.participantId);
      else state.speaking.delete(state.participantId);
      changed();
    }
  }
}

/** Show the pre-join screen; `onJoin` is called when the person presses Join. */
export async function showJoin(onJoin) {
  state.screen = "join";
  changed();
  joinButton.addEventListener("click", () => {
    joinButton.disabled = true;
    audioContext?.resume();
    onJoin();
  });
  cameraSelect.addEventListener("change", openDevices);
  microphoneSelect.addEventListener("change", openDevices);
  setInterval(measure, 100);
  await openDevices();
  joinButton.focus();
}

/** Who the token says I am (not verified here: the server checks it at `join`). */
export function renderJoin() {
  const claims = state.claims;
  const unknown = t("identity.unknown");
  document.getElementById("claim-name").textContent = claims.name || claims.sub || unknown;
  document.getElementById("claim-role").textContent = claims.role ? roleName(claims.role) : unknown;
  const depts = Array.isArray(claims.dept) ? claims.dept : [];
  document.getElementById("claim-dept").textContent = depts.join(", ") || unknown;
  document.getElementById("claim-room").textContent = state.roomId ?? unknown;
  if (localMedia.error) {
    previewError.textContent = t("join.no_devices", { error: localMedia.error });
  }
}

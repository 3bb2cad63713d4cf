// My camera and microphone for the whole visit: one local stream, the device pickers (on the
// pre-join screen and in the room), and the microphone level meters. Picking another device
// during the call replaces that one track; the room swaps it into the publish session without
// renegotiating (media.js, `replaceTrack`).

import { t } from "./i18n.js";
import { changed, state } from "./state.js";

const VIDEO = { width: 640, height: 360 };
const SPEAKING_LEVEL = 0.04; // RMS of the microphone signal above which I count as speaking
const SPEAKING_HOLD_MS = 1000; // ...and for this long after, so the tile does not flicker
const LEVEL_INTERVAL_MS = 100;
const METER_DECAY = 0.85; // per measurement

/** My camera and microphone: one stream whose tracks are replaced when a device is picked. */
export const localMedia = {
  stream: null,
  level: 0,
  error: null, // the getUserMedia error's name, when a device could not be opened
  // Settles when the first getUserMedia has: Join may be pressed (and the chair may admit) before
  // then, and a publish offer made without the tracks would carry no audio or video.
  ready: Promise.resolve(),
  onTrackReplaced: null, // (kind, track) => Promise, set by the room once publishing
};

const pickers = []; // [{camera: <select>, microphone: <select>}]
const meters = []; // <meter> elements showing the microphone level
const listeners = []; // called after the stream or its tracks changed

let cameraDevice = null; // the camera and microphone last used (device ids), to open again
let microphoneDevice = null;
let audioContext = null;
let analyser = null;
let analysedTrack = null;
let levelTimer = null;
let lastSpoke = -Infinity;
let shownLevel = 0;

/** Device pickers to keep filled and to act on: a camera and a microphone <select>. */
export function addPickers(camera, microphone) {
  pickers.push({ camera, microphone });
  camera.addEventListener("change", () => pickDevice("video", camera.value));
  microphone.addEventListener("change", () => pickDevice("audio", microphone.value));
}

/** A <meter> to show the microphone level in. */
export function addMeter(meter) {
  meters.push(meter);
}

/** Call `listener()` whenever my stream or one of its tracks changes. */
export function onLocalMediaChange(listener) {
  listeners.push(listener);
}

function constraints(kind, deviceId) {
  if (kind === "video") return deviceId ? { ...VIDEO, deviceId: { exact: deviceId } } : VIDEO;
  return deviceId ? { deviceId: { exact: deviceId } } : true;
}

/** Open the camera and microphone (the first time). */
export function openDevices() {
  localMedia.ready = open();
  return localMedia.ready;
}

async function open() {
  try {
    // A camera I turned off stays off (and unlit) when the devices open again (a rejoin).
    const video = state.media.videoMuted ? false : constraints("video", cameraDevice);
    const request = { audio: constraints("audio", microphoneDevice), video };
    localMedia.stream = await navigator.mediaDevices.getUserMedia(request).catch((err) => {
      if (!cameraDevice && !microphoneDevice) throw err;
      // The devices used before may be gone (unplugged): any camera and microphone then.
      return navigator.mediaDevices.getUserMedia({ audio: true, video: video && VIDEO });
    });
    for (const track of localMedia.stream.getAudioTracks()) track.enabled = !state.media.audioMuted;
    localMedia.error = null;
  } catch (err) {
    localMedia.error = err.name || String(err);
  }
  await settled();
}

/** Stop my camera and microphone (the visit ended: the camera light goes off). `openDevices`
 * opens them again, with the devices picked. */
export function closeDevices() {
  for (const track of localMedia.stream?.getTracks() ?? []) {
    remember(track);
    track.stop();
  }
  localMedia.stream = null;
  localMedia.ready = Promise.resolve();
  for (const listener of listeners) listener();
  changed();
}

/** Turn my camera off: stop capturing (the camera light goes off), and send no video. */
export async function stopCamera() {
  const track = localMedia.stream?.getVideoTracks()[0];
  if (!track) return;
  remember(track);
  localMedia.stream.removeTrack(track);
  track.stop();
  await localMedia.onTrackReplaced?.("video", null);
  await settled();
}

/** Turn my camera on again: ask for the device again and send its track; false if refused. */
export async function startCamera() {
  if (localMedia.stream?.getVideoTracks().length) return true;
  let track;
  try {
    const request = { video: constraints("video", cameraDevice) };
    [track] = (await navigator.mediaDevices.getUserMedia(request)).getVideoTracks();
  } catch (err) {
    localMedia.error = err.name || String(err);
    await settled();
    return false;
  }
  localMedia.stream ??= new MediaStream();
  localMedia.stream.addTrack(track);
  localMedia.error = null;
  await localMedia.onTrackReplaced?.("video", track);
  await settled();
  return true;
}

/** Keep which device a track came from, to open the same one again. */
function remember(track) {
  const deviceId = track.getSettings().deviceId;
  if (!deviceId) return;
  if (track.kind === "video") cameraDevice = deviceId;
  else microphoneDevice = deviceId;
}

/** Switch one kind to another device: a new track in the stream, and in the call if there. */
export async function pickDevice(kind, deviceId) {
  if (kind === "video" && state.media.videoMuted) {
    // The camera is off: remember the choice, open it when the camera is turned on.
    cameraDevice = deviceId || null;
    return;
  }
  const old = localMedia.stream?.getTracks().find((track) => track.kind === kind);
  if (old?.getSettings().deviceId === deviceId) return;
  let track;
  try {
    const request = { [kind]: constraints(kind, deviceId) };
    [track] = (await navigator.mediaDevices.getUserMedia(request)).getTracks();
  } catch (err) {
    localMedia.error = err.name || String(err);
    await settled();
    return;
  }
  track.enabled = !(kind === "audio" ? state.media.audioMuted : state.media.videoMuted);
  localMedia.stream ??= new MediaStream();
  if (old) localMedia.stream.removeTrack(old);
  localMedia.stream.addTrack(track);
  localMedia.error = null;
  remember(track);
  await localMedia.onTrackReplaced?.(kind, track);
  old?.stop();
  await settled();
}

async function settled() {
  await listDevices();
  watchLevel();
  for (const listener of listeners) listener();
  changed();
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const inUse = new Map(
    (localMedia.stream?.getTracks() ?? []).map((tr) => [tr.kind, tr.getSettings().deviceId]),
  );
  const cameras = devices.filter((d) => d.kind === "videoinput");
  const microphones = devices.filter((d) => d.kind === "audioinput");
  for (const { camera, microphone } of pickers) {
    fill(camera, cameras, inUse.get("video"));
    fill(microphone, microphones, inUse.get("audio"));
  }
}

function fill(select, devices, selected) {
  const options = devices.length
    ? devices.map(
        (device, i) =>
          new Option(
            device.label || t("join.device_unnamed", { n: i + 1 }),
            device.deviceId,
            false,
            device.deviceId === selected,
          ),
      )
    : [new Option(t("join.device_default"), "")];
  // Keep the list (and keyboard focus on it) when nothing changed.
  const now = [...select.options].map((o) => `${o.value}|${o.text}`).join("\n");
  if (now !== options.map((o) => `${o.value}|${o.text}`).join("\n")) {
    select.replaceChildren(...options);
  }
  if (selected !== undefined) select.value = selected;
}

/** Name the devices again in the current language (unnamed devices are "Device 1"...). */
export function translatePickers() {
  return listDevices();
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
  levelTimer ??= setInterval(measure, LEVEL_INTERVAL_MS);
}

/** Let the audio context run (browsers start it only after a user gesture). */
function resumeAudio() {
  audioContext?.resume();
}

// The level meter of the pre-join screen moves from the first click or key press on.
for (const gesture of ["pointerdown", "keydown"]) {
  document.addEventListener(gesture, resumeAudio, { capture: true });
}

const samples = new Float32Array(1024);

function measure() {
  analyser.getFloatTimeDomainData(samples);
  let sum = 0;
  for (const s of samples) sum += s * s;
  const rms = Math.sqrt(sum / samples.length);
  localMedia.level = state.media.audioMuted ? 0 : rms;
  // The meter falls back slowly, so that a short sound stays visible for a moment.
  shownLevel = Math.max(Math.min(1, localMedia.level * 4), shownLevel * METER_DECAY);
  for (const meter of meters) meter.value = shownLevel;
  const now = performance.now();
  if (localMedia.level > SPEAKING_LEVEL) lastSpoke = now;
  const speaking = now - lastSpoke < SPEAKING_HOLD_MS;
  if (state.participantId && speaking !== state.speaking.has(state.participantId)) {
    if (speaking) state.speaking.add(state.participantId);
    else state.speaking.delete(state.participantId);
    changed();
  }
}

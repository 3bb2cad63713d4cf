// The video grid: one tile per participant (and per screen share), 1–12 tiles laid out by CSS
// from `data-count`. Each tile: video, name, role and department, microphone state, speaking
// indicator and connection quality.

import { roleName, t } from "./i18n.js";

const grid = document.getElementById("grid");
const tiles = new Map(); // tile key → {figure, video, name, details, mic, quality}

function makeTile(key) {
  const figure = document.createElement("figure");
  figure.className = "tile";
  figure.dataset.key = key;
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  const caption = document.createElement("figcaption");
  caption.id = `tile-${key}`;
  video.setAttribute("aria-labelledby", caption.id);
  const name = document.createElement("span");
  name.className = "tile-name";
  const details = document.createElement("span");
  details.className = "tile-details";
  const mic = document.createElement("span");
  mic.className = "tile-mic";
  const quality = document.createElement("span");
  quality.className = "tile-quality";
  caption.append(name, details, mic, quality);
  figure.append(video, caption);
  grid.append(figure);
  const tile = { figure, video, name, details, mic, quality };
  tiles.set(key, tile);
  return tile;
}

function show(video, tracks, muted) {
  video.muted = muted;
  const shown = video.srcObject?.getTracks() ?? [];
  if (shown.length !== tracks.length || tracks.some((track) => !shown.includes(track))) {
    video.srcObject = tracks.length ? new MediaStream(tracks) : null;
  }
}

/** Redraw the grid from the state, my local stream and the remote tracks by participant. */
export function renderGrid(state, localStream, remote) {
  const wanted = [];
  const me = state.participants.get(state.participantId);
  if (me) wanted.push({ key: `${me.participant_id}-camera`, person: me, source: "camera" });
  for (const person of state.participants.values()) {
    if (person.participant_id === state.participantId) continue;
    wanted.push({ key: `${person.participant_id}-camera`, person, source: "camera" });
    if (remote.get(person.participant_id)?.screen.length) {
      wanted.push({ key: `${person.participant_id}-screen`, person, source: "screen" });
    }
  }
  const keys = new Set(wanted.map((w) => w.key));
  for (const [key, tile] of tiles) {
    if (!keys.has(key)) {
      tile.figure.remove();
      tiles.delete(key);
    }
  }
  for (const { key, person, source } of wanted) {
    const tile = tiles.get(key) ?? makeTile(key);
    const pid = person.participant_id;
    const mine = pid === state.participantId;
    if (mine) {
      show(tile.video, localStream?.getVideoTracks() ?? [], true);
    } else {
      show(tile.video, remote.get(pid)?.[source] ?? [], false);
    }
    const { figure } = tile;
    figure.dataset.participantId = pid;
    figure.dataset.source = source;
    figure.dataset.audioMuted = String(person.audio_muted);
    figure.dataset.videoMuted = String(person.video_muted);
    figure.classList.toggle("speaking", source === "camera" && state.speaking.has(pid) === true);
    figure.classList.toggle("camera-off", source === "camera" && Boolean(person.video_muted));
    const name = person.name || person.sub;
    tile.name.textContent =
      source === "screen" ? t("room.screen_of", { name }) : mine ? t("room.you", { name }) : name;
    tile.details.textContent = [roleName(person.role), (person.depts ?? []).join(", ")]
      .filter(Boolean)
      .join(" · ");
    const micText = person.audio_muted ? t("tile.mic_muted") : t("tile.mic_on");
    const speaking = state.speaking.has(pid) && !person.audio_muted;
    tile.mic.textContent = speaking ? t("tile.speaking") : micText;
    tile.mic.classList.toggle("muted", Boolean(person.audio_muted));
    tile.mic.hidden = source === "screen";
    const quality = mine ? null : state.quality.get(pid);
    tile.quality.hidden = !quality || source === "screen";
    tile.quality.textContent = quality ? t(`tile.quality_${quality}`) : "";
    tile.quality.classList.toggle("poor", quality === "poor");
  }
  grid.dataset.count = String(Math.min(tiles.size, 12));
  // Keep tiles in the wanted order (me first).
  wanted.forEach(({ key }, i) => {
    const figure = tiles.get(key).figure;
    if (grid.children[i] !== figure) grid.insertBefore(figure, grid.children[i] ?? null);
  });
}

/** Drop every tile (leaving the room). */
export function clearGrid() {
  for (const tile of tiles.values()) tile.figure.remove();
  tiles.clear();
}

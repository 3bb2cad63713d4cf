// The video grid: one tile per participant (and per screen share). The tiles are laid out in as
// many columns as makes them largest in the space the room leaves (1–12 participants and their
// shares, in any window shape). Each tile: video, or a placeholder with the person's initials
// when there is no picture; name, role and department; microphone state, speaking indicator,
// connection quality (and in words what is wrong, on whose side: quality.js), and a mark when
// the room is recorded without them (recording.js); a pin button that makes the tile the large
// one. My own connection also shows in the controls bar. Which layout shows (grid, speaker view,
// presenter layout, a pinned tile) is layout.js's decision; this module draws it, and view.js
// tells the SFU the size each tile was drawn at (so a large tile gets a high simulcast layer).

import { roleName, t } from "./i18n.js";
import { chooseLayout, focusSizes } from "./layout.js";
import { withLayers } from "./quality.js";
import { notRecordedKey } from "./recording.js";
import { changed, state as clientState } from "./state.js";
import { pictureLayers, showTiles } from "./view.js";

const ASPECT = 16 / 9; // tiles keep the camera's shape
const GAP_PX = 8; // matches `gap` of .grid in app.css

const grid = document.getElementById("grid");
const stage = grid.parentElement;
const layoutButton = document.getElementById("layout-button");
const tiles = new Map(); // tile key → {figure, video, placeholder, name, details, mic, quality}
// My own connection, in the controls bar: made here (with the tiles' quality badges) rather than
// in index.html, so that the quality display stays in one module.
const myQuality = document.createElement("span");
myQuality.id = "my-quality";
myQuality.className = "my-quality";
myQuality.hidden = true;
document.querySelector("nav.controls").prepend(myQuality);
let shown = { mode: "grid", main: null }; // the layout drawn last (layout.js)

// The layout button says what pressing it does: to the speaker view from the grid, else back to
// the grid (from the speaker view, the presenter layout or a pinned tile).
layoutButton.addEventListener("click", () => {
  const toGrid = shown.mode !== "grid";
  clientState.layout = { choice: toGrid ? "grid" : "speaker", pinned: null };
  changed();
});

/** The number of columns that gives `count` tiles of `aspect` the largest size in `width`×`height`,
 * and that size. */
export function bestLayout(count, width, height, gap = GAP_PX, aspect = ASPECT) {
  let best = { columns: 1, tileWidth: 0, tileHeight: 0 };
  for (let columns = 1; columns <= Math.max(1, count); columns++) {
    const rows = Math.ceil(count / columns);
    let tileWidth = (width - gap * (columns - 1)) / columns;
    let tileHeight = tileWidth / aspect;
    const fitHeight = (height - gap * (rows - 1)) / rows;
    if (tileHeight > fitHeight) {
      tileHeight = fitHeight;
      tileWidth = tileHeight * aspect;
    }
    if (tileWidth > best.tileWidth) best = { columns, tileWidth, tileHeight };
  }
  return best;
}

function layout() {
  const { width, height } = stage.getBoundingClientRect();
  const px = (value) => `${Math.max(0, Math.floor(value))}px`;
  // CSSOM, not a style attribute: the CSP allows no inline style.
  if (shown.main !== null) {
    const strip = tiles.size - 1;
    const sizes = focusSizes(strip, width, height, GAP_PX, ASPECT);
    grid.style.setProperty("--columns", String(Math.max(1, strip)));
    grid.style.setProperty("--tile-width", px(sizes.tileWidth));
    grid.style.setProperty("--main-width", px(sizes.mainWidth));
    grid.style.setProperty("--main-height", px(sizes.mainHeight));
    return;
  }
  const { columns, tileWidth } = bestLayout(tiles.size, width, height);
  grid.style.setProperty("--columns", String(columns));
  grid.style.setProperty("--tile-width", px(tileWidth));
}

new ResizeObserver(layout).observe(stage);

function initials(name) {
  const words = name.split(/\s+/).filter(Boolean);
  // Names in Chinese are written without spaces: their first character is enough.
  return words.length > 1
    ? words[0][0] + words[words.length - 1][0]
    : [...name].slice(0, 2).join("");
}

function makeTile(key) {
  const figure = document.createElement("figure");
  figure.className = "tile";
  figure.dataset.key = key;
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  const placeholder = document.createElement("div");
  placeholder.className = "tile-placeholder";
  const avatar = document.createElement("span");
  avatar.className = "tile-avatar";
  avatar.setAttribute("aria-hidden", "true");
  const reason = document.createElement("span");
  reason.className = "tile-reason";
  placeholder.append(avatar, reason);
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
  // What is wrong, in words: read with the caption, shown on hover or focus (quality.js).
  const why = document.createElement("span");
  why.className = "tile-quality-why";
  const recording = document.createElement("span");
  recording.className = "tile-recording";
  const reconnecting = document.createElement("span");
  reconnecting.className = "tile-reconnecting";
  reconnecting.hidden = true;
  caption.append(name, details, mic, quality, why, recording, reconnecting);
  const pin = document.createElement("button");
  pin.type = "button";
  pin.className = "tile-pin";
  pin.addEventListener("click", () => {
    const pinned = clientState.layout.pinned === key ? null : key;
    clientState.layout = { ...clientState.layout, pinned };
    changed();
  });
  figure.append(video, placeholder, caption, pin);
  grid.append(figure);
  const tile = { figure, video, placeholder, avatar, reason, name, details, mic, quality, why };
  tile.recording = recording;
  tile.reconnecting = reconnecting;
  tile.pin = pin;
  tile.noCamera = false; // camera off, or no video track
  tiles.set(key, tile);
  // The first frame (or none any more) changes the picture without a change of state.
  for (const event of ["resize", "emptied"]) video.addEventListener(event, () => picture(tile));
  return tile;
}

/** The video, or the placeholder when there is no picture: camera off, or no frame yet. */
function picture(tile) {
  const none = tile.noCamera || tile.video.videoWidth === 0 || !tile.video.srcObject;
  tile.figure.classList.toggle("no-picture", none);
  tile.placeholder.hidden = !none;
}

function show(video, tracks, muted) {
  video.muted = muted;
  const shown = video.srcObject?.getTracks() ?? [];
  if (shown.length !== tracks.length || tracks.some((track) => !shown.includes(track))) {
    video.srcObject = tracks.length ? new MediaStream(tracks) : null;
  }
}

/** The sentences saying what is wrong (quality.js `assess` problems), `name` the person whose
 * media it is. */
function problemWords(quality, name) {
  return (quality?.problems ?? []).map((p) => t(p.key, { ...p.values, name }));
}

/** A tile's quality badge: the rating in a word, and what is wrong (if anything) in sentences, as
 * the badge's title and as text read with the caption. */
function showQuality(tile, quality, name) {
  const rating = quality?.rating ?? null;
  const words = problemWords(quality, name);
  tile.quality.hidden = !rating;
  tile.quality.textContent = rating ? t(`tile.quality_${rating}`) : "";
  tile.quality.dataset.quality = rating ?? "";
  tile.quality.title = words.join("\n");
  tile.why.hidden = words.length === 0;
  tile.why.textContent = words.join(" · ");
  tile.why.dataset.side = [...new Set((quality?.problems ?? []).map((p) => p.side))].join(" ");
}

/** My own connection in the controls bar: the rating, then what is wrong in words. */
function showMyQuality(quality, name) {
  const rating = quality?.rating ?? null;
  const words = problemWords(quality, name);
  myQuality.hidden = !rating;
  myQuality.dataset.quality = rating ?? "";
  myQuality.textContent = rating ? [t(`quality.you_${rating}`), ...words].join(" · ") : "";
  myQuality.title = words.join("\n");
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
  shown = chooseLayout(state, wanted);
  // The statistics' words, and the pictures' against their tiles (view.js measures those).
  const quality = withLayers(state.quality, state.participantId, pictureLayers());
  if (shown.main !== null) {
    // The large tile first, then the strip in the usual order.
    wanted.sort((a, b) => Number(b.key === shown.main) - Number(a.key === shown.main));
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
    const tracks = mine
      ? (localStream?.getVideoTracks() ?? [])
      : (remote.get(pid)?.[source] ?? []).filter((track) => track.kind === "video");
    const audio = mine ? [] : (remote.get(pid)?.camera ?? []).filter((tr) => tr.kind === "audio");
    show(tile.video, source === "camera" ? [...tracks, ...audio] : tracks, mine);
    const { figure } = tile;
    figure.dataset.participantId = pid;
    figure.dataset.source = source;
    figure.dataset.audioMuted = String(person.audio_muted);
    figure.dataset.videoMuted = String(person.video_muted);
    const cameraOff = source === "camera" && Boolean(person.video_muted);
    // The SFU sends nothing of it for now: this viewer's link cannot carry it beside the rest.
    const paused = !mine && state.tracks.some((track) => track.participant_id === pid
      && track.kind === "video" && track.source === source && track.paused);
    figure.dataset.paused = String(paused);
    tile.noCamera = cameraOff || paused || tracks.length === 0;
    picture(tile);
    const speaking = state.speaking.has(pid) && !person.audio_muted;
    figure.classList.toggle("speaking", source === "camera" && speaking);
    const name = person.name || person.sub;
    tile.avatar.textContent = initials(name);
    tile.reason.textContent = t(
      cameraOff ? "tile.camera_off" : paused ? "tile.paused_for_link" : "tile.no_video",
    );
    tile.name.textContent =
      source === "screen" ? t("room.screen_of", { name }) : mine ? t("room.you", { name }) : name;
    tile.details.textContent = [roleName(person.role), (person.depts ?? []).join(", ")]
      .filter(Boolean)
      .join(" · ");
    const micText = person.audio_muted ? t("tile.mic_muted") : t("tile.mic_on");
    tile.mic.textContent = speaking ? t("tile.speaking") : micText;
    tile.mic.classList.toggle("muted", Boolean(person.audio_muted));
    tile.mic.classList.toggle("on", !person.audio_muted && !speaking);
    tile.mic.hidden = source === "screen";
    showQuality(tile, source === "screen" ? null : quality.get(pid), name);
    const notRecorded = notRecordedKey(state, pid);
    tile.recording.hidden = !notRecorded;
    tile.recording.textContent = notRecorded ? t(notRecorded) : "";
    figure.dataset.notRecorded = String(Boolean(notRecorded));
    // Their connection dropped and the server holds them for a resume (their media stays),
    // or their media is looking for a new network path (an ICE restart).
    const away = state.reconnecting.has(pid) || state.mediaReconnecting.has(pid);
    figure.dataset.reconnecting = String(away);
    tile.reconnecting.hidden = !away;
    tile.reconnecting.textContent = away ? t("tile.reconnecting") : "";
    figure.classList.toggle("main", key === shown.main);
    figure.dataset.activeSpeaker = String(source === "camera" && pid === state.activeSpeaker);
    const pinned = state.layout.pinned === key;
    tile.pin.textContent = t(pinned ? "tile.unpin" : "tile.pin");
    tile.pin.setAttribute("aria-pressed", String(pinned));
    tile.pin.setAttribute("aria-label", t(pinned ? "tile.unpin_name" : "tile.pin_name", {
      name: tile.name.textContent,
    }));
  }
  showMyQuality(quality.get(state.participantId), me?.name || me?.sub || "");
  grid.dataset.count = String(tiles.size);
  grid.dataset.layout = shown.mode;
  grid.classList.toggle("focus", shown.main !== null);
  layoutButton.textContent = t(shown.mode === "grid" ? "room.speaker_view" : "room.grid_view");
  layoutButton.hidden = tiles.size < 2;
  // Keep tiles in the wanted order (me first).
  wanted.forEach(({ key }, i) => {
    const figure = tiles.get(key).figure;
    if (grid.children[i] !== figure) grid.insertBefore(figure, grid.children[i] ?? null);
  });
  layout();
  showTiles(
    wanted.map(({ key, person, source }) => ({
      video: tiles.get(key).video,
      figure: tiles.get(key).figure,
      participantId: person.participant_id,
      source,
      mine: person.participant_id === state.participantId,
    })),
  );
}

/** Drop every tile (leaving the room). */
export function clearGrid() {
  for (const tile of tiles.values()) tile.figure.remove();
  tiles.clear();
  showTiles([]);
  showMyQuality(null, "");
}

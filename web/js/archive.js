// The archivist's page, /archive#token=<JWT>: search the recordings, look at one (participants,
// consent, cases), play it with its annotations drawn at their times and its chat beside it,
// verify it, export the media file or the signed evidence bundle, and place or lift a legal hold.
//
// The archivist picks what to watch: one participant's camera, a screen share, or a grid of
// every video track. Each video plays from its own file (`/media?tracks=...`: the server remuxes
// only those tracks); the first carries the meeting's sound and drives the others, which follow
// its play, pause and seeks.
//
// Every request carries the archivist's bearer token; the token arrives in the fragment (never
// in a request line, a server log or a Referer) and leaves the address bar as soon as it is read.
// The media is fetched with that header and played from a blob: URL (the CSP allows
// `media-src blob:`). The annotations refer to images shared in the meeting; each image is
// stored with the recording, and the shapes are drawn on it beside the video (on a neutral
// board for a recording that holds no copy of the image).

import { preferredLanguage, roleName, setLanguage, t } from "./i18n.js";
import { applyOp, drawShape, shapeKey } from "./shapes.js";
import { initDeviceBinding } from "./dpop.js";
import { authHeaders, fetchSignIn, signInUrl, takeSignInError } from "./signin.js";

const BOARD_BACKGROUND = "#2b3138"; // neutral grey: every author colour stays readable on it
const BOARD_MIN_EXTENT = 100; // image pixels shown at least, when the shapes are small
const BOARD_MARGIN = 1.1; // room around the farthest point

const languageSelect = document.getElementById("language-select");
const form = document.getElementById("search-form");
const searchStatus = document.getElementById("search-status");
const resultsBody = document.getElementById("results-body");
const recordingSection = document.getElementById("recording");
const caseSelect = document.getElementById("case-select");
const loadButton = document.getElementById("load-button");
const video = document.getElementById("archive-video");
const videoCaption = document.getElementById("archive-video-caption");
const videoGrid = document.getElementById("video-grid");
const viewSelect = document.getElementById("view-select");
const holdReason = document.getElementById("hold-reason");
const holdStatus = document.getElementById("hold-status");
const board = document.getElementById("annotation-board");
const boardCaption = document.getElementById("board-caption");
const chatList = document.getElementById("chat-list");
const actionStatus = document.getElementById("action-status");
const problemList = document.getElementById("verify-problems");
const playerStatus = document.getElementById("player-status");

/** Everything the page knows; `snapshot()` is what automation reads. */
const archive = {
  screen: "loading", // loading | archive | denied
  denied: null, // the reason the archive is not shown: no_token | not_authenticated | not_allowed
  searching: false,
  searched: false,
  searchMessage: null, // a message: how many were found, or why the search failed
  recordings: [], // summaries, as GET /api/recordings lists them
  selected: null, // recording id
  detail: null, // GET /api/recordings/{id}
  detailError: null, // a message: why the recording's details did not load
  range: "", // "" (the whole meeting) or a case number, as the picker holds it
  view: "grid", // what to watch: "grid" (every video track) or one video track's id
  videos: [], // the videos shown: {track_id, status, bytes} (the first one carries the sound)
  hold: { status: "", message: null }, // the last hold or release, how it went
  // status: idle | loading | ready | failed; error: a message
  player: { status: "idle", range: null, bytes: 0, type: "", error: null },
  sidecar: null, // the annotations JSON of the range loaded
  ops: [], // its annotation events (stamped op messages with offset_ms), in sequence order
  chat: [], // its chat messages: {seq, offset_ms, author, text, to}
  extents: new Map(), // "image/frame" → {width, height}: how much of the image the shapes span
  images: new Map(), // "image/frame" → {bitmap, title}: the shared image stored with the recording
  timeMs: 0, // where the player is, ms from the range's start
  applied: [], // sequence numbers of the operations applied for timeMs
  shapes: new Map(), // shapeKey → shape, the state at timeMs
  boardImage: null, // {image_id, frame} on the board
  action: { kind: "", status: "", message: null }, // the last verify/export/bundle, how it went
  verify: null, // the last verification report
  downloads: [], // {kind, name, bytes, magic}: files handed to the browser
  errors: [],
};

let token = null;
let mediaUrl = null;
let followers = []; // {video, url, track}: the grid's other videos, which follow the first
const DRIFT_S = 0.25; // a follower further than this from the first video is moved to it
let loadGeneration = 0; // a newer load supersedes one still under way

// -- the REST API -------------------------------------------------------------------------------

/** A refusal or failure of the archive's API: its HTTP status and wire code. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

/** Call the API with the bearer token; the JSON body, or the response for files. */
async function api(path, { method = "GET", raw = false, body = undefined } = {}) {
  let response;
  const headers = authHeaders(token);
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      // With a link's token, no cookie; signed in (no token), the session cookie.
      credentials: token ? "omit" : "same-origin",
    });
  } catch (err) {
    throw new ApiError(0, "unreachable", String(err));
  }
  if (!response.ok) {
    let body = {};
    try {
      body = await response.json();
    } catch {
      // a body that is not JSON: the status says enough
    }
    if (response.status === 401 && body.error === STEP_UP_ERROR) stepUp(body.max_age ?? null);
    throw new ApiError(response.status, body.error ?? "", body.message ?? "");
  }
  return raw ? response : response.json();
}

// -- step-up (RFC 9470) -------------------------------------------------------------------------

const STEP_UP_ERROR = "insufficient_user_authentication";
const RETURN_KEY = "consilium.archive.return"; // what the person was doing, across the sign-in

/** Playing or exporting needs a recent sign-in: keep what the person was looking at, then ask
 * the hospital's provider again (`max_age`), which brings the browser back to the archive. */
let steppingUp = false; // the page is on its way to the provider (several calls may be refused)

function stepUp(maxAge) {
  if (steppingUp) return;
  steppingUp = true;
  try {
    const doing = { selected: archive.selected, range: archive.range, view: archive.view };
    sessionStorage.setItem(RETURN_KEY, JSON.stringify(doing));
  } catch {
    // Storage off: the person comes back to the search instead of the recording.
  }
  archive.action = { kind: "step_up", status: "working", message: message("archive.step_up") };
  render();
  location.assign(signInUrl("/archive", maxAge));
}

/** After a step-up sign-in: the recording (and part, and view) the person was at, once. */
function takeReturn() {
  try {
    const raw = sessionStorage.getItem(RETURN_KEY);
    sessionStorage.removeItem(RETURN_KEY);
    return raw ? JSON.parse(raw) : null;
  } catch {
    return null;
  }
}

/** A message to show, kept as its catalogue key (and values) so it follows a language change;
 * a value may itself be a message. */
function message(key, vars = {}) {
  return { key, vars };
}

/** A message (or a list of them) in the current language. */
function words(said) {
  if (!said) return "";
  if (Array.isArray(said)) return said.map(words).join(" ");
  const vars = {};
  for (const [name, value] of Object.entries(said.vars)) {
    vars[name] = value && typeof value === "object" && "key" in value ? words(value) : value;
  }
  return t(said.key, vars);
}

/** An API error in the reader's words. */
function errorMessage(err) {
  const byStatus = {
    0: "unreachable",
    401: "not_authenticated",
    403: "not_allowed",
    404: "not_found",
    410: "shredded",
  };
  for (const code of [err.code, byStatus[err.status]]) {
    const key = `archive.error_${code}`;
    if (code && t(key) !== key) return message(key);
  }
  return message("archive.error_other", { status: err.status ?? "" });
}

function fail(err) {
  archive.errors.push(String(err));
  console.error(err);
}

// -- formatting ---------------------------------------------------------------------------------

function formatTime(iso) {
  if (!iso) return t("archive.unknown");
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString(document.documentElement.lang);
}

/** A duration as h:mm:ss or m:ss. */
function formatDuration(ms) {
  const total = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** Why a recording stopped by itself (`failure`: disk_full, write_failed), in words. */
function failureWords(report) {
  const key = `archive.failure_${report.failure}`;
  return t(key) === key ? t("archive.failure_write_failed") : t(key);
}

function statusName(status) {
  const key = `archive.status_${status}`;
  return t(key) === key ? status : t(key);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function named(participants, participantId) {
  const person = participants.find((p) => p.participant_id === participantId);
  return person?.name || person?.sub || participantId || t("archive.unknown");
}

// -- searching ----------------------------------------------------------------------------------

/** The search form as query parameters (dates as the local day's bounds). */
function criteria() {
  const data = new FormData(form);
  const query = new URLSearchParams();
  for (const name of ["room", "participant", "department", "case", "status"]) {
    const value = String(data.get(name) ?? "").trim();
    if (value) query.set(name, value);
  }
  const since = String(data.get("since") ?? "");
  const until = String(data.get("until") ?? "");
  if (since) query.set("since", new Date(`${since}T00:00:00`).toISOString());
  if (until) query.set("until", new Date(`${until}T23:59:59.999`).toISOString());
  return query;
}

async function search() {
  archive.searching = true;
  render();
  try {
    const query = criteria().toString();
    const body = await api(`/api/recordings${query ? `?${query}` : ""}`);
    archive.recordings = body.recordings;
    archive.searched = true;
    archive.screen = "archive";
    const found = archive.recordings.length
      ? message("archive.found", { count: archive.recordings.length })
      : message("archive.found_none");
    // In a cluster, a server that did not answer holds recordings this list cannot show.
    const unreachable = body.unreachable_nodes ?? [];
    archive.searchMessage = unreachable.length
      ? [found, message("archive.unreachable", { nodes: unreachable.join(", ") })]
      : found;
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      deny(err.status === 401 ? "not_authenticated" : "not_allowed");
      return;
    }
    archive.screen = "archive";
    archive.searchMessage = errorMessage(err);
    fail(err);
  } finally {
    archive.searching = false;
    render();
  }
}

function deny(reason) {
  archive.screen = "denied";
  archive.denied = reason;
  render();
}

function renderResults() {
  const rows = archive.recordings.map((rec) => {
    const tr = document.createElement("tr");
    tr.dataset.recordingId = rec.recording_id;
    if (rec.recording_id === archive.selected) tr.setAttribute("aria-current", "true");
    const first = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link-button";
    button.textContent = rec.room_id;
    const started = formatTime(rec.started);
    button.setAttribute("aria-label", t("archive.open", { room: rec.room_id, started }));
    button.addEventListener("click", () => select(rec.recording_id));
    first.append(button);
    tr.append(
      first,
      cell(formatTime(rec.started)),
      cell(formatDuration(rec.duration_ms)),
      cell(statusName(rec.status)),
      cell(rec.recording_class),
      cell(rec.cases.join(", ") || "–"),
      cell(rec.held ? t("archive.yes") : t("archive.no")),
    );
    return tr;
  });
  resultsBody.replaceChildren(...rows);
}

// -- one recording ------------------------------------------------------------------------------

async function select(recordingId) {
  archive.selected = recordingId;
  archive.detail = null;
  archive.detailError = null;
  archive.verify = null;
  archive.action = { kind: "", status: "", message: null };
  archive.range = "";
  archive.view = "grid";
  archive.hold = { status: "", message: null };
  holdReason.value = "";
  clearPlayer();
  render();
  try {
    archive.detail = await api(`/api/recordings/${encodeURIComponent(recordingId)}`);
  } catch (err) {
    archive.detailError = errorMessage(err);
    fail(err);
  }
  render();
  document.getElementById("recording-heading").focus({ preventScroll: false });
  if (archive.detail && archive.detail.status !== "shredded") await loadRange();
}

function renderDetail() {
  const rec = archive.detail;
  const summary = archive.recordings.find((r) => r.recording_id === archive.selected);
  recordingSection.hidden = archive.selected === null;
  if (archive.selected === null) return;
  const heading = document.getElementById("recording-heading");
  heading.setAttribute("tabindex", "-1");
  const room = rec?.room_id ?? summary?.room_id ?? "";
  const started = formatTime(rec?.started ?? summary?.started);
  heading.textContent = t("archive.recording_heading", { room, started });
  const problem = document.getElementById("recording-problem");
  problem.hidden = !archive.detailError && !rec?.problem;
  problem.textContent = archive.detailError
    ? words(archive.detailError)
    : rec?.problem
      ? t("archive.damaged", { problem: rec.problem })
      : "";
  const interrupted = document.getElementById("recording-interrupted");
  interrupted.hidden = rec?.status !== "interrupted" && rec?.status !== "failed";
  interrupted.textContent =
    rec?.status === "failed"
      ? t("archive.failed", { at: formatDuration(rec.stopped_at_ms ?? 0), why: failureWords(rec) })
      : t("archive.interrupted");
  const parts = document.querySelectorAll(
    "#recording-summary, #recording .archive-columns, #recording .archive-actions, " +
      "#consent-heading, #consent-table, .archive-player, #hold-section",
  );
  for (const el of parts) el.hidden = !rec;
  if (!rec) return;
  document.getElementById("detail-id").textContent = rec.recording_id;
  document.getElementById("detail-status").textContent = statusName(rec.status);
  document.getElementById("detail-started").textContent = formatTime(rec.started);
  document.getElementById("detail-ended").textContent = formatTime(rec.ended);
  document.getElementById("detail-duration").textContent = formatDuration(rec.duration_ms);
  document.getElementById("detail-class").textContent = rec.recording_class;
  const held = document.getElementById("detail-held");
  held.textContent = rec.held ? t("archive.yes") : t("archive.no");
  const expires = document.getElementById("detail-expires");
  expires.textContent = rec.expires_at ? formatTime(rec.expires_at) : t("archive.never");

  const people = rec.participant_list.map((p) => {
    const li = document.createElement("li");
    li.dataset.participantId = p.participant_id;
    const depts = p.depts?.length ? p.depts.join(", ") : t("archive.unknown");
    const name = p.name || p.sub;
    li.textContent = t("archive.participant", { name, role: roleName(p.role), depts });
    return li;
  });
  document.getElementById("participant-list").replaceChildren(...people);

  const cases = rec.case_markers.map((c, i) => {
    const li = document.createElement("li");
    const at = formatDuration(c.at_ms);
    li.textContent = t("archive.case_marker", { number: i + 1, label: c.label, at });
    return li;
  });
  document.getElementById("case-list").replaceChildren(...cases);
  document.getElementById("cases-empty").hidden = cases.length > 0;

  const consent = rec.consent.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.participantId = c.participant_id;
    tr.dataset.decision = c.decision;
    tr.append(
      cell(named(rec.participant_list, c.participant_id)),
      cell(t(`archive.decision_${c.decision}`)),
      cell(t(`archive.method_${c.method}`)),
      cell(formatTime(c.at)),
      cell(c.notice_version),
      cell(c.recorded_by ? named(rec.participant_list, c.recorded_by) : "–"),
    );
    return tr;
  });
  document.getElementById("consent-body").replaceChildren(...consent);
  document.getElementById("consent-empty").hidden = consent.length > 0;

  const options = [new Option(t("archive.whole_meeting"), "")];
  rec.case_markers.forEach((c, i) => {
    const text = t("archive.case_option", { number: i + 1, label: c.label });
    options.push(new Option(text, String(i + 1)));
  });
  caseSelect.replaceChildren(...options);
  caseSelect.value = archive.range;
  const views = [new Option(t("archive.view_grid"), "grid")];
  for (const track of videoTracks()) views.push(new Option(trackName(track), track.track_id));
  viewSelect.replaceChildren(...views);
  viewSelect.value = archive.view;
  const shredded = rec.status === "shredded";
  for (const id of ["verify-button", "export-button", "bundle-button", "load-button"]) {
    document.getElementById(id).disabled = shredded || archive.action.status === "working";
  }
  renderHold();
}

// -- legal hold ---------------------------------------------------------------------------------

function renderHold() {
  const rec = archive.detail;
  const hold = rec.hold;
  const state = document.getElementById("hold-state");
  state.textContent = hold
    ? t("archive.hold_standing", {
        reason: hold.reason,
        by: hold.by,
        since: formatTime(hold.since),
      })
    : t("archive.hold_none");
  const busy = archive.hold.status === "working";
  const shredded = rec.status === "shredded";
  document.getElementById("hold-button").disabled = busy || shredded;
  document.getElementById("release-button").disabled = busy || !hold;
  holdStatus.textContent = words(archive.hold.message);
}

/** Place (or update the reason of) a legal hold, or lift it; the detail is read again. */
async function changeHold(place) {
  const id = archive.selected;
  const reason = holdReason.value.trim();
  if (place && !reason) {
    archive.hold = { status: "failed", message: message("archive.hold_needs_reason") };
    render();
    holdReason.focus();
    return;
  }
  archive.hold = { status: "working", message: null };
  render();
  try {
    const path = `/api/recordings/${encodeURIComponent(id)}/hold`;
    if (place) await api(path, { method: "POST", body: { reason } });
    else await api(path, { method: "DELETE" });
    const detail = await api(`/api/recordings/${encodeURIComponent(id)}`);
    if (archive.selected !== id) return;
    archive.detail = detail;
    const summary = archive.recordings.find((r) => r.recording_id === id);
    if (summary) summary.held = detail.held;
    archive.hold = { status: "ok", message: message(place ? "archive.held" : "archive.released") };
    if (!place) holdReason.value = "";
  } catch (err) {
    const said = message("archive.hold_error", { error: errorMessage(err) });
    archive.hold = { status: "failed", message: said };
    fail(err);
  }
  render();
}

// -- playing ------------------------------------------------------------------------------------

function rangeQuery() {
  return archive.range ? `?case=${encodeURIComponent(archive.range)}` : "";
}

/** The recording's video tracks, in the order they appeared. */
function videoTracks() {
  return (archive.detail?.tracks ?? []).filter((t) => t.kind === "video");
}

/** "Dr Chen Wei – camera": whose video and what it shows. */
function trackName(track) {
  const who = named(archive.detail?.participant_list ?? [], track.participant_id);
  const key = `archive.source_${track.source}`;
  return t("archive.track_name", { name: who, source: t(key) === key ? track.source : t(key) });
}

/** What the view shows: each video element's tracks (the first also carries every audio track). */
function viewFiles() {
  const videos = videoTracks();
  const audio = (archive.detail?.tracks ?? []).filter((t) => t.kind === "audio");
  const chosen =
    archive.view === "grid" ? videos : videos.filter((t) => t.track_id === archive.view);
  if (!chosen.length) return [{ track: null, ids: null }]; // no video: the whole file (sound)
  return chosen.map((track, i) => ({
    track,
    ids: i === 0 ? [track.track_id, ...audio.map((a) => a.track_id)] : [track.track_id],
  }));
}

/** The media query of a range and a set of tracks (null: all of them). */
function mediaQuery(ids) {
  const query = new URLSearchParams();
  if (archive.range) query.set("case", archive.range);
  if (ids) query.set("tracks", ids.join(","));
  const text = query.toString();
  return text ? `?${text}` : "";
}

/** A grid cell for a follower video, captioned with whose video it is. */
function followerCell(track) {
  const figure = document.createElement("figure");
  figure.className = "video-cell";
  figure.dataset.trackId = track.track_id;
  const element = document.createElement("video");
  element.muted = true; // the first video carries the sound
  element.playsInline = true;
  element.setAttribute("aria-label", trackName(track));
  const caption = document.createElement("figcaption");
  caption.textContent = trackName(track);
  figure.append(element, caption);
  return { figure, element };
}

function clearFollowers() {
  for (const follower of followers) {
    follower.video.pause();
    if (follower.url) URL.revokeObjectURL(follower.url);
    follower.video.closest("figure")?.remove();
  }
  followers = [];
}

/** Each video's caption and accessible name, in the current language. */
function renderCaptions() {
  const firstId = archive.videos[0]?.track_id;
  const first = videoTracks().find((track) => track.track_id === firstId);
  video.setAttribute("aria-label", first ? trackName(first) : t("archive.video"));
  videoCaption.textContent = first ? trackName(first) : "";
  for (const follower of followers) {
    follower.video.setAttribute("aria-label", trackName(follower.track));
    const caption = follower.video.closest("figure")?.querySelector("figcaption");
    if (caption) caption.textContent = trackName(follower.track);
  }
}

/** Followers go where the first video goes: play, pause, seek and rate. */
function syncFollowers() {
  for (const { video: other } of followers) {
    if (!other.src) continue;
    if (Math.abs(other.currentTime - video.currentTime) > DRIFT_S) {
      other.currentTime = video.currentTime;
    }
    other.playbackRate = video.playbackRate;
    if (video.paused && !other.paused) other.pause();
    if (!video.paused && other.paused) other.play().catch(() => {});
  }
}

function clearPlayer() {
  loadGeneration += 1;
  video.pause();
  video.removeAttribute("src");
  video.load();
  if (mediaUrl) URL.revokeObjectURL(mediaUrl);
  mediaUrl = null;
  clearFollowers();
  archive.videos = [];
  videoGrid.dataset.count = "1";
  archive.player = { status: "idle", range: null, bytes: 0, type: "", error: null };
  archive.sidecar = null;
  archive.ops = [];
  archive.chat = [];
  archive.extents = new Map();
  archive.timeMs = 0;
  archive.applied = [];
  archive.shapes = new Map();
  archive.boardImage = null;
  archive.images = new Map();
}

/** Fetch the chosen range's media and annotations, and play them from the start. */
async function loadRange() {
  const id = archive.selected;
  clearPlayer();
  const generation = loadGeneration;
  archive.player.status = "loading";
  archive.player.range = archive.range;
  render();
  try {
    const base = `/api/recordings/${encodeURIComponent(id)}`;
    const files = viewFiles();
    // A case's sidecar holds only the case's events; the shapes standing when the case began
    // were drawn before it, so the whole meeting's annotations are read for those.
    const [medias, sidecar, whole] = await Promise.all([
      Promise.all(
        files.map((f) =>
          api(`${base}/media${mediaQuery(f.ids)}`, { raw: true }).then((r) => r.blob()),
        ),
      ),
      api(`${base}/annotations${rangeQuery()}`),
      archive.range ? api(`${base}/annotations`) : null,
    ]);
    if (generation !== loadGeneration) return;
    takeSidecar(sidecar, whole ?? sidecar);
    loadImages(base, generation); // the board gets its images as they arrive
    const [media] = medias;
    mediaUrl = URL.createObjectURL(media);
    archive.player = {
      status: "ready",
      range: archive.range,
      bytes: medias.reduce((sum, m) => sum + m.size, 0),
      type: media.type,
      error: null,
    };
    video.src = mediaUrl;
    archive.videos = files.map((f, i) => ({
      track_id: f.track?.track_id ?? null,
      bytes: medias[i].size,
    }));
    files.slice(1).forEach((f, i) => {
      const { figure, element } = followerCell(f.track);
      const url = URL.createObjectURL(medias[i + 1]);
      element.src = url;
      videoGrid.append(figure);
      followers.push({ video: element, url, track: f.track });
    });
    videoGrid.dataset.count = String(files.length);
    seekTo(0);
  } catch (err) {
    if (generation !== loadGeneration) return;
    archive.player = {
      status: "failed",
      range: archive.range,
      bytes: 0,
      type: "",
      error: errorMessage(err),
    };
    fail(err);
  }
  render();
}

/** The shared images stored with the recording that the range's shapes are drawn on: each frame
 * fetched (watermarked for this archivist), decoded, and used as the board's background. */
async function loadImages(base, generation) {
  try {
    const { images } = await api(`${base}/images`);
    const wanted = new Set(archive.ops.map((e) => `${e.image_id}/${e.frame}`));
    for (const meta of images) {
      const key = `${meta.image_id}/${meta.frame}`;
      if (!wanted.has(key)) continue;
      const path = `${base}/images/${encodeURIComponent(meta.image_id)}/${meta.frame}`;
      const blob = await api(path, { raw: true }).then((r) => r.blob());
      const bitmap = await createImageBitmap(blob);
      if (generation !== loadGeneration) return;
      archive.images.set(key, { bitmap, title: meta.title ?? "" });
      archive.extents.set(key, { width: bitmap.width, height: bitmap.height });
      board.dataset.drawn = "false";
      drawBoard();
    }
  } catch (err) {
    // Without the image the shapes still show, on the plain board; say why.
    if (generation === loadGeneration) fail(err);
  }
}

/** The stamped events of a sidecar, in sequence order, timed from `startMs` (the range's
 * start: events before it have a negative offset, and are due from the first frame). */
function stampedEvents(sidecar, startMs) {
  return sidecar.events
    .filter((e) => e.message && typeof e.message === "object" && e.message.type === "event")
    .map((e) => ({ ...e.message, at_ms: e.at_ms, offset_ms: e.at_ms - startMs }))
    .sort((a, b) => a.seq - b.seq);
}

/** The range's chat, the annotation operations up to its end (from `whole`, the meeting's
 * sidecar, when the range is a case), and each image's extent. */
function takeSidecar(sidecar, whole) {
  archive.sidecar = sidecar;
  const start = sidecar.export.start_ms;
  const end = sidecar.export.end_ms;
  archive.ops = stampedEvents(whole, start).filter(
    (e) => e.kind === "op" && e.op && (end === null || e.at_ms < end),
  );
  archive.chat = stampedEvents(sidecar, start).filter((e) => e.kind === "chat");
  for (const event of archive.ops) {
    const points = [...(event.op.shape?.points ?? []), ...(event.op.points ?? [])];
    const key = `${event.image_id}/${event.frame}`;
    const extent = archive.extents.get(key) ?? {
      width: BOARD_MIN_EXTENT,
      height: BOARD_MIN_EXTENT,
    };
    for (const [x, y] of points) {
      extent.width = Math.max(extent.width, x * BOARD_MARGIN);
      extent.height = Math.max(extent.height, y * BOARD_MARGIN);
    }
    archive.extents.set(key, extent);
  }
}

/** The annotation state at `ms`: every operation whose time has come, applied in sequence order
 * from nothing (so seeking back takes shapes away again). */
function seekTo(ms) {
  archive.timeMs = ms;
  const due = archive.ops.filter((e) => e.offset_ms <= ms);
  const same =
    due.length === archive.applied.length && due.every((e, i) => e.seq === archive.applied[i]);
  if (same && archive.player.status === "ready" && board.dataset.drawn === "true") {
    renderChatTimes();
    return;
  }
  const shapes = new Map();
  for (const event of due) applyOp(shapes, event);
  archive.shapes = shapes;
  archive.applied = due.map((e) => e.seq);
  const last = due[due.length - 1];
  archive.boardImage = last ? { image_id: last.image_id, frame: last.frame } : null;
  drawBoard();
  renderChatTimes();
}

function drawBoard() {
  const ctx = board.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = BOARD_BACKGROUND;
  ctx.fillRect(0, 0, board.width, board.height);
  board.dataset.drawn = String(archive.player.status === "ready");
  const image = archive.boardImage;
  if (!image) {
    const waiting = archive.ops.length > 0;
    boardCaption.textContent = waiting ? t("archive.board_waiting") : t("archive.board_none");
    board.setAttribute("aria-label", boardCaption.textContent);
    return;
  }
  const key = `${image.image_id}/${image.frame}`;
  const extent = archive.extents.get(key);
  const scale = Math.min(board.width / extent.width, board.height / extent.height);
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  const stored = archive.images.get(key);
  if (stored) ctx.drawImage(stored.bitmap, 0, 0);
  const shown = [...archive.shapes.values()].filter(
    (s) => s.image_id === image.image_id && s.frame === image.frame,
  );
  for (const shape of shown) drawShape(ctx, shape, 1 / scale);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  const participants = archive.sidecar?.participants ?? [];
  const authors = [...new Set(shown.map((s) => named(participants, s.author)))].join(", ");
  const frame = image.frame + 1;
  boardCaption.textContent = stored
    ? t("archive.board_caption_image", { image: image.image_id, title: stored.title, frame })
    : t("archive.board_caption", { image: image.image_id, frame });
  const described = { image: image.image_id, count: shown.length, authors: authors || "–" };
  board.setAttribute("aria-label", t("archive.board_label", described));
}

function renderChat() {
  const participants = archive.sidecar?.participants ?? [];
  const items = archive.chat.map((m) => {
    const li = document.createElement("li");
    li.dataset.seq = String(m.seq);
    const time = document.createElement("button");
    time.type = "button";
    time.className = "link-button chat-time";
    time.textContent = formatDuration(m.offset_ms);
    time.setAttribute("aria-label", t("archive.chat_seek", { time: formatDuration(m.offset_ms) }));
    time.addEventListener("click", () => {
      video.currentTime = m.offset_ms / 1000;
      seekTo(m.offset_ms);
    });
    const who = document.createElement("span");
    who.className = "chat-author";
    const to = Array.isArray(m.to) ? m.to.map((p) => named(participants, p)).join(", ") : "";
    who.textContent = to
      ? t("archive.chat_private", { name: named(participants, m.author), to })
      : named(participants, m.author);
    const text = document.createElement("span");
    text.className = "chat-text";
    text.textContent = m.text;
    li.append(time, who, text);
    return li;
  });
  chatList.replaceChildren(...items);
  document.getElementById("chat-empty").hidden = items.length > 0;
  renderChatTimes();
}

/** Messages whose time has come are marked as said (the rest are still to come). */
function renderChatTimes() {
  for (const li of chatList.children) {
    const message = archive.chat.find((m) => String(m.seq) === li.dataset.seq);
    li.classList.toggle("said", Boolean(message) && message.offset_ms <= archive.timeMs);
  }
}

function renderPlayer() {
  const p = archive.player;
  const shown = {
    idle: "",
    loading: t("archive.loading"),
    ready: t("archive.ready", { size: (p.bytes / 1e6).toFixed(1) }),
    failed: words(p.error),
  };
  playerStatus.textContent = shown[p.status];
  renderCaptions();
  loadButton.disabled = loadButton.disabled || p.status === "loading";
  if (board.dataset.drawn !== "true" || p.status !== "ready") drawBoard();
  else seekToForce();
  renderChat();
}

/** Redraw the board at the current time (after a language change, say). */
function seekToForce() {
  board.dataset.drawn = "false";
  seekTo(archive.timeMs);
}

function followVideo() {
  if (archive.player.status !== "ready") return;
  seekTo(video.currentTime * 1000);
}

function animate() {
  followVideo();
  if (!video.paused && !video.ended) requestAnimationFrame(animate);
}

// -- verify and export --------------------------------------------------------------------------

async function verify() {
  const id = archive.selected;
  archive.action = { kind: "verify", status: "working", message: message("archive.verifying") };
  archive.verify = null;
  problemList.hidden = true;
  render();
  try {
    const path = `/api/recordings/${encodeURIComponent(id)}/verify`;
    const report = await api(path, { method: "POST" });
    archive.verify = report;
    archive.action.status = report.ok ? "ok" : "problems";
    const failedAt = report.status === "failed" && {
      at: formatDuration(report.stopped_at_ms ?? 0),
      why: failureWords(report),
    };
    const checked = {
      segments: report.segments_checked,
      // records per stream: their total
      records: Object.values(report.records).reduce((sum, n) => sum + n, 0),
    };
    // A recording that stopped by itself is not "intact", even when all it holds verifies.
    let verdict = message("archive.verify_failed", { count: report.problems.length });
    if (report.ok && failedAt) {
      verdict = message("archive.verify_ok_failed", { ...failedAt, ...checked });
    } else if (report.ok) verdict = message("archive.verify_ok", checked);
    const parts = [verdict];
    if (report.interrupted) parts.push(message("archive.verify_interrupted"));
    archive.action.message = parts;
    problemList.replaceChildren(
      ...report.problems.map((text) => {
        const li = document.createElement("li");
        li.textContent = text;
        return li;
      }),
    );
    problemList.hidden = report.problems.length === 0;
  } catch (err) {
    archive.action.status = "failed";
    archive.action.message = message("archive.verify_error", { error: errorMessage(err) });
    fail(err);
  }
  render();
}

/** The file name the server gave (Content-Disposition), else a fallback. */
function fileName(response, fallback) {
  const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") ?? "");
  return match ? match[1] : fallback;
}

async function download(kind) {
  const id = archive.selected;
  const preparing = kind === "bundle" ? "archive.bundling" : "archive.exporting";
  archive.action = { kind, status: "working", message: message(preparing) };
  render();
  try {
    const path = `/api/recordings/${encodeURIComponent(id)}/${kind}${rangeQuery()}`;
    const response = await api(path, { raw: true });
    const name = fileName(response, `${id}.${kind === "bundle" ? "zip" : "webm"}`);
    const blob = await response.blob();
    const head = new Uint8Array(await blob.slice(0, 4).arrayBuffer());
    archive.downloads.push({
      kind,
      name,
      bytes: blob.size,
      magic: [...head].map((b) => b.toString(16).padStart(2, "0")).join(""),
    });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
    archive.action.status = "ok";
    const size = (blob.size / 1e6).toFixed(1);
    archive.action.message = message("archive.downloaded", { name, size });
  } catch (err) {
    archive.action.status = "failed";
    archive.action.message = message("archive.download_error", { error: errorMessage(err) });
    fail(err);
  }
  render();
}

// -- the page -----------------------------------------------------------------------------------

let shownScreen = null;

function render() {
  document.getElementById("screen-archive").hidden = archive.screen !== "archive";
  document.getElementById("screen-denied").hidden = archive.screen !== "denied";
  languageSelect.value = document.documentElement.lang;
  document.title = t("archive.title");
  if (archive.screen === "denied") {
    const heading = document.getElementById("denied-heading");
    heading.textContent = t(`archive.denied_${archive.denied}_heading`);
    document.getElementById("denied-message").textContent = t(`archive.denied_${archive.denied}`);
  }
  if (archive.screen === "archive") {
    document.getElementById("search-button").disabled = archive.searching;
    searchStatus.textContent = words(archive.searchMessage);
    actionStatus.textContent = words(archive.action.message);
    renderResults();
    renderDetail();
    if (archive.selected !== null && archive.detail) renderPlayer();
  }
  if (shownScreen !== archive.screen && archive.screen !== "loading") {
    shownScreen = archive.screen;
    const heading = document.querySelector(`#screen-${archive.screen} h1`);
    heading?.setAttribute("tabindex", "-1");
    heading?.focus({ preventScroll: true });
  }
}

/** The token from `/archive#token=<JWT>`; the fragment is removed at once. */
function readToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (location.hash) history.replaceState(null, "", location.pathname);
  return fragment.get("token");
}

/** A plain-JSON copy of the page's state for automation (window.consiliumArchive.state()). */
function snapshot() {
  return {
    ...archive,
    recordings: archive.recordings.map((r) => ({ ...r })),
    extents: Object.fromEntries(archive.extents),
    images: [...archive.images.keys()],
    shapes: [...archive.shapes.values()],
    videoTime: video.currentTime,
    videoWidth: video.videoWidth,
    // Every video shown: its track, its picture's width (0 until a frame decodes), its time.
    grid: [video, ...followers.map((f) => f.video)].map((v, i) => ({
      track_id: archive.videos[i]?.track_id ?? null,
      videoWidth: v.videoWidth,
      time: v.currentTime,
      paused: v.paused,
    })),
  };
}

async function start() {
  const signInError = takeSignInError(); // before the fragment is cleared
  token = readToken();
  await setLanguage(preferredLanguage());
  languageSelect.addEventListener("change", async () => {
    await setLanguage(languageSelect.value, true);
    render();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  form.addEventListener("reset", () => setTimeout(search, 0));
  loadButton.addEventListener("click", loadRange);
  caseSelect.addEventListener("change", () => {
    archive.range = caseSelect.value;
  });
  document.getElementById("verify-button").addEventListener("click", verify);
  document.getElementById("export-button").addEventListener("click", () => download("export"));
  document.getElementById("bundle-button").addEventListener("click", () => download("bundle"));
  document.getElementById("hold-button").addEventListener("click", () => changeHold(true));
  document.getElementById("release-button").addEventListener("click", () => changeHold(false));
  viewSelect.addEventListener("change", () => {
    archive.view = viewSelect.value;
    loadRange();
  });
  video.addEventListener("timeupdate", followVideo);
  video.addEventListener("seeked", followVideo);
  video.addEventListener("play", () => requestAnimationFrame(animate));
  for (const event of ["play", "pause", "seeked", "timeupdate", "ratechange"]) {
    video.addEventListener(event, syncFollowers);
  }
  if (!token) {
    // No link: signed in at the hospital's provider (the session cookie), or sign in now; the
    // device key binds the sign-in and signs the calls (dpop.js).
    await initDeviceBinding();
    const signIn = await fetchSignIn();
    if (signIn?.enabled && !signIn.signed_in && signInError === null) {
      location.assign(signInUrl("/archive"));
      return;
    }
    if (!signIn?.signed_in) {
      deny("no_token");
      return;
    }
  }
  await search();
  const doing = takeReturn();
  if (doing?.selected) {
    await select(doing.selected);
    if (doing.range || doing.view !== "grid") {
      archive.range = doing.range ?? "";
      archive.view = doing.view ?? "grid";
      caseSelect.value = archive.range;
      viewSelect.value = archive.view;
      await loadRange();
    }
  }
}

/** The test hook: automation reads the state without `eval` (the CSP forbids it). */
window.consiliumArchive = { state: snapshot };

start().catch(fail);

// What the page shows each received video at, told to the SFU (`render_sizes`, docs/protocol.md)
// so that it forwards each the simulcast layer its tile needs: the large tile (speaker view, a
// pinned tile, the presenter layout) a high layer, the strip's thumbnails a low one, a tile that
// is not seen (off screen, the page hidden, no size) nothing. Which tile is large is layout.js's
// decision and grid.js draws it; this module only measures what was drawn.
//
// Sizes are device pixels (CSS size × devicePixelRatio): a tile 640 CSS pixels wide on a screen of
// ratio 2 shows 1280 pixels of picture. They are sent on change only: observers (ResizeObserver,
// IntersectionObserver, visibilitychange, a change of devicePixelRatio) and every redraw of the
// grid wake a measurement, and when to send is decided by RenderSizeReport (pure: sizes and `now`
// in, a message or a time to look again out): a size must settle for SETTLE_MS, and messages are
// at least MIN_GAP_MS apart, so that a window dragged wider sends one message, not one a frame.
// After `resumed` or a new `joined` every size is sent again (the server may have none).
//
// Once a second, each camera tile's picture is also compared with the size it is drawn at
// (quality.js PictureWindow): a picture much smaller than its tile for a while is said on the
// tile (grid.js shows it with the statistics' words, quality.js `withLayers`).

import { PictureWindow } from "./quality.js";
import { changed, state } from "./state.js";

/** A size must stay the same this long before it is sent (a window being resized, a layout
 * being switched, settle first). */
export const SETTLE_MS = 250;
/** At most one `render_sizes` per this long (the server's rate limit counts every message). */
export const MIN_GAP_MS = 250;
/** A size that keeps changing (a long drag) is sent after this long anyway. */
export const MAX_WAIT_MS = 1000;
/** How often the pictures are compared with their tiles (not per frame: the figure is about
 * seconds, PictureWindow's span). */
const PICTURE_SAMPLE_MS = 1000;

/** Not shown: the SFU sends nothing for it. */
const NOT_SHOWN = [0, 0];

/** A CSS length in device pixels, rounded. */
export function devicePixels(cssPixels, ratio) {
  return Math.max(0, Math.round(cssPixels * ratio));
}

/** The [width, height] in device pixels a tile of `width`×`height` CSS pixels shows its video at:
 * [0, 0] when it is not seen (outside the viewport, the page hidden, or no size at all). */
export function renderSize({ width, height, ratio = 1, intersecting = true, pageVisible = true }) {
  if (!pageVisible || !intersecting) return NOT_SHOWN;
  const size = [devicePixels(width, ratio), devicePixels(height, ratio)];
  return size[0] === 0 || size[1] === 0 ? NOT_SHOWN : size;
}

/** The sizes to report, subscribe mid → [width, height]: every video track of `tracks` (the
 * `tracks` message), at the size of the tile showing its participant's `source`; [0, 0] for one
 * no tile shows. `shown`: "participant-id source" → [width, height]. */
export function sizesOfTracks(tracks, shown) {
  const sizes = {};
  for (const track of tracks) {
    if (track.kind !== "video") continue;
    const source = track.source === "screen" ? "screen" : "camera";
    sizes[track.mid] = shown.get(`${track.participant_id} ${source}`) ?? NOT_SHOWN;
  }
  return sizes;
}

/** Whether two size maps (mid → [width, height]) say the same; null says nothing. */
export function sameSizes(a, b) {
  if (a === null || b === null) return a === b;
  const mids = Object.keys(a);
  if (mids.length !== Object.keys(b).length) return false;
  return mids.every((mid) => b[mid]?.[0] === a[mid][0] && b[mid]?.[1] === a[mid][1]);
}

/** When to tell the SFU the sizes: measurements in (`measure`), at most one message out per
 * MIN_GAP_MS, once the sizes settled for SETTLE_MS (or kept changing for MAX_WAIT_MS). Pure:
 * `now` (ms) is given, nothing is sent from here. */
export class RenderSizeReport {
  constructor({ settleMs = SETTLE_MS, minGapMs = MIN_GAP_MS, maxWaitMs = MAX_WAIT_MS } = {}) {
    this.settleMs = settleMs;
    this.minGapMs = minGapMs;
    this.maxWaitMs = maxWaitMs;
    this.sent = null; // the sizes last sent (null: none on this connection)
    this.sentAt = -Infinity;
    this.measured = null; // the sizes last measured
    this.changedAt = -Infinity; // when the measured sizes last changed
    this.differsSince = null; // since when the measured sizes differ from the sent ones
  }

  /** The sizes as measured at `now`. */
  measure(now, sizes) {
    if (!sameSizes(sizes, this.measured)) {
      this.measured = sizes;
      this.changedAt = now;
    }
    if (sameSizes(this.measured, this.sent)) this.differsSince = null;
    else this.differsSince ??= now;
  }

  /** The server knows none of them any more (a new connection, `resumed`): send all again. */
  forget(now) {
    this.sent = null;
    this.sentAt = -Infinity;
    this.differsSince = this.measured === null ? null : now;
  }

  /** `{send, wakeAt}`: the sizes to send now (taken as sent), or null and when to ask again
   * (null: nothing to send until the next measurement). An empty map is never sent (nothing is
   * shown that the SFU sends). */
  due(now) {
    const nothing = { send: null, wakeAt: null };
    if (this.differsSince === null || Object.keys(this.measured).length === 0) return nothing;
    const settled = Math.min(this.changedAt + this.settleMs, this.differsSince + this.maxWaitMs);
    const readyAt = Math.max(settled, this.sentAt + this.minGapMs);
    if (now < readyAt) return { send: null, wakeAt: readyAt };
    this.sent = this.measured;
    this.sentAt = now;
    this.differsSince = null;
    return { send: this.sent, wakeAt: null };
  }
}

// -- the page: observers, measurement, sending ----------------------------------------------

let call = null;
const report = new RenderSizeReport();
/** The tiles drawn now (grid.js `showTiles`): video element → {figure, participantId, source,
 * mine, intersecting}. */
const watched = new Map();
const pictures = new Map(); // participant id → PictureWindow of their camera's tile
let layers = new Map(); // participant id → the `layer` figure said on their tile (withLayers)
let connection = null; // which connection the sizes were sent on: "joined count resumed count"
let timer = null;

const resizes = new ResizeObserver(() => wake());
const intersections = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const tile = watched.get(entry.target);
    if (tile) tile.intersecting = entry.isIntersecting;
  }
  wake();
});
document.addEventListener("visibilitychange", () => wake());
watchPixelRatio();

/** A change of devicePixelRatio (the window moved to another screen, the page zoomed) changes
 * device pixels without a resize of the tiles in CSS pixels. */
function watchPixelRatio() {
  const query = matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`);
  query.addEventListener(
    "change",
    () => {
      wake();
      watchPixelRatio();
    },
    { once: true },
  );
}

/** Start reporting for this visit (main.js). */
export function initView(theCall) {
  call = theCall;
  setInterval(samplePictures, PICTURE_SAMPLE_MS);
}

/** The tiles as drawn (grid.js, after every redraw): [{video, figure, participantId, source,
 * mine}]. Observes new ones, forgets gone ones, and measures. */
export function showTiles(tiles) {
  const drawn = new Set(tiles.map((t) => t.video));
  for (const video of watched.keys()) {
    if (drawn.has(video)) continue;
    resizes.unobserve(video);
    intersections.unobserve(video);
    watched.delete(video);
  }
  for (const { video, figure, participantId, source, mine } of tiles) {
    const known = watched.get(video);
    if (known) {
      Object.assign(known, { figure, participantId, source, mine });
      continue;
    }
    // Seen until the IntersectionObserver says otherwise (it reports every new target at once).
    watched.set(video, { figure, participantId, source, mine, intersecting: true });
    resizes.observe(video);
    intersections.observe(video);
  }
  wake();
}

/** The pictures' figures for the tiles (withLayers): participant id → {received, wanted}. */
export function pictureLayers() {
  return layers;
}

/** Each shown tile's size in device pixels: "participant-id source" → [width, height]. */
function measureTiles() {
  const ratio = window.devicePixelRatio || 1;
  const pageVisible = document.visibilityState === "visible";
  const shown = new Map();
  for (const [video, tile] of watched) {
    if (tile.mine) continue;
    const { width, height } = video.getBoundingClientRect();
    const size = renderSize({ width, height, ratio, intersecting: tile.intersecting, pageVisible });
    shown.set(`${tile.participantId} ${tile.source}`, size);
  }
  return shown;
}

/** Measure now, and send or look again when the report says. */
function wake() {
  clearTimeout(timer);
  timer = null;
  if (!call || state.screen !== "room") return;
  const now = performance.now();
  // A new connection (`joined` again) or a resumed one: the server may know none of the sizes.
  const current = `${state.received.joined ?? 0} ${state.received.resumed ?? 0}`;
  if (current !== connection) {
    connection = current;
    report.forget(now);
  }
  report.measure(now, sizesOfTracks(state.tracks, measureTiles()));
  // Nothing is sent while the socket is away or a resume is under way: `resumed` redraws the
  // grid, which wakes this again.
  if (state.connection.signalling !== "open" || call.resuming || !call.signalling) return;
  const { send, wakeAt } = report.due(now);
  if (send) call.signalling.renderSizes(send);
  else if (wakeAt !== null) timer = setTimeout(wake, wakeAt - now);
}

/** Compare each remote camera's picture with the size its tile draws it at; say it (changed())
 * when a tile's figure changes. */
function samplePictures() {
  const now = performance.now();
  const ratio = window.devicePixelRatio || 1;
  const pageVisible = document.visibilityState === "visible";
  const sampled = new Set();
  for (const [video, tile] of watched) {
    if (tile.mine || tile.source !== "camera") continue;
    const { width, height } = video.getBoundingClientRect();
    const size = renderSize({ width, height, ratio, intersecting: tile.intersecting, pageVisible });
    // Not seen, camera off, or no frame yet: nothing to compare (the window starts again).
    if (size === NOT_SHOWN || tile.figure.classList.contains("no-picture")) continue;
    const pid = tile.participantId;
    if (!pictures.has(pid)) pictures.set(pid, new PictureWindow());
    pictures.get(pid).add(now, {
      frameWidth: video.videoWidth,
      frameHeight: video.videoHeight,
      tileWidth: size[0],
      tileHeight: size[1],
    });
    sampled.add(pid);
  }
  for (const pid of pictures.keys()) if (!sampled.has(pid)) pictures.delete(pid);
  const next = new Map();
  for (const [pid, picture] of pictures) {
    const layer = picture.layer();
    if (layer) next.set(pid, layer);
  }
  if (JSON.stringify([...next]) === JSON.stringify([...layers])) return;
  layers = next;
  changed();
}

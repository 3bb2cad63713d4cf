// Connection quality, rated good, fair or poor from WebRTC statistics, and said in words: what is
// wrong, and on whose side. Pure: functions of numbers (the samples carry the time they were
// taken), so that the rating and the attribution can be tested in a page without any media.
//
// The figures: packet loss (inbound: lost over expected between samples of the cumulative
// counters; outbound: what the SFU reports on what I send, RTCP receiver reports), round-trip
// time to the SFU (the selected ICE candidate pair, else the receiver reports), freezes (video
// frames not coming for more than FREEZE_MS while packets still arrive), frame rate, jitter,
// and the picture received against the tile it is shown in (PictureWindow: with simulcast, a
// layer lower than the tile wants shows as a picture much smaller than the tile).
//
// Whose side: what the SFU reports on what I send, and my round trip to it, are mine. Loss (or
// freezes, or a lower layer) on one person's media while someone else's arrives clearly clean
// (CLEAN_SHARE) is theirs; with nobody's clearly clean, it is mine (my downlink). With only one
// other person there is nothing to compare with: the words say it is the connection between us.

/** Where a connection stops being good, and where it becomes poor. Interactive speech suffers
 * past about 150 ms one way (ITU-T G.114), and Opus conceals a few per cent of loss. `frozen`:
 * the share of the last few seconds a video stood still; `jitterMs`: inter-arrival jitter of
 * audio, which the jitter buffer turns into delay; `fps`: a picture slower than this looks
 * broken (only counted while the video is not frozen outright). */
export const THRESHOLDS = {
  fair: { loss: 0.03, rttMs: 300, frozen: 0.02, jitterMs: 50, fps: 10 },
  poor: { loss: 0.1, rttMs: 700, frozen: 0.1, jitterMs: 150, fps: 4 },
};

/** A gap between decoded frames longer than this is a freeze (close to WebRTC's own definition:
 * Chromium counts a freeze from max(3 × the mean frame gap, mean gap + 150 ms)). */
export const FREEZE_MS = 500;

const LEVELS = ["good", "fair", "poor"];

function worse(a, b) {
  if (a === null) return b;
  if (b === null) return a;
  return LEVELS.indexOf(a) >= LEVELS.indexOf(b) ? a : b;
}

/** Whether a level is worth saying something about. */
function isProblem(rating) {
  return rating === "fair" || rating === "poor";
}

/** "fair" or "poor" when `value` is past that threshold of `figure` (higher is worse), else
 * "good"; null when the value is unknown. */
function level(figure, value) {
  if (value === null || value === undefined) return null;
  if (value >= THRESHOLDS.poor[figure]) return "poor";
  if (value >= THRESHOLDS.fair[figure]) return "fair";
  return "good";
}

/** The frame rate's level: lower is worse. */
function fpsLevel(fps) {
  if (fps === null || fps === undefined) return null;
  if (fps < THRESHOLDS.poor.fps) return "poor";
  if (fps < THRESHOLDS.fair.fps) return "fair";
  return "good";
}

/** "good", "fair" or "poor" for a loss fraction (0..1), a round-trip time in ms, and (when
 * known) the share of time frozen, audio jitter in ms and frame rate; null when nothing is
 * known. */
export function rateConnection({
  loss = null,
  rttMs = null,
  frozen = null,
  jitterMs = null,
  fps = null,
}) {
  return [
    level("loss", loss),
    level("rttMs", rttMs),
    level("frozen", frozen),
    level("jitterMs", jitterMs),
    isProblem(level("frozen", frozen)) ? null : fpsLevel(fps),
  ].reduce(worse, null);
}

/** Packet loss over the last few samples of cumulative received/lost counters. */
export class LossWindow {
  constructor(samples = 10) {
    this.samples = samples;
    this.history = [];
  }

  /** Add the counters as they are now. Counters that went back (a transceiver now carrying
   * someone else) start the window again. */
  add(received, lost) {
    const last = this.history[this.history.length - 1];
    if (last && received < last.received) this.history = [];
    this.history.push({ received, lost });
    if (this.history.length > this.samples) this.history.shift();
  }

  /** Lost packets over packets expected in the window; null before two samples or with no
   * packets in between (muted, or nothing sent). */
  fraction() {
    if (this.history.length < 2) return null;
    const first = this.history[0];
    const last = this.history[this.history.length - 1];
    const received = last.received - first.received;
    const lost = Math.max(0, last.lost - first.lost);
    return received + lost > 0 ? lost / (received + lost) : null;
  }
}

/** Frame rate and freezes of one incoming video over the last `spanMs`, from samples of its
 * cumulative counters. Freezes: Chromium's own count where it has one (inbound-rtp `freezeCount`,
 * `totalFreezesDuration`), of which only those longer than FREEZE_MS on average (Chromium counts
 * hitches from about 150 ms at 30 fps, which a busy computer makes without any network fault),
 * plus the stall going on now: no frame decoded for more than FREEZE_MS while packets kept
 * arriving (a camera turned off sends no packets: not a freeze). */
export class FrameWindow {
  constructor(spanMs = 5000) {
    this.spanMs = spanMs;
    this.history = [];
    this.lastFrameAt = null; // when framesDecoded last went up
    this.packetsAtLastFrame = 0;
  }

  /** A sample at `now` (ms): frames decoded, packets received, and Chromium's cumulative freeze
   * count and time in seconds (null where the browser has none). Counters that went back start
   * again. */
  add(now, { framesDecoded, packetsReceived, freezeCount = null, totalFreezesDuration = null }) {
    const last = this.history[this.history.length - 1];
    if (last && (framesDecoded < last.frames || packetsReceived < last.packets)) {
      this.history = [];
      this.lastFrameAt = null;
    }
    const previous = this.history[this.history.length - 1];
    if (!previous || framesDecoded > previous.frames) {
      this.lastFrameAt = now;
      this.packetsAtLastFrame = packetsReceived;
    }
    const freezesMs = totalFreezesDuration === null ? null : totalFreezesDuration * 1000;
    const freezes = freezeCount;
    this.history.push({ now, frames: framesDecoded, packets: packetsReceived, freezes, freezesMs });
    while (this.history.length > 2 && now - this.history[1].now >= this.spanMs) {
      this.history.shift();
    }
  }

  /** Frames per second over the window; null before two samples a moment apart, or before the
   * first frame. */
  fps() {
    if (this.history.length < 2) return null;
    const first = this.history[0];
    const last = this.history[this.history.length - 1];
    if (last.frames === 0 || last.now - first.now < 400) return null;
    return ((last.frames - first.frames) * 1000) / (last.now - first.now);
  }

  /** Milliseconds of the stall going on now (0 when frames come, or when no packets came since
   * the last frame: nothing was sent). */
  stallMs() {
    const last = this.history[this.history.length - 1];
    if (!last || this.lastFrameAt === null || last.frames === 0) return 0;
    const stalled = last.now - this.lastFrameAt;
    return stalled > FREEZE_MS && last.packets > this.packetsAtLastFrame ? stalled : 0;
  }

  /** The share (0..1) of the window the video stood still; null before two samples. */
  frozen() {
    if (this.history.length < 2) return null;
    const first = this.history[0];
    const last = this.history[this.history.length - 1];
    const span = last.now - first.now;
    if (span <= 0 || last.frames === 0) return null;
    let counted = 0;
    for (let i = 1; i < this.history.length; i++) {
      const [a, b] = [this.history[i - 1], this.history[i]];
      if (a.freezesMs === null || b.freezesMs === null || a.freezes === null) continue;
      const count = b.freezes - a.freezes;
      const ms = b.freezesMs - a.freezesMs;
      if (count > 0 && ms / count >= FREEZE_MS) counted += ms;
    }
    return Math.min(1, (counted + Math.min(this.stallMs(), span)) / span);
  }
}

/** A picture drawn at more than this many times its own size (device pixels per pixel of the
 * frame) looks soft: the tile could show a better layer. Twice leaves the usual cases alone (a
 * 640×360 camera in a laptop's large tile, a thumbnail of any layer). */
export const LAYER_SHARE = 0.5;

/** How long a picture must stay soft before it is said: a layer switch waits for a keyframe of
 * the new layer (a second or two after the tile grew), and a short dip is not worth words. */
export const LAYER_SPAN_MS = 4000;

/** The height, in device pixels, a `frameWidth`×`frameHeight` picture is drawn at in a
 * `tileWidth`×`tileHeight` tile: filling it (`cover`, cameras: cropped to the tile's shape) or
 * fitting in it (`contain`, shared screens). */
export function drawnHeight({ frameWidth, frameHeight, tileWidth, tileHeight }, fit = "cover") {
  const scales = [tileWidth / frameWidth, tileHeight / frameHeight];
  const scale = fit === "cover" ? Math.max(...scales) : Math.min(...scales);
  return frameHeight * scale;
}

/** The picture of one incoming video against the tile it is shown in, over the last `spanMs`:
 * the `layer` figure of `incoming` ({received, wanted}: the frame's height and the height it is
 * drawn at, device pixels). Samples are taken while the tile shows (not hidden, a picture
 * decoded); a gap in them (hidden, camera off) starts the window again. */
export class PictureWindow {
  constructor(spanMs = LAYER_SPAN_MS) {
    this.spanMs = spanMs;
    this.history = []; // {now, received, wanted}
  }

  /** A sample at `now` (ms): the decoded frame's size and the tile's, in device pixels. */
  add(now, { frameWidth, frameHeight, tileWidth, tileHeight }, fit = "cover") {
    if (!(frameWidth > 0 && frameHeight > 0 && tileWidth > 0 && tileHeight > 0)) {
      this.history = [];
      return;
    }
    const wanted = drawnHeight({ frameWidth, frameHeight, tileWidth, tileHeight }, fit);
    this.history.push({ now, received: frameHeight, wanted: Math.round(wanted) });
    while (this.history.length > 2 && now - this.history[1].now >= this.spanMs) {
      this.history.shift();
    }
  }

  /** The sharpest sample of the window (the picture is said to be soft only when it was soft
   * all along); null until the window spans `spanMs`. */
  layer() {
    const first = this.history[0];
    const last = this.history[this.history.length - 1];
    if (!first || last.now - first.now < this.spanMs) return null;
    const sharpness = (sample) => sample.received / Math.max(1, sample.wanted);
    const best = this.history.reduce((a, b) => (sharpness(b) > sharpness(a) ? b : a));
    return { received: best.received, wanted: best.wanted };
  }
}

/** How one other person's media reaches me. Every figure may be null (not known yet, or not
 * applicable: no video, audio only). `layer`: the picture I receive of their camera against the
 * tile I show it in ({received, wanted}: heights in device pixels, PictureWindow); with
 * simulcast, the layer the SFU forwards. */
export function incoming({
  participantId,
  loss = null,
  frozen = null,
  fps = null,
  jitterMs = null,
  layer = null,
}) {
  return { participantId, loss, frozen, fps, jitterMs, layer };
}

/** For comparing streams, a figure is clean when it is well inside "good" (this share of the fair
 * threshold): loss just under the threshold on one stream and just over on another says more
 * about chance (what NACK happened to repair) than about whose network it is. */
const CLEAN_SHARE = 0.5;

/** The picture against its tile: much smaller than the tile (LAYER_SHARE) is a lower layer than
 * wanted; clearly clean is a picture at least as large as the tile draws it. */
const LAYER_CHECK = {
  figure: "layer",
  // Receiving less than wanted is never worse than fair: the picture is softer, not broken.
  level: (s) => {
    if (!s.layer) return null;
    return s.layer.received < s.layer.wanted * LAYER_SHARE ? "fair" : "good";
  },
  clean: (s) => s.layer.received >= s.layer.wanted,
  value: (s) => ({ received: s.layer.received, wanted: s.layer.wanted }),
  keys: {
    mine: "quality.mine_lower_layer",
    theirs: "quality.their_lower_layer",
    between: "quality.between_lower_layer",
  },
};

/** The figures each incoming stream is checked on: its level, whether it is clearly clean (for
 * the comparison that tells whose side), and the words for each side: `mine` (my downlink),
 * `theirs` (their uplink), `between` (one other person: either). */
const STREAM_CHECKS = [
  {
    figure: "loss",
    level: (s) => level("loss", s.loss),
    clean: (s) => s.loss < THRESHOLDS.fair.loss * CLEAN_SHARE,
    value: (s) => ({ percent: Math.round(s.loss * 100) }),
    keys: {
      mine: "quality.mine_downlink_loss",
      theirs: "quality.their_loss",
      between: "quality.between_loss",
    },
  },
  {
    figure: "frozen",
    level: (s) => level("frozen", s.frozen),
    clean: (s) => s.frozen < THRESHOLDS.fair.frozen * CLEAN_SHARE,
    value: (s) => ({ percent: Math.round(s.frozen * 100) }),
    keys: {
      mine: "quality.mine_downlink_freezing",
      theirs: "quality.their_freezing",
      between: "quality.between_freezing",
    },
  },
  {
    figure: "fps",
    // A frozen picture already says so; a slow one is only worth saying while it moves.
    level: (s) => (isProblem(level("frozen", s.frozen)) ? null : fpsLevel(s.fps)),
    clean: (s) => s.fps >= THRESHOLDS.fair.fps / CLEAN_SHARE,
    value: (s) => ({ fps: Math.round(s.fps) }),
    keys: {
      mine: "quality.mine_downlink_fps",
      theirs: "quality.their_fps",
      between: "quality.between_fps",
    },
  },
  {
    figure: "jitterMs",
    level: (s) => level("jitterMs", s.jitterMs),
    clean: (s) => s.jitterMs < THRESHOLDS.fair.jitterMs * CLEAN_SHARE,
    value: (s) => ({ ms: Math.round(s.jitterMs) }),
    keys: {
      mine: "quality.mine_downlink_jitter",
      theirs: "quality.their_jitter",
      between: "quality.between_jitter",
    },
  },
  LAYER_CHECK,
];

/** A problem: its i18n key and values (`name` is filled in by whoever shows it), whose side
 * ("mine", "theirs" or "between"), how bad ("fair" or "poor") and the figure it is about. */
function problem(check, side, stream, rating) {
  const { keys, value, figure } = check;
  return { key: keys[side], values: value(stream), side, level: rating, figure };
}

/** My connection and each other person's, rated and explained.
 *
 * `uplinkLoss`: the largest loss the SFU reports on what I send (0..1); `rttMs`: my round trip to
 * the SFU; `streams`: one `incoming(...)` per other person. Returns `{mine, others}`: `mine` is
 * `{rating, problems}` for my own indicator, `others` a Map participant id → `{rating, problems}`
 * for their tiles. Problems are worst first. A rating is null while nothing is known. */
export function assess({ uplinkLoss = null, rttMs = null, streams = [] }) {
  const mine = { rating: null, problems: [] };
  const ofMine = (key, values, rating, figure) => ({
    key,
    values,
    side: "mine",
    level: rating,
    figure,
  });
  const uplink = level("loss", uplinkLoss);
  mine.rating = worse(mine.rating, uplink);
  if (isProblem(uplink)) {
    const percent = Math.round(uplinkLoss * 100);
    addProblem(mine, ofMine("quality.mine_uplink_loss", { percent }, uplink, "uplinkLoss"));
  }
  const rtt = level("rttMs", rttMs);
  const slow = isProblem(rtt)
    ? ofMine("quality.mine_rtt", { ms: Math.round(rttMs) }, rtt, "rttMs")
    : null;
  mine.rating = worse(mine.rating, rtt);
  if (slow) addProblem(mine, slow);

  const others = new Map();
  for (const s of streams) {
    // My round trip is on every call I am in: it rates their tile too, in my words.
    const entry = { rating: rtt, problems: slow ? [slow] : [] };
    others.set(s.participantId, entry);
  }
  for (const check of STREAM_CHECKS) applyCheck(check, streams, mine, others);
  sortProblems(mine, others);
  return { mine, others };
}

/** Add a problem to an entry ({rating, problems}) and make its rating at least as bad. */
function addProblem(target, p) {
  target.problems.push(p);
  target.rating = worse(target.rating, p.level);
}

/** Rate every stream on one figure and say whose side a problem is on: one person's media is
 * bad while someone else's is clearly clean: theirs. Bad everywhere (or nowhere clean to compare
 * with): my downlink. One other person only: either of us. */
function applyCheck(check, streams, mine, others) {
  const rated = streams.map((s) => ({ s, level: check.level(s) })).filter((r) => r.level !== null);
  const bad = rated.filter((r) => r.level !== "good");
  const someClean = rated.some((r) => r.level === "good" && check.clean(r.s));
  const side = rated.length < 2 ? "between" : someClean ? "theirs" : "mine";
  for (const { s, level: rating } of rated) {
    const entry = others.get(s.participantId);
    if (rating === "good") {
      entry.rating = worse(entry.rating, "good");
      continue;
    }
    addProblem(entry, problem(check, side, s, rating));
  }
  if (side === "mine" && bad.length) {
    // Said once on my own indicator, with the worst of the streams' figures.
    const worst = bad.reduce((a, b) => (worse(a.level, b.level) === a.level ? a : b));
    addProblem(mine, problem(check, "mine", worst.s, worst.level));
  }
}

/** Worst problems first, on my indicator and on every tile. */
function sortProblems(mine, others) {
  const order = (p) => -LEVELS.indexOf(p.level);
  mine.problems.sort((a, b) => order(a) - order(b));
  for (const entry of others.values()) entry.problems.sort((a, b) => order(a) - order(b));
}

/** `quality` as `assess` left it in the state (participant id → {rating, problems}, mine under
 * `me`) with the pictures' figures added: `layers`, participant id → the `layer` figure of their
 * camera (PictureWindow, measured where the tiles are: view.js). The statistics poll knows
 * nothing of tiles; the words and whose side are decided as `assess` decides them. */
export function withLayers(quality, me, layers) {
  if (layers.size === 0) return quality;
  const copy = (entry) => ({ rating: entry?.rating ?? null, problems: [...(entry?.problems ?? [])] });
  const mine = copy(quality.get(me));
  const others = new Map();
  for (const [pid, entry] of quality) if (pid !== me) others.set(pid, copy(entry));
  const streams = [...layers].map(([pid, layer]) => incoming({ participantId: pid, layer }));
  for (const s of streams) if (!others.has(s.participantId)) others.set(s.participantId, copy());
  applyCheck(LAYER_CHECK, streams, mine, others);
  sortProblems(mine, others);
  const shown = new Map([...others].filter(([, entry]) => entry.rating !== null));
  if (me && mine.rating !== null) shown.set(me, mine);
  return shown;
}

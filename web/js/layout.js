// Which layout the room's video shows, and which tile is large: the grid (every tile the same
// size), the speaker view (the room's active speaker large, the others as a strip), or the
// presenter layout (a shared screen large, the people in the strip). A pinned tile beats the
// speaker; a screen share that starts beats an earlier pin (the room looks at it now).
//
// The grid stays the default: an MDT is a discussion among people who all need to be seen, and
// twelve tiles fit a laptop's screen. The speaker view is one click away (and the presenter
// layout comes by itself when someone shares a screen). A shared image has its own viewer above
// the tiles (images.js), which already puts the people in a strip.
//
// The layout is also what the SFU sends: view.js reports the size each tile is drawn at, so the
// large tile gets a high simulcast layer and the strip's thumbnails a low one, without any rule
// here naming layers.

export const STRIP_SHARE = 0.2; // of the stage's height, at most, for the strip of small tiles
export const STRIP_MAX_PX = 240; // widest small tile

let knownShares = new Set(); // screen-share tile keys seen: a new share shows the presenter layout
let lastSpeaker = null; // the last remote active speaker (my own voice does not make me large)

/** The layout for these tiles (`wanted`: {key, person, source}, me first): {mode, main} where
 * mode is "grid" | "speaker" | "presenter" | "pinned" and main the large tile's key (or null).
 * A share that starts, or a pinned tile that is gone, resets `state.layout`'s choices. */
export function chooseLayout(state, wanted) {
  const keys = new Set(wanted.map((w) => w.key));
  const shares = wanted.filter((w) => w.source === "screen").map((w) => w.key);
  if (shares.some((key) => !knownShares.has(key))) {
    // Someone started sharing: the share is what the room looks at now (pin again after).
    state.layout = { choice: null, pinned: null };
  }
  knownShares = new Set(shares);
  if (state.layout.pinned && !keys.has(state.layout.pinned)) {
    state.layout = { ...state.layout, pinned: null }; // the pinned tile is gone
  }
  const layoutChoice = state.layout;
  const speaker = state.activeSpeaker;
  if (speaker && speaker !== state.participantId && keys.has(`${speaker}-camera`)) {
    lastSpeaker = speaker;
  }
  if (wanted.length < 2) return { mode: "grid", main: null };
  if (layoutChoice.pinned) return { mode: "pinned", main: layoutChoice.pinned };
  if (layoutChoice.choice === "grid") return { mode: "grid", main: null };
  if (shares.length && layoutChoice.choice === null) {
    return { mode: "presenter", main: shares[shares.length - 1] };
  }
  if (layoutChoice.choice !== "speaker") return { mode: "grid", main: null };
  const others = wanted.filter((w) => w.person.participant_id !== state.participantId);
  const speakerKey = lastSpeaker && `${lastSpeaker}-camera`;
  const main = keys.has(speakerKey) ? speakerKey : (others[0]?.key ?? wanted[0].key);
  return { mode: "speaker", main };
}

/** Sizes of the large tile and the strip's tiles for `strip` small tiles in `width`×`height`. */
export function focusSizes(strip, width, height, gap, aspect) {
  let tileWidth = 0;
  if (strip > 0) {
    const fitWidth = (width - gap * (strip - 1)) / strip;
    tileWidth = Math.min(fitWidth, STRIP_MAX_PX, height * STRIP_SHARE * aspect);
  }
  const tileHeight = tileWidth / aspect;
  const room = Math.max(0, height - (strip > 0 ? tileHeight + gap : 0));
  const mainWidth = Math.min(width, room * aspect);
  return { tileWidth, tileHeight, mainWidth, mainHeight: mainWidth / aspect };
}

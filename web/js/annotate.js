// Annotations on a shared image: the drawing tools, the shapes as the SFU ordered them, my own
// operations shown at once and reconciled when their stamped copy returns, undo of my own
// operations, other people's laser pointers, and the export of the annotated image as a PNG.
//
// The SFU is the ordering authority (docs/protocol.md, "Annotations and chat"): a snapshot gives
// the state after sequence number N, then events N+1, N+2... are applied in order. What I draw
// goes out as an `op` with a `client_id`; until the event carrying that `client_id` returns, it
// is drawn from `state.annotations.pending` on top of the ordered state.

import { t } from "./i18n.js";
import { currentImage, fetchFrame, redraw, setOverlay } from "./images.js";
import { dataChannels } from "./protocol.js";
import { applyOp, distance, drawShape, label, measureMm, shapeKey } from "./shapes.js";
import { changed, state } from "./state.js";

// The shapes themselves (applying an operation, drawing one) are shapes.js's, shared with the
// archive's player (archive.js); still exported from here for the pages' own tests.
export { applyOp, drawShape, measureMm, shapeKey };

const DRAWING_TOOLS = ["arrow", "line", "ellipse", "rectangle", "freehand", "text", "measure"];
const POINTER_INTERVAL_MS = 34; // the SFU passes at most 30 pointer positions a second
const POINTER_SHOWN_MS = 2500; // a laser pointer not moved for this long disappears
const FREEHAND_MIN_STEP_PX = 3; // screen pixels between two recorded points of a stroke
const FREEHAND_MAX_POINTS = 500; // a longer stroke is cut (the SFU bounds points per stroke)
const MIN_SHAPE_PX = 4; // a click without a drag draws nothing (screen pixels)
// Author colours: distinct on a grey CT slice and on a pathology photo, by participant.
const COLOURS = [
  "#ff4d4d",
  "#3dd56d",
  "#4da3ff",
  "#ffb020",
  "#d46bff",
  "#2ee6e6",
  "#ff70c0",
  "#c8e64d",
];

const toolbar = document.getElementById("annotation-tools");
const toolButtons = [...toolbar.querySelectorAll("[data-tool]")];
const textInput = document.getElementById("annotation-text");
const undoButton = document.getElementById("annotation-undo");
const deleteButton = document.getElementById("annotation-delete");
const clearButton = document.getElementById("annotation-clear");
const exportButton = document.getElementById("image-export");
const authorList = document.getElementById("annotation-authors");
const status = document.getElementById("annotation-status");

let tool = "pan";
let draft = null; // the shape being drawn: {type, points, text, color}
let moving = null; // {shape, from: point, points}: a shape of mine being dragged
let selected = null; // id of the shape picked with the move tool
const undoStack = []; // inverse operations of mine, newest last: [{image_id, frame, ops}]
let lastPointerSent = 0;
const names = new Map(); // participant id → name, kept after they leave (their shapes stay)

/** A fresh id for a shape or an operation (unique enough: 96 random bits). */
function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A participant's colour, the same for them in every browser (from their user id). */
export function colourOf(participantId) {
  const person = state.participants.get(participantId);
  const key = person?.sub || participantId || "";
  let hash = 0;
  for (const c of key) hash = (hash * 31 + c.codePointAt(0)) >>> 0;
  return COLOURS[hash % COLOURS.length];
}

/** A participant's name, also after they left the room. */
export function nameOf(participantId) {
  const person = state.participants.get(participantId);
  if (person) names.set(participantId, person.name || person.sub);
  return names.get(participantId) ?? t("annotate.someone");
}

// -- the ordered state ------------------------------------------------------------------------

/** The state after sequence number N: replaces what I had (a late join, or a reconnect). */
export function applySnapshot(message) {
  const notes = state.annotations;
  notes.seq = message.seq;
  notes.shapes = new Map(
    (message.shapes ?? []).map((shape) => [shapeKey(shape.image_id, shape.frame, shape.id), shape]),
  );
  // Operations sent on an earlier connection are in the snapshot if the SFU stamped them.
  notes.pending = notes.pending.filter((p) => !p.stale);
  notes.synced = true;
  changed();
}

/** One event from the SFU, in sequence order; ones the snapshot already holds are skipped. */
export function applyEvent(event) {
  const notes = state.annotations;
  if (event.seq <= notes.seq) return;
  notes.seq = event.seq;
  if (event.kind !== "op") return;
  applyOp(notes.shapes, event);
  if (event.author === state.participantId) {
    notes.pending = notes.pending.filter((p) => p.client_id !== event.client_id);
  }
  changed();
}

/** The SFU refused one of my operations: it never happened. (Errors about chat messages are
 * chat.js's; the rest, receipts and pointers, are only noted for diagnosis.) */
function refused(error) {
  const notes = state.annotations;
  const before = notes.pending.length;
  notes.pending = notes.pending.filter((p) => p.client_id !== error.client_id);
  if (notes.pending.length === before) {
    if (!state.chat.some((m) => m.client_id && m.client_id === error.client_id)) {
      state.errors.push(`data channel: ${error.code}: ${error.message}`);
    }
    return;
  }
  const key = `annotate.error_${error.code}`;
  status.textContent = t(key) === key ? t("annotate.error") : t(key);
  state.errors.push(`annotation refused: ${error.code}: ${error.message}`);
  changed();
}

/** The shapes of one image frame as I see them: the ordered state with my pending operations. */
export function shapesOf(imageId, frame) {
  const shapes = new Map(state.annotations.shapes);
  for (const p of state.annotations.pending) {
    applyOp(shapes, { ...p, author: state.participantId, seq: Infinity });
  }
  return [...shapes.values()].filter((s) => s.image_id === imageId && s.frame === frame);
}

// -- my operations ----------------------------------------------------------------------------

/** Send one operation and show it at once. */
function send(imageId, frame, op) {
  const clientId = newId();
  state.annotations.pending.push({ client_id: clientId, image_id: imageId, frame, op });
  dataChannels.send("op", { client_id: clientId, image_id: imageId, frame, op });
  changed();
}

/** Send operations and remember how to take them back. */
function act(imageId, frame, ops, inverse) {
  for (const op of ops) send(imageId, frame, op);
  undoStack.push({ image_id: imageId, frame, ops: inverse });
  status.textContent = "";
}

/** The operation that adds `shape` again (a new id: the deleted one is gone for good). */
function readd(shape) {
  const { id, type, points, text, color, layer } = shape;
  return { kind: "add", shape: { id: newId(), type, points, text, color, layer }, was: id };
}

export function undo() {
  const last = undoStack.pop();
  if (!last) return;
  for (const op of last.ops) {
    const { was, ...sent } = op;
    send(last.image_id, last.frame, sent);
    // A shape added again gets a new id: older undo steps about it follow it.
    if (was) renameIn(undoStack, was, sent.shape.id);
  }
  changed();
}

function renameIn(stack, from, to) {
  for (const step of stack) {
    for (const op of step.ops) if (op.shape_id === from) op.shape_id = to;
  }
}

function deleteSelected() {
  const image = currentImage();
  const shape =
    image && shapesOf(image.image_id, state.viewer.frame).find((s) => s.id === selected);
  if (!shape) return;
  act(image.image_id, state.viewer.frame, [{ kind: "delete", shape_id: shape.id }], [readd(shape)]);
  selected = null;
}

function clearOwn() {
  const image = currentImage();
  if (!image) return;
  const frame = state.viewer.frame;
  const mine = shapesOf(image.image_id, frame).filter((s) => s.author === state.participantId);
  if (!mine.length) return;
  act(image.image_id, frame, [{ kind: "clear_own" }], mine.map(readd));
}

// -- drawing ----------------------------------------------------------------------------------

/** Whether I may draw (the `annotate` permission; the SFU checks it again). */
function mayAnnotate() {
  return state.permissions.includes("annotate");
}

/** A point to a tenth of an image pixel: finer than anyone points, and short on the wire. */
function roundPoint([x, y]) {
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

/** The box around a shape's points (for picking it with the move tool). */
function bounds(shape) {
  const xs = shape.points.map((p) => p[0]);
  const ys = shape.points.map((p) => p[1]);
  const box = {
    x0: Math.min(...xs),
    y0: Math.min(...ys),
    x1: Math.max(...xs),
    y1: Math.max(...ys),
  };
  if (shape.type === "text") {
    box.x1 += 8 * (shape.text?.length ?? 0);
    box.y0 -= 16;
  }
  return box;
}

/** Draw the shapes of the image in view, the one being drawn, and the laser pointers. */
function drawOverlay(ctx, view) {
  const image = currentImage();
  if (!image) return;
  const px = 1 / view.scale;
  const shapes = shapesOf(image.image_id, view.frame);
  for (const shape of shapes) {
    drawShape(ctx, moving?.shape.id === shape.id ? { ...shape, points: moving.points } : shape, px);
    if (shape.id === selected) {
      const b = bounds(shape);
      ctx.setLineDash([6 * px, 4 * px]);
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 1.5 * px;
      ctx.strokeRect(b.x0 - 6 * px, b.y0 - 6 * px, b.x1 - b.x0 + 12 * px, b.y1 - b.y0 + 12 * px);
      ctx.setLineDash([]);
    }
  }
  if (draft && draft.points.length) drawShape(ctx, draft, px);
  const now = Date.now();
  for (const [pid, p] of state.pointers) {
    if (p.image_id !== image.image_id || p.frame !== view.frame || now - p.at > POINTER_SHOWN_MS) {
      continue;
    }
    const colour = colourOf(pid);
    ctx.beginPath();
    ctx.arc(p.x, p.y, 7 * px, 0, 2 * Math.PI);
    ctx.fillStyle = colour;
    ctx.fill();
    ctx.lineWidth = 2 * px;
    ctx.strokeStyle = "#000000";
    ctx.stroke();
    label(ctx, px, colour, nameOf(pid), p.x + 10 * px, p.y - 8 * px);
  }
}

/** Pointer down on the image: start a shape, pick one to move, or place text. */
function pointerDown(point) {
  const image = currentImage();
  if (!image || tool === "pan") return false;
  if (tool === "pointer") return pointerMove(point);
  if (!mayAnnotate()) return false;
  const frame = state.viewer.frame;
  if (tool === "move") {
    const mine = shapesOf(image.image_id, frame).filter((s) => s.author === state.participantId);
    const slack = 8 / state.viewer.scale;
    const hit = mine.reverse().find((s) => {
      const b = bounds(s);
      return (
        point[0] >= b.x0 - slack &&
        point[0] <= b.x1 + slack &&
        point[1] >= b.y0 - slack &&
        point[1] <= b.y1 + slack
      );
    });
    selected = hit?.id ?? null;
    moving = hit ? { shape: hit, from: point, points: hit.points } : null;
    renderAnnotate(state);
    redraw();
    return true;
  }
  if (tool === "text") {
    const text = textInput.value.trim();
    if (!text) {
      status.textContent = t("annotate.text_needed");
      textInput.focus();
      return true;
    }
    add(image, frame, { type: "text", points: [point], text });
    return true;
  }
  draft = {
    type: tool,
    points: [point, point],
    text: "",
    color: colourOf(state.participantId),
    image_id: image.image_id,
  };
  return true;
}

/** Pointer moves: the shape grows, a dragged shape moves, the laser pointer goes out. */
function pointerMove(point, buttons = 1) {
  const image = currentImage();
  if (!image) return false;
  if (tool === "pointer") {
    const now = performance.now();
    if (now - lastPointerSent < POINTER_INTERVAL_MS) return true;
    lastPointerSent = now;
    const [x, y] = point;
    dataChannels.send("pointer", { image_id: image.image_id, frame: state.viewer.frame, x, y });
    return true;
  }
  if (moving && buttons) {
    const dx = point[0] - moving.from[0];
    const dy = point[1] - moving.from[1];
    moving.points = moving.shape.points.map(([x, y]) => [x + dx, y + dy]);
    redraw();
    return true;
  }
  if (!draft) return false;
  if (draft.type === "freehand") {
    const last = draft.points[draft.points.length - 1];
    if (distance(last, point) * state.viewer.scale >= FREEHAND_MIN_STEP_PX) {
      if (draft.points.length < FREEHAND_MAX_POINTS) draft.points.push(point);
    }
  } else {
    draft.points[1] = point;
  }
  redraw();
  return true;
}

function pointerUp(point) {
  const image = currentImage();
  if (moving) {
    const { shape } = moving;
    const points = moving.points.map(roundPoint);
    moving = null;
    if (image && distance(shape.points[0], points[0]) > 0) {
      act(
        image.image_id,
        state.viewer.frame,
        [{ kind: "edit", shape_id: shape.id, points }],
        [{ kind: "edit", shape_id: shape.id, points: shape.points }],
      );
    }
    redraw();
    return true;
  }
  if (!draft) return false;
  const shape = draft;
  draft = null;
  if (shape.type !== "freehand") shape.points[1] = point;
  const size = distance(shape.points[0], shape.points[shape.points.length - 1]);
  if (
    image &&
    (shape.type === "freehand"
      ? shape.points.length >= 2
      : size * state.viewer.scale >= MIN_SHAPE_PX)
  ) {
    add(image, state.viewer.frame, shape);
  }
  redraw();
  return true;
}

function add(image, frame, { type, points, text = "" }) {
  const shape = {
    id: newId(),
    type,
    points: points.map(roundPoint),
    text,
    color: colourOf(state.participantId),
    layer: "default",
  };
  act(image.image_id, frame, [{ kind: "add", shape }], [{ kind: "delete", shape_id: shape.id }]);
}

/** Draw a shape from a program (automation and keyboard users): image pixel coordinates. */
export function drawFromCode(type, points, text = "") {
  const image = currentImage();
  if (!image || !mayAnnotate()) return false;
  add(image, state.viewer.frame, { type, points, text });
  return true;
}

// -- export -----------------------------------------------------------------------------------

/** The image in view with its shapes, as a PNG download (the server watermarks and audits it). */
export async function exportPng() {
  const image = currentImage();
  if (!image) return null;
  const frame = state.viewer.frame;
  status.textContent = t("annotate.exporting");
  try {
    const bitmap = await fetchFrame(image.image_id, frame, "export");
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const px = Math.max(1, Math.max(bitmap.width, bitmap.height) / 800);
    for (const shape of shapesOf(image.image_id, frame)) drawShape(ctx, shape, px);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `consilium-${image.image_id}-${frame}.png`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    status.textContent = t("annotate.exported");
    return { width: bitmap.width, height: bitmap.height, bytes: blob.size };
  } catch (err) {
    status.textContent = t("annotate.export_failed");
    state.errors.push(`export: ${err}`);
    return null;
  }
}

// -- the toolbar ------------------------------------------------------------------------------

function pickTool(name) {
  tool = name;
  draft = null;
  moving = null;
  if (name !== "move") selected = null;
  renderAnnotate(state);
  redraw();
}

/** Wire the toolbar and the viewer's pointer events; listen to the SFU. */
export function initAnnotate() {
  for (const button of toolButtons)
    button.addEventListener("click", () => pickTool(button.dataset.tool));
  // Arrow keys move along the toolbar (one tab stop for the whole group of tools).
  toolbar.addEventListener("keydown", (event) => {
    const shown = toolButtons.filter((b) => !b.hidden);
    const at = shown.indexOf(document.activeElement);
    if (at < 0 || !["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
    event.preventDefault();
    const next = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: shown.length - 1 }[
      event.key
    ];
    shown[(next + shown.length) % shown.length].focus();
  });
  undoButton.addEventListener("click", undo);
  deleteButton.addEventListener("click", deleteSelected);
  clearButton.addEventListener("click", clearOwn);
  exportButton.addEventListener("click", exportPng);
  setOverlay({
    draw: drawOverlay,
    down: pointerDown,
    move: pointerMove,
    up: pointerUp,
    cancel: () => {
      draft = null;
      moving = null;
      redraw();
    },
    key: (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
        undo();
        return true;
      }
      if (event.key === "Delete" && selected) {
        deleteSelected();
        return true;
      }
      return false;
    },
    describe: () => {
      const image = currentImage();
      return image ? shapesOf(image.image_id, state.viewer.frame).length : 0;
    },
  });
  dataChannels.on("snapshot", applySnapshot);
  dataChannels.on("event", applyEvent);
  dataChannels.on("error", refused);
  dataChannels.on("open", () => {
    for (const p of state.annotations.pending) p.stale = true;
    state.annotations.synced = false;
  });
  dataChannels.on("pointer", (p) => {
    if (p.from === state.participantId) return;
    state.pointers.set(p.from, {
      image_id: p.image_id,
      frame: p.frame,
      x: p.x,
      y: p.y,
      at: Date.now(),
    });
    redraw();
  });
  // Pointers fade out when they stop moving.
  setInterval(() => {
    const now = Date.now();
    let gone = false;
    for (const [pid, p] of state.pointers) {
      if (now - p.at > POINTER_SHOWN_MS) {
        state.pointers.delete(pid);
        gone = true;
      }
    }
    if (gone) redraw();
  }, 1000);
}

/** The toolbar as my permissions allow, and who drew on the image in view. */
export function renderAnnotate(s) {
  const image = currentImage();
  const drawing = mayAnnotate();
  toolbar.hidden = !image;
  for (const button of toolButtons) {
    const name = button.dataset.tool;
    button.hidden = !drawing && name !== "pan";
    button.setAttribute("aria-pressed", String(name === tool));
  }
  // One tab stop for the tools (the one chosen); arrow keys move between them.
  const shown = toolButtons.filter((b) => !b.hidden);
  const stop = shown.find((b) => b.dataset.tool === tool) ?? shown[0];
  for (const button of toolButtons) button.tabIndex = button === stop ? 0 : -1;
  for (const el of toolbar.querySelectorAll(".drawing-only")) el.hidden = !drawing;
  document.getElementById("annotation-text-field").hidden = !drawing || tool !== "text";
  undoButton.disabled = undoStack.length === 0;
  deleteButton.hidden = !drawing || tool !== "move";
  deleteButton.disabled = !selected;
  if (!image) return;
  const frame = s.viewer?.frame ?? 0;
  const shapes = shapesOf(image.image_id, frame);
  clearButton.disabled = !shapes.some((sh) => sh.author === s.participantId);
  // The people who drew on this frame, in their colours.
  const authors = [...new Set(shapes.map((sh) => sh.author))];
  const rows = authors.map((pid) => {
    const li = document.createElement("li");
    li.dataset.participantId = pid;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.setAttribute("aria-hidden", "true");
    swatch.style.setProperty(
      "--swatch",
      shapes.find((sh) => sh.author === pid)?.color || colourOf(pid),
    );
    const who = document.createElement("span");
    const count = shapes.filter((sh) => sh.author === pid).length;
    who.textContent = t("annotate.author", { name: nameOf(pid), count });
    li.append(swatch, who);
    return li;
  });
  const key = (li) => li.dataset.participantId + li.textContent;
  if ([...authorList.children].map(key).join() !== rows.map(key).join())
    authorList.replaceChildren(...rows);
  authorList.hidden = rows.length === 0;
}

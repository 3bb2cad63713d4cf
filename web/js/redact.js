// Covering burned-in text on a held image. The server blanks the text it reads in an image's
// pixels; when some may remain (or the kind of image usually carries more), it holds the image:
// only the uploader sees it (docs/protocol.md, "Shared images"). Here the uploader drags boxes
// over what identifies the patient, frame by frame, and confirms; the server blanks the boxes
// and shares the image. Each box is shown solid black, exactly as it will be blanked.

import { t } from "./i18n.js";

const dialog = document.getElementById("redact-dialog");
const heading = document.getElementById("redact-heading");
const reason = document.getElementById("redact-reason");
const canvas = document.getElementById("redact-canvas");
const frameLabel = document.getElementById("redact-frame");
const previousButton = document.getElementById("redact-previous");
const nextButton = document.getElementById("redact-next");
const undoButton = document.getElementById("redact-undo");
const shareButton = document.getElementById("redact-share");
const cancelButton = document.getElementById("redact-cancel");
const status = document.getElementById("redact-status");
const MIN_BOX_PX = 2; // a click without a drag draws nothing

let session = null; // {image, frame, boxes, bitmaps: Map, fetchFrame, release, done}
let drag = null; // {pointerId, x, y, box}

/** Open the box tool on a held `image` (its record from the REST API).
 *
 * `fetchFrame(imageId, frame)` gives a frame's bitmap; `release(imageId, boxes)` asks the
 * server to blank the boxes and share the image, answering the shared record or null;
 * `done(record)` runs once it is shared. */
export function openRedaction(image, { fetchFrame, release, done }) {
  session = { image, frame: 0, boxes: [], bitmaps: new Map(), fetchFrame, release, done };
  const reasons = image.held_reasons?.length ? image.held_reasons : ["text_remains"];
  reason.textContent = reasons.map((code) => t(`images.redact_reason_${code}`)).join(" ");
  status.textContent = "";
  shareButton.disabled = false;
  if (!dialog.open) dialog.showModal();
  heading.focus();
  showFrame(0);
}

function showFrame(frame) {
  const count = session.image.frames;
  session.frame = Math.max(0, Math.min(count - 1, frame));
  frameLabel.textContent = t("images.redact_frame", { n: session.frame + 1, count });
  previousButton.disabled = session.frame === 0;
  nextButton.disabled = session.frame === count - 1;
  const key = session.frame;
  if (session.bitmaps.has(key)) {
    draw();
    return;
  }
  const image = session.image;
  session
    .fetchFrame(image.image_id, key)
    .then((bitmap) => {
      if (session?.image !== image) return;
      session.bitmaps.set(key, bitmap);
      if (session.frame === key) draw();
    })
    .catch(() => {
      status.textContent = t("images.load_failed");
    });
}

function draw() {
  const bitmap = session.bitmaps.get(session.frame);
  if (!bitmap) return;
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  ctx.fillStyle = "#000";
  const mine = session.boxes.filter((b) => b.frame === session.frame);
  for (const box of drag?.box ? [...mine, drag.box] : mine) {
    ctx.fillRect(box.x, box.y, box.width, box.height);
  }
  canvas.setAttribute(
    "aria-label",
    t("images.redact_canvas", {
      title: session.image.title || t("images.untitled"),
      n: session.frame + 1,
      count: mine.length,
    }),
  );
}

/** A pointer position in the frame's own pixels (the canvas is scaled to fit the dialog). */
function framePoint(event) {
  const rect = canvas.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * canvas.width) / rect.width;
  const y = ((event.clientY - rect.top) * canvas.height) / rect.height;
  return {
    x: Math.round(Math.max(0, Math.min(canvas.width, x))),
    y: Math.round(Math.max(0, Math.min(canvas.height, y))),
  };
}

function boxBetween(a, b) {
  return {
    frame: session.frame,
    x: Math.min(a.x, b.x),
    y: Math.min(a.y, b.y),
    width: Math.abs(a.x - b.x),
    height: Math.abs(a.y - b.y),
  };
}

async function share() {
  shareButton.disabled = true;
  status.textContent = "";
  const { image, boxes } = session;
  const record = await session.release(image.image_id, boxes);
  if (!record) {
    shareButton.disabled = false;
    status.textContent = t("images.redact_failed");
    return;
  }
  const done = session.done;
  close();
  done(record);
}

function close() {
  session = null;
  drag = null;
  if (dialog.open) dialog.close();
}

/** Wire the dialog's controls (once, when the room opens). */
export function initRedaction(onCancel) {
  previousButton.addEventListener("click", () => showFrame(session.frame - 1));
  nextButton.addEventListener("click", () => showFrame(session.frame + 1));
  undoButton.addEventListener("click", () => {
    const index = session.boxes.findLastIndex((b) => b.frame === session.frame);
    if (index >= 0) session.boxes.splice(index, 1);
    draw();
  });
  shareButton.addEventListener("click", share);
  cancelButton.addEventListener("click", () => {
    const image = session?.image;
    close();
    onCancel(image);
  });
  dialog.addEventListener("cancel", (event) => {
    // Escape: the same as "Not now" (the image stays held).
    event.preventDefault();
    cancelButton.click();
  });
  canvas.addEventListener("pointerdown", (event) => {
    if (!session?.bitmaps.has(session.frame)) return;
    canvas.setPointerCapture(event.pointerId);
    drag = { pointerId: event.pointerId, start: framePoint(event), box: null };
  });
  canvas.addEventListener("pointermove", (event) => {
    if (drag?.pointerId !== event.pointerId) return;
    drag.box = boxBetween(drag.start, framePoint(event));
    draw();
  });
  const end = (event) => {
    if (drag?.pointerId !== event.pointerId) return;
    const box = boxBetween(drag.start, framePoint(event));
    drag = null;
    if (box.width >= MIN_BOX_PX && box.height >= MIN_BOX_PX) session.boxes.push(box);
    draw();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", (event) => {
    if (drag?.pointerId === event.pointerId) drag = null;
    draw();
  });
}

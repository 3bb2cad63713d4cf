// Shared images: the share button and upload (HTTPS, not the data channel), the list of images
// shared in the room, and the viewer with zoom and pan. Each person's view (which image, which
// frame, zoom, position) is their own; only the annotations (annotate.js) are shared.
//
// A series from the PACS is one stacked image that grows while its slices arrive: `image_shared`
// comes again with more `frames`, its `slice_order` (frame indexes in anatomical order) and
// `frames_pending`. The viewer pages through `slice_order`; `state.viewer.frame` stays a frame
// index (what fetches and annotations name), which never changes meaning as slices arrive.
//
// Every frame is fetched with the bearer token and watermarked by the server for this viewer
// (docs/protocol.md, "Shared images"); nothing is cached beyond this page.

import { t } from "./i18n.js";
import { initRedaction, openRedaction } from "./redact.js";
import { authHeaders } from "./signin.js";
import { changed, state } from "./state.js";

const ZOOM_STEP = 1.25;
const MIN_SCALE = 0.05;
const MAX_SCALE = 32;
const PAN_STEP_PX = 40; // one arrow key press

const panel = document.getElementById("images-panel");
const shareButton = document.getElementById("share-image-button");
const fileInput = document.getElementById("image-file");
const uploadStatus = document.getElementById("image-upload-status");
const imageList = document.getElementById("image-list");
const imagesEmpty = document.getElementById("images-empty");
const viewer = document.getElementById("image-viewer");
const stage = viewer.parentElement;
const title = document.getElementById("image-title");
const canvas = document.getElementById("image-canvas");
const canvasBox = canvas.parentElement;
const frameField = document.getElementById("image-frame-field");
const frameLabel = document.getElementById("image-frame");
const zoomLabel = document.getElementById("image-zoom");
const frameSlider = document.createElement("input");

let call = null;
const bitmaps = new Map(); // "image id/frame" → ImageBitmap (this viewer's watermarked copy)
const loading = new Set();
const failed = new Set(); // frames that did not load: tried again only when opened again
let overlay = null; // annotate.js: {draw, down, move, up, cancel, key, describe}
let drag = null; // {pointerId, x, y, panning}
let drawScheduled = false;

/** The image in my viewer, or null. */
export function currentImage() {
  return state.images.find((i) => i.image_id === state.viewer?.imageId) ?? null;
}

/** Let annotate.js draw over the image and take pointer input. */
export function setOverlay(theOverlay) {
  overlay = theOverlay;
}

function api(path, options = {}) {
  const headers = { ...authHeaders(call.token), ...(options.headers ?? {}) };
  return fetch(`/api/rooms/${encodeURIComponent(call.roomId)}/images${path}`, {
    ...options,
    headers,
    cache: "no-store",
  });
}

/** One frame as this viewer's watermarked copy; `purpose` "export" is audited as an export. */
export async function fetchFrame(imageId, frame, purpose = "view") {
  const query = new URLSearchParams({ frame: String(frame) });
  if (purpose === "export") query.set("purpose", "export");
  const response = await api(`/${encodeURIComponent(imageId)}?${query}`);
  if (!response.ok) throw new Error(`image ${imageId}: HTTP ${response.status}`);
  return createImageBitmap(await response.blob());
}

/** An image shared in the room (the upload's answer, `image_shared`, or the list); a known one
 * is updated (a series growing as its slices arrive). */
export function imageShared(image) {
  const { type, ...fields } = image;
  const known = state.images.find((i) => i.image_id === fields.image_id);
  if (known) {
    // Only ever grows: an update overtaken by a fresher list is not allowed to shrink it.
    if (fields.frames >= known.frames) Object.assign(known, fields);
    changed();
    return;
  }
  state.images.push(fields);
  // Nothing open yet: show what was just shared (then everyone looks at it at once).
  if (!state.viewer) openImage(fields.image_id);
  if (fields.shared_by !== state.participantId) {
    uploadStatus.textContent = t("images.shared_by", {
      name: nameOf(fields.shared_by),
      title: imageTitle(fields),
    });
  }
  changed();
}

/** The images shared before I joined (or while I was reconnecting), and my held ones. */
export async function loadImages() {
  const response = await api("");
  if (!response.ok) return; // a server without shared images: nothing to list
  const { images } = await response.json();
  for (const image of images) {
    if (image.held) {
      if (!state.heldImages.some((i) => i.image_id === image.image_id))
        state.heldImages.push(image);
    } else {
      const known = state.images.find((i) => i.image_id === image.image_id);
      if (!known) state.images.push(image);
      else if (image.frames >= known.frames) Object.assign(known, image);
    }
  }
  if (!state.viewer && state.images.length)
    openImage(state.images[state.images.length - 1].image_id);
  changed();
}

function nameOf(participantId) {
  const person = state.participants.get(participantId);
  return person ? person.name || person.sub : t("annotate.someone");
}

function imageTitle(image) {
  return image.title || t("images.untitled");
}

/** The frame indexes in the order the viewer pages through them (a series: anatomical). */
export function sliceOrder(image) {
  if (image.slice_order?.length) return image.slice_order;
  return Array.from({ length: image.frames }, (_, i) => i);
}

/** Whether the image is a stacked series (paged as slices, maybe still arriving). */
function isSeries(image) {
  return Boolean(image.slice_order?.length);
}

/** Upload a file; a DICOM with burned-in annotation needs the uploader to confirm. */
export async function upload(file, confirmBurnedIn = false) {
  uploadStatus.textContent = t("images.uploading", { name: file.name });
  const form = new FormData();
  form.set("file", file);
  if (confirmBurnedIn) form.set("confirm_burned_in", "true");
  let response;
  try {
    response = await api("", { method: "POST", body: form });
  } catch {
    uploadStatus.textContent = t("images.upload_failed");
    return null;
  }
  if (response.status === 201) {
    const image = await response.json();
    imageShared(image);
    openImage(image.image_id);
    uploadStatus.textContent = t("images.uploaded", { title: imageTitle(image) });
    return image;
  }
  if (response.status === 202) {
    // Held: text that may identify the patient may remain. Only I see it until I cover it.
    const image = await response.json();
    state.heldImages.push(image);
    uploadStatus.textContent = t("images.held");
    changed();
    redact(image);
    return image;
  }
  // The REST API's errors are `{"error": code, "message": text}` (docs/protocol.md).
  const code = await response
    .json()
    .then((body) => body?.error ?? "")
    .catch(() => "");
  if (response.status === 422 && code === "burned_in_annotation" && !confirmBurnedIn) {
    // Burned-in text may be a patient identifier: the uploader says it is needed (audited).
    if (window.confirm(t("images.burned_in_confirm"))) return upload(file, true);
    uploadStatus.textContent = t("images.burned_in_cancelled");
    return null;
  }
  const key = { 413: "images.too_large", 415: "images.unsupported", 403: "images.not_allowed" };
  uploadStatus.textContent = t(key[response.status] ?? "images.upload_failed");
  return null;
}

/** Ask the server to blank `boxes` on my held image and share it; the shared record or null. */
async function release(imageId, boxes) {
  try {
    const response = await api(`/${encodeURIComponent(imageId)}/release`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ confirm: true, boxes }),
    });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

/** Open the box tool (redact.js) on one of my held images. */
function redact(image) {
  openRedaction(image, {
    fetchFrame,
    release,
    done(record) {
      state.heldImages = state.heldImages.filter((i) => i.image_id !== record.image_id);
      imageShared(record);
      openImage(record.image_id);
      uploadStatus.textContent = t("images.uploaded", { title: imageTitle(record) });
    },
  });
}

/** Show an image (its first slice unless told) fitted into the viewer. */
export function openImage(imageId, frame = null) {
  const image = state.images.find((i) => i.image_id === imageId);
  frame ??= image ? sliceOrder(image)[0] ?? 0 : 0;
  state.viewer = { imageId, frame, scale: 0, x: 0, y: 0 }; // scale 0: fit when it arrives
  failed.delete(`${imageId}/${frame}`);
  changed();
  ensureFrame();
}

export function closeImage() {
  overlay?.cancel();
  state.viewer = null;
  changed();
}

function ensureFrame() {
  const view = state.viewer;
  if (!view) return null;
  const key = `${view.imageId}/${view.frame}`;
  if (bitmaps.has(key)) return bitmaps.get(key);
  if (!loading.has(key) && !failed.has(key)) {
    loading.add(key);
    fetchFrame(view.imageId, view.frame)
      .then((bitmap) => {
        bitmaps.set(key, bitmap);
        redraw();
        changed();
      })
      .catch((err) => {
        failed.add(key);
        state.errors.push(String(err));
        uploadStatus.textContent = t("images.load_failed");
      })
      .finally(() => loading.delete(key));
  }
  return null;
}

/** Fit the whole image into the viewer, centred. */
function fit(bitmap) {
  const { width, height } = canvasBox.getBoundingClientRect();
  const scale = Math.min(width / bitmap.width, height / bitmap.height) || 1;
  Object.assign(state.viewer, {
    scale,
    x: (width - bitmap.width * scale) / 2,
    y: (height - bitmap.height * scale) / 2,
  });
}

/** Zoom by `factor` around a point of the viewer (its centre unless told). */
function zoom(factor, cx = null, cy = null) {
  const view = state.viewer;
  if (!view?.scale) return;
  const { width, height } = canvasBox.getBoundingClientRect();
  cx ??= width / 2;
  cy ??= height / 2;
  const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, view.scale * factor));
  view.x = cx - ((cx - view.x) * scale) / view.scale;
  view.y = cy - ((cy - view.y) * scale) / view.scale;
  view.scale = scale;
  redraw();
  changed();
}

function pan(dx, dy) {
  if (!state.viewer?.scale) return;
  state.viewer.x += dx;
  state.viewer.y += dy;
  redraw();
  changed();
}

/** Move `step` slices (frames) along the image's order; the others may still be arriving. */
function stepFrame(step) {
  const image = currentImage();
  if (!image) return;
  const order = sliceOrder(image);
  showFrame(order[Math.min(order.length - 1, Math.max(0, order.indexOf(state.viewer.frame) + step))]);
}

/** Show frame index `frame` (one that has arrived). */
function showFrame(frame) {
  const image = currentImage();
  if (!image || frame === undefined) return;
  const next = Math.min(image.frames - 1, Math.max(0, frame));
  if (next === state.viewer.frame) return;
  overlay?.cancel();
  state.viewer.frame = next;
  ensureFrame();
  redraw();
  changed();
}

/** A point of the image under a pointer event: image pixel coordinates. */
function imagePoint(event) {
  const rect = canvas.getBoundingClientRect();
  const view = state.viewer;
  return [
    (event.clientX - rect.left - view.x) / view.scale,
    (event.clientY - rect.top - view.y) / view.scale,
  ];
}

/** Draw the viewer on the next animation frame. */
export function redraw() {
  if (drawScheduled) return;
  drawScheduled = true;
  requestAnimationFrame(() => {
    drawScheduled = false;
    draw();
  });
}

function draw() {
  const view = state.viewer;
  if (!view) return;
  const ratio = window.devicePixelRatio || 1;
  const { width, height } = canvasBox.getBoundingClientRect();
  const w = Math.round(width * ratio);
  const h = Math.round(height * ratio);
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const bitmap = bitmaps.get(`${view.imageId}/${view.frame}`);
  if (!bitmap || !width) return;
  if (!view.scale) fit(bitmap);
  ctx.setTransform(ratio * view.scale, 0, 0, ratio * view.scale, ratio * view.x, ratio * view.y);
  ctx.imageSmoothingEnabled = view.scale < 2; // zoomed in: show the pixels as they are
  ctx.drawImage(bitmap, 0, 0);
  overlay?.draw(ctx, view);
}

/** Wire the share button, the list and the viewer's controls. */
export function initImages(theCall) {
  call = theCall;
  initRedaction(() => {
    uploadStatus.textContent = t("images.held_later");
  });
  shareButton.addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    const file = fileInput.files[0];
    fileInput.value = "";
    if (file) upload(file);
  });
  document.getElementById("image-close").addEventListener("click", closeImage);
  document.getElementById("image-zoom-in").addEventListener("click", () => zoom(ZOOM_STEP));
  document.getElementById("image-zoom-out").addEventListener("click", () => zoom(1 / ZOOM_STEP));
  document.getElementById("image-fit").addEventListener("click", () => {
    if (state.viewer) state.viewer.scale = 0;
    redraw();
    changed();
  });
  document.getElementById("image-previous").addEventListener("click", () => stepFrame(-1));
  document.getElementById("image-next").addEventListener("click", () => stepFrame(1));
  // Any slice that has arrived, at once: the slider's position is the place in the order.
  frameSlider.type = "range";
  frameSlider.id = "image-slice";
  frameSlider.min = "0";
  frameSlider.step = "1";
  frameSlider.addEventListener("input", () => {
    const image = currentImage();
    if (image) showFrame(sliceOrder(image)[Number(frameSlider.value)]);
  });
  frameLabel.after(frameSlider);

  canvas.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      const rect = canvas.getBoundingClientRect();
      zoom(
        event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP,
        event.clientX - rect.left,
        event.clientY - rect.top,
      );
    },
    { passive: false },
  );
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.viewer?.scale || event.button > 1) return;
    canvas.focus({ preventScroll: true });
    canvas.setPointerCapture(event.pointerId);
    const handled = event.button === 0 && overlay?.down(imagePoint(event));
    drag = { pointerId: event.pointerId, x: event.clientX, y: event.clientY, panning: !handled };
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!state.viewer?.scale) return;
    if (drag?.panning && drag.pointerId === event.pointerId) {
      pan(event.clientX - drag.x, event.clientY - drag.y);
      drag.x = event.clientX;
      drag.y = event.clientY;
      return;
    }
    overlay?.move(imagePoint(event), drag ? 1 : 0);
  });
  const end = (event) => {
    if (drag?.pointerId !== event.pointerId) return;
    const wasPanning = drag.panning;
    drag = null;
    if (!wasPanning) overlay?.up(imagePoint(event));
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", (event) => {
    if (drag?.pointerId !== event.pointerId) return;
    drag = null;
    overlay?.cancel();
  });
  // The keyboard: + and - zoom, 0 fits, arrows pan, Page Up/Down change frame.
  canvas.addEventListener("keydown", (event) => {
    if (overlay?.key(event)) return event.preventDefault();
    const actions = {
      "+": () => zoom(ZOOM_STEP),
      "=": () => zoom(ZOOM_STEP),
      "-": () => zoom(1 / ZOOM_STEP),
      0: () => document.getElementById("image-fit").click(),
      ArrowLeft: () => pan(PAN_STEP_PX, 0),
      ArrowRight: () => pan(-PAN_STEP_PX, 0),
      ArrowUp: () => pan(0, PAN_STEP_PX),
      ArrowDown: () => pan(0, -PAN_STEP_PX),
      PageUp: () => stepFrame(-1),
      PageDown: () => stepFrame(1),
      Escape: () => overlay?.cancel(),
    };
    if (!actions[event.key]) return;
    event.preventDefault();
    actions[event.key]();
  });
  new ResizeObserver(() => redraw()).observe(canvasBox);
}

/** The share button, the image list and the viewer from the state. */
export function renderImages(s) {
  shareButton.hidden = !s.permissions.includes("share_image");
  panel.hidden = false;
  const rows = s.images.map((image) => {
    const li = document.createElement("li");
    li.dataset.imageId = image.image_id;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "image-open";
    button.dataset.imageId = image.image_id;
    button.textContent = t(isSeries(image) ? "images.item_series" : "images.item", {
      title: imageTitle(image),
      name: nameOf(image.shared_by),
      count: image.frames,
    });
    button.setAttribute("aria-pressed", String(image.image_id === s.viewer?.imageId));
    button.addEventListener("click", () => openImage(image.image_id));
    li.append(button);
    return li;
  });
  for (const image of s.heldImages) {
    const li = document.createElement("li");
    li.dataset.imageId = image.image_id;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "image-redact";
    button.textContent = t("images.redact_open", { title: imageTitle(image) });
    button.addEventListener("click", () => redact(image));
    li.append(button);
    rows.push(li);
  }
  const key = (li) =>
    li.dataset.imageId + li.textContent + li.firstChild.getAttribute("aria-pressed");
  if ([...imageList.children].map(key).join() !== rows.map(key).join())
    imageList.replaceChildren(...rows);
  imagesEmpty.hidden = rows.length > 0;

  const image = currentImage();
  viewer.hidden = !image;
  stage.classList.toggle("with-image", Boolean(image));
  if (!image) return;
  title.textContent = imageTitle(image);
  frameField.hidden = image.frames <= 1 && !image.frames_pending;
  const order = sliceOrder(image);
  const position = Math.max(0, order.indexOf(s.viewer.frame));
  if (!isSeries(image)) {
    frameLabel.textContent = t("images.frame", { n: position + 1, count: image.frames });
  } else if (image.frames_pending) {
    frameLabel.textContent = t("images.slice_loading", {
      n: position + 1,
      count: image.frames,
      pending: image.frames_pending,
    });
  } else {
    frameLabel.textContent = t("images.slice", { n: position + 1, count: image.frames });
  }
  frameSlider.max = String(Math.max(0, order.length - 1));
  frameSlider.value = String(position);
  frameSlider.hidden = order.length <= 1;
  frameSlider.setAttribute("aria-label", frameLabel.textContent);
  zoomLabel.textContent = s.viewer.scale
    ? t("images.zoom", { percent: Math.round(s.viewer.scale * 100) })
    : "";
  canvas.setAttribute(
    "aria-label",
    t("images.canvas", { title: imageTitle(image), count: overlay?.describe() ?? 0 }),
  );
  if (!bitmaps.has(`${image.image_id}/${s.viewer.frame}`)) ensureFrame();
  redraw();
}

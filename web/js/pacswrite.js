// The meeting's annotations saved to the hospital PACS (docs/protocol.md,
// `POST /api/rooms/{room}/pacs/annotations`): in the image viewer, for whoever may write to the
// PACS (`pacs_write`: by default the chair and the radiologist) on a DICOM image, when the node
// has a PACS. The server writes every shape the room drew on the image as a presentation state
// on the original images, in my name; an image that was uploaded rather than shared from the
// PACS is refused by the server, and said so here. Progress and the result show beside the button.

import { t } from "./i18n.js";
import { authHeaders } from "./signin.js";
import { state } from "./state.js";

const button = document.getElementById("image-pacs-save");
const status = document.getElementById("pacs-save-status");

let call = null;
let configured = null; // null: not asked yet; then whether this node has a PACS
let saving = null; // the image id being saved, or null
let shownFor = null; // the image id the status line speaks of

const FAILURES = {
  not_from_pacs: "pacs_write.not_from_pacs",
  no_annotations: "pacs_write.no_annotations",
  pacs_write_unsupported: "pacs_write.unsupported",
  annotations_not_here: "pacs_write.not_here",
  not_allowed: "pacs_write.not_allowed",
  rate_limited: "pacs_write.busy",
  pacs_unavailable: "pacs_write.unavailable",
  pacs_not_configured: "pacs_write.unavailable",
};

async function askConfigured() {
  configured = false;
  try {
    const response = await fetch(`/api/rooms/${encodeURIComponent(call.roomId)}/pacs`, {
      headers: authHeaders(call.token),
      cache: "no-store",
    });
    if (response.ok) configured = Boolean((await response.json()).configured);
  } catch {
    // no PACS button: the meeting does not depend on it
  }
  renderPacsWrite(state);
}

function say(imageId, key, values = {}) {
  shownFor = imageId;
  status.textContent = t(key, values);
}

async function save() {
  const imageId = state.viewer?.imageId;
  if (!imageId || saving) return;
  saving = imageId;
  say(imageId, "pacs_write.saving");
  renderPacsWrite(state);
  try {
    const response = await fetch(
      `/api/rooms/${encodeURIComponent(call.roomId)}/pacs/annotations`,
      {
        method: "POST",
        headers: { ...authHeaders(call.token), "Content-Type": "application/json" },
        body: JSON.stringify({ image_id: imageId }),
        cache: "no-store",
      },
    );
    let body = {};
    try {
      body = await response.json();
    } catch {
      // not JSON: a proxy's page
    }
    if (response.ok) say(imageId, "pacs_write.saved", { count: body.shapes ?? 0 });
    else say(imageId, FAILURES[body.error] ?? "pacs_write.failed");
  } catch {
    say(imageId, "pacs_write.unavailable");
  } finally {
    saving = null;
    renderPacsWrite(state);
  }
}

/** After the call exists: wire the button (the PACS is asked about on the first render). */
export function initPacsWrite(theCall) {
  call = theCall;
  button.addEventListener("click", save);
}

/** The button and its status line for the image in the viewer. */
export function renderPacsWrite(s) {
  if (!call) return;
  if (configured === null && s.screen === "room") askConfigured();
  const image = s.images.find((i) => i.image_id === s.viewer?.imageId);
  const may = Boolean(configured) && s.permissions.includes("pacs_write");
  button.hidden = !(may && image && image.kind === "dicom");
  if (button.hidden) return;
  const shapes = [...s.annotations.shapes.values()];
  const drawn = shapes.some((shape) => shape.image_id === image.image_id);
  button.disabled = saving !== null || !drawn;
  button.title = drawn ? "" : t("pacs_write.nothing_drawn");
  if (shownFor !== image.image_id) status.textContent = "";
}

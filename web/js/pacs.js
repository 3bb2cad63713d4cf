// Images from the hospital PACS (docs/protocol.md, the `/api/rooms/{room}/pacs` routes): search
// by patient id or accession (a date range, a modality), pick a study's series and share it.
// The server de-identifies and watermarks every slice as it does an upload; a series is one
// stacked image whose `image_shared` comes with its first slice (images.js shows it at once)
// and again as it grows, and `pacs_share_progress` tells everyone in the room how far the share
// is and what was left out. The sharer may stop it (what arrived stays). Shown only when the
// node has a PACS and my role may search it. Search results (patient names) stay in this
// panel: never in the room.

import { t } from "./i18n.js";
import { state } from "./state.js";

const panel = document.getElementById("pacs-panel");
const form = document.getElementById("pacs-search");
const status = document.getElementById("pacs-status");
const results = document.getElementById("pacs-results");
const progress = document.getElementById("pacs-progress");

const cancel = document.createElement("button");

let call = null;
const shares = new Map(); // share id → its last `pacs_share_progress`

function api(path, body = null, method = null) {
  const options = {
    headers: { Authorization: `Bearer ${call.token}` },
    cache: "no-store",
  };
  if (method) options.method = method;
  if (body) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  return fetch(`/api/rooms/${encodeURIComponent(call.roomId)}/pacs${path}`, options);
}

/** The error's words for the person, by its code (`{"error": code, "message": text}`). */
async function failure(response) {
  let code = "";
  try {
    code = (await response.json()).error ?? "";
  } catch {
    // not JSON: a proxy's page
  }
  const known = {
    pacs_unavailable: "pacs.unavailable",
    pacs_not_configured: "pacs.unavailable",
    not_allowed: "pacs.not_allowed",
    bad_message: "pacs.bad_search",
    too_large: "pacs.too_many_slices",
    too_many_images: "pacs.room_full",
    rate_limited: "pacs.busy",
    not_found: "pacs.not_found",
  };
  return t(known[code] ?? "pacs.failed");
}

/** After joining: show the panel if this node has a PACS and I may search it. */
export async function loadPacs() {
  const response = await api("");
  if (!response.ok) return;
  const { allowed } = await response.json();
  panel.hidden = !allowed;
}

function field(name) {
  return form.elements.namedItem(name).value.trim();
}

async function search(event) {
  event.preventDefault();
  const body = {};
  for (const name of ["patient_id", "accession", "date_from", "date_to", "modality"]) {
    if (field(name)) body[name] = field(name);
  }
  if (!body.patient_id && !body.accession) {
    status.textContent = t("pacs.need_identifier");
    return;
  }
  status.textContent = t("pacs.searching");
  results.replaceChildren();
  let response;
  try {
    response = await api("/search", body);
  } catch {
    status.textContent = t("pacs.unavailable");
    return;
  }
  if (!response.ok) {
    status.textContent = await failure(response);
    return;
  }
  const { studies } = await response.json();
  status.textContent = t("pacs.found", { count: studies.length });
  for (const study of studies) results.append(studyItem(study));
}

function studyItem(study) {
  const item = document.createElement("li");
  item.className = "pacs-study";
  const label = document.createElement("span");
  label.textContent = t("pacs.study", {
    patient: study.patient_name || study.patient_id,
    id: study.patient_id,
    date: study.study_date,
    description: study.description || study.modalities.join(" "),
    count: study.instances,
  });
  const open = document.createElement("button");
  open.type = "button";
  open.textContent = t("pacs.show_series");
  const whole = document.createElement("button");
  whole.type = "button";
  whole.textContent = t("pacs.share_study");
  whole.addEventListener("click", () => shareSeries({ study_uid: study.study_uid }, whole));
  const list = document.createElement("ul");
  list.className = "pacs-series";
  open.addEventListener("click", () => showSeries(study, list, open));
  item.append(label, open, whole, list);
  return item;
}

async function showSeries(study, list, button) {
  button.disabled = true;
  const response = await api("/series", { study_uid: study.study_uid });
  button.disabled = false;
  if (!response.ok) {
    status.textContent = await failure(response);
    return;
  }
  const { series } = await response.json();
  list.replaceChildren();
  for (const one of series) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = t("pacs.series", {
      modality: one.modality,
      description: one.description || t("images.untitled"),
      count: one.instances,
    });
    const share = document.createElement("button");
    share.type = "button";
    share.className = "primary";
    share.textContent = t("pacs.share");
    share.addEventListener("click", () => shareSeries(one, share));
    item.append(label, share);
    list.append(item);
  }
}

async function shareSeries(series, button) {
  // A second click while the first is on its way would share the series twice.
  button.disabled = true;
  status.textContent = t("pacs.starting");
  let response;
  try {
    // No series_uid: the whole study.
    const body = { study_uid: series.study_uid };
    if (series.series_uid) body.series_uid = series.series_uid;
    response = await api("/shares", body);
  } catch {
    status.textContent = t("pacs.unavailable");
    button.disabled = false;
    return;
  }
  if (response.status !== 202) {
    status.textContent = await failure(response);
    button.disabled = false;
    return;
  }
  status.textContent = "";
}

/** `pacs_share_progress`: how far a share into the room is (everyone gets it). */
export function pacsShareProgress(msg) {
  shares.set(msg.share_id, msg);
  const lines = [];
  for (const share of shares.values()) {
    const vars = {
      title: share.title || t("images.untitled"),
      shared: share.shared,
      total: share.total,
    };
    let line;
    if (share.state === "running") line = t("pacs.progress", vars);
    else if (share.state === "done") line = t("pacs.done", vars);
    else if (share.error === "cancelled") line = t("pacs.cancelled", vars);
    else line = t("pacs.share_failed", vars);
    if (share.skipped) {
      const reasons = (share.skipped_reasons ?? []).map((code) => t(`pacs.skip_${code}`));
      line += " " + t("pacs.skipped", { count: share.skipped, reasons: reasons.join(", ") });
    }
    lines.push(line);
  }
  progress.textContent = lines.join(" · ");
  progress.hidden = !lines.length;
  if (msg.state !== "running" && msg.shared_by === state.participantId) {
    for (const button of results.querySelectorAll("button")) button.disabled = false;
  }
  const mine = [...shares.values()].filter(
    (share) => share.state === "running" && share.shared_by === state.participantId,
  );
  cancel.hidden = !mine.length;
  cancel.dataset.shareId = mine.at(-1)?.share_id ?? "";
}

/** Stop my running share; the room hears the end from `pacs_share_progress`. */
async function stopShare() {
  const shareId = cancel.dataset.shareId;
  if (!shareId) return;
  cancel.disabled = true;
  try {
    const response = await api(`/shares/${encodeURIComponent(shareId)}`, null, "DELETE");
    if (!response.ok && response.status !== 404) status.textContent = await failure(response);
  } catch {
    status.textContent = t("pacs.unavailable");
  } finally {
    cancel.disabled = false;
  }
}

export function initPacs(theCall) {
  call = theCall;
  form.addEventListener("submit", search);
  cancel.type = "button";
  cancel.id = "pacs-cancel";
  cancel.hidden = true;
  cancel.dataset.i18n = "pacs.cancel"; // re-translated with the page
  cancel.textContent = t("pacs.cancel");
  cancel.addEventListener("click", stopShare);
  progress.after(cancel);
}

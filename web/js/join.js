// The pre-join screen: camera preview, device pickers, microphone level, and who the link says
// I am. The camera and microphone themselves belong to devices.js for the rest of the visit.

import { addMeter, addPickers, localMedia, onLocalMediaChange, openDevices } from "./devices.js";
import { roleName, t } from "./i18n.js";
import { CLOSE, JOIN_REFUSED } from "./protocol.js";
import { authHeaders } from "./signin.js";
import { changed, state } from "./state.js";

const preview = document.getElementById("preview-video");
const previewError = document.getElementById("preview-error");
const joinButton = document.getElementById("join-button");

function showPreview() {
  const tracks = localMedia.stream?.getVideoTracks() ?? [];
  const shown = preview.srcObject?.getTracks() ?? [];
  if (tracks.length !== shown.length || tracks.some((track) => !shown.includes(track))) {
    preview.srcObject = tracks.length ? new MediaStream(tracks) : null;
  }
  previewError.hidden = localMedia.error === null;
}

/** Ask the server whether this link may join the room, before any camera or microphone is
 * opened: null when it may (or when the answer says nothing: the join decides then), else the
 * ending the join would give, as {code, reason} of its close (docs/protocol.md, REST API). */
export async function checkAdmission(token, roomId) {
  let response;
  let body;
  try {
    response = await fetch(`/api/rooms/${encodeURIComponent(roomId)}/admission`, {
      headers: authHeaders(token),
      cache: "no-store",
    });
    body = await response.json();
  } catch {
    return null;
  }
  if (response.status === 401) {
    return { code: CLOSE.notAuthenticated, reason: body.reason || body.message || "" };
  }
  if (response.status === 410 && body.error === "meeting_ended") {
    const reason = body.reason === "ended_by_chair" ? "ended by the chair" : "meeting ended";
    return { code: CLOSE.meetingEnded, reason };
  }
  if (response.status === 403 && body.reason) {
    return { code: CLOSE.notAllowed, reason: `${JOIN_REFUSED}: ${body.reason}` };
  }
  return null;
}

/** Show the pre-join screen; `onJoin` is called when the person presses Join. */
export async function showJoin(onJoin) {
  state.screen = "join";
  changed();
  joinButton.addEventListener("click", () => {
    joinButton.disabled = true;
    onJoin();
  });
  addPickers(
    document.getElementById("camera-select"),
    document.getElementById("microphone-select"),
  );
  addMeter(document.getElementById("mic-meter"));
  onLocalMediaChange(showPreview);
  await openDevices();
  joinButton.focus();
}

/** Who the token says I am (not verified here: the server checks it at `join`). */
export function renderJoin() {
  const claims = state.claims;
  const unknown = t("identity.unknown");
  document.getElementById("claim-name").textContent = claims.name || claims.sub || unknown;
  document.getElementById("claim-role").textContent = claims.role ? roleName(claims.role) : unknown;
  const depts = Array.isArray(claims.dept) ? claims.dept : [];
  document.getElementById("claim-dept").textContent = depts.join(", ") || unknown;
  document.getElementById("claim-room").textContent = state.roomId ?? unknown;
  previewError.textContent = localMedia.error
    ? t("join.no_devices", { error: localMedia.error })
    : "";
}

// The screens at the end of a visit: left, or refused — in the person's words, not close codes.

import { t } from "./i18n.js";
import { CLOSE, JOIN_REFUSED, REFUSALS } from "./protocol.js";

const heading = document.getElementById("ended-heading");
const body = document.getElementById("ended-body");
const rejoinButton = document.getElementById("rejoin-button");
const action = document.getElementById("ended-action");
const actionLink = document.getElementById("ended-link");

// Refusals with their own words (what to do about them); the others keep `not_allowed`'s.
const WORDED = new Set(["mfa_required", "room_not_granted", "department_not_permitted"]);

let linkToken = null;

/** The policy's refusal code in a close (4403 `not allowed to join this room: <code>`), or null. */
export function refusalOf(code, reason = "") {
  if (code !== CLOSE.notAllowed || !reason.startsWith(`${JOIN_REFUSED}: `)) return null;
  const refusal = reason.slice(JOIN_REFUSED.length + 2);
  return REFUSALS.includes(refusal) ? refusal : null;
}

/** The i18n key of a refusal's words for someone with `role`, or null for the generic ones. */
export function refusalKey(refusal, role) {
  if (refusal === "separation_of_duties") {
    return role === "archivist" ? "ended.refusal_archivist" : "ended.refusal_separation_of_duties";
  }
  return WORDED.has(refusal) ? `ended.refusal_${refusal}` : null;
}

/** The token an archivist's link to the archive carries (the archive reads it as its own). */
export function setLinkToken(token) {
  linkToken = token;
}

/** Why the visit ended, from the close code and (for 4401, 4403, 4429) the close reason the
 * server gives (signaling/rooms.py and signaling/http/; docs/protocol.md, "Close codes"). */
export function endingKind(code, reason = "") {
  const why = reason.toLowerCase();
  switch (code) {
    case CLOSE.normal:
      return why === "room closed" ? "closed" : "left";
    case CLOSE.notAuthenticated:
      return why.includes("revoked") ? "revoked" : "expired";
    case CLOSE.notAllowed:
      if (why === "removed") return "removed";
      if (why === "denied") return "denied";
      if (why === "the room is locked") return "locked";
      if (why === "room closed") return "closed";
      return "not_allowed";
    case CLOSE.notFound:
      return "closed";
    case CLOSE.replaced:
      return "elsewhere";
    case CLOSE.rateLimited:
      // "the room is full", "the lobby is full", "this server holds as many rooms as it may",
      // "too many messages" (docs/protocol.md, "Bounds").
      if (why.includes("full")) return "full";
      if (why.includes("rooms")) return "busy";
      return "rate_limited";
    case CLOSE.timedOut:
      return "timeout";
    case CLOSE.meetingEnded:
      return why === "ended by the chair" ? "meeting_ended_by_chair" : "meeting_ended";
    case "no_token":
      return "no_token";
    default:
      return "error";
  }
}

// Endings after which joining again with the same link may work.
const MAY_REJOIN = new Set([
  "left",
  "elsewhere",
  "timeout",
  "error",
  "full",
  "busy",
  "rate_limited",
]);

const ENDED_MEETING = "consilium.ended.";

/** Whether this ending is the meeting's end (the chair's, or the schedule's): the page does not
 * reconnect, and a reload shows it again instead of joining (`rememberEnding`). */
export function isMeetingEnd(ending) {
  return ending?.code === CLOSE.meetingEnded;
}

/** Remember, for this tab, that the meeting in `roomId` ended: a reload shows the ended screen
 * again rather than the pre-join screen (a new link for the room forgets it: `forgetEnding`). */
export function rememberEnding(roomId, ending) {
  try {
    sessionStorage.setItem(ENDED_MEETING + roomId, JSON.stringify(ending));
  } catch {
    // Storage switched off: a reload asks the server, which refuses an ended scheduled meeting.
  }
}

/** The meeting end remembered for `roomId` in this tab, or null. */
export function rememberedEnding(roomId) {
  try {
    const ending = JSON.parse(sessionStorage.getItem(ENDED_MEETING + roomId) ?? "null");
    if (!isMeetingEnd(ending)) return null;
    return { code: ending.code, reason: String(ending.reason ?? ""), byMe: ending.byMe === true };
  } catch {
    return null;
  }
}

/** Forget the meeting end remembered for `roomId` (a new link was opened for it). */
export function forgetEnding(roomId) {
  try {
    sessionStorage.removeItem(ENDED_MEETING + roomId);
  } catch {
    // Nothing was kept.
  }
}

/** Wire the rejoin button. */
export function initEnded(onRejoin) {
  rejoinButton.addEventListener("click", onRejoin);
}

/** Draw the ending screen for `state.ended`. */
export function renderEnded(state) {
  const kind = endingKind(state.ended?.code, state.ended?.reason);
  const refusal = refusalOf(state.ended?.code, state.ended?.reason);
  const shown = kind === "meeting_ended_by_chair" && state.endedByMe ? "meeting_ended_by_you" : kind;
  const key = refusalKey(refusal, state.claims?.role) ?? `ended.${shown}`;
  heading.textContent = t(`${key}_heading`);
  body.textContent = t(key);
  const section = heading.closest("section");
  section.dataset.ending = kind;
  section.dataset.refusal = refusal ?? "";
  rejoinButton.hidden = !MAY_REJOIN.has(kind);
  // Archivists work in the archive: take them there, signed in with the same token.
  const toArchive = key === "ended.refusal_archivist";
  action.hidden = !toArchive;
  if (toArchive) {
    actionLink.textContent = t("ended.open_archive");
    actionLink.href = linkToken ? `/archive#token=${encodeURIComponent(linkToken)}` : "/archive";
  }
}

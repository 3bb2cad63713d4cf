// The screens at the end of a visit: left, or refused — in the person's words, not close codes.

import { t } from "./i18n.js";
import { CLOSE } from "./protocol.js";

const heading = document.getElementById("ended-heading");
const body = document.getElementById("ended-body");
const rejoinButton = document.getElementById("rejoin-button");

/** Why the visit ended, from the close code and (for 4401, 4403, 4429) the close reason the
 * server gives (signaling/rooms.py and signaling/server.py; docs/protocol.md, "Close codes"). */
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

/** Wire the rejoin button. */
export function initEnded(onRejoin) {
  rejoinButton.addEventListener("click", onRejoin);
}

/** Draw the ending screen for `state.ended`. */
export function renderEnded(state) {
  const kind = endingKind(state.ended?.code, state.ended?.reason);
  heading.textContent = t(`ended.${kind}_heading`);
  body.textContent = t(`ended.${kind}`);
  heading.closest("section").dataset.ending = kind;
  rejoinButton.hidden = !MAY_REJOIN.has(kind);
}

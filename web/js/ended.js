// The screens at the end of a visit: left, or refused — in the person's words, not close codes.

import { t } from "./i18n.js";
import { CLOSE } from "./protocol.js";

const heading = document.getElementById("ended-heading");
const body = document.getElementById("ended-body");
const rejoinButton = document.getElementById("rejoin-button");

/** Why the visit ended, from the close code and (for 4401/4403) the close reason text. */
export function endingKind(code, reason = "") {
  const why = reason.toLowerCase();
  switch (code) {
    case CLOSE.normal:
      return why === "room closed" ? "closed" : "left";
    case CLOSE.notAuthenticated:
      return why.includes("revoked") ? "revoked" : "expired";
    case CLOSE.notAllowed:
      if (why.includes("removed")) return "removed";
      if (why.includes("denied")) return "denied";
      if (why.includes("locked")) return "locked";
      if (why.includes("room closed")) return "closed";
      return "not_allowed";
    case CLOSE.notFound:
      return "closed";
    case CLOSE.replaced:
      return "elsewhere";
    case CLOSE.rateLimited:
      return "full";
    case CLOSE.timedOut:
      return "timeout";
    case "no_token":
      return "no_token";
    default:
      return "error";
  }
}

// Endings after which joining again with the same link may work.
const MAY_REJOIN = new Set(["left", "elsewhere", "timeout", "error", "full"]);

/** Wire the rejoin button. */
export function initEnded(onRejoin) {
  rejoinButton.addEventListener("click", onRejoin);
}

export function renderEnded(state) {
  const kind = endingKind(state.ended?.code, state.ended?.reason);
  heading.textContent = t(`ended.${kind}_heading`);
  body.textContent = t(`ended.${kind}`);
  heading.closest("section").dataset.ending = kind;
  rejoinButton.hidden = !MAY_REJOIN.has(kind) || kind === "no_token";
}

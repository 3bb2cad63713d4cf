// Sign-in at the hospital's identity provider, for a person who opens /join/<room> (or the
// archive) with no link: the "Sign in with <hospital>" screen, the session the server keeps for
// this browser (an HttpOnly cookie the page never sees), sign-out, and the step-up re-prompt.
// The server does the OpenID Connect flow (docs/protocol.md, "Sign-in"); this module only moves
// the browser and says what happened in the person's language.

import { deviceThumbprint } from "./dpop.js";
import { t } from "./i18n.js";

// Reasons a sign-in can fail with (`#signin_error=<reason>`) that have their own words; any
// other reason is said with the generic text and its code.
const KNOWN_ERRORS = new Set([
  "bad_state",
  "expired",
  "idp_unreachable",
  "missing_claim",
  "provider_error",
  "code_refused",
  "revoked_sub",
  "revoked_jti",
  "session_expired",
  "other_browser",
  "dpop_required",
]);

/** What the server says about sign-in for this browser: {enabled, provider_name, signed_in,
 * sub, name, role, dept, expires_at, auth_time, step_up_max_age_s}; null when unreachable. */
export async function fetchSignIn() {
  try {
    const response = await fetch("/auth/session", { cache: "no-store" });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

/** The URL that starts a sign-in and comes back to `returnPath` (a path on this server);
 * `maxAge` (seconds) asks the provider for an authentication that recent (step-up). */
export function signInUrl(returnPath, maxAge = null) {
  const query = new URLSearchParams({ return: returnPath });
  if (maxAge !== null) query.set("max_age", String(maxAge));
  // Bind the session to this browser's device key (dpop.js), when it has one.
  if (deviceThumbprint()) query.set("dpop_jkt", deviceThumbprint());
  return `/auth/signin?${query}`;
}

/** The headers that authenticate an API call: the bearer token when there is one; with none,
 * the browser's session cookie goes by itself (same origin). */
export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** The sign-in error the server's redirect left in the fragment (`#signin_error=<reason>`),
 * removed from the address bar at once; null when there is none. */
export function takeSignInError() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const reason = fragment.get("signin_error");
  if (reason !== null) history.replaceState(null, "", location.pathname + location.search);
  return reason;
}

/** The words for a failed sign-in. */
export function signInErrorText(reason) {
  return KNOWN_ERRORS.has(reason)
    ? t(`signin.error.${reason}`)
    : t("signin.error.other", { reason });
}

// A second click (a double click, an impatient one) while the browser is already on its way to
// the provider starts nothing more: each start is a new round trip at the provider.
let onTheWay = false;
addEventListener("pageshow", () => {
  onTheWay = false; // back on this page (the back button): the link works again
});

function startOnce(event) {
  const plain = event.button === 0 && !event.ctrlKey && !event.metaKey && !event.shiftKey;
  if (!plain) return; // a new tab or window: its own sign-in
  if (onTheWay) event.preventDefault();
  onTheWay = true;
}

/** Draw the "Sign in with <hospital>" screen for `signIn`: {provider, returnPath, error}
 * (where to come back to, and the reason the last attempt failed, or null). */
export function renderSignIn(signIn) {
  const provider = signIn?.provider ?? "";
  const link = document.getElementById("signin-link");
  link.textContent = provider ? t("signin.button", { provider }) : t("signin.button_generic");
  link.href = signInUrl(signIn?.returnPath ?? location.pathname);
  if (!link.dataset.once) {
    link.dataset.once = "1";
    link.addEventListener("click", startOnce);
  }
  const problem = document.getElementById("signin-error");
  const error = signIn?.error ?? null;
  problem.hidden = error === null;
  problem.textContent = error === null ? "" : signInErrorText(error);
  document.getElementById("screen-signin").dataset.error = error ?? "";
}

/** Wire the sign-out button: shown while signed in; ends the session here (and at the provider
 * when it offers a logout), then shows the sign-in screen again. */
export function initSignOut(button, returnPath) {
  button.hidden = false;
  button.textContent = t("signin.sign_out");
  button.addEventListener("click", async () => {
    button.disabled = true;
    let logoutUrl = null;
    try {
      const response = await fetch("/auth/signout", { method: "POST", cache: "no-store" });
      logoutUrl = (await response.json()).logout_url ?? null;
    } catch {
      // The session ends on its own soon; the page still forgets it.
    }
    if (logoutUrl) {
      location.assign(logoutUrl);
      return;
    }
    location.assign(returnPath);
  });
}

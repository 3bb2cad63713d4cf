// Device binding (DPoP, RFC 9449): this browser's own key, and the proofs that show a request
// comes from it. The key is an ECDSA P-256 WebCrypto key made with `extractable: false`: script
// (this page's, or an injected one) can sign with it but never read it out, so a copied session
// cookie is useless elsewhere. It is kept in IndexedDB (a CryptoKey is stored as itself, still
// non-extractable), so it survives reloads. A sign-in names the key's thumbprint (`dpop_jkt`,
// see signin.js) and the server binds the session to it; from then on every API call of this
// page carries a `DPoP` proof header, and the join a proof in its `dpop` field (protocol.js).
// docs/protocol.md, "Device binding".

const DB_NAME = "consilium-device";
const STORE = "keys";
const KEY_ID = "dpop";

let device = null; // {keys: CryptoKeyPair, jwk, jkt} once loaded; null: none (no IndexedDB)
let loading = null;

function b64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function b64urlText(text) {
  return b64url(new TextEncoder().encode(text));
}

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function idb(db, mode, act) {
  return new Promise((resolve, reject) => {
    const request = act(db.transaction(STORE, mode).objectStore(STORE));
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/** RFC 7638 thumbprint of an EC public JWK: SHA-256 over {crv, kty, x, y} in that order. */
async function thumbprint(jwk) {
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y });
  return b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(canonical)));
}

async function load() {
  const db = await openDb();
  try {
    let keys = await idb(db, "readonly", (store) => store.get(KEY_ID));
    if (!keys) {
      // The private key is not extractable; a key pair's public key always is (it is public).
      keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, [
        "sign",
        "verify",
      ]);
      try {
        // `add`, not `put`: two tabs opened at once must not each keep a different key.
        await idb(db, "readwrite", (store) => store.add(keys, KEY_ID));
      } catch {
        keys = await idb(db, "readonly", (store) => store.get(KEY_ID));
        if (!keys) throw new Error("device key not stored");
      }
    }
    const full = await crypto.subtle.exportKey("jwk", keys.publicKey);
    const jwk = { kty: full.kty, crv: full.crv, x: full.x, y: full.y };
    return { keys, jwk, jkt: await thumbprint(jwk) };
  } finally {
    db.close();
  }
}

/** Load (or make, the first time) this browser's device key. Without IndexedDB or WebCrypto
 * (a private window of some browsers) there is none: sign-ins are then unbound, and a node
 * with `dpop_required` says so. */
export async function loadDeviceKey() {
  loading ??= load()
    .then((loaded) => {
      device = loaded;
      return loaded;
    })
    .catch(() => null);
  return loading;
}

/** The device key's thumbprint (`dpop_jkt`), or null before `loadDeviceKey` or without one. */
export function deviceThumbprint() {
  return device?.jkt ?? null;
}

/** Whether the private key can be read out by script (it cannot: for the tests to assert). */
export function deviceKeyExtractable() {
  return device ? device.keys.privateKey.extractable : null;
}

/** A fresh proof for `method` on `url` (absolute or relative to this page); `accessToken`
 * adds its `ath`. Null without a device key. */
export async function dpopProof(method, url, accessToken = null) {
  if (!device) return null;
  const target = new URL(url, location.href);
  const header = { typ: "dpop+jwt", alg: "ES256", jwk: device.jwk };
  const claims = {
    jti: crypto.randomUUID(),
    htm: method.toUpperCase(),
    htu: `${target.origin}${target.pathname}`,
    iat: Math.floor(Date.now() / 1000),
  };
  if (accessToken) {
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(accessToken));
    claims.ath = b64url(digest);
  }
  const input = `${b64urlText(JSON.stringify(header))}.${b64urlText(JSON.stringify(claims))}`;
  const signature = await crypto.subtle.sign(
    { name: "ECDSA", hash: "SHA-256" },
    device.keys.privateKey,
    new TextEncoder().encode(input),
  );
  return `${input}.${b64url(signature)}`; // WebCrypto's ECDSA signature is JWS's r || s
}

/** Give every same-origin API call of this page that carries no `Authorization` (the ones the
 * session cookie authenticates), and the question who is signed in (`/auth/session`, answered
 * only to the device of a bound session), a `DPoP` proof header made for its method and URL. */
export function installDpopFetch() {
  if (window.fetch.dpop) return;
  const plainFetch = window.fetch.bind(window);
  const withProof = async (input, init = {}) => {
    const named = typeof input === "string" || input instanceof URL;
    const target = named ? new URL(input, location.href) : null;
    const headers = new Headers(init.headers ?? {});
    if (
      device &&
      target &&
      target.origin === location.origin &&
      (target.pathname.startsWith("/api/") || target.pathname === "/auth/session") &&
      !headers.has("Authorization")
    ) {
      headers.set("DPoP", await dpopProof(init.method ?? "GET", target.href));
      return plainFetch(input, { ...init, headers });
    }
    return plainFetch(input, init);
  };
  withProof.dpop = true;
  window.fetch = withProof;
}

/** Load the device key and sign this page's API calls with it: called by a page that may be
 * signed in (no link token) before it asks about its sign-in. */
export async function initDeviceBinding() {
  await loadDeviceKey();
  installDpopFetch();
}

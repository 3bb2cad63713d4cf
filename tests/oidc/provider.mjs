// A real OpenID provider for Consilium's sign-in tests: panva's oidc-provider (OpenID-certified),
// with a plain login form, shaped like the hospital's directory in one of two ways:
//
//   --profile entra     claims as Microsoft Entra ID sends them: oid, roles (app roles), groups,
//                       amr (["pwd", "mfa"] for people who used a second factor)
//   --profile keycloak  claims as Keycloak sends them: realm_access.roles, a `department` user
//                       attribute, acr "2" for a second factor
//
// Usage: node provider.mjs --port N --profile entra|keycloak --redirect URL [--redirect URL]
// Prints one JSON line {"ready": true, "issuer": ...} on stdout once it listens. Every password
// is "secret". Two clients: "consilium-public" (public, PKCE only) and "consilium-confidential"
// (client_secret_basic, secret "confidential-secret").
//
// DPoP (RFC 9449) is on, with server nonces required (section 8): the public client's access
// tokens must be DPoP-bound (`dpop_bound_access_tokens`), so Consilium exchanges its codes with
// proofs by its own key and answers the `use_dpop_nonce` challenge. The "consilium-device" client
// (public, DPoP-bound, refresh-less) is for a device that gets its own bound access token: a JWT
// for the resource `urn:consilium` with Consilium's claims (role, depts, rooms) and `cnf.jkt`.
//
// Test controls (this is a test double's switchboard, not part of any provider):
//   POST /test/tamper-id-token?on=1  the token endpoint's ID token gets a changed claim (its
//                                    signature no longer matches)

import crypto from "node:crypto";
import http from "node:http";
import { parseArgs } from "node:util";

import Provider, { errors } from "oidc-provider";

const { values } = parseArgs({
  options: {
    port: { type: "string" },
    profile: { type: "string", default: "entra" },
    redirect: { type: "string", multiple: true, default: [] },
  },
});
const port = Number(values.port);
const CONSILIUM_RESOURCE = "urn:consilium";
const issuer = `http://127.0.0.1:${port}`;

// People in the directory, by login; `mfa`: whether they sign in with a second factor.
const PEOPLE = {
  alice: { name: "Dr Alice Chen", role: "chair", dept: "oncology", mfa: true },
  bob: { name: "Dr Bob Osei", role: "specialist", dept: "oncology", mfa: true },
  carol: { name: "Dr Carol Diaz", role: "chair", dept: "oncology", mfa: false },
  dave: { name: "Dave Nobody", role: null, dept: "oncology", mfa: true },
  erin: { name: "Erin Archivist", role: "archivist", dept: "oncology", mfa: true },
};

// Provider role values as each directory names them (mapped by Consilium's oidc_role_map).
const ROLE_VALUES = {
  entra: { chair: "MDT.Chair", specialist: "MDT.Specialist", archivist: "MDT.Archivist" },
  keycloak: { chair: "mdt-chair", specialist: "mdt-specialist", archivist: "mdt-archivist" },
};

function directoryClaims(login) {
  const person = PEOPLE[login];
  const role = person.role ? [ROLE_VALUES[values.profile][person.role]] : [];
  if (values.profile === "keycloak") {
    return {
      name: person.name,
      preferred_username: login,
      realm_access: { roles: [...role, "offline_access", "uma_authorization"] },
      department: person.dept,
    };
  }
  return {
    name: person.name,
    oid: `00000000-0000-0000-0000-${crypto.createHash("sha256").update(login).digest("hex").slice(0, 12)}`,
    roles: role,
    groups: [person.dept],
  };
}

const signingKey = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
const jwk = { ...signingKey.export({ format: "jwk" }), kid: "test-rsa-1", use: "sig", alg: "RS256" };

const client = (extra) => ({
  redirect_uris: values.redirect,
  post_logout_redirect_uris: values.redirect.map((u) => new URL("/", u).href),
  grant_types: ["authorization_code"],
  response_types: ["code"],
  require_auth_time: true,
  ...extra,
});

const provider = new Provider(issuer, {
  clients: [
    client({
      client_id: "consilium-public",
      token_endpoint_auth_method: "none",
      dpop_bound_access_tokens: true,
    }),
    client({ client_id: "consilium-confidential", client_secret: "confidential-secret" }),
    client({
      client_id: "consilium-device",
      token_endpoint_auth_method: "none",
      dpop_bound_access_tokens: true,
    }),
  ],
  jwks: { keys: [jwk] },
  cookies: { keys: ["consilium-test-provider-cookie-key"] },
  // The directory's claims travel in the ID token, as Entra ID and Keycloak put them there.
  conformIdTokenClaims: false,
  claims: {
    acr: null,
    amr: null,
    auth_time: null,
    iss: null,
    sid: null,
    openid: ["sub", "acr", "amr", "oid", "roles", "groups", "realm_access", "department"],
    profile: ["name", "preferred_username"],
    email: ["email"],
  },
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) =>
        oneOf ?? (client.clientId === "consilium-device" ? CONSILIUM_RESOURCE : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== CONSILIUM_RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: "mdt",
          audience: CONSILIUM_RESOURCE,
          accessTokenFormat: "jwt",
          accessTokenTTL: 300,
          jwt: { sign: { alg: "RS256" } },
        };
      },
    },
    dPoP: { enabled: true, nonceSecret: crypto.randomBytes(32), requireNonce: () => true },
  },
  pkce: { required: () => true },
  ttl: { AuthorizationCode: 60, IdToken: 300, AccessToken: 300, Interaction: 600, Session: 3600, Grant: 3600 },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  // Consilium's claims in the device's JWT access token (the people's Consilium roles).
  async extraTokenClaims(_ctx, token) {
    const person = PEOPLE[token.accountId];
    const audience = token.aud ?? token.resourceServer?.audience;
    if (!person || audience !== CONSILIUM_RESOURCE) return undefined;
    return {
      role: person.role, name: person.name, dept: [person.dept], room: ["mdt-1"],
      amr: person.mfa ? ["pwd", "mfa"] : ["pwd"],
    };
  },
  async findAccount(_ctx, id) {
    if (!PEOPLE[id]) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...directoryClaims(id) }) };
  },
  // First-party client: consent is the hospital's, given once for everyone (no consent screen).
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope("openid profile email");
    if (ctx.oidc.client.clientId === "consilium-device") {
      grant.addResourceScope(CONSILIUM_RESOURCE, "mdt");
    }
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

let tamperIdToken = false;

function loginPage(uid, problem) {
  const message = problem ? `<p id="problem" role="alert">${problem}</p>` : "";
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Hospital login</title></head>
<body><h1>Hospital login</h1>${message}
<form method="post" action="/interaction/${uid}/login">
<label>User name <input id="login" name="login" autocomplete="username" autofocus></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="submit" type="submit">Sign in</button>
</form></body></html>`;
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

function send(res, status, body, type = "text/html; charset=utf-8") {
  res.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store" });
  res.end(body);
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const uid = details.uid;
  if (req.method === "GET") {
    return send(res, 200, loginPage(uid, ""));
  }
  const form = await readForm(req);
  const login = form.get("login") ?? "";
  if (!PEOPLE[login] || form.get("password") !== "secret") {
    return send(res, 200, loginPage(uid, "Unknown user name or wrong password"));
  }
  const person = PEOPLE[login];
  const result = { login: { accountId: login, amr: person.mfa ? ["pwd", "mfa"] : ["pwd"] } };
  if (values.profile === "keycloak") {
    // Keycloak says the level of authentication in acr, not amr.
    result.login.amr = undefined;
    result.login.acr = person.mfa ? "2" : "1";
  }
  return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

function tamper(idToken) {
  const [header, payload, signature] = idToken.split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
  claims.roles = ["MDT.Chair"];
  claims.realm_access = { roles: ["mdt-chair"] };
  const forged = Buffer.from(JSON.stringify(claims)).toString("base64url");
  return `${header}.${forged}.${signature}`;
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname.startsWith("/interaction/")) return await interaction(req, res);
    if (url.pathname === "/test/tamper-id-token" && req.method === "POST") {
      tamperIdToken = url.searchParams.get("on") === "1";
      return send(res, 200, JSON.stringify({ tamper: tamperIdToken }), "application/json");
    }
    if (url.pathname === "/token" && tamperIdToken) {
      const end = res.end.bind(res);
      res.end = (chunk, ...rest) => {
        try {
          const body = JSON.parse(Buffer.from(chunk).toString("utf8"));
          if (body.id_token) body.id_token = tamper(body.id_token);
          const out = JSON.stringify(body);
          res.setHeader("Content-Length", Buffer.byteLength(out));
          return end(out);
        } catch {
          return end(chunk, ...rest);
        }
      };
    }
    return callback(req, res);
  } catch (err) {
    send(res, 500, String(err), "text/plain");
  }
});
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, profile: values.profile })}\n`);
});

"""SCIM 2.0 provisioning: `/scim/v2/Users`, `/Groups` and the discovery endpoints (RFC 7644).

Only the provisioning client may call them: `Authorization: Bearer <token>` with the token
held in `scim_token_file` (or whose SHA-256 it holds), compared in constant time; anything else
is refused (401, audited as `api_refused`). Every body is `application/scim+json`, errors
included (`status`, `scimType`, `detail`). Without `scim_token_file` every path answers 404.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from scim2_models import (
    Context,
    Error,
    Group,
    Resource,
    ResponseParameters,
    SCIMException,
    SearchRequest,
    User,
)

from core.errors import ConfigError, ConsiliumError
from signaling.errors import http_status_of
from signaling.http.auth import audit_refusal, peer_address
from signaling.http.node import NODE
from signaling.provisioning import Provisioning
from signaling.scim import query as q
from signaling.scim import resources as res

log = logging.getLogger("consilium.server")

PREFIX = "/scim/v2"
"""Where the SCIM endpoints live (the IdP's "tenant URL" is `<public_url>/scim/v2`)."""

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest SCIM request body: a Group PUT naming some 40 000 members (a whole hospital's staff
group), far below what would strain a node (413 beyond)."""

SCIM = web.AppKey("scim", Provisioning)
"""The node's provisioning executor, when SCIM is configured."""
SCIM_TOKEN_SHA256 = web.AppKey("scim_token_sha256", bytes)
"""SHA-256 of the provisioning client's bearer token."""

LIST_RESPONSE_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def read_token_digest(path: Path) -> bytes:
    """The SHA-256 of the token `path` holds: the token itself, or `sha256:<hex>` of it."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"scim_token_file {path}: {exc.strerror or exc}") from None
    if text.startswith("sha256:"):
        try:
            digest = bytes.fromhex(text.removeprefix("sha256:"))
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigError(f"scim_token_file {path}: sha256: must be followed by 64 hex digits")
        return digest
    if len(text) < 32:
        raise ConfigError(f"scim_token_file {path}: the token must be at least 32 characters")
    return hashlib.sha256(text.encode()).digest()


def scim_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A SCIM response: the body as `application/scim+json`."""
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type=res.SCIM_MEDIA_TYPE,
        headers=headers,
    )


def scim_error(exc: SCIMException) -> web.Response:
    """The error response RFC 7644 §3.12 describes."""
    error = exc.to_error()
    return scim_json(error.model_dump(), status=int(error.status or 400))


def _authorised(request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    presented = hashlib.sha256(token.strip().encode()).digest()
    expected = request.app[SCIM_TOKEN_SHA256]
    # Hash first, then compare in constant time: the comparison learns nothing of the token.
    return scheme.lower() == "bearer" and hmac.compare_digest(presented, expected)


def scim_endpoint(handler: Handler) -> Handler:
    """Refuse callers without the provisioning token; map every error to a SCIM error."""

    @wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        if SCIM not in request.app:
            return scim_error(
                SCIMException.from_error(
                    Error(status=404, detail="SCIM provisioning is not enabled (scim_token_file)")
                )
            )
        if not _authorised(request):
            audit_refusal(request, "scim_token_invalid", ip=peer_address(request))
            refused = scim_error(
                SCIMException.from_error(
                    Error(status=401, detail="the SCIM provisioning bearer token is required")
                )
            )
            refused.headers["WWW-Authenticate"] = 'Bearer realm="scim"'  # RFC 6750 §3
            return refused
        try:
            return await handler(request)
        except SCIMException as exc:
            return scim_error(exc)
        except ConsiliumError as exc:
            status = http_status_of(exc)
            return scim_error(SCIMException.from_error(Error(status=status, detail=exc.message)))
        except Exception:
            log.exception("SCIM request failed", extra={"path": request.path})
            return scim_error(SCIMException.from_error(Error(status=500, detail="internal error")))

    return guarded


def _base_url(request: web.Request) -> str:
    return request.app[NODE].settings.own_origin + PREFIX


async def _body(request: web.Request) -> object:
    """The JSON body, at most `MAX_BODY_BYTES` (read here: the app's `max_request_bytes` is too
    small for a department's full member list)."""
    too_large = SCIMException.from_error(
        Error(status=413, detail=f"request body larger than {MAX_BODY_BYTES} bytes")
    )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    raw = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise too_large
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SCIMException.from_error(
            Error(status=400, scim_type="invalidSyntax", detail="the body must be JSON")
        ) from None


def _dump(resource: Resource[Any], params: dict[str, str] | None = None) -> dict[str, Any]:
    """The resource as a response carries it, with the `attributes` or `excludedAttributes`
    the request asked for (RFC 7644 §3.4.2.5)."""
    asked = {k: v for k, v in (params or {}).items() if k in _RESPONSE_PARAMETERS and v}
    try:
        selection: ResponseParameters[Any] | None = (
            ResponseParameters.model_validate(asked) if asked else None
        )
        return resource.model_dump(
            scim_ctx=Context.RESOURCE_QUERY_RESPONSE, response_parameters=selection
        )
    except ValidationError as exc:
        raise res.refusal(exc) from None


_RESPONSE_PARAMETERS = ("attributes", "excludedAttributes")


def _one(
    resource: Resource[Any], status: int = 200, params: dict[str, str] | None = None
) -> web.Response:
    assert resource.meta is not None
    headers = {"ETag": str(resource.meta.version)}
    if status == 201:
        headers["Location"] = str(resource.meta.location)
    return scim_json(_dump(resource, params), status=status, headers=headers)


def _listed(
    model: type[Resource[Any]] | None, found: list[Any], params: dict[str, str]
) -> web.Response:
    """A ListResponse of the resources the query selects (`model` None: already filtered)."""
    query = q.parse_list_query(params)
    selected = q.matching(model, found, query.filter) if model is not None else found
    page = q.page(selected, query)
    body = {
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": len(selected),
        "startIndex": query.start_index,
        "itemsPerPage": len(page),
        "Resources": [_dump(r, params) for r in page],
    }
    return scim_json(body)


# users


@scim_endpoint
async def list_users(request: web.Request) -> web.Response:
    """GET /scim/v2/Users: filter, startIndex, count."""
    narrow = q.lookup_of(request.query.get("filter"))
    found = await request.app[SCIM].users(_base_url(request), narrow)
    return _listed(User, found, dict(request.query))


@scim_endpoint
async def create_user(request: web.Request) -> web.Response:
    """POST /scim/v2/Users: a joiner."""
    user = await request.app[SCIM].create_user(await _body(request), _base_url(request))
    return _one(user, status=201)


@scim_endpoint
async def get_user(request: web.Request) -> web.Response:
    """GET /scim/v2/Users/{id}."""
    user, _ = await request.app[SCIM].user(request.match_info["id"], _base_url(request))
    return _one(user, params=dict(request.query))


@scim_endpoint
async def replace_user(request: web.Request) -> web.Response:
    """PUT /scim/v2/Users/{id}: `active: false` is a leaver."""
    user = await request.app[SCIM].replace_user(
        request.match_info["id"], await _body(request), _base_url(request),
        request.headers.get("If-Match"),
    )  # fmt: skip
    return _one(user)


@scim_endpoint
async def patch_user(request: web.Request) -> web.Response:
    """PATCH /scim/v2/Users/{id}: `replace active false` is a leaver."""
    user = await request.app[SCIM].patch_user(
        request.match_info["id"], await _body(request), _base_url(request),
        request.headers.get("If-Match"),
    )  # fmt: skip
    return _one(user)


@scim_endpoint
async def delete_user(request: web.Request) -> web.Response:
    """DELETE /scim/v2/Users/{id}: a leaver, revoked everywhere."""
    await request.app[SCIM].delete_user(request.match_info["id"], request.headers.get("If-Match"))
    return web.Response(status=204)


# groups


@scim_endpoint
async def list_groups(request: web.Request) -> web.Response:
    """GET /scim/v2/Groups: filter (e.g. `members.value eq "<id>"`), startIndex, count."""
    narrow = q.lookup_of(request.query.get("filter"))
    found = await request.app[SCIM].groups(_base_url(request), narrow)
    return _listed(Group, found, dict(request.query))


@scim_endpoint
async def create_group(request: web.Request) -> web.Response:
    """POST /scim/v2/Groups."""
    group = await request.app[SCIM].create_group(await _body(request), _base_url(request))
    return _one(group, status=201)


@scim_endpoint
async def get_group(request: web.Request) -> web.Response:
    """GET /scim/v2/Groups/{id}."""
    group, _ = await request.app[SCIM].group(request.match_info["id"], _base_url(request))
    return _one(group, params=dict(request.query))


@scim_endpoint
async def replace_group(request: web.Request) -> web.Response:
    """PUT /scim/v2/Groups/{id}."""
    group = await request.app[SCIM].replace_group(
        request.match_info["id"], await _body(request), _base_url(request),
        request.headers.get("If-Match"),
    )  # fmt: skip
    return _one(group)


@scim_endpoint
async def patch_group(request: web.Request) -> web.Response:
    """PATCH /scim/v2/Groups/{id}: membership (`members[value eq "..."]`), rename."""
    group = await request.app[SCIM].patch_group(
        request.match_info["id"], await _body(request), _base_url(request),
        request.headers.get("If-Match"),
    )  # fmt: skip
    return _one(group)


@scim_endpoint
async def delete_group(request: web.Request) -> web.Response:
    """DELETE /scim/v2/Groups/{id}."""
    await request.app[SCIM].delete_group(request.match_info["id"], request.headers.get("If-Match"))
    return web.Response(status=204)


@scim_endpoint
async def search(request: web.Request) -> web.Response:
    """POST /scim/v2/.search, /Users/.search and /Groups/.search (RFC 7644 §3.4.3)."""
    body = await _body(request)
    try:
        asked: SearchRequest[Any] = SearchRequest.model_validate(
            body, scim_ctx=Context.SEARCH_REQUEST
        )
    except ValueError as exc:
        raise SCIMException.from_error(
            Error(status=400, scim_type="invalidSyntax", detail=str(exc)[:300])
        ) from None
    params = {
        "filter": str(asked.filter) if asked.filter else "",
        "startIndex": str(asked.start_index or 1),
        "count": str(asked.count if asked.count is not None else res.MAX_RESULTS),
        "attributes": ",".join(str(a) for a in asked.attributes or []),
        "excludedAttributes": ",".join(str(a) for a in asked.excluded_attributes or []),
    }
    params = {k: v for k, v in params.items() if v}
    kind = request.match_info.get("kind")
    if kind == "Users":
        return _listed(User, await request.app[SCIM].users(_base_url(request)), params)
    if kind == "Groups":
        return _listed(Group, await request.app[SCIM].groups(_base_url(request)), params)
    # At the root: every resource type, each under its own model's filter (RFC 7644 §3.4.3).
    provisioning = request.app[SCIM]
    found: list[Resource[Any]] = []
    query = q.parse_list_query(params)
    found += q.matching(User, await provisioning.users(_base_url(request)), query.filter)
    found += q.matching(Group, await provisioning.groups(_base_url(request)), query.filter)
    return _listed(None, found, params)


# discovery


@scim_endpoint
async def service_provider_config(request: web.Request) -> web.Response:
    """GET /scim/v2/ServiceProviderConfig."""
    config = res.service_provider_config(_base_url(request))
    return scim_json(config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def _discovery_list(found: list[Any]) -> web.Response:
    body = {
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": len(found),
        "startIndex": 1,
        "itemsPerPage": len(found),
        "Resources": [r.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE) for r in found],
    }
    return scim_json(body)


def _discovery_one(found: list[Any], wanted: str) -> web.Response:
    for r in found:
        if r.id == wanted:
            return scim_json(r.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    raise SCIMException.from_error(Error(status=404, detail=f"no {wanted[:100]!r} here"))


@scim_endpoint
async def list_resource_types(request: web.Request) -> web.Response:
    """GET /scim/v2/ResourceTypes."""
    return _discovery_list(res.resource_types(_base_url(request)))


@scim_endpoint
async def get_resource_type(request: web.Request) -> web.Response:
    """GET /scim/v2/ResourceTypes/{id}."""
    return _discovery_one(res.resource_types(_base_url(request)), request.match_info["id"])


@scim_endpoint
async def list_schemas(request: web.Request) -> web.Response:
    """GET /scim/v2/Schemas."""
    return _discovery_list(res.schemas(_base_url(request)))


@scim_endpoint
async def get_schema(request: web.Request) -> web.Response:
    """GET /scim/v2/Schemas/{id}."""
    return _discovery_one(res.schemas(_base_url(request)), request.match_info["id"])


@scim_endpoint
async def method_not_allowed(request: web.Request) -> web.Response:
    """A method the endpoint does not serve (the discovery endpoints are read-only)."""
    raise SCIMException.from_error(
        Error(status=405, detail=f"{request.method} is not allowed on this endpoint")
    )


@scim_endpoint
async def not_found(request: web.Request) -> web.Response:
    """Any other path under /scim/v2."""
    raise SCIMException.from_error(Error(status=404, detail="no such SCIM endpoint"))


def add_scim_routes(app: web.Application) -> None:
    """The SCIM endpoints; with `scim_token_file` set, the token is read now (ConfigError)."""
    node = app[NODE]
    path = node.settings.scim_token_file
    if path is not None:
        app[SCIM_TOKEN_SHA256] = read_token_digest(path)
        app[SCIM] = Provisioning(
            node.store, node.rooms, node.audit,
            subject_attribute=node.settings.scim_subject_attribute,
        )  # fmt: skip
    r = app.router
    r.add_get(PREFIX + "/ServiceProviderConfig", service_provider_config)
    r.add_get(PREFIX + "/ResourceTypes", list_resource_types)
    r.add_get(PREFIX + "/ResourceTypes/{id}", get_resource_type)
    r.add_get(PREFIX + "/Schemas", list_schemas)
    r.add_get(PREFIX + "/Schemas/{id}", get_schema)
    r.add_post(PREFIX + "/.search", search)
    r.add_post(PREFIX + "/{kind:Users|Groups}/.search", search)
    r.add_get(PREFIX + "/Users", list_users)
    r.add_post(PREFIX + "/Users", create_user)
    r.add_get(PREFIX + "/Users/{id}", get_user)
    r.add_put(PREFIX + "/Users/{id}", replace_user)
    r.add_patch(PREFIX + "/Users/{id}", patch_user)
    r.add_delete(PREFIX + "/Users/{id}", delete_user)
    r.add_get(PREFIX + "/Groups", list_groups)
    r.add_post(PREFIX + "/Groups", create_group)
    r.add_get(PREFIX + "/Groups/{id}", get_group)
    r.add_put(PREFIX + "/Groups/{id}", replace_group)
    r.add_patch(PREFIX + "/Groups/{id}", patch_group)
    r.add_delete(PREFIX + "/Groups/{id}", delete_group)
    for endpoint in (
        "/ServiceProviderConfig", "/ResourceTypes", "/ResourceTypes/{id}", "/Schemas",
        "/Schemas/{id}", "/Users", "/Users/{id}", "/Groups", "/Groups/{id}",
    ):  # fmt: skip
        r.add_route("*", PREFIX + endpoint, method_not_allowed)
    r.add_route("*", PREFIX + "/{tail:.*}", not_found)

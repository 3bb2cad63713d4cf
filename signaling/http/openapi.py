"""The OpenAPI 3.1 document of the versioned REST API, built from what the server runs.

One source of truth: each route is an `Operation` (method, path, handler, the msgspec types of
its body, query and answer, its headers and error statuses); the app registers the handlers from
that table and `openapi_document` describes the same table, its schemas generated from the same
msgspec classes (`msgspec.json.schema_components`, JSON Schema 2020-12 as OpenAPI 3.1 takes it).
A test checks that every `/api/v1` route of the app is in the document and every documented one
is routed. Pure: the document is a function of the table.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ERROR_DESCRIPTIONS: Mapping[int, str] = {
    400: "The request is malformed or breaks a rule (`bad_message`).",
    401: "No valid bearer token (`not_authenticated`).",
    403: "The token's role may not do this (`not_allowed`).",
    404: "No such meeting (`not_found`).",
    405: "The path does not take this method (`method_not_allowed`).",
    409: "The request conflicts with the meeting's state (`conflict`).",
    412: "`If-Match` does not name the meeting's current ETag (`precondition_failed`).",
    413: "The body is over the node's request bound (`too_large`).",
    429: "The service holds as many meetings as it may (`rate_limited`).",
    503: "The shared state cannot be reached (`unavailable`).",
}
"""What each error status means on this API; every error answer is an `ErrorBody`."""

COMMON_ERRORS = (401, 403, 405, 503)
"""Statuses every operation may answer."""


@dataclass(frozen=True)
class Header:
    """A request header an operation reads."""

    name: str
    description: str
    schema: dict[str, Any]
    """JSON Schema of its value."""


@dataclass(frozen=True)
class Operation:
    """One route of the API, as registered and as documented."""

    method: str
    path: str
    """aiohttp's path, `{name}` for a path parameter (OpenAPI's syntax too)."""
    handler: Handler
    operation_id: str
    summary: str
    response: type
    """The msgspec type of the successful answer's body."""
    statuses: tuple[int, ...] = (200,)
    """The successful statuses (all with `response`)."""
    body: type | None = None
    """The msgspec type of the JSON request body, if it takes one."""
    foreign_body: tuple[str, dict[str, Any]] | None = None
    """A body defined by another standard (a FHIR resource): its media type and JSON Schema,
    for what this server does not type itself."""
    query: type | None = None
    """A msgspec Struct whose fields are the query parameters."""
    headers: tuple[Header, ...] = ()
    errors: tuple[int, ...] = ()
    """Error statuses besides `COMMON_ERRORS`."""
    etag: bool = False
    """The successful answer carries an `ETag` header."""
    description: str = ""
    example: dict[str, Any] | None = None
    """An example request body (shown in the document, tried first by schemathesis)."""
    links: Mapping[str, Mapping[str, str]] | None = None
    """OpenAPI links of the successful answer: a name -> operation id and the path
    parameters it takes from this answer (`{"operationId": ..., "meeting_id": expr}`)."""


def _components(operations: Iterable[Operation], error_body: type) -> dict[str, Any]:
    types: list[Any] = [error_body]
    for op in operations:
        types.extend(t for t in (op.response, op.body, op.query) if t is not None)
    _, components = msgspec.json.schema_components(
        list(dict.fromkeys(types)), ref_template="#/components/schemas/{name}"
    )
    return components


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the `null` branch of an optional field (a query
    parameter is absent, never null) and without its default."""
    schema = {k: v for k, v in schema.items() if k != "default"}
    branches = schema.get("anyOf")
    if branches is not None:
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1:
            others = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**others, **rest[0]}
    return schema


def _query_parameters(query: type, components: Mapping[str, Any]) -> list[dict[str, Any]]:
    described = components[query.__name__]
    required = set(described.get("required", ()))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _not_null(schema),
            **({"description": schema["description"]} if "description" in schema else {}),
        }
        for name, schema in described["properties"].items()
    ]


def _path_parameters(path: str, schemas: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": schemas[name]}
        for name in re.findall(r"{(\w+)}", path)
    ]


def _ref(cls: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{cls.__name__}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(
    op: Operation,
    components: Mapping[str, Any],
    path_schemas: Mapping[str, Any],
    error_body: type,
) -> dict[str, Any]:
    parameters = _path_parameters(op.path, path_schemas)
    if op.query is not None:
        parameters += _query_parameters(op.query, components)
    parameters += [
        {"name": h.name, "in": "header", "required": False, "description": h.description,
         "schema": h.schema}
        for h in op.headers
    ]  # fmt: skip
    responses: dict[str, Any] = {}
    for status in op.statuses:
        ok: dict[str, Any] = {"description": "Success.", "content": _json(_ref(op.response))}
        if op.etag:
            ok["headers"] = {
                "ETag": {
                    "description": "The meeting's version, for `If-Match`.",
                    "schema": {"type": "string"},
                }
            }
        if op.links:
            ok["links"] = {
                name: {
                    "operationId": link["operationId"],
                    "parameters": {k: v for k, v in link.items() if k != "operationId"},
                }
                for name, link in op.links.items()
            }
        responses[str(status)] = ok
    for status in sorted({*op.errors, *COMMON_ERRORS}):
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS[status],
            "content": _json(_ref(error_body)),
        }
    described: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "responses": responses,
    }
    if op.description:
        described["description"] = op.description
    if parameters:
        described["parameters"] = parameters
    if op.foreign_body is not None:
        media_type, schema = op.foreign_body
        described["requestBody"] = {"required": True, "content": {media_type: {"schema": schema}}}
    if op.body is not None:
        content = _json(_ref(op.body))
        if op.example is not None:
            content["application/json"]["example"] = op.example
        described["requestBody"] = {"required": True, "content": content}
    return described


def openapi_document(
    operations: Iterable[Operation],
    *,
    title: str,
    version: str,
    description: str,
    path_schemas: Mapping[str, Any],
    error_body: type,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`; `path_schemas` gives each path parameter's
    JSON Schema, `error_body` the msgspec type of every error answer. Every operation needs a
    bearer token (the `bearer` scheme)."""
    operations = list(operations)
    components = _components(operations, error_body)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(
            op, components, path_schemas, error_body
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A token from the hospital IdP whose role may do the "
                    "operation (`scheduler` for the HIS: the `schedule_meetings` action).",
                }
            },
        },
        "security": [{"bearer": []}],
    }


async def method_not_allowed(request: web.Request) -> web.StreamResponse:
    """Any other method on a documented path: 405 with `Allow` (the error middleware answers
    it as JSON)."""
    resource = request.match_info.route.resource
    allowed = sorted(
        {r.method for r in resource if r.method != "*"} if resource is not None else set()
    )
    raise web.HTTPMethodNotAllowed(request.method, allowed)


def add_operations(app: web.Application, operations: Iterable[Operation]) -> None:
    """Route each operation, and a 405 for any other method on its path."""
    by_path: dict[str, list[Operation]] = {}
    for op in operations:
        by_path.setdefault(op.path, []).append(op)
    for path, ops in by_path.items():
        resource = app.router.add_resource(path)
        for op in ops:
            resource.add_route(op.method, op.handler)
        resource.add_route("*", method_not_allowed)

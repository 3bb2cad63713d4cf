"""The scheduling API's OpenAPI document: one source with the routes and the handlers' types,
and schemathesis fuzzing the live server against it (no 5xx, answers match the document)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import msgspec

from consilium.node import create_app
from signaling import meetings as m
from signaling.devidp import DevelopmentIdP
from signaling.http.routes.meetings import OPERATIONS, api_document
from tests.fixtures.servers import RunningNode, node_settings

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def _served_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path) of every route of the app under `/api/v1` (the 405 fall-backs aside)."""
    app = create_app(node_settings(tmp_path / "data"))
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/v1/") or path == "/api/v1":
            if route.method != "*":
                routes.add((route.method, path))
    return routes


def test_every_api_route_is_documented_and_every_documented_route_is_served(
    tmp_path: Path,
) -> None:
    document = api_document()
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert documented == _served_routes(tmp_path)
    assert len(documented) == len(OPERATIONS)


def test_the_document_is_openapi_3_1_built_from_the_handlers_own_types() -> None:
    document = api_document()
    assert document["openapi"] == "3.1.0"
    assert document["security"] == [{"bearer": []}]
    _, expected = msgspec.json.schema_components(
        [m.MeetingRequest, m.Meeting], ref_template="#/components/schemas/{name}"
    )
    schemas = document["components"]["schemas"]
    assert schemas["MeetingRequest"] == expected["MeetingRequest"]
    assert schemas["Meeting"] == expected["Meeting"]
    create = document["paths"]["/api/v1/meetings"]["post"]
    assert set(create["responses"]) >= {"200", "201", "400", "401", "403", "409", "429"}
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MeetingRequest"
    }
    # Every error answer is the error body, as the middleware writes it.
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    # The example booking is itself a valid request.
    example = create["requestBody"]["content"]["application/json"]["example"]
    msgspec.convert(example, m.MeetingRequest)


async def test_the_document_is_served_without_a_token(dev_node: RunningNode) -> None:
    http = await dev_node.session()
    async with http.get(dev_node.url + "/api/openapi.json") as r:
        assert r.status == 200
        assert await r.json() == json.loads(json.dumps(api_document()))


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
    serve_process: Any, tmp_path: Path
) -> None:
    """Every schemathesis check but `positive_data_acceptance`: a booking in the past, or
    ending before it starts, is valid JSON Schema and rightly refused with 400 (rules a schema
    cannot state; docs/operations.md says so)."""
    data = tmp_path / "data"
    serve = serve_process(data_dir=data)
    idp = DevelopmentIdP.load_or_create(data)
    token = idp.mint(sub="his-scheduler", role="scheduler", amr=[], ttl_s=3600)
    with urllib.request.urlopen(serve.url + "/api/openapi.json", timeout=5) as r:
        assert r.status == 200
    result = subprocess.run(
        [str(SCHEMATHESIS), "run", serve.url + "/api/openapi.json",
         "--header", f"Authorization: Bearer {token}",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "25", "--workers", "1", "--request-timeout", "10",
         "--suppress-health-check", "too_slow"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    assert "passed" in report and "failures" not in report.split("SUMMARY")[-1].lower()
    # The server kept serving throughout.
    with urllib.request.urlopen(serve.url + "/healthz", timeout=5) as r:
        assert r.status == 200

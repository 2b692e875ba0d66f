"""The committed OpenAPI document (sdk/v1/openapi.json) is valid OpenAPI 3.1 and covers
every RunService RPC that has a google.api.http annotation."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from openapi_spec_validator import validate

from longline.v1 import runs_pb2
from tests.conftest import ROOT

NOT_RPCS = {"GetOpenApi", "GetHealth"}
PROBLEM = {"$ref": "#/components/schemas/Problem"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "sdk" / "v1" / "openapi.json").read_text())
    return loaded


def _annotated() -> dict[str, tuple[str, str]]:
    """RPC name -> (OpenAPI path, HTTP method), from the stubs' own descriptor."""
    found = {}
    for method in runs_pb2.DESCRIPTOR.services_by_name["RunService"].methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        template = rule.custom.path if verb == "custom" else getattr(rule, verb)
        verb = rule.custom.kind.lower() if verb == "custom" else verb
        found[method.name] = (re.sub(r"\{([^}=]+)=[^}]*\}", r"{\1}", template), verb)
    return found


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for verb, operation in item.items():
            yield path, verb, operation


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_annotated_rpc_has_its_path_and_method(document: dict[str, Any]) -> None:
    annotated = _annotated()
    assert "GetRun" in annotated and "RunWorkflow" not in annotated
    for name, (path, verb) in annotated.items():
        operation = document["paths"].get(path, {}).get(verb)
        assert operation is not None, f"{name}: {verb.upper()} {path} is not in openapi.json"
        assert operation["operationId"] == name
    ids = {operation["operationId"] for _, _, operation in _operations(document)}
    assert ids == set(annotated) | NOT_RPCS, "an operation that is neither an RPC nor the face's"


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    refs = set(_refs(document))
    assert "#/components/schemas/longline.v1.Run" in refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]


def test_every_rpc_answers_errors_as_problem_details(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "reason"}
    for path, verb, operation in _operations(document):
        if operation["operationId"] in NOT_RPCS:
            continue
        default = operation["responses"].get("default", {})
        schema = default.get("content", {}).get("application/problem+json", {}).get("schema")
        assert schema == PROBLEM, f"{verb.upper()} {path} has no problem-details default"


def test_schemas_follow_the_proto3_json_mapping(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    run = schemas["longline.v1.Run"]["properties"]
    assert run["runId"] == {"type": "string"}
    assert run["createTime"] == {"type": "string", "format": "date-time"}
    assert run["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert "RUN_STATUS_WAITING" in run["status"]["enum"]
    span = schemas["longline.v1.TraceSpan"]["properties"]
    assert span["inputTokens"]["type"] == "string"
    assert span["inputTokens"]["format"] == "int64"
    assert span["attempt"]["type"] == "integer"


def test_the_face_adds_what_transcoders_do_not_know(document: dict[str, Any]) -> None:
    start = document["paths"]["/v1/workflows/{workflow}/runs"]["post"]
    headers = {p["name"] for p in start["parameters"] if p["in"] == "header"}
    assert {"Idempotency-Key", "Prefer"} <= headers
    assert {"200", "202"} <= set(start["responses"])
    stream = document["paths"]["/v1/runs/{run_id}/events"]["get"]
    assert {"text/event-stream", "application/x-ndjson"} <= set(
        stream["responses"]["200"]["content"]
    )
    assert "204" in stream["responses"]
    query = {p["name"] for p in stream["parameters"] if p["in"] == "query"}
    assert {"after_event_id", "after", "access_token"} <= query


def test_the_vendored_google_api_protos_are_the_installed_packages_copies() -> None:
    """protos/google/api is copied from googleapis-common-protos (buf cannot fetch it
    offline); the runtime imports that package's annotations_pb2, so the two must agree."""
    import google.api.annotations_pb2 as installed

    source = Path(installed.__file__).parent
    vendored = Path(__file__).parents[2] / "protos" / "google" / "api"
    for name in ("annotations.proto", "http.proto"):
        assert (vendored / name).read_text() == (source / name).read_text(), (
            f"protos/google/api/{name} differs from googleapis-common-protos' copy: copy it again"
        )

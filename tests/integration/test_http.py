"""The HTTP face over real HTTP (aiohttp's client) against a real control plane and worker:
REST routes, Server-Sent Events that resume, NDJSON, waits, idempotency keys, problem+json,
auth, tenants, run tokens, limits and CORS."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
import redis.asyncio as aioredis

import longline
from longline.control_plane import ControlPlane, ControlPlaneSettings
from tests.conftest import eventually
from tests.integration.conftest import Stack
from tests.integration.test_auth import _announce, secret, tokens_toml

SECRET = "a-run-token-secret-of-at-least-32-bytes!"
TERMINAL = {"EVENT_TYPE_RUN_SUCCEEDED", "EVENT_TYPE_RUN_FAILED", "EVENT_TYPE_RUN_CANCELLED"}


def _open_plane(redis_url: str, **settings: Any) -> ControlPlaneSettings:
    """A control plane's settings on free ports, gRPC and HTTP, with authentication off
    unless `settings` give tokens."""
    auth_off = not (settings.get("tokens_file") or settings.get("tokens"))
    return ControlPlaneSettings(
        **{
            "redis_url": redis_url,
            "listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "insecure_no_auth": auth_off,
            **settings,
        }
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


DOCUMENT = json.loads((Path(__file__).parents[2] / "sdk" / "v1" / "openapi.json").read_text())


async def _problem(response: aiohttp.ClientResponse) -> tuple[int, str]:
    """The status and reason of a problem+json answer (asserting it is one, as the OpenAPI
    document describes it)."""
    assert response.content_type == "application/problem+json", await response.text()
    body = await response.json(content_type=None)
    _validator(DOCUMENT, {"$ref": "#/components/schemas/Problem"}).validate(body)
    assert body["status"] == response.status and body["detail"], body
    assert body["type"] == f"urn:longline:error:{body['reason']}"
    return response.status, body["reason"]


async def _sse(response: aiohttp.ClientResponse, most: int | None = None) -> list[dict[str, str]]:
    """The events of an SSE body (id, event, data), up to `most`; comments are skipped."""
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    events: list[dict[str, str]] = []
    block: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in block:
                events.append(block)
                if most is not None and len(events) >= most:
                    break
            block = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            block[field] = value
    return events


async def _start(
    http: aiohttp.ClientSession, base: str, workflow: str, body: Any, **kw: Any
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with http.post(f"{base}/v1/workflows/{workflow}/runs", data=json.dumps(body), **kw) as r:
        return r.status, await r.json(content_type=None), r


async def test_a_run_started_and_followed_over_sse_resumes_exactly_after_a_drop(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, body, response = await _start(http, stack.http, "chatty", {"chunks": 40, "delay": 0.02})
    assert status == 202
    run = body["run"]
    assert body["created"] is True and run["status"] in ("RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING")
    assert response.headers["Location"] == f"/v1/runs/{run['runId']}"
    url = f"{stack.http}/v1/runs/{run['runId']}/events"

    async with http.get(url) as r:  # dropped after ten events
        first = await _sse(r, most=10)
    async with http.get(url, headers={"Last-Event-ID": first[-1]["id"]}) as r:
        rest = await _sse(r)
    seen = first + rest
    assert rest[-1]["event"] == "EVENT_TYPE_RUN_SUCCEEDED"
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids))
    # Exactly what the gRPC stream holds, in its order, and each block's id is its event's.
    grpc_ids = [e.event_id async for e in stack.client.get_run(run["runId"]).events()]
    assert ids == grpc_ids
    for block in seen:
        event = json.loads(block["data"])
        assert event["eventId"] == block["id"] and event["type"] == block["event"]
    assert [
        json.loads(b["data"])["message"] for b in seen if b["event"] == "EVENT_TYPE_OUTPUT"
    ] == [f"chunk {i}\n" for i in range(40)]

    # After the end, EventSource's reconnect (with the terminal id) is told to stop: 204.
    async with http.get(url, headers={"Last-Event-ID": ids[-1]}) as r:
        assert r.status == 204
    # ?after= resumes too; the header wins over it (EventSource keeps the first URL).
    async with http.get(f"{url}?after={ids[4]}") as r:
        assert [e["id"] for e in await _sse(r)] == ids[5:]
    async with http.get(f"{url}?after={ids[0]}", headers={"Last-Event-ID": ids[-2]}) as r:
        assert [e["id"] for e in await _sse(r)] == ids[-1:]
    # NDJSON for other clients: one RunEvent per line, the same events.
    async with http.get(url, headers={"Accept": "application/x-ndjson"}) as r:
        assert r.content_type == "application/x-ndjson"
        lines = [json.loads(x) for x in (await r.text()).splitlines() if x.strip()]
    assert [e["eventId"] for e in lines] == ids


async def test_a_quiet_stream_gets_keep_alive_comments(
    redis_url: str, http: aiohttp.ClientSession
) -> None:
    settings = _open_plane(redis_url, http_keep_alive=0.2)
    await _announce(redis_url, "echo")
    async with ControlPlane(settings) as cp:  # no worker: the run stays QUEUED, silent
        base = f"http://127.0.0.1:{cp.http_port}"
        status, body, _ = await _start(http, base, "echo", {})
        assert status == 202
        async with http.get(f"{base}/v1/runs/{body['run']['runId']}/events") as r:
            lines: list[str] = []
            async for raw in r.content:
                lines.append(raw.decode())
                if lines.count(": keep-alive\n") >= 2:
                    break
        assert lines[0] == "retry: 1000\n"
        assert any(line.startswith("event: EVENT_TYPE_RUN_QUEUED") for line in lines)


async def test_prefer_wait_answers_200_with_the_ended_run_or_202_as_it_is(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    status, body, r = await _start(
        http, stack.http, "echo", {"hello": 1}, headers={"Prefer": "wait=30"}
    )
    assert status == 200 and r.headers["Preference-Applied"] == "wait=30"
    assert body["run"]["status"] == "RUN_STATUS_SUCCEEDED"
    assert json.loads(body["run"]["resultJson"]) == {"hello": 1}  # as written: 1, not 1.0

    status, body, r = await _start(
        http, stack.http, "slow", {"steps": 200, "delay": 0.05}, params={"wait": "1"}
    )
    assert status == 202 and r.headers["Preference-Applied"] == "wait=1"
    assert body["run"]["status"] == "RUN_STATUS_RUNNING"
    async with http.post(f"{stack.http}/v1/runs/{body['run']['runId']}:cancel", json={}) as c:
        assert c.status == 200
        assert (await c.json())["run"]["status"] == "RUN_STATUS_CANCELLED"

    # Idempotency-Key: the second start returns the first run.
    key = {"Idempotency-Key": "order-17"}
    s1, b1, _ = await _start(http, stack.http, "echo", {"n": 1}, headers=key)
    s2, b2, _ = await _start(http, stack.http, "echo", {"n": 2}, headers=key)
    assert b1["created"] is True and b2["created"] is False
    assert b1["run"]["runId"] == b2["run"]["runId"]
    assert {s1, s2} <= {200, 202}


async def test_an_input_is_sent_over_http_and_checked_against_its_schema(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    _, body, _ = await _start(http, stack.http, "approval", {})
    run_id = body["run"]["runId"]
    handle = stack.client.get_run(run_id)

    async def waiting() -> bool:
        return (await handle.describe()).status is longline.RunStatus.WAITING

    await eventually(waiting, what="the run to ask for its input")
    url = f"{stack.http}/v1/runs/{run_id}/inputs/approval"
    async with http.post(url, json={"approved": "yes"}) as r:
        assert await _problem(r) == (400, "INPUT_DOES_NOT_MATCH_SCHEMA")
        assert "approved" in (await r.json(content_type=None))["detail"]
    async with http.post(url, json={"approved": True, "note": "ship it"}) as r:
        assert r.status == 200
        assert (await r.json())["duplicate"] is False
    assert await handle.result() == {"answer": {"approved": True, "note": "ship it"}}


async def test_bad_requests_get_problem_json_with_the_reason_and_the_server_goes_on(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    base = stack.http
    _, done, _ = await _start(http, base, "echo", {}, headers={"Prefer": "wait=30"})
    ended = done["run"]["runId"]
    big = json.dumps({"x": "y" * (64 * 1024)})
    cases: list[tuple[str, str, dict[str, Any], tuple[int, str]]] = [
        ("POST", "/v1/workflows/echo/runs", {"data": "{not json"}, (400, "INPUT_NOT_JSON")),
        ("POST", "/v1/workflows/echo/runs", {"data": "NaN"}, (400, "INPUT_NOT_JSON")),
        ("POST", "/v1/workflows/echo/runs", {"data": b"\xff\xfe"}, (400, "INVALID_BODY")),
        (
            "POST",
            "/v1/workflows/echo/runs",
            {"data": b"not gzip", "headers": {"Content-Encoding": "gzip"}},
            (400, "INVALID_BODY"),
        ),
        ("GET", "/v1/runs?page_size=1&pageSize=2", {}, (400, "INVALID_PARAMETER")),
        ("GET", "/v1/runs?status=%D9%A3", {}, (400, "INVALID_PARAMETER")),
        ("POST", "/v1/workflows/echo/runs", {"data": big}, (429, "INPUT_TOO_LARGE")),
        ("POST", "/v1/workflows/echo/runs", {"data": big * 3}, (429, "INPUT_TOO_LARGE")),
        ("POST", "/v1/workflows/nope/runs", {"data": "{}"}, (404, "WORKFLOW_NOT_FOUND")),
        ("POST", "/v1/workflows/echo/runs?wait=soon", {"data": "{}"}, (400, "INVALID_WAIT")),
        (
            "POST",
            "/v1/workflows/echo/runs?labels=a",
            {"data": "{}"},
            (400, "UNKNOWN_QUERY_PARAMETER"),
        ),
        ("GET", "/v1/runs/nope", {}, (404, "RUN_NOT_FOUND")),
        ("GET", "/v1/runs?status=BOGUS", {}, (400, "INVALID_PARAMETER")),
        ("GET", "/v1/runs?page_size=-1", {}, (400, "INVALID_PAGE_SIZE")),
        ("GET", "/v1/runs?page_size=1&page_size=2", {}, (400, "INVALID_PARAMETER")),
        ("GET", "/v1/runs?page_token=garbage", {}, (400, "INVALID_PAGE_TOKEN")),
        ("GET", "/v1/runs?colour=red", {}, (400, "UNKNOWN_QUERY_PARAMETER")),
        ("GET", f"/v1/runs/{ended}/events?after=not-an-id", {}, (400, "INVALID_EVENT_ID")),
        ("GET", "/v1/runs/nope/events", {}, (404, "RUN_NOT_FOUND")),
        ("POST", f"/v1/runs/{ended}:cancel", {"json": {}}, (400, "RUN_ALREADY_ENDED")),
        ("POST", f"/v1/runs/{ended}:cancel", {"data": "[1]"}, (400, "INVALID_BODY")),
        ("POST", f"/v1/runs/{ended}:cancel", {"json": {"colour": 1}}, (400, "INVALID_BODY")),
        ("POST", f"/v1/runs/{ended}/inputs/go", {"data": "{"}, (400, "INPUT_NOT_JSON")),
        ("POST", f"/v1/runs/{ended}/tokens", {"json": {"ttlSeconds": 7200}}, (400, "INVALID_TTL")),
        ("GET", "/v1/nothing", {}, (404, "NO_SUCH_ROUTE")),
        ("DELETE", f"/v1/runs/{ended}", {}, (405, "METHOD_NOT_ALLOWED")),
    ]
    for method, path, kw, expected in cases:
        async with http.request(method, base + path, **kw) as r:
            assert await _problem(r) == expected, (method, path)
    async with http.get(f"{base}/healthz") as r:
        assert r.status == 200 and (await r.json())["status"] == "SERVING"


@pytest.mark.single_redis  # it counts the clients of one Redis server
async def test_sse_watchers_share_the_hub_redis_connections_stay_flat(
    stack: Stack, http: aiohttp.ClientSession, redis_url: str
) -> None:
    _, body, _ = await _start(http, stack.http, "chatty", {"chunks": 30, "delay": 0.1})
    url = f"{stack.http}/v1/runs/{body['run']['runId']}/events"
    redis = aioredis.Redis.from_url(redis_url)
    try:
        before = len(await redis.client_list())
        responses = [await http.get(url) for _ in range(50)]
        try:
            await eventually(lambda: _sync(stack.cp.watchers >= 50), what="50 watchers on the hub")
            during = len(await redis.client_list())
            results = await asyncio.gather(*(_sse(r) for r in responses))
        finally:
            for r in responses:
                r.release()
    finally:
        await redis.aclose()
    assert during <= before + 2, (before, during)  # not one per watcher
    for events in results:
        assert events[-1]["event"] == "EVENT_TYPE_RUN_SUCCEEDED"
        assert [e["id"] for e in events] == [e["id"] for e in results[0]]


async def _sync(value: bool) -> bool:
    return value


@pytest.fixture
async def secured_http(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, str]]:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(["alice", "bob", "worker"]))
    cp = ControlPlane(
        _open_plane(
            redis_url,
            tokens_file=str(path),
            run_token_secret=SECRET,
            http_cors_origin="https://app.example",
            max_queued_per_tenant=3,
            start_rate_per_tenant=0,
            max_streams_per_tenant=2,
        )
    )
    await cp.start()
    await _announce(redis_url, "echo")
    yield cp, f"http://127.0.0.1:{cp.http_port}"
    await cp.shutdown()


def _bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret(name)}"}


async def test_tokens_tenants_run_tokens_and_limits_over_http(
    secured_http: tuple[ControlPlane, str], http: aiohttp.ClientSession
) -> None:
    _, base = secured_http
    start = f"{base}/v1/workflows/echo/runs"
    async with http.post(start, data="{}") as r:
        assert await _problem(r) == (401, "TOKEN_MISSING")
    async with http.post(start, data="{}", headers={"Authorization": "Bearer nope"}) as r:
        assert await _problem(r) == (401, "TOKEN_INVALID")
    async with http.post(start, data="{}", headers=_bearer("worker")) as r:
        assert await _problem(r) == (403, "WRONG_TOKEN_KIND")
    async with http.post(start, data='{"n": 1}', headers=_bearer("alice")) as r:
        assert r.status == 202
        run_id = (await r.json())["run"]["runId"]
    async with http.post(start, data='{"n": 2}', headers=_bearer("alice")) as r:
        other_run = (await r.json())["run"]["runId"]
    async with http.get(f"{base}/v1/runs/{run_id}", headers=_bearer("bob")) as r:
        assert await _problem(r) == (404, "RUN_NOT_FOUND")  # another tenant's run
    async with http.get(f"{base}/v1/runs", headers=_bearer("bob")) as r:
        assert (await r.json())["runs"] == []

    # A run token reads its run, by header or query, and does nothing else.
    async with http.post(f"{base}/v1/runs/{run_id}/tokens", json={}, headers=_bearer("bob")) as r:
        assert await _problem(r) == (404, "RUN_NOT_FOUND")
    async with http.post(
        f"{base}/v1/runs/{run_id}/tokens", json={"ttlSeconds": 60}, headers=_bearer("alice")
    ) as r:
        assert r.status == 200
        minted = await r.json()
    token = minted["token"]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="longline:run-read")
    assert claims["run"] == run_id and claims["ten"] == "tenant-a" and claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 60
    async with http.get(f"{base}/v1/runs/{run_id}", params={"access_token": token}) as r:
        assert r.status == 200 and (await r.json())["run"]["runId"] == run_id
    run_reader = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{base}/v1/runs/{run_id}/trace", headers=run_reader) as r:
        assert r.status == 200
    async with http.get(
        f"{base}/v1/runs/{run_id}/events", params={"access_token": token}, timeout=5
    ) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
    async with http.get(f"{base}/v1/runs/{other_run}", headers=run_reader) as r:
        assert await _problem(r) == (403, "RUN_TOKEN_OTHER_RUN")
    for method, path in (
        ("GET", "/v1/runs"),
        ("POST", f"/v1/runs/{run_id}:cancel"),
        ("POST", f"/v1/runs/{run_id}/tokens"),
        ("POST", "/v1/workflows/echo/runs"),
    ):
        async with http.request(method, base + path, headers=run_reader, data="{}") as r:
            assert await _problem(r) == (403, "RUN_TOKEN_READ_ONLY"), path
    async with http.get(f"{base}/v1/runs/{run_id}", params={"access_token": secret("alice")}) as r:
        assert await _problem(r) == (401, "ACCESS_TOKEN_NOT_A_RUN_TOKEN")
    forged = jwt.encode(
        {**claims, "run": other_run}, "another-secret-of-32-bytes-or-more!!", "HS256"
    )
    async with http.get(f"{base}/v1/runs/{other_run}", params={"access_token": forged}) as r:
        assert await _problem(r) == (401, "TOKEN_INVALID")
    expired = jwt.encode({**claims, "iat": 1, "exp": 2}, SECRET, "HS256")
    async with http.get(f"{base}/v1/runs/{run_id}", params={"access_token": expired}) as r:
        assert await _problem(r) == (401, "TOKEN_EXPIRED")

    # The tenant's limits: 3 queued runs (no worker runs them), 2 open streams.
    async with http.post(start, data="{}", headers=_bearer("alice")) as r:
        assert r.status == 202
    async with http.post(start, data="{}", headers=_bearer("alice")) as r:
        assert await _problem(r) == (429, "TOO_MANY_QUEUED_RUNS")
        assert int(r.headers["Retry-After"]) >= 1
    streams = [
        await http.get(f"{base}/v1/runs/{run_id}/events", headers=_bearer("alice"))
        for _ in range(2)
    ]
    try:
        for s in streams:
            assert s.status == 200
        ndjson = {**_bearer("alice"), "Accept": "application/x-ndjson"}
        async with http.get(f"{base}/v1/runs/{run_id}/events", headers=ndjson) as r:
            assert await _problem(r) == (429, "TOO_MANY_STREAMS")
        # EventSource would give up for good on a 429: it is told to come back instead.
        async with http.get(f"{base}/v1/runs/{run_id}/events", headers=_bearer("alice")) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            assert await r.text() == "retry: 1000\n: TOO_MANY_STREAMS: come back later\n\n"
        async with http.get(f"{base}/v1/runs/{run_id}/events", headers=_bearer("bob")) as r:
            assert await _problem(r) == (404, "RUN_NOT_FOUND")
    finally:
        for s in streams:
            s.release()


async def test_cors_answers_only_the_listed_origins(
    secured_http: tuple[ControlPlane, str], http: aiohttp.ClientSession
) -> None:
    _, base = secured_http
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, last-event-id",
    }
    async with http.options(
        f"{base}/v1/runs/x/events", headers={**preflight, "Origin": "https://app.example"}
    ) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        allowed = r.headers["Access-Control-Allow-Headers"].lower()
        for header in ("authorization", "last-event-id", "traceparent", "prefer"):
            assert header in allowed
    async with http.options(
        f"{base}/v1/runs/x/events", headers={**preflight, "Origin": "https://evil.example"}
    ) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    async with http.get(
        f"{base}/v1/runs", headers={**_bearer("alice"), "Origin": "https://app.example"}
    ) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    async with http.get(
        f"{base}/v1/runs", headers={**_bearer("alice"), "Origin": "https://evil.example"}
    ) as r:
        assert await _problem(r) == (403, "ORIGIN_NOT_ALLOWED")
        assert "Access-Control-Allow-Origin" not in r.headers
    # The API's own origin (a page it serves) needs no listing.
    async with http.get(f"{base}/v1/runs", headers={**_bearer("alice"), "Origin": base}) as r:
        assert r.status == 200
    behind_tls = base.replace("http://", "https://")  # a proxy ended TLS in front of it
    async with http.get(f"{base}/v1/runs", headers={**_bearer("alice"), "Origin": behind_tls}) as r:
        assert r.status == 200


async def test_with_auth_off_a_page_of_another_site_cannot_start_or_cancel_runs(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # A form POST: no preflight, so CORS alone would let it through (and only hide the answer).
    form = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    async with http.post(f"{stack.http}/v1/workflows/echo/runs", data="{}", headers=form) as r:
        assert await _problem(r) == (403, "ORIGIN_NOT_ALLOWED")
    runs, _ = await stack.client.list_runs()
    assert runs == []
    async with http.post(f"{stack.http}/v1/workflows/echo/runs", data="{}") as r:
        assert r.status == 202  # curl and other programs send no Origin
    # DNS rebinding: a page whose own name resolves to 127.0.0.1 is "same-origin"; with
    # authentication off on a loopback address only loopback names are served.
    port = stack.http.rsplit(":", 1)[1]
    rebound = {"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"}
    async with http.post(f"{stack.http}/v1/workflows/echo/runs", data="{}", headers=rebound) as r:
        assert await _problem(r) == (403, "HOST_NOT_ALLOWED")
    assert len((await stack.client.list_runs())[0]) == 1
    async with http.get(f"{stack.http}/v1/runs", headers={"Host": f"localhost:{port}"}) as r:
        assert r.status == 200


async def test_run_tokens_are_refused_without_a_shared_secret(
    redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(["alice"]))
    settings = _open_plane(redis_url, tokens_file=str(path))
    await _announce(redis_url, "echo")
    async with ControlPlane(settings) as cp:
        base = f"http://127.0.0.1:{cp.http_port}"
        async with http.post(
            f"{base}/v1/workflows/echo/runs", data="{}", headers=_bearer("alice")
        ) as r:
            run_id = (await r.json())["run"]["runId"]
        async with http.post(
            f"{base}/v1/runs/{run_id}/tokens", json={}, headers=_bearer("alice")
        ) as r:
            assert await _problem(r) == (400, "RUN_TOKENS_OFF")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        ControlPlaneSettings(redis_url=redis_url, run_token_secret="short")


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator of `schema`, whose $refs point into the document."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator({"components": document["components"], "allOf": [schema]})


async def test_every_path_of_the_openapi_document_answers_as_documented(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    from openapi_spec_validator import validate

    async with http.get(f"{stack.http}/openapi.json") as r:
        assert r.status == 200
        document = await r.json()
    validate(document)
    assert document == DOCUMENT

    _, done, _ = await _start(http, stack.http, "echo", {"a": 1}, headers={"Prefer": "wait=30"})
    ended = done["run"]["runId"]
    _, waiting, _ = await _start(http, stack.http, "approval", {})
    asking = waiting["run"]["runId"]
    _, running, _ = await _start(http, stack.http, "slow", {"steps": 400, "delay": 0.05})
    live = running["run"]["runId"]
    values = {"run_id": ended, "workflow": "echo", "name": "approval"}
    # One good call per operation: (path values, query, headers, body).
    calls: dict[str, tuple[dict[str, str], dict[str, str], dict[str, str], Any]] = {
        "StartRun": ({}, {"wait": "20"}, {"Idempotency-Key": "doc-1"}, {"b": 2}),
        "GetRun": ({}, {}, {}, None),
        "ListRuns": ({}, {"status": "SUCCEEDED", "page_size": "2"}, {}, None),
        "CancelRun": ({"run_id": live}, {}, {}, {"reason": "the document says so"}),
        "StreamRun": ({}, {}, {}, None),
        "ListWorkflows": ({}, {"pageSize": "5"}, {}, None),
        "GetRunTrace": ({}, {}, {}, None),
        "SendInput": ({"run_id": asking}, {}, {}, {"approved": True}),
        "CreateRunToken": ({}, {}, {}, {"ttlSeconds": 60}),
        "GetOpenApi": ({}, {}, {}, None),
        "GetHealth": ({}, {}, {}, None),
    }
    seen = set()
    handle = stack.client.get_run(asking)

    async def is_waiting() -> bool:
        return (await handle.describe()).status is longline.RunStatus.WAITING

    await eventually(is_waiting, what="the approval run to wait")
    for template, operations in document["paths"].items():
        for verb, operation in operations.items():
            name = operation["operationId"]
            seen.add(name)
            path_values, query, headers, body = calls[name]
            path = template
            for key in re.findall(r"\{([a-z_]+)\}", template):
                path = path.replace("{" + key + "}", path_values.get(key, values[key]))
            documented = {p["name"] for p in operation.get("parameters", [])}
            assert set(query) <= documented | {"pageSize"}, (name, query)
            assert set(headers) <= documented, (name, headers)
            kw: dict[str, Any] = {"params": query, "headers": headers}
            if body is not None:
                kw["data"] = json.dumps(body)
            async with http.request(verb.upper(), stack.http + path, **kw) as r:
                answer = operation["responses"].get(str(r.status))
                assert answer is not None, (name, r.status, await r.text())
                content = answer.get("content", {})
                assert r.content_type in content, (name, r.content_type)
                schema = content[r.content_type]["schema"]
                if r.content_type == "text/event-stream":
                    events = await _sse(r)
                    assert events and events[-1]["event"] == "EVENT_TYPE_RUN_SUCCEEDED"
                    event_schema = _validator(
                        document, {"$ref": "#/components/schemas/longline.v1.RunEvent"}
                    )
                    for block in events:
                        event_schema.validate(json.loads(block["data"]))
                else:
                    _validator(document, schema).validate(await r.json(content_type=None))
    assert seen == set(calls)
    assert (await handle.result())["answer"] == {"approved": True}


async def test_a_run_token_from_the_sdk_reads_its_run_over_grpc_and_http(
    secured_http: tuple[ControlPlane, str], http: aiohttp.ClientSession
) -> None:
    cp, base = secured_http
    target = f"127.0.0.1:{cp.port}"
    async with longline.Client(target, token=secret("alice")) as alice:
        handle = await alice.start("echo", {"n": 1})
        other = await alice.start("echo", {"n": 2})
        token, expires = await handle.read_token(ttl=120)
        assert 100 < (expires - datetime.now(UTC)).total_seconds() <= 125
    async with longline.Client(target, token=token) as reader:
        run = await reader.get_run(handle.run_id).describe()
        assert run.run_id == handle.run_id and run.status is longline.RunStatus.QUEUED
        with pytest.raises(longline.PermissionDenied, match="reads run"):
            await reader.get_run(other.run_id).describe()
        with pytest.raises(longline.PermissionDenied, match="may only read its run"):
            await reader.list_runs()
        with pytest.raises(longline.PermissionDenied, match="may only read its run"):
            await reader.get_run(handle.run_id).cancel()
    async with http.get(f"{base}/v1/runs/{handle.run_id}", params={"access_token": token}) as r:
        assert r.status == 200


async def test_a_stopping_replica_ends_its_event_streams_at_once(
    redis_url: str, http: aiohttp.ClientSession
) -> None:
    settings = _open_plane(
        redis_url,
        shutdown_grace=3600,  # held to it, the test would time out
    )
    await _announce(redis_url, "echo")
    cp = ControlPlane(settings)
    await cp.start()
    base = f"http://127.0.0.1:{cp.http_port}"
    _, body, _ = await _start(http, base, "echo", {})  # no worker: it stays QUEUED
    async with http.get(f"{base}/v1/runs/{body['run']['runId']}/events") as r:
        events = await _sse(r, most=1)
        assert events[0]["event"] == "EVENT_TYPE_RUN_QUEUED"
        await cp.shutdown()
        # The body ends (EventSource then resumes elsewhere with Last-Event-ID) without
        # waiting out the grace: a stream with nothing to send would otherwise hold the stop.
        assert await r.content.read() == b""


async def test_with_redis_away_an_event_stream_asks_to_come_back_and_ndjson_gets_503(
    http: aiohttp.ClientSession,
) -> None:
    from longline._embedded import EmbeddedRedis

    redis = EmbeddedRedis().start()
    try:
        settings = _open_plane(redis.url)
        async with ControlPlane(settings) as cp:
            redis.stop()
            url = f"http://127.0.0.1:{cp.http_port}/v1/runs/r1/events"
            # 503 would make EventSource give up for good: it is told to retry in a second.
            async with http.get(url) as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                assert (await r.text()).startswith("retry: 1000\n")
            async with http.get(url, headers={"Accept": "application/x-ndjson"}) as r:
                assert await _problem(r) == (503, "BACKEND_UNAVAILABLE")
                assert r.headers["Retry-After"] == "1"
            async with http.get(f"http://127.0.0.1:{cp.http_port}/v1/runs/r1") as r:
                assert await _problem(r) == (503, "BACKEND_UNAVAILABLE")
    finally:
        redis.stop()


async def test_over_grpc_the_input_comes_as_text_or_as_a_value_not_both(stack: Stack) -> None:
    from google.protobuf import struct_pb2

    from longline.v1 import runs_pb2

    value = struct_pb2.Value()
    value.struct_value.update({"n": 1})
    started = await stack.stub.StartRun(runs_pb2.StartRunRequest(workflow="echo", input=value))
    assert json.loads(started.run.input_json) == {"n": 1.0}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.StartRun(
            runs_pb2.StartRunRequest(workflow="echo", input_json='{"n": 1}', input=value)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not both" in (caught.value.details() or "")


@pytest.fixture
async def quiet_plane(redis_url: str) -> AsyncIterator[tuple[ControlPlane, str]]:
    """A control plane with no worker (runs stay QUEUED), auth off, one stream per tenant,
    and a grace long enough that only what ends streams and waits ends them."""
    settings = _open_plane(redis_url, max_streams_per_tenant=2, shutdown_grace=3600)
    await _announce(redis_url, "echo")
    cp = ControlPlane(settings)
    await cp.start()
    yield cp, f"http://127.0.0.1:{cp.http_port}"
    await cp.shutdown()


async def test_a_wait_that_cannot_be_kept_still_answers_with_the_run_it_started(
    quiet_plane: tuple[ControlPlane, str], http: aiohttp.ClientSession
) -> None:
    cp, base = quiet_plane
    _, first, _ = await _start(http, base, "echo", {})
    url = f"{base}/v1/runs/{first['run']['runId']}/events"
    streams = [await http.get(url) for _ in range(2)]  # the tenant's two streams
    try:
        status, body, r = await _start(http, base, "echo", {"n": 2}, headers={"Prefer": "wait=5"})
        # Not a 429 after the run was made (a client would start it again): the run, as it is.
        assert status == 202 and "Preference-Applied" not in r.headers
        async with longline.Client(f"127.0.0.1:{cp.port}") as client:
            runs, _ = await client.list_runs()
        assert len(runs) == 2 and body["run"]["runId"] in [x.run_id for x in runs]
    finally:
        for stream in streams:
            stream.release()

    async def released() -> bool:
        return cp.watchers == 0

    await eventually(released, what="the streams to be let go")
    # A replica that stops answers a waiting start at once, with the run as it is.
    waiting = asyncio.create_task(
        _start(http, base, "echo", {"n": 3}, headers={"Prefer": "wait=300"})
    )

    async def held() -> bool:
        return cp.watchers >= 1

    await eventually(held, what="the start to wait")
    await cp.shutdown()
    status, body, r = await waiting
    assert status == 202 and body["run"]["status"] == "RUN_STATUS_QUEUED"


async def test_concurrent_streams_past_the_limit_are_told_to_come_back_never_left_empty(
    quiet_plane: tuple[ControlPlane, str], http: aiohttp.ClientSession
) -> None:
    _, base = quiet_plane
    _, body, _ = await _start(http, base, "echo", {})
    url = f"{base}/v1/runs/{body['run']['runId']}/events"
    responses = await asyncio.gather(*(http.get(url) for _ in range(20)))
    try:
        kinds = []
        for r in responses:
            assert r.status == 200
            first = await r.content.readuntil(b"\n\n")
            second = await r.content.readuntil(b"\n\n")
            if b"come back later" in first + second:
                kinds.append("come back")
                assert await r.content.read() == b""
            else:
                assert b"event: EVENT_TYPE_RUN_QUEUED" in second
                kinds.append("stream")
    finally:
        for r in responses:
            r.release()
    assert sorted(kinds) == ["come back"] * 18 + ["stream"] * 2


@pytest.mark.single_redis  # it freezes a Redis of its own
async def test_a_frozen_redis_gets_a_503_in_time_not_a_hung_request(
    http: aiohttp.ClientSession,
) -> None:
    import os
    import signal

    from longline._embedded import EmbeddedRedis

    redis = EmbeddedRedis().start()
    try:
        settings = _open_plane(redis.url, http_request_timeout=1.0)
        async with ControlPlane(settings) as cp:
            assert redis._proc is not None
            pid = redis._proc.pid
            os.kill(pid, signal.SIGSTOP)  # its connections stay open; nothing answers
            try:
                base = f"http://127.0.0.1:{cp.http_port}"
                async with http.get(f"{base}/v1/runs/r1") as r:
                    assert await _problem(r) == (503, "BACKEND_TIMEOUT")
                async with http.get(f"{base}/v1/runs/r1/events") as r:
                    assert "come back later" in await r.text()
                status, body, _ = await _start(http, base, "echo", {})
                assert status == 503 and body["reason"] == "BACKEND_TIMEOUT"
            finally:
                os.kill(pid, signal.SIGCONT)
    finally:
        redis.stop()


async def test_the_web_ui_is_served_from_the_package_with_a_strict_policy(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.http}/", allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/ui/"
    async with http.get(f"{stack.http}/ui/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert '<script type="module" src="/ui/assets/app.js">' in await r.text()
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        async with http.get(f"{stack.http}/ui/assets/{name}") as r:
            assert r.status == 200 and r.content_type == kind
    for name in ("nope.js", ".hidden.js", "index.py", "%2e%2e%2fapp.js"):
        async with http.get(f"{stack.http}/ui/assets/{name}") as r:
            assert await _problem(r) == (404, "NO_SUCH_ROUTE"), name


async def test_runs_are_listed_from_a_time_back(stack: Stack, http: aiohttp.ClientSession) -> None:
    _, older, _ = await _start(http, stack.http, "echo", {"n": 1})
    await asyncio.sleep(0.01)  # the next run is made in a later millisecond
    _, newer, _ = await _start(http, stack.http, "echo", {"n": 2})
    cut = newer["run"]["createTime"]
    async with http.get(f"{stack.http}/v1/runs", params={"created_before": cut}) as r:
        listed = [run["runId"] for run in (await r.json())["runs"]]
    assert listed == [older["run"]["runId"]]
    runs, _ = await stack.client.list_runs(created_before=datetime.fromisoformat(cut))
    assert [run.run_id for run in runs] == listed  # the same, from the SDK
    async with http.get(f"{stack.http}/v1/runs", params={"createdBefore": "yesterday"}) as r:
        assert await _problem(r) == (400, "INVALID_PARAMETER")
    async with http.get(
        f"{stack.http}/v1/runs", params={"created_before": "1970-01-01T00:00:00Z"}
    ) as r:
        assert await _problem(r) == (400, "INVALID_CREATED_BEFORE")

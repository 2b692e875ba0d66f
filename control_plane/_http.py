"""The HTTP face: RunService over HTTP/JSON, with resumable Server-Sent Events.

The routes are the `google.api.http` annotations of protos/longline/v1/runs.proto, read
from the descriptors at start-up, so Envoy's or grpc-gateway's transcoding of the same
protos exposes the same API. Bodies and answers follow the proto3 JSON mapping (fields
in lowerCamelCase; snake_case is read too). Each handler calls the same RunServicer
method the gRPC server calls, under the same authentication (`Authenticator.check`), so
tenants, limits and reason codes cannot drift between the faces. Errors are
`application/problem+json` (RFC 9457) carrying the gRPC code's standard HTTP status and
the same reason.

What the annotations cannot say, the face adds (docs/http.md; the OpenAPI document lists
it): `Idempotency-Key` and `Prefer: wait=N` on StartRun; `Last-Event-ID`, `?after=`,
SSE or NDJSON framing and the 204 after the end on the event stream; `?access_token=`
(a run token only: URLs end up in logs) for pages whose EventSource cannot set headers;
CORS for the origins `--http-cors-origin` lists.

The event stream reads from the replica's event hub like StreamRun: no Redis connection
per watcher. It ends after the terminal event; a reconnect from there (EventSource sends
the terminal event's id as Last-Event-ID) is answered 204, which makes EventSource stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import ssl
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.api import annotations_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from longline._store import (
    DomainError,
    InvalidArgumentError,
    StoredEvent,
    UnauthenticatedError,
    parse_event_id,
)
from longline.v1 import runs_pb2

from ._auth import RUN_READER, Authenticator, set_current
from ._errors import Failure, check_request, classify
from ._runs import RunServicer, event_to_proto

log = logging.getLogger("longline.control_plane.http")

SERVICE = runs_pb2.DESCRIPTOR.services_by_name["RunService"]
# The standard mapping (google/rpc/code.proto).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
MAX_WAIT = 300  # seconds a `Prefer: wait=N` may ask for
KEEP_ALIVE = 15.0  # seconds of silence on an event stream before a comment line
RECONNECT_MS = 1000  # the `retry:` an event stream asks EventSource to wait before reconnecting
# Query parameters the face reads itself, per RPC; the rest must be the request's fields.
FACE_QUERY = {
    "StartRun": frozenset({"wait"}),
    "GetRun": frozenset({"access_token"}),
    "GetRunTrace": frozenset({"access_token"}),
    "StreamRun": frozenset({"access_token", "after"}),
}
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Idempotency-Key, Prefer, Last-Event-ID, traceparent, tracestate"
)
# A request with no answer from Redis by then is answered 503 (a frozen Redis keeps its
# connections open; gRPC callers bring deadlines, browsers and curl do not).
REQUEST_TIMEOUT = 30.0  # the default of ControlPlaneSettings.http_request_timeout
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
EXPOSED_HEADERS = "Preference-Applied, Retry-After"
# RFC 7240's wait preference: delta-seconds. Any other value is no preference (ignored).
_PREFER_WAIT = re.compile(r"(?:^|[,;])\s*wait\s*=\s*\"?([0-9]{1,9})\"?\s*(?:$|[,;])", re.I)
_SSE = "text/event-stream"
_NDJSON = "application/x-ndjson"
_JSON_OPTIONS: dict[str, Any] = {"always_print_fields_with_no_presence": True}
_FRAME_BUFFER = 1024 * 1024  # bytes of frames a stream holds for a slow reader
_UI_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
_UI_FILES = ("index.html", "app.js", "app.css")
_UI_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass(frozen=True)
class Route:
    """One annotated RPC: its HTTP method and path template, and where its fields come
    from (the path's variables, the body, the query)."""

    method: MethodDescriptor
    verb: str  # GET | POST | PUT | PATCH | DELETE
    template: str  # as annotated: /v1/runs/{run_id}:cancel
    body: str  # "" (no body), "*" (every field not in the path), or one field's name
    variables: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.method.name)

    @property
    def full_method(self) -> str:
        return f"/{SERVICE.full_name}/{self.method.name}"

    @property
    def aiohttp_path(self) -> str:
        """The template in aiohttp's syntax: a variable stops at '/' (and at ':' when a
        custom verb follows it)."""

        def variable(m: re.Match[str]) -> str:
            name, end = m.group(1), m.end()
            stop = "/:" if self.template[end : end + 1] == ":" else "/"
            return "{" + name + ":[^" + stop + "]+}"

        return re.sub(r"\{([a-z_]+)\}", variable, self.template)


def routes() -> list[Route]:
    """The RunService RPCs that carry a google.api.http annotation, in the proto's order."""
    found = []
    for method in SERVICE.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb not in ("get", "post", "put", "patch", "delete"):
            raise ValueError(f"{method.name}: unsupported google.api.http pattern {verb}")
        template = getattr(rule, verb)
        variables = tuple(re.findall(r"\{([a-z_]+)\}", template))
        found.append(Route(method, verb.upper(), template, rule.body, variables))
    return found


class _Context:
    """What RunServicer reads of a gRPC call's context, for a call made over HTTP."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None


def _hostname(host: str) -> str:
    """The name in a Host header ("127.0.0.1:8080", "[::1]:8080", "localhost")."""
    try:
        return (urlsplit("//" + host).hostname or "").lower()
    except ValueError:
        return ""


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT to listen on is a loopback address."""
    return _hostname(listen.rpartition(":")[0] or "0.0.0.0") in _LOOPBACK or (
        listen.startswith("127.")
    )


def _same_host(origin: str, request: web.Request) -> bool:
    """Whether `origin` is the API's own (a page it serves): the same host and port as the
    request's Host. The scheme is left out: behind a proxy that ends TLS the page's origin
    is https and the request that reaches here is http."""
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False


class _BackendTimeout(DomainError):
    code = "UNAVAILABLE"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"no answer from Redis within {seconds:g} s; retry shortly", "BACKEND_TIMEOUT"
        )
        self.retry_after = 1.0


@contextlib.asynccontextmanager
async def _deadline(seconds: float) -> AsyncIterator[None]:
    """A deadline for what is inside, as a 503 the caller may retry."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise _BackendTimeout(seconds) from None


def _ended(run: runs_pb2.Run) -> bool:
    return run.status in (
        runs_pb2.RUN_STATUS_SUCCEEDED,
        runs_pb2.RUN_STATUS_FAILED,
        runs_pb2.RUN_STATUS_CANCELLED,
    )


def problem(
    request: web.Request,
    failure: Failure | None = None,
    *,
    status: int = 0,
    reason: str = "",
    detail: str = "",
) -> web.Response:
    """An application/problem+json answer (RFC 9457) with the reason code and the gRPC
    code's name; `Retry-After` when the caller should wait."""
    code = ""
    if failure is not None:
        status, reason, detail, code = (
            HTTP_STATUS.get(failure.code, 500),
            failure.reason,
            failure.message,
            failure.code.name,
        )
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Client Closed Request" if status == 499 else "Error"
    body = {
        "type": f"urn:longline:error:{reason}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
        "reason": reason,
    }
    if code:
        body["code"] = code
    headers = {}
    if failure is not None and failure.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(failure.retry_after)))
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/problem+json",
        headers=headers,
    )


def _json(
    message: Message, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(json_format.MessageToDict(message, **_JSON_OPTIONS)),
        content_type="application/json",
        headers=headers,
    )


def event_dict(proto: runs_pb2.RunEvent) -> dict[str, Any]:
    """A RunEvent in the proto3 JSON mapping, every field present: what
    json_format.MessageToDict(proto, always_print_fields_with_no_presence=True) gives, at a
    fifth of its cost (a stream encodes every event; a test holds the two equal)."""
    out: dict[str, Any] = {
        "eventId": proto.event_id,
        "runId": proto.run_id,
        "type": _TYPE_NAMES.get(proto.type, proto.type),
        "attempt": proto.attempt,
        "message": proto.message,
        "dataJson": proto.data_json,
        "component": proto.component,
        "spanId": proto.span_id,
        "parentSpanId": proto.parent_span_id,
    }
    if proto.HasField("time"):
        out["time"] = proto.time.ToJsonString()
    return out


_TYPE_NAMES = {number: name for name, number in runs_pb2.EventType.items()}


def _one_line(proto: runs_pb2.RunEvent) -> str:
    return json.dumps(event_dict(proto), separators=(",", ":"), ensure_ascii=False)


def event_json(run_id: str, event: StoredEvent) -> str:
    """A RunEvent in the proto3 JSON mapping, on one line."""
    return _one_line(event_to_proto(run_id, event))


def ndjson_line(run_id: str, event: StoredEvent) -> bytes:
    """One event as a line of NDJSON."""
    return (event_json(run_id, event) + "\n").encode()


def sse_frame(run_id: str, event: StoredEvent) -> bytes:
    """One event as a Server-Sent Events block: its id, its type's name, the RunEvent."""
    proto = event_to_proto(run_id, event)
    name = _TYPE_NAMES[proto.type]
    return f"id: {event.event_id}\nevent: {name}\ndata: {_one_line(proto)}\n\n".encode()


def _set_scalar(message: Message, field: FieldDescriptor, text: str, where: str) -> None:
    """Set a scalar or enum field from text (a path variable or a query parameter)."""
    kind = field.type
    try:
        if kind == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == _TIMESTAMP:
            try:
                getattr(message, field.name).FromJsonString(text)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"expected an RFC 3339 time such as {_EXAMPLE_TIME}") from exc
            return
        if kind == FieldDescriptor.TYPE_STRING:
            value: Any = text
        elif kind == FieldDescriptor.TYPE_BOOL:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            value = text.lower() in ("true", "1")
        elif kind == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
            by_name = enum.values_by_name.get(text) or enum.values_by_name.get(prefix + text)
            if by_name is not None:
                value = by_name.number
            elif re.fullmatch(r"-?[0-9]{1,10}", text) and int(text) in enum.values_by_number:
                value = int(text)
            else:
                names = ", ".join(v.name.removeprefix(prefix) for v in enum.values[1:])
                raise ValueError(f"expected one of {names}")
        elif kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
            if not re.fullmatch(r"-?[0-9]{1,10}", text) or not -(2**31) <= int(text) < 2**31:
                raise ValueError("expected a 32-bit integer")
            value = int(text)
        else:
            raise ValueError("not settable from a URL")
        setattr(message, field.name, value)
    except ValueError as exc:
        raise InvalidArgumentError(
            f"{where} {field.name}={text[:80]!r} is not valid: {exc}", "INVALID_PARAMETER"
        ) from None


_TIMESTAMP = "google.protobuf.Timestamp"
_EXAMPLE_TIME = "2026-12-02T23:00:00Z"


def _settable(field: FieldDescriptor) -> bool:
    """A field a path or a query may set: a scalar, an enum, or a Timestamp (RFC 3339)."""
    if field.is_repeated:
        return False
    return bool(
        field.type != FieldDescriptor.TYPE_MESSAGE or field.message_type.full_name == _TIMESTAMP
    )


class HttpFace:
    """The aiohttp application of one replica's HTTP face."""

    def __init__(
        self,
        runs: RunServicer,
        auth: Authenticator,
        *,
        max_body_bytes: int,
        cors_origins: str = "",
        keep_alive: float = KEEP_ALIVE,
        serving: Callable[[], bool] = lambda: True,
        loopback_only: bool = False,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._request_timeout = request_timeout
        # With authentication off on a loopback address (longline dev), only requests made
        # to a loopback name are served: a page of any site can make its own name resolve
        # to 127.0.0.1 (DNS rebinding) and would then be "same-origin" with this API.
        self._loopback_only = loopback_only
        self._keep_alive = keep_alive
        self._runs = runs
        self._auth = auth
        self._max_body = max_body_bytes
        origins = {o.strip() for o in cors_origins.split(",") if o.strip()}
        self._any_origin = "*" in origins
        self._origins = frozenset(origins - {"*"})
        self._serving = serving
        self._closing = asyncio.Event()
        self._open: set[_Frames] = set()  # the event streams being served
        self._frame_cache = _FrameCache()
        self.routes = routes()
        self._stream_route = next(r for r in self.routes if r.name == "StreamRun")
        self._openapi = resources.files("longline.v1").joinpath("openapi.json").read_bytes()
        ui = resources.files("longline.control_plane").joinpath("_ui")
        # The UI's files, read once: a name is served only if it is one of them.
        self._ui = {name: ui.joinpath(name).read_bytes() for name in _UI_FILES}

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body, middlewares=[self._middleware])
        for route in self.routes:
            handler = self._events if route.name == "StreamRun" else self._unary_handler(route)
            app.router.add_route(route.verb, route.aiohttp_path, handler)
        app.router.add_get("/openapi.json", self._openapi_handler)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/", self._to_ui)
        app.router.add_get("/ui/", self._ui_page)
        app.router.add_get("/ui/assets/{name}", self._ui_asset)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing.set()  # open event streams end now: their clients resume elsewhere
        for frames in list(self._open):
            frames.close()

    # --- the middleware: CORS, and every error as problem+json ---------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._loopback_only and _hostname(request.host) not in _LOOPBACK:
            return problem(
                request,
                status=403,
                reason="HOST_NOT_ALLOWED",
                detail="with authentication off this API answers to localhost, 127.0.0.1 and "
                f"[::1] only, not {request.host[:200]!r}",
            )
        origin = request.headers.get("Origin", "")
        allowed = bool(origin) and (self._any_origin or origin in self._origins)
        if origin and not allowed and not _same_host(origin, request):
            # A page of another site: CORS would only hide the answer from it, and a form
            # POST needs no preflight, so without this a page could start or cancel runs on
            # a control plane with authentication off (`longline dev` on localhost).
            return problem(
                request,
                status=403,
                reason="ORIGIN_NOT_ALLOWED",
                detail=f"pages of {origin[:200]} may not call this API: list the origin in "
                "--http-cors-origin",
            )
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204 if allowed else 403)
            if allowed:
                response.headers.update(
                    {
                        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                        "Access-Control-Max-Age": "600",
                    }
                )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status == 413:
                    response = problem(
                        request,
                        Failure(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the body is over the limit of {self._max_body} bytes: pass a "
                            "reference to large data (a URL or object key) instead",
                            "INPUT_TOO_LARGE",
                        ),
                    )
                elif exc.status in (404, 405):
                    response = problem(
                        request,
                        status=exc.status,
                        reason="NO_SUCH_ROUTE" if exc.status == 404 else "METHOD_NOT_ALLOWED",
                        detail=f"no route {request.method} {request.path}: /openapi.json "
                        "lists them",
                    )
                else:
                    raise
            except Exception as exc:  # noqa: BLE001 - answered; bugs are logged by classify
                response = problem(request, classify(exc, f"HTTP {request.method} {request.path}"))
        if allowed and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = "*" if self._any_origin else origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if not response.prepared:
            response.headers.setdefault("Vary", "Origin")
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    def _cors_headers(self, request: web.Request) -> dict[str, str]:
        """For a streaming answer, whose headers go out before the middleware sees it."""
        origin = request.headers.get("Origin", "")
        headers = {"Vary": "Origin", "Referrer-Policy": "no-referrer"}
        if origin and (self._any_origin or origin in self._origins):
            headers["Access-Control-Allow-Origin"] = "*" if self._any_origin else origin
            headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return headers

    # --- who calls --------------------------------------------------------------------

    def _enter(self, request: web.Request, route_method: str) -> _Context:
        """Authenticate the request as a call of `route_method`, with the metadata gRPC
        would carry (the token, the trace context); the caller is then `_auth.current()`
        for this request's task."""
        metadata = []
        authorization = request.headers.get("Authorization", "")
        from_query = not authorization and "access_token" in request.query
        if from_query:
            authorization = f"Bearer {request.query['access_token']}"
        if authorization:
            metadata.append(("authorization", authorization))
        for name in ("traceparent", "tracestate"):
            if name in request.headers:
                metadata.append((name, request.headers[name]))
        principal = self._auth.check(route_method, metadata)
        if from_query and self._auth.tokens is not None and principal.kind != RUN_READER:
            raise UnauthenticatedError(
                "access_token takes a run token only (POST /v1/runs/{run_id}/tokens mints one): "
                "a URL ends up in logs and browser history, so send other tokens as "
                "'Authorization: Bearer <token>'",
                "ACCESS_TOKEN_NOT_A_RUN_TOKEN",
            )
        set_current(principal)
        return _Context(metadata)

    # --- unary RPCs ---------------------------------------------------------------------

    def _unary_handler(self, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            context = self._enter(request, route.full_method)
            message = await self._request_message(request, route)
            check_request(message)
            if route.name == "StartRun":
                return await self._start_run(request, message, context)
            async with _deadline(self._request_timeout):
                response = await getattr(self._runs, route.name)(message, context)
            return _json(response)

        return handle

    async def _request_message(self, request: web.Request, route: Route) -> Message:
        """The RPC's request from the path, the query and the body (proto3 JSON)."""
        message = self._runs_request(route)
        fields = route.method.input_type.fields_by_name
        by_json = {f.json_name: f for f in route.method.input_type.fields}
        if route.body:
            text = await self._body(request)
            if route.body == "*":
                if text.strip():
                    try:
                        json_format.Parse(text, message)
                    except json_format.ParseError as exc:
                        raise InvalidArgumentError(
                            f"the body is not a valid {route.method.input_type.name} in JSON: "
                            f"{exc}",
                            "INVALID_BODY",
                        ) from None
            else:
                # The body is one field's JSON value (a google.protobuf.Value). It is kept
                # as the text that was sent, in the field's *_json twin: numbers stay as
                # written (a Value holds doubles), and the servicer checks it is JSON.
                twin = fields.get(route.body + "_json")
                if twin is not None:
                    setattr(message, twin.name, text if text.strip() else "")
                elif text.strip():
                    field_message = getattr(message, route.body)
                    try:
                        json_format.Parse(text, field_message)
                    except json_format.ParseError as exc:
                        raise InvalidArgumentError(
                            f"the body is not valid JSON: {exc}", "INVALID_BODY"
                        ) from None
        face_only = FACE_QUERY.get(route.name, frozenset())
        given: dict[str, str] = {}  # field -> the name it was given by (page_size, pageSize)
        for key in request.query:
            values = request.query.getall(key)
            if len(values) > 1:
                raise InvalidArgumentError(
                    f"query parameter {key!r} is given {len(values)} times", "INVALID_PARAMETER"
                )
            if key in face_only:
                continue
            field = fields.get(key) or by_json.get(key)
            if (
                field is None
                or route.body == "*"
                or field.name in route.variables
                or field.name == route.body
                or (route.body and field.name == route.body + "_json")  # the body is that
                or not _settable(field)
            ):
                takes = sorted(
                    {
                        f.name
                        for f in route.method.input_type.fields
                        if route.body != "*"
                        and f.name not in route.variables
                        and f.name != route.body
                        and not f.name.endswith("_json")
                        and _settable(f)
                    }
                    | face_only
                )
                raise InvalidArgumentError(
                    f"unknown query parameter {key!r} for {route.verb} {route.template}; it "
                    f"takes: {', '.join(takes) or 'none'}",
                    "UNKNOWN_QUERY_PARAMETER",
                )
            if field.name in given:
                raise InvalidArgumentError(
                    f"query parameter {field.name} is given twice (as {given[field.name]!r} "
                    f"and {key!r})",
                    "INVALID_PARAMETER",
                )
            given[field.name] = key
            _set_scalar(message, field, values[0], "query parameter")
        for name in route.variables:  # the path wins over a body that names the same field
            _set_scalar(message, fields[name], request.match_info[name], "path")
        return message

    @staticmethod
    def _runs_request(route: Route) -> Message:
        cls: type[Message] = getattr(runs_pb2, route.method.input_type.name)
        return cls()

    async def _body(self, request: web.Request) -> str:
        try:
            data = await request.read()
        except (web.RequestPayloadError, HttpProcessingError) as exc:
            raise InvalidArgumentError(
                f"the body could not be read: {exc} (a Content-Encoding that does not match it?)",
                "INVALID_BODY",
            ) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgumentError(
                "the body is not UTF-8 text (JSON is)", "INVALID_BODY"
            ) from None

    async def _start_run(
        self, request: web.Request, message: Message, context: _Context
    ) -> web.Response:
        assert isinstance(message, runs_pb2.StartRunRequest)
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            if message.idempotency_key and message.idempotency_key != key:
                raise InvalidArgumentError(
                    "Idempotency-Key and the idempotency_key parameter differ: send one",
                    "INVALID_IDEMPOTENCY_KEY",
                )
            message.idempotency_key = key
        wait = self._wait(request)
        async with _deadline(self._request_timeout):
            started: runs_pb2.StartRunResponse = await self._runs.StartRun(message, context)
        run = started.run
        headers = {"Location": f"/v1/runs/{run.run_id}"}
        if wait is not None:
            if wait > 0 and not _ended(run):
                # The run exists now: whatever happens to the wait, the answer is the run
                # (a 429 or 503 here would have a client start it again).
                ended = await self._await_end(run, wait)
                if ended is not None:
                    run = ended
                    headers["Preference-Applied"] = f"wait={wait}"
            else:
                headers["Preference-Applied"] = f"wait={wait}"
        answer = runs_pb2.StartRunResponse(run=run, created=started.created)
        return _json(answer, 200 if _ended(run) else 202, headers)

    async def _await_end(self, run: runs_pb2.Run, wait: int) -> runs_pb2.Run | None:
        """The run once it ended or after `wait` seconds; None when the wait could not be
        kept (the tenant's streams at their limit, Redis away, the replica stopping)."""
        waiter = asyncio.create_task(self._runs.await_end(run.run_id, run.last_event_id, wait))
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({waiter, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not waiter.done():
                waiter.cancel()
                await asyncio.wait({waiter})
        if waiter.cancelled():
            return None
        problem = waiter.exception()
        if problem is not None:
            failure = classify(problem, "HTTP StartRun wait")
            log.info("run %s: answered without waiting: %s", run.run_id, failure.message)
            return None
        return waiter.result()

    @staticmethod
    def _wait(request: web.Request) -> int | None:
        """Seconds to wait for the run to end: `?wait=N`, else `Prefer: wait=N`; at most
        MAX_WAIT (more is served as MAX_WAIT, and Preference-Applied says so). A Prefer
        whose wait is not delta-seconds is no preference (RFC 7240 lets a server ignore
        it); a `?wait=` that is not is refused."""
        text = request.query.get("wait")
        if text is None:
            m = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
            if m is None:
                return None
            text = m.group(1)
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise InvalidArgumentError(
                f"wait must be whole seconds (0 to {MAX_WAIT}), got {text[:40]!r}", "INVALID_WAIT"
            )
        return min(int(text), MAX_WAIT)

    # --- the event stream ---------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        ndjson = _NDJSON in accept and _SSE not in accept
        route = self._stream_route
        try:
            self._enter(request, route.full_method)
            message = await self._request_message(request, route)
            assert isinstance(message, runs_pb2.StreamRunRequest)
            cursor = ""
            if not ndjson:
                cursor = request.headers.get("Last-Event-ID", "").strip()
            cursor = cursor or request.query.get("after", "") or message.after_event_id
            if cursor:
                parse_event_id(cursor)
            message.after_event_id = cursor
            async with _deadline(self._request_timeout):
                stream = await self._runs.open_stream(message)
        except Exception as exc:
            failure = classify(exc, "HTTP StreamRun")
            if failure.retry_after is not None and not ndjson:
                # Any status but 200 would make EventSource give up for good: an empty
                # stream that ends makes it come back after `retry`, as a dropped one does.
                return await self._come_back_later(request, failure)
            return problem(request, failure)
        try:
            if stream.ended:
                # After the terminal event: 204 makes EventSource stop reconnecting.
                return web.Response(status=204, headers=self._cors_headers(request))
            return await self._stream(request, stream.run_id, stream.events, ndjson)
        finally:
            await stream.close()

    async def _come_back_later(self, request: web.Request, failure: Failure) -> web.StreamResponse:
        retry = max(RECONNECT_MS, int((failure.retry_after or 0) * 1000))
        response = web.StreamResponse(headers=self._stream_headers(request, _SSE))
        await response.prepare(request)
        reason = failure.reason.replace("\n", " ")
        await response.write(f"retry: {retry}\n: {reason}: come back later\n\n".encode())
        await response.write_eof()
        return response

    def _stream_headers(self, request: web.Request, content_type: str) -> dict[str, str]:
        return {
            "Content-Type": f"{content_type}; charset=utf-8",
            "Cache-Control": "no-cache, no-transform",
            "X-Accel-Buffering": "no",  # nginx and ingress-nginx: do not buffer the stream
            **self._cors_headers(request),
        }

    async def _stream(
        self,
        request: web.Request,
        run_id: str,
        events: AsyncGenerator[StoredEvent, None],
        ndjson: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers=self._stream_headers(request, _NDJSON if ndjson else _SSE)
        )
        await response.prepare(request)
        if not ndjson:
            await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
        frames = _Frames(self._frame_cache, ndjson)
        reader = asyncio.create_task(frames.fill(run_id, events))
        self._open.add(frames)
        if self._closing.is_set():
            frames.close()
        try:
            while True:
                try:
                    async with asyncio.timeout(self._keep_alive):
                        await frames.wait()
                    quiet = False
                except TimeoutError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from None  # the client left meanwhile
                    quiet = True
                # Read before take(): when it says the end, every frame is in the chunk.
                ending = frames.finished or frames.closed
                chunk = frames.take()
                if chunk:
                    await response.write(chunk)
                elif quiet:
                    await response.write(b"\n" if ndjson else b": keep-alive\n\n")
                if ending:
                    break
        except (ConnectionResetError, ConnectionError):
            return response  # the client left
        finally:
            self._open.discard(frames)
            reader.cancel()
            await asyncio.wait({reader})  # raises nothing: a cancel of this task stands
        if frames.error is not None:
            # Headers are gone: the body just ends, and the client resumes from the last id
            # it saw (an error it must see, such as the run's retention passing, comes then).
            classify(frames.error, "HTTP StreamRun")
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    # --- the rest -----------------------------------------------------------------------

    async def _to_ui(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def _ui_page(self, request: web.Request) -> web.Response:
        return self._ui_file("index.html")

    async def _ui_asset(self, request: web.Request) -> web.Response:
        return self._ui_file(request.match_info["name"])

    def _ui_file(self, name: str) -> web.Response:
        """A file of the web UI (control_plane/_ui, shipped in the package): built on this
        API and nothing else, served same-origin, no inline script."""
        body = self._ui.get(name)
        if body is None:
            raise web.HTTPNotFound()
        kind = _UI_TYPES[name.rpartition(".")[2]]
        return web.Response(
            body=body,
            content_type=kind,
            headers={"Content-Security-Policy": _UI_POLICY, "X-Content-Type-Options": "nosniff"},
        )

    async def _openapi_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        serving = self._serving() and not self._closing.is_set()
        return web.json_response(
            {"status": "SERVING" if serving else "NOT_SERVING"}, status=200 if serving else 503
        )


class _FrameCache:
    """The frames of recent events, so that the watchers of one run encode each event once
    between them; bounded in entries."""

    SIZE = 4096

    def __init__(self) -> None:
        self._frames: OrderedDict[tuple[str, str, bool], bytes] = OrderedDict()

    def frame(self, run_id: str, event: StoredEvent, ndjson: bool) -> bytes:
        key = (run_id, event.event_id, ndjson)
        frame = self._frames.get(key)
        if frame is None:
            frame = ndjson_line(run_id, event) if ndjson else sse_frame(run_id, event)
            self._frames[key] = frame
            if len(self._frames) > self.SIZE:
                self._frames.popitem(last=False)
        return frame


class _Frames:
    """Frames of a stream's events, filled by one task and taken in batches by the writer
    (one write for what piled up while it wrote the last batch); the filler waits while a
    slow reader has _FRAME_BUFFER bytes unsent. `close()` ends the stream (the replica
    stops) once what is pending is written."""

    def __init__(self, cache: _FrameCache, ndjson: bool) -> None:
        self._cache = cache
        self._ndjson = ndjson
        self._pending: list[bytes] = []
        self._bytes = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.finished = False
        self.closed = False
        self.error: BaseException | None = None

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def fill(self, run_id: str, events: AsyncGenerator[StoredEvent, None]) -> None:
        try:
            async for event in events:
                frame = self._cache.frame(run_id, event, self._ndjson)
                await self._room.wait()
                self._pending.append(frame)
                self._bytes += len(frame)
                if self._bytes >= _FRAME_BUFFER:
                    self._room.clear()
                self._ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by the writer
            self.error = exc
        finally:
            self.finished = True
            self._ready.set()
            # Closed now, not when collected: its watch on the hub and its stream slot go.
            with contextlib.suppress(Exception):
                await events.aclose()

    async def wait(self) -> None:
        await self._ready.wait()

    def take(self) -> bytes:
        chunk = b"".join(self._pending)
        self._pending.clear()
        self._bytes = 0
        self._room.set()
        if not (self.finished or self.closed):
            self._ready.clear()
        return chunk


async def serve(
    face: HttpFace,
    listen: str,
    shutdown_grace: float,
    tls: ssl.SSLContext | None = None,
    *,
    reuse_port: bool = False,
) -> web.AppRunner:
    """Start serving `face` on `listen` (HOST:PORT; port 0 picks one), over TLS with `tls`;
    the runner's `addresses` say where. RuntimeError when the address cannot be bound.
    `reuse_port`: shared with the other processes of --processes (SO_REUSEPORT)."""
    runner = web.AppRunner(
        face.application(),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=shutdown_grace,
    )
    await runner.setup()
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")  # [::]:8080
    site = web.TCPSite(
        runner,
        host or "0.0.0.0",
        int(port),
        backlog=4096,
        ssl_context=tls,
        reuse_port=reuse_port or None,
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise RuntimeError(f"could not listen on {listen} for HTTP: {exc}") from None
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the runner's first site listens on."""
    address = runner.addresses[0]
    return int(address[1])


__all__ = ["HttpFace", "Route", "bound_port", "problem", "routes", "serve", "sse_frame"]

"""The one server interceptor: it authenticates each call (see _auth), then turns domain
errors into gRPC statuses with clear messages.

Anything else becomes INTERNAL with a reference to the server log, never a stack trace.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any as AnyValue

import grpc
from google.protobuf.any_pb2 import Any
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from longline._store import (
    DomainError,
    InvalidArgumentError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    transient,
)

from ._auth import Principal, set_current

log = logging.getLogger("longline.control_plane")


ERROR_DOMAIN = "longline.dev"


def _details(
    code: grpc.StatusCode, message: str, reason: str, retry_after: float | None = None
) -> tuple[tuple[str, bytes]]:
    """google.rpc.Status with an ErrorInfo (and a RetryInfo when the caller should wait), as
    the trailing metadata gRPC carries it in."""
    info = Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    details = [info]
    if retry_after is not None:
        retry = Any()
        delay = error_details_pb2.RetryInfo()
        delay.retry_delay.FromMilliseconds(max(1, int(retry_after * 1000)))
        retry.Pack(delay)
        details.append(retry)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return (("grpc-status-details-bin", status.SerializeToString()),)


async def _fail(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    reason: str,
    retry_after: float | None = None,
) -> None:
    await context.abort(
        code, message, trailing_metadata=_details(code, message, reason, retry_after)
    )


@dataclass(frozen=True)
class Failure:
    """What a caller is told of an exception: the status, a message, the reason code, and
    how long to wait before retrying (when it should). Both faces, gRPC and HTTP, say it."""

    code: grpc.StatusCode
    message: str
    reason: str
    retry_after: float | None = None


def classify(exc: BaseException, method: str) -> Failure:
    """The Failure for `exc` raised while serving `method`; logs what the caller is not
    told (Redis faults, and bugs under a reference the message gives)."""
    if isinstance(exc, DomainError):
        retry_after = getattr(exc, "retry_after", None)
        return Failure(grpc.StatusCode[exc.code], exc.message, exc.reason, retry_after)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError) or (
        isinstance(exc, RedisError) and transient(exc)
    ):
        # Unreachable, or refusing for a while: a failover (READONLY), loading (LOADING),
        # out of memory (OOM). The client retries; nothing it sent was half-applied.
        log.warning("%s: Redis unavailable: %s", method, exc)
        return Failure(
            grpc.StatusCode.UNAVAILABLE,
            "the control plane cannot reach Redis right now, or Redis refuses writes for a "
            "moment (a failover); retry shortly (nothing was lost)",
            "BACKEND_UNAVAILABLE",
            retry_after=1.0,
        )
    ref = secrets.token_hex(4)
    log.error("internal error in %s (ref %s)", method, ref, exc_info=exc)
    return Failure(
        grpc.StatusCode.INTERNAL,
        f"internal error in {method} (ref {ref}; see the server log)",
        "INTERNAL",
    )


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    failure = classify(exc, method)
    await _fail(context, failure.code, failure.message, failure.reason, failure.retry_after)


Authenticate = Callable[[str, grpc.aio.ServicerContext], Principal]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call with `authenticate` (the caller is then `_auth.current()`),
    maps DomainError subclasses to their status code, and hides everything else."""

    def __init__(self, authenticate: Authenticate | None = None) -> None:
        self._authenticate = authenticate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        call = _Call(handler_call_details.method, self._authenticate)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, call),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, call),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, call),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


@dataclass(frozen=True)
class _Malformed:
    """A request that did not parse (bad UTF-8 in a string field, say), kept to be answered
    INVALID_ARGUMENT by the handler instead of gRPC's own INTERNAL."""

    error: str


def _tolerant(deserialize: Callable[[bytes], AnyValue] | None) -> Callable[[bytes], AnyValue]:
    def parse(data: bytes) -> AnyValue:
        try:
            return deserialize(data) if deserialize is not None else data
        except DecodeError as exc:
            return _Malformed(str(exc))

    return parse


def check_request(request: AnyValue) -> None:
    if isinstance(request, _Malformed):
        raise InvalidArgumentError(
            f"the request is not a valid protobuf message: {request.error} (string fields must "
            "be UTF-8; input_json is a JSON text)",
            "MALFORMED_REQUEST",
        )


@dataclass(frozen=True)
class _Call:
    full_method: str
    authenticate: Authenticate | None

    @property
    def method(self) -> str:
        return self.full_method.rsplit("/", 1)[-1]

    def enter(self, context: grpc.aio.ServicerContext) -> None:
        if self.authenticate is not None:
            set_current(self.authenticate(self.full_method, context))


def _wrap_unary(behavior: Callable[..., AnyValue], call: _Call) -> Callable[..., AnyValue]:
    async def wrapped(request: AnyValue, context: grpc.aio.ServicerContext) -> AnyValue:
        try:
            call.enter(context)
            check_request(request)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, call.method)

    return wrapped


def _wrap_stream(behavior: Callable[..., AnyValue], call: _Call) -> Callable[..., AnyValue]:
    if inspect.isasyncgenfunction(behavior):

        async def wrapped_gen(
            request: AnyValue, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[AnyValue]:
            try:
                call.enter(context)
                check_request(request)
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, call.method)

        return wrapped_gen
    return _wrap_unary(behavior, call)

"""One server interceptor turns domain errors into gRPC statuses with clear messages.

Anything else becomes INTERNAL with a reference to the server log, never a stack trace.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any as AnyValue

import grpc
from google.protobuf.any_pb2 import Any
from google.rpc import error_details_pb2, status_pb2
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from longline._store import DomainError

log = logging.getLogger("longline.control_plane")


ERROR_DOMAIN = "longline.dev"


def _details(code: grpc.StatusCode, message: str, reason: str) -> tuple[tuple[str, bytes]]:
    """google.rpc.Status with an ErrorInfo, as the trailing metadata gRPC carries it in."""
    info = Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    status = status_pb2.Status(code=code.value[0], message=message, details=[info])
    return (("grpc-status-details-bin", status.SerializeToString()),)


async def _fail(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, reason: str
) -> None:
    await context.abort(code, message, trailing_metadata=_details(code, message, reason))


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, DomainError):
        await _fail(context, grpc.StatusCode[exc.code], exc.message, exc.reason)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        log.warning("%s: Redis unavailable: %s", method, exc)
        await _fail(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "the control plane cannot reach Redis right now; retry shortly (nothing was lost)",
            "BACKEND_UNAVAILABLE",
        )
    ref = secrets.token_hex(4)
    log.error("internal error in %s (ref %s)", method, ref, exc_info=exc)
    await _fail(
        context,
        grpc.StatusCode.INTERNAL,
        f"internal error in {method} (ref {ref}; see the server log)",
        "INTERNAL",
    )


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps DomainError subclasses to their status code; hides everything else."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(behavior: Callable[..., AnyValue], method: str) -> Callable[..., AnyValue]:
    async def wrapped(request: AnyValue, context: grpc.aio.ServicerContext) -> AnyValue:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return wrapped


def _wrap_stream(behavior: Callable[..., AnyValue], method: str) -> Callable[..., AnyValue]:
    if inspect.isasyncgenfunction(behavior):

        async def wrapped_gen(
            request: AnyValue, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[AnyValue]:
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, method)

        return wrapped_gen
    return _wrap_unary(behavior, method)

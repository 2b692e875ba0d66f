"""The exceptions of longline, all in one tree.

    LonglineError
    ├── RpcError                    a control-plane call failed (.code, .details, .reason)
    │   ├── NotFound                unknown run or workflow
    │   ├── InvalidArgument         bad input, e.g. input that is not JSON
    │   ├── FailedPrecondition      e.g. cancelling a finished run
    │   ├── ResourceExhausted       e.g. input over the size limit
    │   ├── Unauthenticated
    │   ├── PermissionDenied
    │   ├── Unavailable             the control plane cannot be reached
    │   └── AlreadyExists           a name you chose is taken (a schedule id)
    ├── RunFailed                   run.result() of a FAILED run (has .run, .error)
    ├── RunCancelled                run.result() of a CANCELLED run (has .run)
    ├── LeaseLost                   inside a worker: this attempt no longer owns the run
    ├── InputTimeout                inside a workflow: ctx.wait_for_input's timeout passed
    ├── ChildFailed                 inside a workflow: a child run failed or was cancelled
    └── NonRetryable                raise it (or subclass it) to stop a component's retries

gRPC errors are turned into this tree in one place, `map_rpc_error`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from ._types import Run, RunErrorInfo

__all__ = [
    "AlreadyExists",
    "ChildFailed",
    "FailedPrecondition",
    "InputTimeout",
    "InvalidArgument",
    "LeaseLost",
    "LonglineError",
    "NonRetryable",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RpcError",
    "RunCancelled",
    "RunFailed",
    "Unauthenticated",
    "Unavailable",
    "map_rpc_error",
]


class LonglineError(Exception):
    """The base of every exception longline raises."""


class RpcError(LonglineError):
    """A call to the control plane failed with a gRPC status."""

    def __init__(
        self, code: str, details: str, reason: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        self.reason = reason  # the server's ErrorInfo reason, e.g. "RUN_NOT_FOUND"
        self.retry_after = retry_after  # seconds, when the server said when to retry


class NotFound(RpcError):
    """The run or workflow does not exist."""


class InvalidArgument(RpcError):
    """The request was malformed; the message says how."""


class FailedPrecondition(RpcError):
    """The request does not fit the run's state, e.g. cancelling a finished run."""


class ResourceExhausted(RpcError):
    """A limit was hit, e.g. the input size limit."""


class Unauthenticated(RpcError):
    """No valid credentials were given."""


class PermissionDenied(RpcError):
    """The credentials do not allow this call."""


class Unavailable(RpcError):
    """The control plane could not be reached."""


class AlreadyExists(RpcError):
    """A name you chose is taken (a schedule id)."""


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
}


def map_rpc_error(exc: grpc.aio.AioRpcError) -> RpcError:
    """The longline exception for a failed gRPC call (use as `raise map_rpc_error(e) from e`)."""
    code = exc.code()
    cls = _BY_CODE.get(code, RpcError)
    return cls(code.name, exc.details() or "", error_reason(exc), retry_delay(exc))


def retry_delay(exc: grpc.aio.AioRpcError) -> float | None:
    """The google.rpc.RetryInfo delay a longline server attached to an error, in seconds."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToMilliseconds()) / 1000
    return None


def error_reason(exc: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason a longline server attached to an error ('' if none)."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


class RunFailed(LonglineError):
    """The run ended FAILED; `.error` says which component raised what, on which attempt."""

    def __init__(self, run: Run) -> None:
        error = run.error
        where = f" in component {error.component!r}" if error and error.component else ""
        what = f"{error.type}: {error.message}" if error else "unknown error"
        super().__init__(f"run {run.run_id} failed{where}: {what}")
        self.run = run
        self.error: RunErrorInfo | None = error


class RunCancelled(LonglineError):
    """The run ended CANCELLED."""

    def __init__(self, run: Run) -> None:
        super().__init__(f"run {run.run_id} was cancelled")
        self.run = run


class LeaseLost(LonglineError):
    """This attempt no longer holds the run (cancelled, or its lease moved on).

    Raised inside workflow code by any write for the run; the worker abandons
    the attempt. Do not catch it.
    """

    def __init__(self, run_id: str, attempt: int, *args: Any) -> None:
        super().__init__(f"attempt {attempt} of run {run_id} no longer holds the run")
        self.run_id = run_id
        self.attempt = attempt


class InputTimeout(LonglineError):
    """Raised by `ctx.wait_for_input` when its timeout passed before the input came; the
    workflow may catch it and go on. An input sent later is refused (FAILED_PRECONDITION,
    reason INPUT_TIMED_OUT)."""

    def __init__(self, name: str, timeout: float | None = None) -> None:
        after = f" after {timeout:g} s" if timeout is not None else ""
        super().__init__(f"input {name!r} did not come{after}")
        self.name = name
        self.timeout = timeout


class ChildFailed(LonglineError):
    """Raised in a parent workflow by `ctx.run_child`, `ChildRun.result()` and `ctx.map`
    when a child run ended FAILED or CANCELLED: `.run_id` names the child, `.status` how it
    ended, `.error_type`, `.error_message` and `.component` why. Uncaught, it fails the
    parent with this error."""

    def __init__(
        self,
        run_id: str,
        workflow: str,
        status: str,
        error_type: str = "",
        error_message: str = "",
        component: str = "",
    ) -> None:
        where = f" in component {component!r}" if component else ""
        what = f": {error_type}: {error_message}" if error_type else ""
        super().__init__(f"child run {run_id} ({workflow}) ended {status}{where}{what}")
        self.run_id = run_id
        self.workflow = workflow
        self.status = status
        self.error_type = error_type
        self.error_message = error_message
        self.component = component


class NonRetryable(LonglineError):
    """Raise this (or a subclass) from a component to fail at once, with no retry."""

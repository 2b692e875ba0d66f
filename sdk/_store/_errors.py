"""Domain errors raised by server code; one interceptor turns them into gRPC statuses."""

from __future__ import annotations


class DomainError(Exception):
    """An error a caller can act on. `code` names a grpc.StatusCode; `reason` is the stable,
    machine-readable google.rpc.ErrorInfo reason clients in any language branch on."""

    code = "INTERNAL"

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.code


class NotFoundError(DomainError):
    """A run or workflow that does not exist."""

    code = "NOT_FOUND"


class AlreadyExistsError(DomainError):
    """A name the caller chose that is taken (a schedule id)."""

    code = "ALREADY_EXISTS"


class InvalidArgumentError(DomainError):
    """Malformed input."""

    code = "INVALID_ARGUMENT"


class TooLargeError(DomainError):
    """Input over a configured limit."""

    code = "RESOURCE_EXHAUSTED"


class OutOfRangeError(DomainError):
    """A well-formed value past what exists, e.g. a cursor past a run's last event."""

    code = "OUT_OF_RANGE"


class FailedPreconditionError(DomainError):
    """A request that does not fit the run's state."""

    code = "FAILED_PRECONDITION"


class UnauthenticatedError(DomainError):
    """No token, or a token the server does not know."""

    code = "UNAUTHENTICATED"


class PermissionDeniedError(DomainError):
    """A known caller asking for something its token does not allow."""

    code = "PERMISSION_DENIED"


class RateLimitedError(TooLargeError):
    """Over a per-tenant limit for now; the caller may retry after `retry_after` seconds."""

    def __init__(self, message: str, reason: str, retry_after: float) -> None:
        super().__init__(message, reason)
        self.retry_after = retry_after

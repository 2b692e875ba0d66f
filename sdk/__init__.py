"""longline: durable, resumable, streamable long-running AI workflows.

Author workflows with `workflow` and `component`; run them with
`longline worker`; start and watch them with `Client`.
"""

from __future__ import annotations

from ._client import Client, RunHandle
from ._component import Component, ComponentTimeout, Retry, component
from ._context import ChildRun, Context, current
from ._errors import (
    AlreadyExists,
    ChildFailed,
    FailedPrecondition,
    InputTimeout,
    InvalidArgument,
    LeaseLost,
    LonglineError,
    NonRetryable,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RpcError,
    RunCancelled,
    RunFailed,
    Unauthenticated,
    Unavailable,
)
from ._policies import Cache, Concurrency, RateLimit
from ._types import (
    BuildInfo,
    Event,
    EventType,
    Run,
    RunErrorInfo,
    RunStatus,
    RunTrace,
    RunWait,
    Schedule,
    TraceSpan,
    WorkflowBuilds,
    WorkflowInfo,
)
from ._workflow import Workflow, workflow

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "BuildInfo",
    "Cache",
    "ChildFailed",
    "ChildRun",
    "Client",
    "Component",
    "ComponentTimeout",
    "Concurrency",
    "Context",
    "Event",
    "EventType",
    "FailedPrecondition",
    "InputTimeout",
    "InvalidArgument",
    "LeaseLost",
    "LonglineError",
    "NonRetryable",
    "NotFound",
    "PermissionDenied",
    "RateLimit",
    "ResourceExhausted",
    "Retry",
    "RpcError",
    "Run",
    "RunCancelled",
    "RunErrorInfo",
    "RunFailed",
    "RunHandle",
    "RunStatus",
    "RunTrace",
    "RunWait",
    "Schedule",
    "TraceSpan",
    "Unauthenticated",
    "Unavailable",
    "Workflow",
    "WorkflowBuilds",
    "WorkflowInfo",
    "component",
    "current",
    "workflow",
]

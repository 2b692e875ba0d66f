"""longline: durable, resumable, streamable long-running AI workflows.

Author workflows with `workflow` and `component`; run them with
`longline worker`; start and watch them with `Client`.
"""

from __future__ import annotations

from ._client import Client, RunHandle
from ._component import Component, ComponentTimeout, Retry, component
from ._context import ChildRun, Context, current
from ._errors import (
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
    TraceSpan,
    WorkflowBuilds,
    WorkflowInfo,
)
from ._workflow import Workflow, workflow

__version__ = "0.1.0"

__all__ = [
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

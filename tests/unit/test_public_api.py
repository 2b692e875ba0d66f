"""The public API is what __all__ says, sorted, documented, and free of protobuf types."""

from __future__ import annotations

import inspect

import longline

EXPECTED = {
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
}


def test_all_is_sorted_and_complete() -> None:
    assert longline.__all__ == sorted(longline.__all__)
    assert set(longline.__all__) == EXPECTED
    for name in longline.__all__:
        assert hasattr(longline, name), name


def test_every_public_name_has_a_docstring() -> None:
    for name in longline.__all__:
        assert inspect.getdoc(getattr(longline, name)), f"longline.{name} has no docstring"


def test_sdk_does_not_import_the_planes() -> None:
    import subprocess
    import sys

    code = "import sys, longline; print(any(m.startswith('longline.c') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

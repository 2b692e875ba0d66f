"""Workflows: `async def f(ctx, input)` functions that workers serve by name."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, overload

from ._context import Context
from ._store import InvalidArgumentError, check_workflow_name

__all__ = ["Workflow", "workflow"]

WorkflowFn = Callable[[Context, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Workflow:
    """A workflow a worker can run. Calling it runs the function directly."""

    name: str
    description: str
    fn: WorkflowFn
    max_attempts: int = 3

    async def __call__(self, ctx: Context, input: Any) -> Any:
        return await self.fn(ctx, input)


@overload
def workflow(name: WorkflowFn, /) -> Workflow: ...
@overload
def workflow(
    name: str | None = None, *, description: str = "", max_attempts: int = 3
) -> Callable[[WorkflowFn], Workflow]: ...


def workflow(
    name: str | WorkflowFn | None = None, *, description: str = "", max_attempts: int = 3
) -> Workflow | Callable[[WorkflowFn], Workflow]:
    """Make `async def f(ctx, input)` a workflow named `name` (default: the function's name).

    The input is the run's decoded `input_json`; the return value becomes its
    `result_json` and must be JSON-serialisable.
    """

    def wrap(fn: WorkflowFn) -> Workflow:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"workflow {fn.__name__!r} must be an `async def f(ctx, input)`")
        doc = (inspect.getdoc(fn) or "").strip().split("\n")[0]
        chosen = name if isinstance(name, str) else fn.__name__
        try:
            check_workflow_name(chosen)
        except InvalidArgumentError as exc:
            raise ValueError(str(exc)) from None
        return Workflow(
            name=chosen,
            description=description or doc,
            fn=fn,
            max_attempts=max_attempts,
        )

    if callable(name):
        return wrap(name)
    return wrap

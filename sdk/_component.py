"""Components: the steps of a workflow, each traced, retried, timed out and an error boundary."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

import tenacity

from . import _context
from ._errors import LeaseLost, NonRetryable

__all__ = ["Component", "ComponentTimeout", "Retry", "component", "component_of"]

P = ParamSpec("P")
R = TypeVar("R")

_COMPONENT_ATTR = "__longline_component__"
log = logging.getLogger("longline")

# A step's own key: a string, or a function of the call's arguments that returns one.
StepKey = str | Callable[..., str]


def component_of(exc: BaseException) -> str:
    """The innermost component an exception came out of ('' if none)."""
    return str(getattr(exc, _COMPONENT_ATTR, ""))


class ComponentTimeout(TimeoutError):
    """A component call ran past its timeout."""


@dataclass(frozen=True)
class Retry:
    """Exponential backoff: wait `initial` seconds, then multiply, up to `maximum`.

    `max_attempts` counts the first try. Exceptions of `retry_on` are retried, never
    `NonRetryable` nor cancellation.
    """

    max_attempts: int = 3
    initial: float = 0.5
    maximum: float = 20.0
    multiplier: float = 2.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("Retry waits must not be negative")

    def _wait(self) -> tenacity.wait.wait_base:
        if self.jitter:
            return tenacity.wait_random_exponential(
                multiplier=self.initial, max=self.maximum, exp_base=self.multiplier
            )
        return tenacity.wait_exponential(
            multiplier=self.initial, max=self.maximum, exp_base=self.multiplier
        )

    def _should_retry(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on) and not isinstance(exc, NonRetryable | LeaseLost)


class Component(Generic[P, R]):
    """A decorated step. Call it like the function; configure it fluently."""

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        name: str,
        retry: Retry | None = None,
        timeout: float | None = None,
        key: StepKey | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self.key = key
        functools.update_wrapper(self, fn)

    def with_retry(self, **policy: Any) -> Component[P, R]:
        """A copy with a retry policy (the Retry fields, on top of the current policy)."""
        base = self.retry or Retry()
        return Component(self.fn, self.name, replace(base, **policy), self.timeout, self.key)

    def with_timeout(self, seconds: float) -> Component[P, R]:
        """A copy whose every try fails with ComponentTimeout after `seconds`."""
        if seconds <= 0:
            raise ValueError(f"timeout must be positive, got {seconds}")
        return Component(self.fn, self.name, self.retry, seconds, self.key)

    def with_key(self, key: StepKey) -> Component[P, R]:
        """A copy whose steps are keyed by `key` (a string, or a function of the call's
        arguments) instead of by call order: see "Checkpoints" in the README."""
        return Component(self.fn, self.name, self.retry, self.timeout, key)

    def _user_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.key is None:
            return ""
        key = self.key(*args, **kwargs) if callable(self.key) else self.key
        if not isinstance(key, str) or not key:
            raise TypeError(f"the step key of component {self.name!r} must be a non-empty str")
        return key

    def with_cache(self, ttl: float) -> Component[P, R]:
        """A copy whose results are cached across runs. Not available yet."""
        raise NotImplementedError(
            "component result caching is not implemented yet (tracked as issue 4)"
        )

    async def _try_once(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        if inspect.iscoroutinefunction(self.fn):
            call: Awaitable[Any] = self.fn(*args, **kwargs)
        else:
            call = asyncio.to_thread(self.fn, *args, **kwargs)
        if self.timeout is None:
            return await call  # type: ignore[no-any-return]
        try:
            async with asyncio.timeout(self.timeout):
                return await call  # type: ignore[no-any-return]
        except TimeoutError as exc:
            raise ComponentTimeout(
                f"component {self.name!r} did not finish within its {self.timeout:g} s timeout"
            ) from exc

    async def _invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[R, int]:
        if self.retry is None:
            return await self._try_once(args, kwargs), 1
        policy = self.retry
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.max_attempts),
            wait=policy._wait(),
            retry=tenacity.retry_if_exception(policy._should_retry),
            reraise=True,
        )
        tries = 0
        async for attempt in retrying:
            with attempt:
                tries += 1
                result = await self._try_once(args, kwargs)
        return result, tries

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = _context.current_or_none()
        if ctx is None:  # outside a run: an ordinary function, with its policies
            return (await self._invoke(args, kwargs))[0]
        step = ctx.next_step(self.name, self._user_key(args, kwargs))
        if step in ctx.checkpoints:  # finished by an earlier attempt: not run, not re-announced
            ctx.replayed.append(step)
            return json.loads(ctx.checkpoints[step])  # type: ignore[no-any-return]
        span = _context.new_span_id()
        parent = _context.current_span.get() or ctx.span_id
        await ctx.emit(
            "COMPONENT_STARTED",
            component=self.name,
            span_id=span,
            parent_span_id=parent,
            data_json=_context.to_json({"step": step, "input": {"args": args, "kwargs": kwargs}}),
        )
        token = _context.current_span.set(span)
        step_token = _context.current_step.set(step)
        started = time.perf_counter()
        try:
            result, tries = await self._invoke(args, kwargs)
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception as exc:
            if not component_of(exc):
                setattr(exc, _COMPONENT_ATTR, self.name)
            await ctx.emit(
                "COMPONENT_FINISHED",
                component=self.name,
                span_id=span,
                parent_span_id=parent,
                message=f"{type(exc).__name__}: {exc}",
                data_json=_context.to_json(
                    {
                        "step": step,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        "error": {"type": type(exc).__name__, "message": str(exc)},
                    }
                ),
            )
            raise
        finally:
            _context.current_span.reset(token)
            _context.current_step.reset(step_token)
        try:
            checkpoint: tuple[str, str] | None = (step, json.dumps(result))
        except (TypeError, ValueError):
            log.warning(
                "component %r returned a value that is not JSON: step %s is not checkpointed "
                "and will run again on a later attempt",
                self.name,
                step,
            )
            checkpoint = None
        await ctx.emit(
            "COMPONENT_FINISHED",
            component=self.name,
            span_id=span,
            parent_span_id=parent,
            data_json=_context.to_json(
                {
                    "step": step,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "tries": tries,
                    "output": result,
                }
            ),
            checkpoint=checkpoint,
        )
        return result

    def __repr__(self) -> str:
        return f"<longline component {self.name!r}>"


class ComponentDecorator(Protocol):
    """What `component(...)` returns: a decorator of async or plain functions."""

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Component[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Component[P, R]: ...


@overload
def component(name: Callable[P, Awaitable[R]], /) -> Component[P, R]: ...
@overload
def component(
    name: str | None = None,
    *,
    retry: Retry | None = None,
    cache: Any = None,
    timeout: float | None = None,
    key: StepKey | None = None,
) -> ComponentDecorator: ...


def component(
    name: Any = None,
    *,
    retry: Retry | None = None,
    cache: Any = None,
    timeout: float | None = None,
    key: StepKey | None = None,
) -> Any:
    """Make a function a component: one traced, retried, checkpointable step of a workflow.

    `@longline.component` or `@longline.component("name", retry=..., timeout=...)`.
    A plain `def` runs in a thread.
    """
    if cache is not None:
        raise NotImplementedError(
            "component result caching is not implemented yet (tracked as issue 4)"
        )
    if callable(name):
        return Component(name, name.__name__, retry=retry, timeout=timeout)

    def wrap(fn: Callable[P, Any]) -> Component[P, Any]:
        c: Component[P, Any] = Component(fn, name or fn.__name__, retry=retry, key=key)
        return c.with_timeout(timeout) if timeout is not None else c

    return wrap

"""Components: the steps of a workflow, each traced, retried, timed out and an error boundary."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

import tenacity
from opentelemetry import context as otel_context
from opentelemetry import trace

from . import _context
from ._context import Context, Services
from ._errors import LeaseLost, NonRetryable
from ._policies import Cache, Limit
from ._waits import Parked

__all__ = [
    "Component",
    "ComponentTimeout",
    "Retry",
    "component",
    "component_of",
    "is_transient",
    "retry_after",
]

P = ParamSpec("P")
R = TypeVar("R")

_COMPONENT_ATTR = "__longline_component__"
log = logging.getLogger("longline")
_tracer = trace.get_tracer("longline")

# A step's own key: a string, or a function of the call's arguments that returns one.
StepKey = str | Callable[..., str]


def component_of(exc: BaseException) -> str:
    """The innermost component an exception came out of ('' if none)."""
    return str(getattr(exc, _COMPONENT_ATTR, ""))


class ComponentTimeout(TimeoutError):
    """A component call ran past its timeout."""


def retry_after(exc: BaseException) -> float | None:
    """Seconds a provider asked us to wait (retry-after-ms or Retry-After), if it did."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if 0 <= seconds < 3600:
            return seconds
    return None


_TRANSIENT_NAMES = frozenset(
    {"APIConnectionError", "APITimeoutError", "TransportError", "ClientConnectionError"}
)


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying by default: rate limits (429), timeouts,
    connection errors and 5xx; never another 4xx, never NonRetryable."""
    if isinstance(exc, NonRetryable | LeaseLost | asyncio.CancelledError | Parked):
        return False
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in (408, 409, 429) or status >= 500
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__)


@dataclass(frozen=True)
class Retry:
    """Exponential backoff: wait `initial` seconds, then multiply, up to `maximum`.

    `max_attempts` counts the first try. By default only transient errors are
    retried (see `is_transient`): rate limits, timeouts, connection errors, 5xx;
    pass `retry_on=(SomeError, ...)` to choose the exception types yourself.
    `NonRetryable` and cancellation are never retried. A Retry-After from the
    provider is honoured: no retry comes before it.
    """

    max_attempts: int = 3
    initial: float = 0.5
    maximum: float = 20.0
    multiplier: float = 2.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("Retry waits must not be negative")

    def _backoff(self) -> tenacity.wait.wait_base:
        if self.jitter:
            return tenacity.wait_random_exponential(
                multiplier=self.initial, max=self.maximum, exp_base=self.multiplier
            )
        return tenacity.wait_exponential(
            multiplier=self.initial, max=self.maximum, exp_base=self.multiplier
        )

    def _wait(self) -> Callable[[tenacity.RetryCallState], float]:
        backoff = self._backoff()

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            asked = retry_after(exc) if exc is not None else None
            return max(backoff(state), asked or 0.0)

        return wait

    def should_retry(self, exc: BaseException) -> bool:
        """Whether this policy retries exc."""
        if isinstance(exc, NonRetryable | LeaseLost | Parked):
            return False
        if self.retry_on is None:
            return is_transient(exc)
        return isinstance(exc, self.retry_on)


class Component(Generic[P, R]):
    """A decorated step. Call it like the function; configure it fluently.

    Inside a workflow each call is a step: checkpointed, cached if asked, held to
    its limits, retried by its policy, timed out, traced as COMPONENT_* events, and
    an error boundary (a failure names the component).
    """

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        name: str,
        retry: Retry | None = None,
        timeout: float | None = None,
        key: StepKey | None = None,
        cache: Cache | None = None,
        limits: tuple[Limit, ...] = (),
        secret: tuple[str, ...] = (),
    ) -> None:
        self.fn = fn
        self.secret = secret
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self.key = key
        self.cache = cache
        self.limits = limits
        functools.update_wrapper(self, fn)

    def _but(self, **changes: Any) -> Component[P, R]:
        current = {
            "fn": self.fn,
            "name": self.name,
            "retry": self.retry,
            "timeout": self.timeout,
            "key": self.key,
            "cache": self.cache,
            "limits": self.limits,
            "secret": self.secret,
        }
        current.update(changes)
        return Component(**current)  # type: ignore[arg-type]

    def with_retry(self, **policy: Any) -> Component[P, R]:
        """A copy with a retry policy (the Retry fields, on top of the current policy)."""
        return self._but(retry=replace(self.retry or Retry(), **policy))

    def with_timeout(self, seconds: float) -> Component[P, R]:
        """A copy whose every try fails with ComponentTimeout after `seconds`."""
        if seconds <= 0:
            raise ValueError(f"timeout must be positive, got {seconds}")
        return self._but(timeout=seconds)

    def with_key(self, key: StepKey) -> Component[P, R]:
        """A copy whose steps are keyed by `key` (a string, or a function of the call's
        arguments) instead of by call order: see "Checkpoints and the determinism rule" in
        docs/workflows.md."""
        return self._but(key=key)

    def with_cache(
        self, ttl: float, *, version: str = "1", max_bytes: int = 1024 * 1024
    ) -> Component[P, R]:
        """A copy whose results are cached across runs in Redis (see Cache)."""
        return self._but(cache=Cache(ttl, version, max_bytes))

    def with_limits(self, *limits: Limit) -> Component[P, R]:
        """A copy held to these cluster-wide limits (RateLimit, Concurrency), on every try."""
        return self._but(limits=tuple(limits))

    def _user_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.key is None:
            return ""
        key = self.key(*args, **kwargs) if callable(self.key) else self.key
        if not isinstance(key, str) or not key:
            raise TypeError(f"the step key of component {self.name!r} must be a non-empty str")
        return key

    async def _try_once(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], services: Services | None
    ) -> R:
        release = await services.acquire(self.limits) if services and self.limits else None
        try:
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
        except Exception as exc:
            asked = retry_after(exc)
            if services and asked and getattr(exc, "status_code", None) == 429:
                await services.pause(self.limits, asked)  # every worker sharing them slows
            raise
        finally:
            if release is not None:
                await release()
            facts = _context.step_facts.get()
            tokens = (facts or {}).get("llm", {}).get("usage", {}).get("total_tokens")
            if services and self.limits and tokens:
                await services.record_tokens(self.limits, int(tokens))

    async def _invoke(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        services: Services | None,
        tries: list[dict[str, Any]],
    ) -> R:
        if self.retry is None:
            tries.append({"try": 1})
            return await self._try_once(args, kwargs, services)
        policy = self.retry

        def record(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            tries[-1].update(
                error=f"{type(exc).__name__}: {exc}",
                wait=round(state.upcoming_sleep, 3),
            )

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.max_attempts),
            wait=policy._wait(),
            retry=tenacity.retry_if_exception(policy.should_retry),
            before_sleep=record,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                tries.append({"try": len(tries) + 1})
                result = await self._try_once(args, kwargs, services)
        return result

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = _context.current_or_none()
        if ctx is None:  # outside a run: an ordinary function, with its retry and timeout
            return await self._invoke(args, kwargs, None, [])
        step = ctx.next_step(self.name, self._user_key(args, kwargs))
        attributes: dict[str, str | int | bool] = {
            "longline.component": self.name,
            "longline.step": step,
            "longline.run_id": ctx.run_id,
            "longline.attempt": ctx.attempt,
        }
        if step in ctx.checkpoints:  # finished by an earlier attempt: not run, not re-announced
            ctx.replayed.append(step)
            _tracer.start_span(
                self.name, attributes={**attributes, "longline.checkpoint.replayed": True}
            ).end()
            return json.loads(ctx.checkpoints[step])  # type: ignore[no-any-return]
        inputs = self._visible_inputs(args, kwargs)
        otel_span = _tracer.start_span(
            self.name, attributes={**attributes, "longline.input": _context.to_json(inputs)}
        )
        otel_token = otel_context.attach(trace.set_span_in_context(otel_span))
        span = _span_hex(otel_span) or _context.new_span_id()
        parent = _context.current_span.get() or ctx.span_id
        try:
            # Counted as running until its result is checkpointed: a wait beside it in the
            # same workflow parks the run only once it has (see Context.others_done).
            async with ctx.running_step(step):
                return await self._run_step(
                    ctx, step, span, parent, inputs, otel_span, args, kwargs
                )
        finally:
            otel_context.detach(otel_token)
            otel_span.end()

    def _visible_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments as they may leave the process: secret ones masked."""
        if not self.secret:
            return {"args": args, "kwargs": kwargs}
        try:
            bound = inspect.signature(self.fn).bind_partial(*args, **kwargs)
        except TypeError:
            return {"args": "[hidden: a secret argument could not be told apart]"}
        return {
            "kwargs": {
                name: "[secret]" if name in self.secret else value
                for name, value in bound.arguments.items()
            }
        }

    async def _run_step(
        self,
        ctx: Context,
        step: str,
        span: str,
        parent: str,
        inputs: dict[str, Any],
        otel_span: trace.Span,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        await ctx.emit(
            "COMPONENT_STARTED",
            component=self.name,
            span_id=span,
            parent_span_id=parent,
            data_json=_context.to_json({"step": step, "input": inputs}),
        )
        facts: dict[str, Any] = {"step": step}
        tries: list[dict[str, Any]] = []
        span_token = _context.current_span.set(span)
        step_token = _context.current_step.set(step)
        facts_token = _context.step_facts.set(facts)
        started = time.perf_counter()
        try:
            cache_key = self._cache_key(args, kwargs) if self.cache and ctx.services else None
            cached = await ctx.services.cache_get(cache_key) if ctx.services and cache_key else None
            if cached is not None:
                facts["cache"] = "hit"
                result = json.loads(cached)
            else:
                result = await self._invoke(args, kwargs, ctx.services, tries)
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception as exc:
            if not component_of(exc):
                setattr(exc, _COMPONENT_ATTR, self.name)
            otel_span.record_exception(exc)
            otel_span.set_status(
                trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            )
            _annotate(otel_span, facts, tries)
            facts.update(
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                tries=len(tries),
                retries=tries[:-1],
                error={"type": type(exc).__name__, "message": str(exc)},
            )
            await ctx.emit(
                "COMPONENT_FINISHED",
                component=self.name,
                span_id=span,
                parent_span_id=parent,
                message=f"{type(exc).__name__}: {exc}",
                data_json=_context.to_json(facts),
            )
            raise
        finally:
            _context.step_facts.reset(facts_token)
            _context.current_step.reset(step_token)
            _context.current_span.reset(span_token)
        encoded = self._encode(result, step)
        if cache_key and cached is None and encoded is not None:
            assert self.cache is not None and ctx.services is not None
            if len(encoded) <= self.cache.max_bytes:
                await ctx.services.cache_set(cache_key, encoded, self.cache.ttl)
                facts["cache"] = "stored"
            else:
                log.warning(
                    "component %r: a %d-byte result is over the cache limit of %d bytes; "
                    "not cached",
                    self.name,
                    len(encoded),
                    self.cache.max_bytes,
                )
                facts["cache"] = "too large"
        facts.update(
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            tries=len(tries),
            retries=tries[:-1],
            output=result,
        )
        _annotate(otel_span, facts, tries)
        otel_span.set_attribute("longline.output", _context.to_json(result))
        await ctx.emit(
            "COMPONENT_FINISHED",
            component=self.name,
            span_id=span,
            parent_span_id=parent,
            data_json=_context.to_json(facts),
            checkpoint=(step, encoded) if encoded is not None else None,
        )
        return result  # type: ignore[no-any-return]

    def _encode(self, result: Any, step: str) -> str | None:
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            log.warning(
                "component %r returned a value that is not JSON: step %s is not checkpointed "
                "and will run again on a later attempt",
                self.name,
                step,
            )
            return None

    def _cache_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        assert self.cache is not None
        try:
            canonical = json.dumps(
                {"args": args, "kwargs": kwargs}, sort_keys=True, separators=(",", ":")
            )
        except (TypeError, ValueError):
            log.warning("component %r: arguments are not JSON; this call is not cached", self.name)
            return None
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return f"{self.name}:{self.cache.version}:{digest}"

    def __repr__(self) -> str:
        return f"<longline component {self.name!r}>"


def _span_hex(span: trace.Span) -> str:
    """The span's id as events carry it, or '' when tracing is off (a non-recording span)."""
    context = span.get_span_context()
    return format(context.span_id, "016x") if context.is_valid else ""


def _annotate(span: trace.Span, facts: dict[str, Any], tries: list[dict[str, Any]]) -> None:
    """Put a step's facts on its span, LLM calls per the GenAI semantic conventions."""
    span.set_attribute("longline.tries", len(tries))
    span.set_attribute("longline.retries", max(0, len(tries) - 1))
    span.set_attribute("longline.cache.hit", facts.get("cache") == "hit")
    span.set_attribute("longline.checkpoint.replayed", False)
    llm = facts.get("llm")
    if isinstance(llm, dict):
        usage = llm.get("usage") or {}
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.system", "openai")
        span.set_attribute("gen_ai.provider.name", str(llm.get("provider", "")))
        span.set_attribute("gen_ai.request.model", str(llm.get("requested_model", "")))
        span.set_attribute("gen_ai.response.model", str(llm.get("model", "")))
        span.set_attribute("gen_ai.usage.input_tokens", int(usage.get("input_tokens", 0)))
        span.set_attribute("gen_ai.usage.output_tokens", int(usage.get("output_tokens", 0)))


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
    cache: Cache | None = None,
    timeout: float | None = None,
    key: StepKey | None = None,
    limits: Sequence[Limit] | None = None,
    secret: Sequence[str] = (),
) -> ComponentDecorator: ...


def component(
    name: Any = None,
    *,
    retry: Retry | None = None,
    cache: Cache | None = None,
    timeout: float | None = None,
    key: StepKey | None = None,
    limits: Sequence[Limit] | None = None,
    secret: Sequence[str] = (),
) -> Any:
    """Make a function a component: one traced, retried, checkpointable step of a workflow.

    `@longline.component` or `@longline.component("name", retry=..., timeout=...,
    cache=Cache(ttl=...), limits=[RateLimit(...), Concurrency(...)], key=...)`.
    A plain `def` runs in a thread. `secret=("api_key",)` names parameters whose values
    never leave the process: masked in events and spans.
    """
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if callable(name):
        return Component(name, name.__name__)

    def wrap(fn: Callable[P, Any]) -> Component[P, Any]:
        return Component(
            fn, name or fn.__name__, retry, timeout, key, cache, tuple(limits or ()), tuple(secret)
        )

    return wrap

"""LLM calls as components, through the official `openai` async client.

    text = await longline.llm.complete('Outline a post about "tides"', stream=True)

`chat` and `complete` are steps like any component: checkpointed, retried
(5 tries by default, honouring Retry-After), cacheable and rate-limitable
(`longline.llm.chat.with_limits(longline.RateLimit("openai", requests_per_minute=500))`).
The step records the model, the token usage, the latency and which provider served.

Providers are OpenAI-compatible endpoints tried in order: when one is down or
rate-limited the next serves. By default there is one, from the usual variables
(OPENAI_BASE_URL, OPENAI_API_KEY, and LONGLINE_LLM_MODEL for the model), read
at call time; `configure(providers=[...])` or LONGLINE_LLM_PROVIDERS (a JSON list
of {"base_url", "api_key_env", "model", "name"}) gives a fallback chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import openai

from . import _context
from ._component import Component, Retry, component
from ._errors import NonRetryable

__all__ = [
    "DEFAULT_MODEL",
    "Provider",
    "ProviderRejected",
    "chat",
    "complete",
    "configure",
    "providers",
]

DEFAULT_MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class Provider:
    """One OpenAI-compatible endpoint: where, which key variable, which model."""

    base_url: str | None = None  # None: OPENAI_BASE_URL, else the openai default
    api_key_env: str = "OPENAI_API_KEY"
    model: str = ""  # "": LONGLINE_LLM_MODEL, else DEFAULT_MODEL
    name: str = ""  # shown on the step; default: the endpoint's host

    def resolved(self) -> Provider:
        """This provider with defaults filled in from the environment."""
        base = self.base_url or os.environ.get("OPENAI_BASE_URL") or None
        model = self.model or os.environ.get("LONGLINE_LLM_MODEL") or DEFAULT_MODEL
        name = self.name or (urlparse(base).netloc if base else "api.openai.com")
        return Provider(base, self.api_key_env, model, name)


class ProviderRejected(NonRetryable):
    """The provider refused the request itself (a 4xx other than 429): no retry, no fallback."""


_configured: list[Provider] | None = None


def configure(providers: Sequence[Provider] | None) -> None:
    """Set the default provider chain of this process (None: back to the environment)."""
    global _configured
    _configured = list(providers) if providers is not None else None


def providers() -> list[Provider]:
    """The provider chain in force, defaults resolved."""
    if _configured is not None:
        chain = _configured
    elif os.environ.get("LONGLINE_LLM_PROVIDERS"):
        chain = [Provider(**p) for p in json.loads(os.environ["LONGLINE_LLM_PROVIDERS"])]
    else:
        chain = [Provider()]
    return [p.resolved() for p in chain]


_clients: dict[tuple[int, str | None, str], openai.AsyncOpenAI] = {}


def _client(p: Provider) -> openai.AsyncOpenAI:
    key = os.environ.get(p.api_key_env) or ("offline" if p.base_url else "")
    if not key:
        raise ProviderRejected(
            f"no API key for provider {p.name}: set {p.api_key_env} (or OPENAI_BASE_URL "
            "to an OpenAI-compatible server such as the offline model)"
        )
    ident = (id(asyncio.get_running_loop()), p.base_url, key)
    client = _clients.get(ident)
    if client is None:
        # Retries belong to the component (with Retry-After and the cluster-wide pause).
        client = openai.AsyncOpenAI(base_url=p.base_url, api_key=key, max_retries=0, timeout=120)
        _clients[ident] = client
    return client


# Errors after which the next provider is tried: the endpoint is down or exhausted.
_FALL_THROUGH = (
    openai.APIConnectionError,
    openai.APITimeoutError,
    openai.RateLimitError,
    openai.InternalServerError,
)


async def _chat(
    messages: list[dict[str, Any]],
    *,
    model: str | None = None,
    stream: bool = False,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> str:
    """Send a chat completion; return the assistant's text."""
    chain = providers()
    facts = _context.step_facts.get()
    failed: list[dict[str, str]] = []
    for n, p in enumerate(chain):
        started = time.perf_counter()
        try:
            text, usage, served_model = await _call(
                _client(p), model or p.model, messages, stream, max_tokens, temperature
            )
        except openai.APIStatusError as exc:
            if not isinstance(exc, _FALL_THROUGH) and exc.status_code < 500:
                raise ProviderRejected(
                    f"{p.name} refused the request ({exc.status_code}): {_message(exc)}"
                ) from exc
            failed.append({"provider": p.name, "error": f"{type(exc).__name__}: {exc}"})
            if n == len(chain) - 1:
                raise
        except _FALL_THROUGH as exc:
            failed.append({"provider": p.name, "error": f"{type(exc).__name__}: {exc}"})
            if n == len(chain) - 1:
                raise
        else:
            if facts is not None:
                facts["llm"] = {
                    "provider": p.name,
                    "requested_model": model or p.model,
                    "model": served_model,
                    "usage": usage,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                    "fell_through": failed,
                }
            return text
    raise AssertionError("unreachable: the provider chain is never empty")


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return exc.message


async def _call(
    client: openai.AsyncOpenAI,
    model: str,
    messages: list[dict[str, Any]],
    stream: bool,
    max_tokens: int | None,
    temperature: float | None,
) -> tuple[str, dict[str, int], str]:
    params: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if temperature is not None:
        params["temperature"] = temperature
    if not stream:
        response = await client.chat.completions.create(**params)
        text = response.choices[0].message.content or "" if response.choices else ""
        return text, _usage(response.usage), response.model
    ctx = _context.current_or_none()
    parts: list[str] = []
    usage: dict[str, int] = {}
    served = model
    chunks = await client.chat.completions.create(
        **params, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in chunks:
        served = chunk.model or served
        if chunk.usage is not None:
            usage = _usage(chunk.usage)
        if chunk.choices and chunk.choices[0].delta.content:
            piece = chunk.choices[0].delta.content
            parts.append(piece)
            if ctx is not None:
                await ctx.output(piece)
    return "".join(parts), usage, served


def _usage(usage: Any) -> dict[str, int]:
    if usage is None:
        return {}
    return {
        "input_tokens": int(usage.prompt_tokens or 0),
        "output_tokens": int(usage.completion_tokens or 0),
        "total_tokens": int(usage.total_tokens or 0),
    }


chat: Component[..., str] = component(
    "llm.chat", retry=Retry(max_attempts=5, initial=1.0, maximum=30.0)
)(_chat)
chat.__doc__ = """One chat completion (a step): `await chat(messages, model=..., stream=True)`.

With stream=True the tokens go to watchers as OUTPUT events while they arrive.
A retried streamed call streams again from its start."""


async def complete(
    prompt: str,
    *,
    system: str | None = None,
    model: str | None = None,
    stream: bool = False,
    max_tokens: int | None = None,
    temperature: float | None = None,
    using: Component[..., str] | None = None,
) -> str:
    """Ask one question; the answer's text. `using` picks a configured `chat` variant
    (e.g. `llm.chat.with_limits(...)`)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return await (using or chat)(
        messages, model=model, stream=stream, max_tokens=max_tokens, temperature=temperature
    )

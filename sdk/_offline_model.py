"""An OpenAI-compatible chat-completions server that runs offline, for the demo and tests.

It answers `POST /v1/chat/completions` (streaming or not) with deterministic text
derived from the prompt and honest `usage` numbers (one token per word), and can
be told to misbehave like a real provider: 429 with Retry-After, 500, a slow
first token, connections dropped mid-stream, at given rates. The official
`openai` client talks real HTTP to it; nothing is patched.

    GET  /_stats   what it served: requests, statuses, per-request times and prompt hashes
    POST /_faults  change the faults (JSON with Faults fields)

A user message containing `[[offline:bad-request]]` is refused with a 400.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from aiohttp import web

from . import _offline_text as _offline
from ._options import option

__all__ = ["Faults", "OfflineModel"]

BAD_REQUEST_MARKER = "[[offline:bad-request]]"


@dataclass(frozen=True)
class Faults:
    """How often and how the offline model misbehaves (rates are shares of requests, 0-1)."""

    rate_limit: float = field(default=0.0, metadata=option("share of requests answered 429"))
    retry_after: float = field(
        default=1.0, metadata=option("seconds sent as Retry-After (and retry-after-ms) with a 429")
    )
    server_error: float = field(default=0.0, metadata=option("share of requests answered 500"))
    drop: float = field(
        default=0.0, metadata=option("share of streams cut off half-way (connection closed)")
    )
    slow_first_token: float = field(
        default=0.0, metadata=option("seconds before the first byte of every answer")
    )
    token_delay: float = field(default=0.0, metadata=option("seconds between streamed tokens"))
    seed: int = field(default=0, metadata=option("seed of the fault dice"))


@dataclass
class Served:
    """One request the offline model answered."""

    time: float  # when the answer was complete
    status: int
    prompt_hash: str
    total_tokens: int = 0
    arrived: float = 0.0  # when the request came in


@dataclass
class _State:
    faults: Faults
    served: list[Served] = field(default_factory=list)
    asked: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in messages)


def _topic(text: str) -> str:
    quoted = re.search(r'"([^"]{1,80})"', text)
    return quoted.group(1) if quoted else "the subject"


def answer(model: str, messages: list[dict[str, Any]], max_tokens: int | None) -> str:
    """The deterministic answer to a conversation."""
    last = str(messages[-1].get("content") or "") if messages else ""
    rng = _offline.seeded("answer", model, json.dumps(messages, sort_keys=True))
    listed = [line[2:].strip() for line in last.splitlines() if line.startswith("- ")]
    if listed and re.search(r"\b(pick|choose|select)\b", last, re.I):
        wanted = re.search(r"\b(?:pick|choose|select)\s+(\d+)", last, re.I)
        n = min(len(listed), int(wanted.group(1)) if wanted else max(1, len(listed) // 2))
        return "\n".join(sorted(rng.sample(listed, n), key=listed.index))
    topic = _topic(last)
    lines = [_offline.sentence(rng, topic) for _ in range(6)]
    words = "\n".join(lines).split(" ")
    if max_tokens is not None and len(words) > max_tokens:
        words = words[:max_tokens]
    return " ".join(words)


class OfflineModel:
    """The server: `async with OfflineModel() as model:` serves on `model.base_url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None):
        self.host = host
        self.port = port
        faults = faults or Faults()
        self._state = _State(faults)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """What OPENAI_BASE_URL should be."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def served(self) -> list[Served]:
        """Every request answered so far, in order."""
        return self._state.served

    @property
    def faults(self) -> Faults:
        """The faults in force."""
        return self._state.faults

    def set_faults(self, **changes: Any) -> None:
        """Change some faults (Faults field names)."""
        self._state.faults = replace(self._state.faults, **changes)

    async def __aenter__(self) -> OfflineModel:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> OfflineModel:
        """Start serving; `port` is the bound port afterwards."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_faults", self._set_faults)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def aclose(self) -> None:
        """Stop serving; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "offline", "object": "model"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": len(self.served),
                "peak_in_flight": self.peak_in_flight,
                "served": [asdict(s) for s in self.served],
                "faults": asdict(self.faults),
            }
        )

    async def _set_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        known = {f.name for f in fields(Faults)}
        unknown = set(body) - known
        if unknown:
            return _error(400, f"unknown faults {sorted(unknown)}; known: {sorted(known)}")
        self.set_faults(**body)
        return web.json_response(asdict(self.faults))

    @property
    def peak_in_flight(self) -> int:
        """The most requests it was answering at once."""
        return self._state.peak_in_flight

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        state = self._state
        state.in_flight += 1
        state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            return await self._answer(request, time.time())
        finally:
            state.in_flight -= 1

    async def _answer(self, request: web.Request, arrived: float) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return self._record(arrived, _error(400, "the request body is not JSON"), "")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._record(arrived, _error(400, "messages must be a non-empty list"), "")
        prompt_hash = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
        if any(BAD_REQUEST_MARKER in str(m.get("content")) for m in messages):
            return self._record(
                arrived,
                _error(400, "the offline model was asked to refuse this request"),
                prompt_hash,
            )
        faults = self.faults
        # The dice depend on the prompt and on how often it was asked, not on arrival order,
        # so a run meets the same faults however its concurrent calls interleave.
        seen = self._state.asked.get(prompt_hash, 0)
        self._state.asked[prompt_hash] = seen + 1
        rng = _offline.seeded("faults", str(faults.seed), prompt_hash, str(seen))
        roll = rng.random()
        if roll < faults.rate_limit:
            response = _error(429, "rate limit reached (offline model fault injection)")
            response.headers["Retry-After"] = f"{faults.retry_after:g}"
            response.headers["retry-after-ms"] = str(int(faults.retry_after * 1000))
            return self._record(arrived, response, prompt_hash)
        if roll < faults.rate_limit + faults.server_error:
            return self._record(
                arrived, _error(500, "internal error (offline model fault injection)"), prompt_hash
            )
        drop = rng.random() < faults.drop
        if faults.slow_first_token:
            await asyncio.sleep(faults.slow_first_token)

        model = str(body.get("model") or "offline")
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        text = answer(model, messages, int(max_tokens) if max_tokens else None)
        usage = {
            "prompt_tokens": _words(messages),
            "completion_tokens": len(text.split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        ident = f"chatcmpl-offline-{prompt_hash}"
        created = int(time.time())
        if not body.get("stream"):
            self.served.append(
                Served(time.time(), 200, prompt_hash, usage["total_tokens"], arrived)
            )
            return web.json_response(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        return await self._stream(
            request, ident, created, model, text, usage, drop, prompt_hash, body, arrived
        )

    async def _stream(
        self,
        request: web.Request,
        ident: str,
        created: int,
        model: str,
        text: str,
        usage: dict[str, int],
        drop: bool,
        prompt_hash: str,
        body: dict[str, Any],
        arrived: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        words = text.split(" ")
        for i, word in enumerate(words):
            if drop and i == len(words) // 2:
                self.served.append(Served(time.time(), 0, prompt_hash, arrived=arrived))
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-answer
                return response
            await send({"content": word + (" " if i < len(words) - 1 else "")})
            if self.faults.token_delay:
                await asyncio.sleep(self.faults.token_delay)
        await send({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            tail = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await response.write(f"data: {json.dumps(tail)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.served.append(Served(time.time(), 200, prompt_hash, usage["total_tokens"], arrived))
        return response

    def _record(self, arrived: float, response: web.Response, prompt_hash: str) -> web.Response:
        self.served.append(Served(time.time(), response.status, prompt_hash, arrived=arrived))
        return response


def _error(status: int, message: str) -> web.Response:
    kind = {400: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status
    )

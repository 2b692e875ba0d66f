"""longline.llm against the offline model (real HTTP, the official openai client), with faults."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from itertools import pairwise

import pytest

import longline
from longline.testing import OfflineModel
from tests.integration.conftest import Stack

EventType = longline.EventType


@pytest.fixture
async def model(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OfflineModel]:
    async with OfflineModel() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "offline")
        monkeypatch.delenv("LONGLINE_LLM_PROVIDERS", raising=False)
        yield server


async def _finished(stack: Stack, run_id: str) -> list[dict[str, object]]:
    events = [e async for e in stack.client.get_run(run_id).events()]
    return [e.data for e in events if e.type is EventType.COMPONENT_FINISHED]


async def test_blog_post_rides_through_429s_honouring_retry_after(
    stack: Stack, model: OfflineModel
) -> None:
    model.set_faults(rate_limit=0.3, retry_after=1.0, seed=7)
    result = await stack.client.run("blog_post", {"topic": "tides", "sections": 3})
    assert len(result["sections"]) == 3
    limited = [s for s in model.served if s.status == 429]
    assert limited, "the fault injection should have answered some calls with 429"
    by_prompt: dict[str, list[tuple[float, int]]] = {}
    for s in model.served:
        by_prompt.setdefault(s.prompt_hash, []).append((s.time, s.status))
    for answers in by_prompt.values():
        assert len(answers) <= 5  # llm.chat's policy: at most 5 tries
        for (t0, status), (t1, _) in pairwise(answers):
            if status == 429:
                assert t1 - t0 >= 0.99, "a retry came before the provider's Retry-After"
    assert sum(s.status == 200 for s in model.served) == len(by_prompt)


async def test_a_provider_that_refuses_connections_falls_through_to_the_next(
    stack: Stack, model: OfflineModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from longline._embedded import free_port

    chain = [
        {"base_url": f"http://127.0.0.1:{free_port()}/v1", "name": "primary"},
        {"base_url": model.base_url, "name": "fallback"},
    ]
    monkeypatch.setenv("LONGLINE_LLM_PROVIDERS", json.dumps(chain))
    handle = await stack.client.start("ask", {"prompt": 'Tell me about "moons"'})
    assert await handle.result()
    (step,) = await _finished(stack, handle.run_id)
    assert step["llm"]["provider"] == "fallback"  # type: ignore[index]
    (fell,) = step["llm"]["fell_through"]  # type: ignore[index]
    assert fell["provider"] == "primary" and "APIConnectionError" in fell["error"]


async def test_a_cached_second_run_makes_no_model_call(stack: Stack, model: OfflineModel) -> None:
    first = await stack.client.run("ask", {"prompt": 'About "reefs"', "cached": True})
    calls = len(model.served)
    handle = await stack.client.start("ask", {"prompt": 'About "reefs"', "cached": True})
    assert await handle.result() == first
    assert len(model.served) == calls  # the model server's own counter did not move
    (step,) = await _finished(stack, handle.run_id)
    assert step["cache"] == "hit"


async def test_a_400_fails_the_step_at_once_with_the_providers_message(
    stack: Stack, model: OfflineModel
) -> None:
    handle = await stack.client.start("ask", {"prompt": "[[offline:bad-request]] please"})
    with pytest.raises(longline.RunFailed) as failed:
        await handle.result()
    error = failed.value.error
    assert error is not None and error.type == "ProviderRejected"
    assert error.component == "llm.chat"
    assert "refused the request (400): the offline model was asked to refuse" in error.message
    assert len(model.served) == 1  # no retry


async def test_token_usage_adds_up_from_the_events(stack: Stack, model: OfflineModel) -> None:
    handle = await stack.client.start("blog_post", {"topic": "estuaries", "sections": 2})
    await handle.result()
    steps = await _finished(stack, handle.run_id)
    used = sum(s["llm"]["usage"]["total_tokens"] for s in steps if "llm" in s)  # type: ignore[index]
    assert used > 0
    assert used == sum(s.total_tokens for s in model.served)


async def test_streamed_tokens_arrive_as_output_events(stack: Stack, model: OfflineModel) -> None:
    handle = await stack.client.start("ask", {"prompt": 'Stream about "waves"', "stream": True})
    text = await handle.result()
    events = [e async for e in handle.events()]
    chunks = [e.message for e in events if e.type is EventType.OUTPUT]
    assert len(chunks) > 5 and "".join(chunks) == text


async def test_dropped_streams_and_500s_are_retried(stack: Stack, model: OfflineModel) -> None:
    model.set_faults(server_error=0.2, drop=0.2, seed=3)
    result = await stack.client.run("blog_post", {"topic": "currents", "sections": 2})
    assert result["sections"]
    assert any(s.status in (0, 500) for s in model.served), "no fault was injected"


async def test_a_workflow_runs_in_process_against_the_offline_model(model: OfflineModel) -> None:
    """What a user's own test of a workflow looks like: longline.testing, no server."""
    from longline.examples import blog_post
    from longline.testing import run_local

    run = await run_local(blog_post, {"topic": "tides", "sections": 2})
    assert run.error is None
    assert len(run.result["sections"]) == 2
    assert "".join(run.outputs).count("## ") == 2
    assert len(model.served) == 1 + 1 + 1 + 2  # research, outline, introduction, 2 sections


async def test_onboard_site_learns_pages_in_child_runs_under_its_concurrency_limit(
    stack: Stack, model: OfflineModel
) -> None:
    model.set_faults(slow_first_token=0.05)  # calls overlap, so the limit has work to do
    handle = await stack.client.start("onboard_site", {"pages": 40, "concurrency": 4})
    result = await handle.result()
    assert result["pages"] == 40 and len(result["facts"]) == 40
    assert 2 <= model.peak_in_flight <= 4  # calls overlapped, and never more than 4
    assert len(model.served) == 1 + 40  # the pick, then one extraction per page
    events = [e async for e in handle.events()]
    # One child run per page, at most four at once, with progress as they end.
    assert sum(e.type is EventType.CHILD_STARTED for e in events) == 40
    progress = [e.data for e in events if e.type is EventType.PROGRESS]
    assert progress[0] == {"done": 0.0, "total": 40.0}
    assert progress[-1] == {"done": 40.0, "total": 40.0}

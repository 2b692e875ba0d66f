"""The web UI the control plane serves (control_plane/_ui), in a real headless Chromium: start
a run from its form, watch its output stream in, reload the page mid-run, then kill the
control plane and start it again on the same address. The run view must show every event
exactly once, in order, and recover by itself.

Needs the system's Chromium, as tests/e2e/test_browser.py does (skips with a printed reason
where it is missing, fails under CI=true).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

import longline
from longline._embedded import free_port
from longline._offline_model import Faults, OfflineModel
from tests.conftest import eventually
from tests.e2e.test_browser import chromium
from tests.procs import Proc, start_http_control_plane, start_worker

# The UI talks to the API like any page; on a cluster that is test_http's cluster pass.
pytestmark = pytest.mark.single_redis


async def _snap(page: Any, name: str, width: int = 1100) -> None:
    """A screenshot for docs/ui when LONGLINE_UI_SCREENSHOTS names a folder (docs/ui.md says
    how they are made)."""
    folder = os.environ.get("LONGLINE_UI_SCREENSHOTS")
    if folder:
        await page.set_viewport_size({"width": width, "height": 800})
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


async def test_blog_post_started_in_the_ui_streams_once_across_a_reload_and_a_restart(
    redis_url: str, procs: list[Proc]
) -> None:
    binary = chromium()
    from playwright.async_api import async_playwright

    grpc_port, http_port = free_port(), free_port()
    cp = await start_http_control_plane(redis_url, grpc_port, http_port)
    procs.append(cp)
    target = f"127.0.0.1:{grpc_port}"
    ui = f"http://127.0.0.1:{http_port}/ui/"

    # The blog_post example on the offline model (slowed to a few seconds a run).
    async with OfflineModel(faults=Faults(token_delay=0.02)) as model, async_playwright() as pw:
        model_env = {
            "OPENAI_BASE_URL": model.base_url,
            "OPENAI_API_KEY": "offline",
            "LONGLINE_OFFLINE_MODEL": "1",
            "LONGLINE_LLM_MODEL": "offline",
        }
        procs.append(await start_worker(redis_url, target, env=model_env))
        browser = await pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(ui + "#/workflows")
            form = page.locator('form[data-workflow="blog_post"]')
            text = form.locator("textarea")
            await text.fill("{not json")
            assert await form.locator("button").is_disabled()  # checked before it is sent
            assert "Not JSON" in await form.locator(".error").inner_text()
            await text.fill(json.dumps({"topic": "tides", "sections": 3}))
            await form.locator("button").click()
            await page.wait_for_url("**/ui/#/runs/*")
            run_id = page.url.rsplit("/", 1)[1]

            async def seen(n: int) -> bool:
                return int(await page.evaluate("window.__longline.seen.length")) >= n

            await eventually(lambda: seen(12), what="the run view to stream", timeout=30)
            await page.reload()  # the view rebuilds the history once, then goes on live
            await eventually(lambda: seen(16), what="the reloaded view to stream", timeout=30)
            cp.kill()  # mid-run: the page's stream drops
            await asyncio.sleep(1)
            cp = await start_http_control_plane(redis_url, grpc_port, http_port)
            procs.append(cp)
            state = page.locator(".state")

            async def succeeded() -> bool:
                return "succeeded" in await state.inner_text()

            await eventually(succeeded, what="the view to show the run succeeded", timeout=60)
            await _snap(page, "run-view")
            ids: list[str] = await page.evaluate("window.__longline.seen")
            output = await page.locator(".output").inner_text()
            opens = int(await page.evaluate("window.__longline.opens"))
            result = await page.locator(".result").inner_text()
            # A long result wraps: the page is never wider than its window.
            assert await page.evaluate("document.documentElement.scrollWidth") <= 1280
        finally:
            await browser.close()

    async with longline.Client(target) as client:
        events = [e async for e in client.get_run(run_id).events()]
    assert ids == [e.event_id for e in events]  # every event once, in order
    written = "".join(e.message for e in events if e.type is longline.EventType.OUTPUT)
    assert output.strip() == written.strip() and len(written) > 200
    assert json.loads(result)["topic"] == "tides"
    assert opens >= 2  # it came back to the restarted control plane by itself


async def test_the_ui_answers_a_request_for_input_from_its_schema(
    redis_url: str, procs: list[Proc]
) -> None:
    binary = chromium()
    from playwright.async_api import async_playwright

    grpc_port, http_port = free_port(), free_port()
    procs.append(await start_http_control_plane(redis_url, grpc_port, http_port))
    target = f"127.0.0.1:{grpc_port}"
    procs.append(await start_worker(redis_url, target))
    async with longline.Client(target) as client, async_playwright() as pw:
        handle = await client.start("approval", {})
        browser = await pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{http_port}/ui/#/runs/{handle.run_id}")
            form = page.locator('form[data-input="approval"]')
            await form.wait_for(timeout=30_000)  # drawn from the request's JSON Schema
            assert "Approve the plan?" in await form.inner_text()
            # A wrong value is refused, and the message names the field.
            await form.locator("summary").click()
            await form.locator("textarea.payload").fill('{"approved": "yes"}')
            await form.locator("button").click()
            error = form.locator(".error")
            await error.filter(has_text="approved").wait_for(timeout=10_000)
            await _snap(page, "input-form")
            assert handle.run_id and not await form.evaluate("f => f.classList.contains('sent')")
            # The form's own fields make a right one, and the run goes on.
            await form.locator('input[name="approved"]').check()
            await form.locator('input[name="note"]').fill("ship it")
            assert json.loads(await form.locator("textarea.payload").input_value()) == {
                "approved": True,
                "note": "ship it",
            }
            await form.locator("button").click()
            result = await asyncio.wait_for(handle.result(), 30)
            assert result == {"answer": {"approved": True, "note": "ship it"}}
            await page.locator(".state", has_text="succeeded").wait_for(timeout=30_000)
            assert await form.count() == 0  # answered: the form is gone
        finally:
            await browser.close()


async def test_the_waterfall_of_a_killed_and_resumed_run_shows_both_attempts(
    redis_url: str, procs: list[Proc]
) -> None:
    binary = chromium()
    from playwright.async_api import async_playwright

    grpc_port, http_port = free_port(), free_port()
    lease = ("--lease-timeout", "2", "--heartbeat-interval", "0.5")
    procs.append(await start_http_control_plane(redis_url, grpc_port, http_port, *lease))
    target = f"127.0.0.1:{grpc_port}"
    first = await start_worker(redis_url, target, "--worker-id", "w1", name="w1")
    procs.append(first)
    async with longline.Client(target) as client:
        handle = await client.start("five_steps", {"delay": 0.4})
        async for event in handle.events():
            if event.type is longline.EventType.STATUS and event.message == "step 3":
                break
        procs.append(await start_worker(redis_url, target, "--worker-id", "w2", name="w2"))
        first.kill()  # kill -9 mid-run: the lease runs out, w2 resumes from the checkpoints
        assert await asyncio.wait_for(handle.result(), 60) == {"steps": 5}

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{http_port}/ui/#/runs/{handle.run_id}")
            attempts = page.locator('.waterfall li[data-kind="attempt"]')
            await attempts.nth(1).wait_for(timeout=30_000)
            await _snap(page, "waterfall")
            kinds = await page.locator(".waterfall li.span").evaluate_all(
                "rows => rows.map(r => [r.dataset.kind, r.dataset.status, r.dataset.attempt])"
            )
        finally:
            await browser.close()
    tried = [(status, attempt) for kind, status, attempt in kinds if kind == "attempt"]
    assert [attempt for _, attempt in tried] == ["1", "2"]
    assert tried[0][0] != "ok" and tried[1][0] == "ok"  # the first one was cut short
    replayed = [a for kind, status, a in kinds if kind == "component" and status == "replayed"]
    assert replayed and set(replayed) == {"2"}  # steps done in attempt 1, replayed in 2


async def test_a_run_of_ten_thousand_events_opens_and_scrolls_without_freezing(
    redis_url: str, procs: list[Proc]
) -> None:
    binary = chromium()
    from playwright.async_api import async_playwright

    grpc_port, http_port = free_port(), free_port()
    procs.append(await start_http_control_plane(redis_url, grpc_port, http_port))
    target = f"127.0.0.1:{grpc_port}"
    procs.append(await start_worker(redis_url, target))
    async with longline.Client(target) as client:
        failing = await client.start("boom", {})
        with pytest.raises(longline.RunFailed):
            await asyncio.wait_for(failing.result(), 60)
        handle = await client.start("many_events", {"n": 10_000})
        assert await asyncio.wait_for(handle.result(), 120) == {"events": 10_000}
        total = len([e async for e in handle.events()])
    assert total >= 10_000
    expected = "".join(f"line {i}\n" for i in range(0, 10_000, 10))

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            # A failed run says what failed, where, and in which attempt, plainly.
            await page.goto(f"http://127.0.0.1:{http_port}/ui/#/runs/{failing.run_id}")
            said = page.locator(".outcome p.error")
            await said.wait_for(timeout=30_000)
            plainly = await said.inner_text()
            assert "the widget broke" in plainly and "in explode" in plainly, plainly
            assert "attempt 1" in plainly, plainly
            await page.close()
            page = await browser.new_page()  # a fresh load, for its first paint
            await page.goto(f"http://127.0.0.1:{http_port}/ui/#/runs/{handle.run_id}")

            async def ended() -> float:
                return float(await page.evaluate("window.__longline.endedAt ?? 0"))

            history_ms = await eventually(ended, what="the terminal event", timeout=60)
            assert await page.evaluate("window.__longline.seen.length") == total
            paint_ms = await page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1"
            )
            # Scrolling the whole output: how long the page takes to draw a frame after it.
            frame_ms = await page.evaluate(
                """async () => {
                  const out = document.querySelector('.output');
                  let worst = 0;
                  for (const top of [0, out.scrollHeight / 2, out.scrollHeight]) {
                    const t = performance.now();
                    out.scrollTop = top;
                    await new Promise((r) => requestAnimationFrame(() => r()));
                    worst = Math.max(worst, performance.now() - t);
                  }
                  return worst;
                }"""
            )
            output = await page.locator(".output").inner_text()
            entries = await page.locator(".timeline li").count()
            more = await page.locator("button:visible", has_text="Show all").count()
            await page.locator("button:visible", has_text="Show all").click()
            await page.locator(".timeline li").nth(10_000).wait_for(timeout=30_000)
            every = await page.locator(".timeline li").count()
        finally:
            await browser.close()
    assert output == expected  # every chunk once, in order
    assert entries == 300 and more == 1  # the timeline stays short; the rest is a click away
    assert every == 10_003  # the statuses, queued, started and succeeded
    print(
        f"a run of {total} events: first contentful paint {paint_ms:.0f} ms, full history "
        f"{history_ms:.0f} ms after navigation, slowest frame while scrolling {frame_ms:.0f} ms"
    )


async def test_with_tokens_on_the_ui_asks_for_one_and_shows_the_tenant_its_runs_only(
    redis_url: str, procs: list[Proc]
) -> None:
    binary = chromium()
    from playwright.async_api import async_playwright

    from tests.integration.test_auth import secret, tokens_toml

    secured = {
        "LONGLINE_INSECURE_NO_AUTH": "0",
        "LONGLINE_TOKENS": tokens_toml(["alice", "bob", "worker"]),
        "LONGLINE_RUN_TOKEN_SECRET": "a-run-token-secret-of-at-least-32-bytes!",
    }
    grpc_port, http_port = free_port(), free_port()
    target = f"127.0.0.1:{grpc_port}"
    procs.append(await start_http_control_plane(redis_url, grpc_port, http_port, env=secured))
    procs.append(
        await start_worker(
            redis_url,
            target,
            env={"LONGLINE_INSECURE_NO_AUTH": "0", "LONGLINE_TOKEN": secret("worker")},
            client_token=secret("alice"),
        )
    )
    async with longline.Client(target, token=secret("bob")) as bob:
        bobs = await bob.start("echo", {"who": "bob"})
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            # A phone-sized screen, and only the keyboard.
            page = await browser.new_page(viewport={"width": 375, "height": 740})
            urls: list[str] = []
            page.on("request", lambda request: urls.append(request.url))
            await page.goto(f"http://127.0.0.1:{http_port}/ui/#/workflows")
            dialog = page.locator("#token-dialog")
            await dialog.wait_for(state="visible", timeout=10_000)  # asked, on the first 401
            await page.locator("#token-input").fill(secret("alice"))
            await page.keyboard.press("Enter")
            form = page.locator('form[data-workflow="chatty"]')
            await form.wait_for(timeout=10_000)
            assert await page.evaluate("sessionStorage.getItem('longline.token')") == secret(
                "alice"
            )
            text = form.locator("textarea")
            await text.fill(json.dumps({"chunks": 400, "delay": 0.05}))
            await text.focus()
            await page.keyboard.press("Tab")  # to the Start button
            await page.keyboard.press("Enter")
            await page.wait_for_url("**/ui/#/runs/*")
            run_id = page.url.rsplit("/", 1)[1]

            async def streaming() -> bool:
                return int(await page.evaluate("window.__longline.seen.length")) >= 5

            await eventually(streaming, what="the run view to stream", timeout=30)
            await page.get_by_role("button", name="Cancel").click()
            await page.locator(".state", has_text="cancelled").wait_for(timeout=30_000)
            wide = await page.evaluate("document.documentElement.scrollWidth")
            assert wide <= 375  # nothing wider than the phone's screen
            await _snap(page, "phone", width=375)

            # The runs list: alice's run, not bob's, and a run started elsewhere appears.
            await page.goto(f"http://127.0.0.1:{http_port}/ui/#/")
            rows = page.locator("table.runs tbody tr")
            await rows.first.wait_for(timeout=10_000)
            listed = await rows.locator("a").evaluate_all("links => links.map(a => a.href)")
            assert any(run_id in href for href in listed)
            assert not any(bobs.run_id in href for href in listed)
            async with longline.Client(target, token=secret("alice")) as alice:
                later = await alice.start("echo", {"later": True})
            await page.locator(f'a[href="#/runs/{later.run_id}"]').wait_for(timeout=10_000)
            # The tenant's token went in headers only, never in a URL (logs keep URLs).
            assert urls and not [u for u in urls if secret("alice") in u]
            # Started before a time long gone: nothing; the filter rides in the URL.
            await page.locator('input[name="before"]').fill("2000-01-01T00:00")
            await page.wait_for_url("**before=2000-01-01T00*")
            await rows.first.wait_for(state="detached", timeout=10_000)
            assert await rows.count() == 0
        finally:
            await browser.close()

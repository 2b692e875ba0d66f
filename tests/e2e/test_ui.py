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

import pytest

import longline
from longline._embedded import free_port
from tests.conftest import eventually
from tests.e2e.test_browser import chromium
from tests.procs import Proc, spawn, start_worker, wait_serving

# The UI talks to the API like any page; on a cluster that is test_http's cluster pass.
pytestmark = pytest.mark.single_redis

CHUNKS = 60


async def _control_plane(redis_url: str, grpc_port: int, http_port: int) -> Proc:
    target = f"127.0.0.1:{grpc_port}"
    proc = spawn(
        "cp",
        "control-plane",
        "--listen",
        target,
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--redis",
        redis_url,
    )
    await wait_serving(target, proc)
    return proc


async def test_a_run_started_in_the_ui_streams_once_across_a_reload_and_a_restart(
    redis_url: str, procs: list[Proc]
) -> None:
    binary = chromium()
    from playwright.async_api import async_playwright

    grpc_port, http_port = free_port(), free_port()
    cp = await _control_plane(redis_url, grpc_port, http_port)
    procs.append(cp)
    target = f"127.0.0.1:{grpc_port}"
    procs.append(await start_worker(redis_url, target))
    ui = f"http://127.0.0.1:{http_port}/ui/"

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(ui + "#/workflows")
            form = page.locator('form[data-workflow="chatty"]')
            text = form.locator("textarea")
            await text.fill("{not json")
            assert await form.locator("button").is_disabled()  # checked before it is sent
            assert "Not JSON" in await form.locator(".error").inner_text()
            await text.fill(json.dumps({"chunks": CHUNKS, "delay": 0.1}))
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
            cp = await _control_plane(redis_url, grpc_port, http_port)
            procs.append(cp)
            state = page.locator(".state")

            async def succeeded() -> bool:
                return "succeeded" in await state.inner_text()

            await eventually(succeeded, what="the view to show the run succeeded", timeout=60)
            ids: list[str] = await page.evaluate("window.__longline.seen")
            output = await page.locator(".output").inner_text()
            opens = int(await page.evaluate("window.__longline.opens"))
            result = await page.locator(".result").inner_text()
        finally:
            await browser.close()

    async with longline.Client(target) as client:
        expected = [e.event_id async for e in client.get_run(run_id).events()]
    assert ids == expected  # every event once, in order, after a reload and a restart
    assert output == "".join(f"chunk {i}\n" for i in range(CHUNKS))
    assert json.loads(result) == {"chunks": CHUNKS}
    assert opens >= 2  # it came back to the restarted control plane by itself

"""A browser watches a run over the HTTP face: a real headless Chromium (the system's,
driven by Playwright) opens an EventSource on a page of another origin; the control plane
serving it is killed (-9) and started again on the same address mid-stream; the page's
handlers must see every event exactly once, in order, and EventSource must stop by
itself after the end (the 204), not reconnect for ever.

Needs the system's Chromium (Debian's `chromium` package; LONGLINE_CHROMIUM names another
binary). Where it is missing the test says so and skips, except under CI=true, where it
must run (.ci/run installs it). Playwright never downloads a browser here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import longline
from longline._embedded import free_port
from longline.v1 import runs_pb2
from tests.conftest import eventually
from tests.procs import Proc, start_http_control_plane, start_worker

EVENT_TYPES = [name for name in runs_pb2.EventType.keys() if name != "EVENT_TYPE_UNSPECIFIED"]
PAGE = """<!doctype html>
<html><body><pre id="log"></pre><script>
window.seen = []; window.opens = 0; window.errors = 0; window.source = null;
window.watch = (url, types) => {
  const source = new EventSource(url);
  window.source = source;
  source.onopen = () => { window.opens += 1; };
  source.onerror = () => { window.errors += 1; };
  for (const type of types) {
    source.addEventListener(type, (e) => {
      const event = JSON.parse(e.data);
      window.seen.push({id: e.lastEventId, type: e.type, eventId: event.eventId});
    });
  }
};
</script></body></html>
"""


def chromium() -> str:
    """The system's Chromium binary, or skip (fail under CI=true) saying why."""
    for candidate in (
        os.environ.get("LONGLINE_CHROMIUM", ""),
        "/usr/lib/chromium/chromium",
        shutil.which("chromium") or "",
        shutil.which("chromium-browser") or "",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    reason = (
        "no Chromium found (apt-get install chromium, or set LONGLINE_CHROMIUM): "
        "the browser tests are skipped"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true requires it)")
    print(reason)
    pytest.skip(reason)


@pytest.fixture
async def page_origin() -> AsyncIterator[str]:
    """A page served from an origin of its own (another port), so the API is cross-origin."""
    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


# Once, on one Redis: its Redis calls (SSE resume) run on the cluster in test_http and
# test_lifecycle.
@pytest.mark.single_redis
async def test_a_page_sees_every_event_once_across_a_control_plane_restart(
    redis_url: str, procs: list[Proc], page_origin: str
) -> None:
    binary = chromium()
    from playwright.async_api import async_playwright

    grpc_port, http_port = free_port(), free_port()
    cp = await start_http_control_plane(
        redis_url, grpc_port, http_port, "--http-cors-origin", page_origin
    )
    procs.append(cp)
    target = f"127.0.0.1:{grpc_port}"
    procs.append(await start_worker(redis_url, target))
    api = f"http://127.0.0.1:{http_port}"

    async with longline.Client(target) as client, async_playwright() as pw:
        handle = await client.start("chatty", {"chunks": 80, "delay": 0.1})
        browser = await pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(page_origin)
            await page.evaluate(
                "([url, types]) => window.watch(url, types)",
                [f"{api}/v1/runs/{handle.run_id}/events", EVENT_TYPES],
            )

            async def seen(n: int) -> bool:
                return int(await page.evaluate("window.seen.length")) >= n

            await eventually(lambda: seen(15), what="the page to see 15 events", timeout=30)
            cp.kill()  # mid-stream: the page's EventSource loses its connection
            assert not await seen(80)
            await asyncio.sleep(1)
            cp = await start_http_control_plane(
                redis_url, grpc_port, http_port, "--http-cors-origin", page_origin
            )
            procs.append(cp)

            async def closed() -> bool:
                return bool(await page.evaluate("window.source.readyState === 2"))

            await eventually(closed, what="EventSource to stop after the end", timeout=60)
            got: list[dict[str, Any]] = await page.evaluate("window.seen")
            opens = int(await page.evaluate("window.opens"))
            await asyncio.sleep(1.5)  # a reconnect loop would show here (retry is 1 s)
            assert int(await page.evaluate("window.opens")) == opens
        finally:
            await browser.close()

        expected = [e async for e in handle.events()]
    assert [g["id"] for g in got] == [e.event_id for e in expected]  # once each, in order
    assert all(g["id"] == g["eventId"] for g in got)
    assert [g["type"] for g in got] == ["EVENT_TYPE_" + e.type.name for e in expected]
    assert got[-1]["type"] == "EVENT_TYPE_RUN_SUCCEEDED"
    assert opens >= 2  # it did reconnect, to the restarted control plane
    print(f"the page saw {len(got)} events over {opens} connections")

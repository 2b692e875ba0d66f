"""Prometheus endpoints of both planes, scraped while runs come and go."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import longline
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.control_plane import ControlPlane, ControlPlaneSettings
from tests.conftest import FLOWS, eventually


async def _scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    return await asyncio.to_thread(get)


def _value(text: str, metric: str) -> float | None:
    match = re.search(rf"^{re.escape(metric)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


async def test_queue_depth_and_running_runs_follow_the_runs(redis_url: str) -> None:
    cp_settings = ControlPlaneSettings(
        insecure_no_auth=True,
        redis_url=redis_url,
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
    )
    async with ControlPlane(cp_settings) as cp:
        target = f"127.0.0.1:{cp.port}"
        worker = Worker(
            WorkerSettings(
                insecure_no_auth=True,
                redis_url=redis_url,
                control_plane=target,
                slots=1,
                metrics_listen="127.0.0.1:0",
            ),
            load_workflows(str(FLOWS)),
        )
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.connected.wait(), 10)

        async def looks(cp_want: dict[str, float], worker_want: dict[str, float]) -> bool:
            cp_text, worker_text = (
                await _scrape(cp.metrics_port),
                await _scrape(worker.metrics_port),
            )
            return all(_value(cp_text, m) == v for m, v in cp_want.items()) and all(
                _value(worker_text, m) == v for m, v in worker_want.items()
            )

        async with longline.Client(target) as client:
            handles = [
                await client.start("slow", {"steps": 100_000, "delay": 0.01}) for _ in range(3)
            ]
            await eventually(
                lambda: looks(
                    {
                        'longline_queue_depth{workflow="slow"}': 2,
                        'longline_runs{status="RUNNING"}': 1,
                    },
                    {"longline_worker_running_runs": 1, "longline_worker_free_slots": 0},
                ),
                what="one run running and two queued",
            )
            # A watcher of the running run: past its catch-up, its events come live through
            # the hub, which counts each delivery.
            running = [h for h in handles if (await h.describe()).status.name == "RUNNING"]
            seen = 0
            async for _ in running[0].events():
                seen += 1
                text = await _scrape(cp.metrics_port)
                if (_value(text, "longline_event_delivery_seconds_count") or 0) > 0:
                    break
                assert seen < 1000, "no event was delivered live"
            for h in handles:
                await h.cancel()
            await eventually(
                lambda: looks(
                    {
                        'longline_queue_depth{workflow="slow"}': 0,
                        'longline_runs{status="RUNNING"}': 0,
                        'longline_runs{status="CANCELLED"}': 3,
                    },
                    {"longline_worker_running_runs": 0, "longline_worker_free_slots": 1},
                ),
                what="everything cancelled and the slot free",
            )
            assert await client.run("echo", "x") == "x"
            cp_text = await _scrape(cp.metrics_port)
            assert _value(cp_text, "longline_connected_workers") == 1
            worker_text = await _scrape(worker.metrics_port)
            assert (_value(worker_text, "longline_event_write_seconds_count") or 0) > 0
        worker.request_stop()
        await task

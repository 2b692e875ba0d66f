"""The whole of longline in one process: what `longline dev` serves, and what tests use.

    async with DevStack("tests/flows.py", redis_url=url, worker={"slots": 4}) as stack:
        async with longline.Client(stack.target) as client: ...

In order: a Redis (an embedded redis-server unless `redis_url` is given, or a local Redis
Cluster with `redis_cluster`), the offline OpenAI-compatible model (when asked, or by
default when neither OPENAI_API_KEY nor OPENAI_BASE_URL is set), a control plane with no
authentication, and one worker serving `module`; closed in the reverse order, each part
whether or not the others started.

Library code: it never installs a signal handler or exits. The planes come through
their registered `Plane`s (`longline._plugins`), as the SDK may not import them. A
control plane whose port is taken is started again on a free port, so a demo runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, cast

from ._embedded import EmbeddedRedis
from ._embedded_cluster import EmbeddedCluster
from ._offline_model import Faults, OfflineModel
from ._options import DEFAULT_ADDRESS
from ._plugins import ControlPlaneLike, WorkerLike, planes

__all__ = ["DEFAULT_MODULE", "DEV_CLUSTER_MASTERS", "DevStack"]

DEFAULT_MODULE = "longline.examples"
DEV_CLUSTER_MASTERS = 3  # the masters of the cluster `redis_cluster` starts
DEV_HTTP_LISTEN = "127.0.0.1:8080"  # the control plane's HTTP face, unless told otherwise
log = logging.getLogger(__name__)


class DevStack:
    """Redis, the offline model, a control plane and a worker; `async with` it.

    `control_plane` and `worker` are settings of those planes by field name (the stack
    sets the Redis URL, the worker's target and no authentication itself). With
    `redis_cluster` it starts a local Redis Cluster (`EmbeddedCluster`) of
    DEV_CLUSTER_MASTERS masters and no replicas instead of one embedded server, and hands
    both planes its `redis+cluster://` URL (not with `redis_url`: a ValueError). With
    `offline_model` None the model serves only when no OpenAI variable is set; when it
    serves, the process's OPENAI_* variables point at it until the stack closes (the
    worker reads them at call time). `connect_timeout` bounds the wait for the worker
    to connect (TimeoutError); `report` is told, in a line each, what the stack does.
    A ValueError names a setting that is wrong.
    """

    def __init__(
        self,
        module: str = DEFAULT_MODULE,
        *,
        redis_url: str = "",
        redis_cluster: bool = False,
        offline_model: bool | None = None,
        offline_token_delay: float = 0.01,
        control_plane: Mapping[str, Any] | None = None,
        worker: Mapping[str, Any] | None = None,
        connect_timeout: float | None = None,
        report: Callable[[str], object] | None = None,
    ) -> None:
        if redis_url and redis_cluster:
            raise ValueError("a dev stack takes redis_url or redis_cluster, not both")
        self.module = module
        self.redis_url = redis_url
        self.target = ""  # the control plane's HOST:PORT once started
        self.http_url = ""  # the control plane's HTTP face (http://HOST:PORT) once started
        self.embedded: EmbeddedRedis | None = None
        self.cluster: EmbeddedCluster | None = None
        self._cluster_wanted = redis_cluster
        self.offline: OfflineModel | None = None
        self.control_plane: ControlPlaneLike | None = None
        self.worker: WorkerLike | None = None
        self._offline_wanted = offline_model
        self._token_delay = offline_token_delay
        self._cp_settings = dict(control_plane or {})
        self._worker_settings = dict(worker or {})
        self._connect_timeout = connect_timeout
        self._report = report or log.info
        self._worker_task: asyncio.Task[None] | None = None
        self._saved_env: dict[str, str | None] = {}
        self._closing = contextlib.AsyncExitStack()

    async def __aenter__(self) -> DevStack:
        await self.start()
        return self

    async def start(self) -> None:
        """Start every part; if one fails, close what started and raise why."""
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def workflows(self) -> list[str]:
        """The names of the workflows the worker serves, sorted."""
        return sorted(self.worker.workflows) if self.worker is not None else []

    async def aclose(self) -> None:
        """Stop the worker (it drains), the control plane, the model and Redis; safe twice."""
        await self._closing.aclose()

    async def _start(self) -> None:
        found = planes()
        await self._start_redis()
        self._report("dev mode: authentication is off; do not expose this to a network")
        build_cp = found["control-plane"].build
        cp_settings = {
            **self._cp_settings,
            "redis_url": self.redis_url,
            "insecure_no_auth": True,
            "http_listen": self._cp_settings.get("http_listen") or DEV_HTTP_LISTEN,
        }
        cp = cast(ControlPlaneLike, build_cp(**cp_settings))  # checks the settings first
        await self._start_offline_model()
        cp = await self._start_control_plane(cp, build_cp, cp_settings)
        self.target = f"127.0.0.1:{cp.port}"
        http_host = str(cp_settings["http_listen"]).rpartition(":")[0]
        if http_host in ("", "0.0.0.0", "[::]"):
            http_host = "127.0.0.1"
        self.http_url = f"http://{http_host}:{cp.http_port}" if cp.http_port else ""
        worker = cast(
            WorkerLike,
            found["worker"].build(
                module=self.module,
                **{
                    **self._worker_settings,
                    "redis_url": self.redis_url,
                    "control_plane": self.target,
                    "insecure_no_auth": True,
                },
            ),
        )
        self.worker = worker
        task = asyncio.create_task(worker.run(), name="longline-dev-worker")
        self._worker_task = task
        self._closing.push_async_callback(self._stop_worker)
        await asyncio.wait_for(self._connected(worker, task), self._connect_timeout)

    async def _start_redis(self) -> None:
        if self.redis_url:
            return
        if self._cluster_wanted:
            await self._start_cluster()
            return
        embedded = EmbeddedRedis()
        self.embedded = embedded
        self._closing.push_async_callback(asyncio.to_thread, embedded.stop)  # safe twice
        await asyncio.to_thread(embedded.start)
        self.redis_url = embedded.url
        self._report(f"started an embedded Redis ({embedded.binary}) at {embedded.url}")

    async def _start_cluster(self) -> None:
        cluster = EmbeddedCluster(DEV_CLUSTER_MASTERS)
        self.cluster = cluster
        self._closing.push_async_callback(asyncio.to_thread, cluster.stop)  # safe twice
        await asyncio.to_thread(cluster.start)
        self.redis_url = cluster.longline_url
        self._report(
            f"started an embedded Redis Cluster of {len(cluster.masters)} masters "
            f"({cluster.binary}) at {cluster.longline_url}"
        )

    async def _start_offline_model(self) -> None:
        wanted = self._offline_wanted
        if wanted is None:
            wanted = not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))
        if not wanted:
            return
        model = OfflineModel(faults=Faults(token_delay=self._token_delay))
        self.offline = model
        await model.start()
        self._closing.push_async_callback(model.aclose)
        self._closing.callback(self._restore_env)
        self._set_env(
            OPENAI_BASE_URL=model.base_url,
            OPENAI_API_KEY="offline",
            LONGLINE_OFFLINE_MODEL="1",
            LONGLINE_LLM_MODEL=os.environ.get("LONGLINE_LLM_MODEL", "offline"),
        )
        self._report(
            "no OPENAI_API_KEY or OPENAI_BASE_URL set: serving the OFFLINE model at "
            f"{model.base_url} (deterministic filler text, not a real model)"
        )

    async def _start_control_plane(
        self, cp: ControlPlaneLike, build: Callable[..., Any], settings: dict[str, Any]
    ) -> ControlPlaneLike:
        try:
            await cp.start()
        except RuntimeError as exc:  # a port is taken: a demo should still run
            # Only the port that is taken moves: the CLI's default target stays on 50051
            # when it is 8080 that another program holds.
            which = "http_listen" if "for HTTP" in str(exc) else "listen"
            host = str(settings.get(which, DEFAULT_ADDRESS)).rsplit(":", 1)[0]
            self._report(f"{exc}; using a free port instead")
            settings[which] = f"{host}:0"
            cp = cast(ControlPlaneLike, build(**settings))
            await cp.start()
        self.control_plane = cp
        self._closing.push_async_callback(cp.shutdown)
        return cp

    async def _connected(self, worker: WorkerLike, task: asyncio.Task[None]) -> None:
        """Wait until the worker is connected; raise why if its run() ends first."""
        connected = asyncio.create_task(worker.connected.wait())
        try:
            await asyncio.wait({connected, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        if task.done():
            task.result()
            raise RuntimeError("the dev stack's worker stopped before it connected")

    async def _stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.request_stop()
        if self._worker_task is not None:
            await self._worker_task

    def _set_env(self, **values: str) -> None:
        for name, value in values.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

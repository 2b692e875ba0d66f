"""One control-plane replica: the gRPC server and its background tasks."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from longline._channel import SERVER_KEEPALIVE, read_pem
from longline._store import Backoff, CancelNotice, EventFeed, Queues, RedisError, Store, connect
from longline.v1 import (
    builds_pb2,
    builds_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

from ._auth import Authenticator, TokenStore
from ._builds import BuildServicer
from ._errors import ErrorInterceptor
from ._http import HttpFace, bound_port, is_loopback
from ._http import serve as serve_http
from ._hub import EventHub
from ._janitor import Janitor
from ._metrics import ControlPlaneMetrics
from ._monitor import LeaseMonitor
from ._run_tokens import RunTokens
from ._runs import RunServicer
from ._schedules import Scheduler, ScheduleServicer
from ._settings import ControlPlaneSettings
from ._workers import GIVE_BACK_WAIT, Dispatcher, WorkerServicer

log = logging.getLogger("longline.control_plane")

SERVICES = (
    runs_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
    builds_pb2.DESCRIPTOR.services_by_name["BuildService"].full_name,
    schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
    worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
)


def load_authenticator(s: ControlPlaneSettings) -> Authenticator:
    """The authenticator the settings ask for; ValueError when they ask for nothing."""
    run_tokens = RunTokens(s.run_token_secret)
    if s.tokens_file or s.tokens:
        return Authenticator(TokenStore(s.tokens_file, s.tokens), run_tokens)
    if s.insecure_no_auth:
        return Authenticator(None, run_tokens)
    raise ValueError(
        "refusing to start without tokens: give --tokens-file (or LONGLINE_TOKENS; "
        "`longline tokens new` makes them), or --insecure-no-auth to serve with no "
        "authentication at all (anyone who can reach the port can then start, read and cancel "
        "every run and impersonate workers)"
    )


def _credentials(s: ControlPlaneSettings, *, for_workers: bool) -> grpc.ServerCredentials | None:
    if not s.tls_cert:
        return None
    pair = (read_pem(s.tls_key, "TLS key"), read_pem(s.tls_cert, "TLS certificate"))
    if for_workers and s.tls_client_ca:
        return grpc.ssl_server_credentials(
            [pair],
            root_certificates=read_pem(s.tls_client_ca, "client CA"),
            require_client_auth=True,
        )
    return grpc.ssl_server_credentials([pair])


def _https(s: ControlPlaneSettings) -> ssl.SSLContext | None:
    """The HTTP face's TLS: the same certificate and key as the gRPC port's."""
    if not s.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(s.tls_cert, s.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate and key for HTTP: {exc}") from None
    return context


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    port: int = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    if port == 0:
        raise RuntimeError(f"could not listen on {address}")
    return port


def _describe_security(s: ControlPlaneSettings, auth: Authenticator) -> str:
    tls = "TLS" if s.tls_cert else "plaintext (no TLS)"
    if s.tls_client_ca:
        tls += ", mutual TLS for workers"
    tokens = f"{len(auth.tokens)} tokens" if auth.tokens is not None else "AUTH OFF"
    return f"{tls}, {tokens}"


async def _close_all(*clients: Any) -> None:
    """Close each client, also when one fails or the caller is cancelled meanwhile (the
    cancellation is raised once all are closed)."""
    cancelled: asyncio.CancelledError | None = None
    for client in clients:
        try:
            await client.aclose()
        except asyncio.CancelledError as exc:
            cancelled = exc
        except (RedisError, OSError) as exc:
            log.warning("closing a Redis client: %s", exc)
    if cancelled is not None:
        raise cancelled


class ControlPlane:
    """A control-plane replica. `async with ControlPlane(settings) as cp:` serves on cp.port."""

    def __init__(self, settings: ControlPlaneSettings) -> None:
        """Raises ValueError when the settings cannot be served as given (no tokens, say)."""
        self.settings = settings
        self.authenticator = load_authenticator(settings)
        self.port = 0
        self.worker_port = 0  # == port unless settings.worker_listen
        self._stopping = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._hub: EventHub | None = None
        self.scheduler: Scheduler | None = None  # set once it serves
        self.metrics_port = 0  # the bound Prometheus port, with settings.metrics_listen
        self.http_port = 0  # the bound HTTP port, with settings.http_listen

    @property
    def watchers(self) -> int:
        """StreamRun and RunWorkflow calls this replica is serving from its event hub."""
        return self._hub.watchers if self._hub is not None else 0

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Start serving in the background; returns once the port is bound."""
        self._main = asyncio.create_task(self.run(), name="longline-control-plane")
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({self._main, ready}, return_when=asyncio.FIRST_COMPLETED)
        if self._main in done:
            ready.cancel()
            self._main.result()  # raises why it could not start

    async def shutdown(self) -> None:
        """Stop serving and wait for it; safe to call twice."""
        self._stopping.set()
        if self._main is not None:
            await self._main

    def reload_tokens(self) -> bool:
        """Read the tokens file again (SIGHUP); False, and the old tokens stay, on an error."""
        tokens = self.authenticator.tokens
        return tokens.reload("SIGHUP") if tokens is not None and tokens.path else False

    async def _watch_tokens(self, interval: float = 1.0) -> None:
        """Rotation without a restart: a changed tokens file is read again within a second."""
        tokens = self.authenticator.tokens
        if tokens is None or not tokens.path:
            return
        while True:
            await asyncio.sleep(interval)
            tokens.reload_if_changed()

    def request_stop(self) -> None:
        """Ask run() to stop (for signal handlers)."""
        self._stopping.set()

    async def run(self) -> None:
        """Serve until request_stop(); every part runs in one TaskGroup."""
        s = self.settings
        name = f"longline-{s.replica_id}"
        pool = connect(s.redis_url, client_name=name, max_connections=s.redis_pool_size)
        # Subscriptions get connections of their own: no read timeout, keepalive.
        hub_reader = connect(
            s.redis_url, client_name=name + "-events", max_connections=1, socket_timeout=None
        )
        dispatch_reader = connect(
            s.redis_url, client_name=name + "-dispatch", max_connections=1, socket_timeout=None
        )
        store = Store(pool, s.partitions)
        hub = self._hub = EventHub(store, EventFeed(hub_reader, s.replica_id))
        queues = Queues(pool, dispatch_reader, s.replica_id, store.partitions)
        dispatcher = Dispatcher(store, queues, s)
        metrics = ControlPlaneMetrics(CollectorRegistry()) if s.metrics_listen else None
        monitor = LeaseMonitor(
            store, s.lease_timeout, metrics.lease_expiries.inc if metrics else None
        )
        janitor = Janitor(store, s.replica_id, s.retention)
        scheduler = self.scheduler = Scheduler(store, s)
        metrics_server = None
        http_runner = None
        if metrics is not None:
            metrics.watch(lambda: hub.watchers, lambda: len(dispatcher.sessions))
            hub.on_delivery = metrics.delivery.observe
            host, _, port = s.metrics_listen.rpartition(":")
            metrics_server, _ = start_http_server(
                int(port), addr=host or "127.0.0.1", registry=metrics.registry
            )
            self.metrics_port = metrics_server.server_port

        interceptors = [ErrorInterceptor(self.authenticator)]
        options = [
            ("grpc.max_receive_message_length", s.max_input_bytes + 64 * 1024),
            # Off, so a port in use is an error, but for the processes of --processes.
            ("grpc.so_reuseport", 1 if s.reuse_port else 0),
            # gRPC core cancels calls beyond 1,000 waiting to be handed to Python (3,000 hard):
            # a burst of StartRuns from many clients must queue, not fail with CANCELLED.
            ("grpc.server.max_pending_requests", 50_000),
            ("grpc.server.max_pending_requests_hard_limit", 100_000),
            *SERVER_KEEPALIVE,
        ]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        # Workers on a port of their own when asked (mutual TLS there), else beside clients.
        worker_server = (
            grpc.aio.server(interceptors=interceptors, options=options)
            if s.worker_listen
            else server
        )
        runs = RunServicer(store, hub, s, self.authenticator.run_tokens)
        runs_pb2_grpc.add_RunServiceServicer_to_server(runs, server)
        builds_pb2_grpc.add_BuildServiceServicer_to_server(BuildServicer(store, dispatcher), server)
        schedules_pb2_grpc.add_ScheduleServiceServicer_to_server(ScheduleServicer(store, s), server)
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(
            WorkerServicer(store, dispatcher, s), worker_server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if worker_server is not server:
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, worker_server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            await pool.ping()
            await store.check_partitions()
            self.port = _bind(server, s.listen, _credentials(s, for_workers=False))
            if worker_server is not server:
                self.worker_port = _bind(
                    worker_server, s.worker_listen, _credentials(s, for_workers=True)
                )
                await worker_server.start()
            else:
                self.worker_port = self.port
            await server.start()
            if s.http_listen:
                face = HttpFace(
                    runs,
                    self.authenticator,
                    max_body_bytes=s.max_input_bytes + 64 * 1024,
                    cors_origins=s.http_cors_origin,
                    keep_alive=s.http_keep_alive,
                    request_timeout=s.http_request_timeout,
                    loopback_only=self.authenticator.tokens is None and is_loopback(s.http_listen),
                    serving=lambda: not self._stopping.is_set(),
                )
                http_runner = await serve_http(
                    face, s.http_listen, s.shutdown_grace, _https(s), reuse_port=s.reuse_port
                )
                self.http_port = bound_port(http_runner)
            for service in ("", *SERVICES):
                await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
            log.info(
                "control plane %s serving on port %d%s (%s)",
                s.replica_id,
                self.port,
                (f", workers on port {self.worker_port}" if worker_server is not server else "")
                + (f", HTTP on port {self.http_port}" if http_runner is not None else ""),
                _describe_security(s, self.authenticator),
            )
            if s.retention:
                log.info(
                    "finished runs are kept for %g s after they end (--retention)", s.retention
                )
            else:
                log.warning(
                    "--retention 0: finished runs are kept FOREVER; Redis memory grows with "
                    "every run until something else removes them"
                )
            try:
                sharded = await store.sharded_pubsub()
            except (RedisError, OSError) as exc:  # only a start-up line: Redis is retried
                log.warning("could not tell whether Redis has sharded pub/sub: %s", exc)
                sharded = True
            if not sharded:
                log.warning(
                    "Redis has no sharded pub/sub (SPUBLISH, Redis 7+): run events and queue "
                    "notices use PUBLISH, which a Redis Cluster copies to every node"
                )
            self._ready.set()
            async with asyncio.TaskGroup() as tasks:
                background = [
                    tasks.create_task(hub.run(), name="event-hub"),
                    tasks.create_task(dispatcher.run(), name="dispatcher"),
                    tasks.create_task(dispatcher.watch_notices(), name="queue-notices"),
                    tasks.create_task(dispatcher.watch_acks(), name="ack-watch"),
                    tasks.create_task(self._control_listener(store, dispatcher), name="control"),
                    tasks.create_task(monitor.run(), name="lease-monitor"),
                    tasks.create_task(janitor.run(), name="janitor"),
                    tasks.create_task(scheduler.run(), name="scheduler"),
                    tasks.create_task(self._watch_tokens(), name="tokens"),
                    *(
                        [tasks.create_task(metrics.refresh(store), name="metrics")]
                        if metrics
                        else []
                    ),
                ]
                await self._stopping.wait()
                for service in ("", *SERVICES):
                    await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
                if http_runner is not None:  # its event streams end; clients resume elsewhere
                    await http_runner.cleanup()
                    http_runner = None
                await server.stop(s.shutdown_grace)
                if worker_server is not server:
                    await worker_server.stop(s.shutdown_grace)
                for task in background:
                    task.cancel()
        finally:
            try:
                if http_runner is not None:
                    await http_runner.cleanup()
                if metrics_server is not None:
                    metrics_server.shutdown()
                    metrics_server.server_close()
                await server.stop(0)
                await worker_server.stop(0)
                # The ended streams' unacknowledged runs go back to the queue now, on the
                # pool, before it closes (not left to their leases, nor to a task outliving
                # the pool, on a connection nobody would close).
                await dispatcher.given_back(GIVE_BACK_WAIT)
            finally:  # however the above ends: every client, whatever the others do
                await _close_all(hub_reader, dispatch_reader, pool)

    async def _control_listener(self, store: Store, dispatcher: Dispatcher) -> None:
        """Cancel notices from any replica, forwarded to the worker if it is connected here.

        A notice lost while Redis is away is not fatal: the worker's next heartbeat or
        write finds the run cancelled and stops it.
        """
        backoff = Backoff()
        while True:
            try:
                async for notice in store.notices.listen():
                    if not isinstance(notice, CancelNotice):
                        backoff.reset()  # Listening: subscribed
                        continue
                    session = dispatcher.sessions.get(notice.worker_id)
                    if session is None:
                        continue
                    try:
                        ref = worker_pb2.RunRef(run_id=notice.run_id, attempt=notice.attempt)
                        cancel = worker_pb2.CancelAssignment(run=ref, reason=notice.reason)
                    except (ValueError, TypeError) as exc:  # a bug must not stop the listener
                        log.error("ignored a control notice that is not one: %s", exc)
                        continue
                    session.send(worker_pb2.ConnectResponse(cancel=cancel))
            except (RedisError, OSError) as exc:
                await backoff.wait(log, "control channel", exc)

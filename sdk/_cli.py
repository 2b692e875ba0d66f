"""The `longline` command. Entry point code: it owns the event loop and the signals.

Every flag also reads LONGLINE_<FLAG> (e.g. --redis from LONGLINE_REDIS). The SDK
library never imports the planes; this entry point imports them lazily, per command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from . import _telemetry
from ._client import Client
from ._errors import LonglineError
from ._store import InvalidArgumentError, check_build_id
from ._types import Event, EventType, RunStatus, RunTrace, TraceSpan, WorkflowBuilds

DEFAULT_TARGET = "127.0.0.1:50051"
REDIS_HELP = (
    "Redis URL: redis://HOST:PORT/DB (rediss:// for TLS), or through Sentinel "
    "redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"
    "[?sentinel_password=...]"
)


def _env(name: str, default: Any) -> Any:
    return os.environ.get("LONGLINE_" + name.upper().replace("-", "_"), default)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds of a duration flag: plain seconds, or a number with s, m, h or d."""
    value = str(text).strip().lower()
    scale = _UNITS.get(value[-1:], 0) if value else 0
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds, or a number with s, m, h or d (7d)"
        ) from None
    if not 0 <= seconds < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is a finite, positive number")
    return seconds


def _add(parser: argparse.ArgumentParser, flag: str, default: Any = None, **kw: Any) -> None:
    """A flag whose default comes from LONGLINE_<FLAG>, then `default`."""
    name = flag.lstrip("-")
    env_default = _env(name, default)
    if "type" in kw and env_default is not None and isinstance(env_default, str):
        env_default = kw["type"](env_default)
    if kw.get("action") == "store_true" and isinstance(env_default, str):
        env_default = env_default.strip().lower() in ("1", "true", "yes", "on")
    env = "LONGLINE_" + name.upper().replace("-", "_")
    kw["help"] = (kw.get("help", "") + f" [env {env}]").strip()
    parser.add_argument(flag, default=env_default, **kw)


def _seconds(span: TraceSpan) -> str:
    d = span.duration
    if d is None:
        return "running"
    return f"{d * 1000:.0f} ms" if d < 1 else f"{d:.2f} s"


def print_trace(t: RunTrace, out: TextIO = sys.stdout) -> None:
    """Print a run's trace tree."""
    run = t.run
    attempts = t.children("")
    tokens = t.input_tokens + t.output_tokens
    out.write(
        f"run {run.run_id} {run.workflow} {run.status}: {len(attempts)} attempt"
        f"{'s' if len(attempts) != 1 else ''}, {tokens} tokens "
        f"({t.input_tokens} in, {t.output_tokens} out)\n"
    )

    def walk(span_id: str, prefix: str) -> None:
        kids = t.children(span_id)
        for n, s in enumerate(kids):
            last = n == len(kids) - 1
            branch = "└─ " if last else "├─ "
            if s.status == "REPLAYED":
                line = f"↺ {s.step} replayed from a checkpoint (not run again)"
            else:
                line = f"{s.step or s.name} {_seconds(s)} {s.status.lower()}"
                if s.tries > 1:
                    line += f" after {s.tries} tries"
                if s.cache_hit:
                    line += ", cache hit"
                if s.model:
                    line += f" · {s.model} at {s.provider}, {s.input_tokens}+{s.output_tokens} tok"
                if s.error:
                    line += f" · {s.error}"
            out.write(f"{prefix}{branch}{line}\n")
            walk(s.span_id, prefix + ("   " if last else "│  "))

    for a in attempts:
        where = f" on {a.worker}" if a.worker else ""
        why = f": {a.error}" if a.error else ""
        out.write(f"{a.name}{where} · {_seconds(a)} · {a.status.lower()}{why}\n")
        walk(a.span_id, "  ")
    if t.truncated:
        out.write(
            "(truncated: the run has more events than one trace reads; what happened after "
            "the spans above is not shown)\n"
        )


def _abridged(value: Any, limit: int = 240) -> Any:
    """The value with long strings cut, for a terminal (GetRun has the whole result)."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit].replace("\n", " ") + f"… ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: _abridged(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_abridged(v, limit) for v in value]
    return value


class LiveView:
    """Prints a run's events as a person wants to watch them."""

    def __init__(self, out: TextIO = sys.stdout, verbose: bool = False) -> None:
        self.out = out
        self.verbose = verbose
        self.last_event_id = ""
        self._mid_line = False

    def _line(self, text: str) -> None:
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        self.out.write(text + "\n")
        self.out.flush()

    def show(self, event: Event) -> None:
        """Print one event."""
        self.last_event_id = event.event_id
        t = event.type
        if t is EventType.OUTPUT:
            self.out.write(event.message)
            self.out.flush()
            self._mid_line = not event.message.endswith("\n")
        elif t is EventType.STATUS:
            self._line(f"· {event.message}")
        elif t is EventType.RUN_QUEUED:
            self._line(f"queued run {event.run_id}")
        elif t is EventType.RUN_STARTED:
            self._line(f"▶ {event.message}")
        elif t is EventType.RUN_RETRYING:
            self._line(f"↻ retrying (attempt {event.attempt}): {event.message}")
        elif t in (EventType.COMPONENT_STARTED, EventType.COMPONENT_FINISHED):
            if self.verbose or (
                t is EventType.COMPONENT_FINISHED and "error" in (event.data or {})
            ):
                verb = "started" if t is EventType.COMPONENT_STARTED else "finished"
                extra = f": {event.message}" if event.message else ""
                self._line(f"  [{event.component} {verb}{extra}]")
        elif t is EventType.RUN_SUCCEEDED:
            self._line("✓ succeeded; result:")
            self._line(json.dumps(_abridged(event.data), indent=2, ensure_ascii=False))
        elif t is EventType.RUN_FAILED:
            self._line(f"✗ failed: {event.message}")
        elif t is EventType.RUN_CANCELLED:
            self._line(f"■ cancelled: {event.message}")


async def _follow(target: str, run_id: str, after: str, view: LiveView, tls_ca: str) -> int:
    async with Client(target, tls_ca=tls_ca) as client:
        handle = client.get_run(run_id)
        async for event in handle.events(after=after or None):
            view.show(event)
        run = await handle.describe()
    return {RunStatus.SUCCEEDED: 0, RunStatus.CANCELLED: 2}.get(run.status, 1)


def _detached(run_id: str, view: LiveView) -> None:
    after = f" --after {view.last_event_id}" if view.last_event_id else ""
    print(f"\ndetached; the run goes on. Follow it again with:\n  longline watch {run_id}{after}")


async def _cmd_run(args: argparse.Namespace, view: LiveView, state: dict[str, str]) -> int:
    try:
        payload = json.loads(args.input)
    except ValueError as exc:
        raise SystemExit(f"--input is not valid JSON: {exc}") from None
    async with Client(args.control_plane, tls_ca=args.tls_ca) as client:
        handle = await client.start(
            args.workflow, payload, idempotency_key=args.idempotency_key or ""
        )
    state["run_id"] = handle.run_id
    return await _follow(args.control_plane, handle.run_id, "", view, args.tls_ca)


def _serve(
    main: Callable[[], Coroutine[Any, Any, int]],
    stoppers: list[Callable[[], None]] | None = None,
    reload: Callable[[], object] | None = None,
) -> int:
    """Run main(); SIGINT/SIGTERM ask every stopper to stop (or, with none, cancel main);
    SIGHUP calls `reload`.

    A second stop signal quits at once.
    """

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                os._exit(130)
            if stoppers is None and task is not None:
                task.cancel()
            for stop in stoppers or []:
                stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload)
        try:
            return await main()
        except asyncio.CancelledError:
            return 130

    with asyncio.Runner(loop_factory=_loop_factory()) as runner_loop:
        return runner_loop.run(runner())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the long-running planes where it is installed (LONGLINE_UVLOOP=0: asyncio's)."""
    if os.environ.get("LONGLINE_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _cmd_tokens(args: argparse.Namespace) -> int:
    from longline.control_plane._auth import hash_token, new_token, parse_tokens

    if args.tokens_command == "hash":
        token = sys.stdin.readline().strip()
        if not token:
            raise SystemExit("longline tokens hash: give the token on standard input")
        print(hash_token(token))
        return 0
    kind = "cluster-admin" if args.kind == "admin" else args.kind
    token = new_token(kind)
    lines = ["[[tokens]]", f"name = {json.dumps(args.name or kind)}", f'kind = "{kind}"']
    if kind != "worker":
        lines.append(f"tenant = {json.dumps(args.tenant)}")
    if args.workflows:
        names = [w.strip() for w in args.workflows.split(",") if w.strip()]
        lines.append(f"workflows = {json.dumps(names)}")
    lines.append(f'sha256 = "{hash_token(token)}"')
    try:
        parse_tokens("\n".join(lines), "the new entry")
    except ValueError as exc:
        raise SystemExit(f"longline tokens new: {exc}") from None
    print(
        "# The token, for the caller (LONGLINE_TOKEN); it is not stored anywhere:", file=sys.stderr
    )
    print(f"#   {token}", file=sys.stderr)
    print("# Add this to the control plane's tokens file:", file=sys.stderr)
    print("\n".join(lines))
    return 0


def _cmd_control_plane(args: argparse.Namespace) -> int:
    from longline.control_plane import ControlPlane, ControlPlaneSettings

    try:
        settings = ControlPlaneSettings(
            redis_url=args.redis,
            listen=args.listen,
            max_input_bytes=args.max_input_bytes,
            lease_timeout=args.lease_timeout,
            heartbeat_interval=args.heartbeat_interval,
            ack_timeout=args.ack_timeout,
            retention=args.retention,
            metrics_listen=args.metrics_listen,
            tokens_file=args.tokens_file,
            tokens=os.environ.get("LONGLINE_TOKENS", ""),
            insecure_no_auth=args.insecure_no_auth,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            worker_listen=args.worker_listen,
            max_queued_per_tenant=args.max_queued_per_tenant,
            start_rate_per_tenant=args.start_rate_per_tenant,
            start_burst_per_tenant=args.start_burst_per_tenant,
            max_streams_per_tenant=args.max_streams_per_tenant,
            **({"replica_id": args.replica_id} if args.replica_id else {}),
        )
        cp = ControlPlane(settings)
    except ValueError as exc:
        raise SystemExit(f"longline control-plane: {exc}") from None
    if settings.insecure_no_auth:
        print(
            "longline control-plane: --insecure-no-auth: authentication is OFF; anyone who can "
            "reach this port can start, read and cancel every run",
            file=sys.stderr,
        )
    shutdown_tracing = _telemetry.setup("longline-control-plane")

    async def main() -> int:
        await cp.run()
        return 0

    try:
        return _serve(main, [cp.request_stop], reload=cp.reload_tokens)
    finally:
        shutdown_tracing()


def _worker(
    args: argparse.Namespace, module: str, control_plane: str, redis: str, *, dev: bool = False
) -> Any:
    from longline.compute_plane import Worker, WorkerSettings, load_workflows

    try:
        workflows = load_workflows(module)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    try:
        check_build_id(args.build_id or "", allow_empty=True)
    except InvalidArgumentError as exc:
        raise SystemExit(f"--build-id: {exc}") from None
    try:
        settings = WorkerSettings(
            redis_url=redis,
            control_plane=control_plane,
            slots=args.slots,
            build_id=args.build_id or "",
            heartbeat_interval=args.heartbeat_interval,
            drain_timeout=args.drain_timeout,
            health_listen=args.health_listen or "",
            metrics_listen=args.metrics_listen or "",
            token="" if dev else args.token,
            insecure_no_auth=dev or args.insecure_no_auth,
            tls=not dev and args.tls,
            tls_ca="" if dev else args.tls_ca,
            tls_cert="" if dev else args.tls_cert,
            tls_key="" if dev else args.tls_key,
            max_event_bytes=args.max_event_bytes,
            **({"worker_id": args.worker_id} if getattr(args, "worker_id", None) else {}),
        )
    except ValueError as exc:
        raise SystemExit(f"longline worker: {exc}") from None
    return Worker(settings, workflows)


def _cmd_worker(args: argparse.Namespace) -> int:
    shutdown_tracing = _telemetry.setup("longline-worker")
    worker = _worker(args, args.module, args.control_plane, args.redis)

    async def main() -> int:
        await worker.run()
        return 0

    try:
        return _serve(main, [worker.request_stop])
    finally:
        shutdown_tracing()


def _cmd_offline_model(args: argparse.Namespace) -> int:
    from ._offline_model import Faults, OfflineModel

    host, _, port = args.listen.rpartition(":")
    faults = Faults(
        rate_limit=args.rate_limit,
        retry_after=args.retry_after,
        server_error=args.server_error,
        drop=args.drop,
        slow_first_token=args.slow_first_token,
        token_delay=args.token_delay,
        seed=args.seed,
    )
    model = OfflineModel(host or "127.0.0.1", int(port or 0), faults)

    async def main() -> int:
        await model.start()
        print(f"offline model serving at {model.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await model.aclose()
        return 0

    return _serve(main)


def _cmd_dev(args: argparse.Namespace) -> int:
    from longline.control_plane import ControlPlane, ControlPlaneSettings

    from ._embedded import EmbeddedRedis

    embedded = None
    redis_url = args.redis
    if not redis_url:
        embedded = EmbeddedRedis().start()
        redis_url = embedded.url
        print(f"started an embedded Redis ({embedded.binary}) at {redis_url}")
    print("dev mode: authentication is off; do not expose this to a network")
    offline = None
    if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
        from ._offline_model import Faults, OfflineModel

        offline = OfflineModel(faults=Faults(token_delay=args.offline_token_delay))
    view = LiveView(verbose=args.verbose)
    state: dict[str, str] = {}
    try:
        cp = ControlPlane(
            ControlPlaneSettings(redis_url=redis_url, listen=args.listen, insecure_no_auth=True)
        )
    except ValueError as exc:
        raise SystemExit(f"longline dev: {exc}") from None

    async def main() -> int:
        nonlocal cp
        if offline is not None:
            await offline.start()
            # The worker runs in this process and reads these at call time.
            os.environ.update(
                OPENAI_BASE_URL=offline.base_url,
                OPENAI_API_KEY="offline",
                LONGLINE_OFFLINE_MODEL="1",
                LONGLINE_LLM_MODEL=os.environ.get("LONGLINE_LLM_MODEL", "offline"),
            )
            print(
                "no OPENAI_API_KEY or OPENAI_BASE_URL set: serving the OFFLINE model at "
                f"{offline.base_url} (deterministic filler text, not a real model)"
            )
        try:
            await cp.start()
        except RuntimeError as exc:  # the port is taken: a demo should still run
            host = args.listen.rsplit(":", 1)[0]
            print(f"{exc}; using a free port instead")
            cp = ControlPlane(
                ControlPlaneSettings(redis_url=redis_url, listen=f"{host}:0", insecure_no_auth=True)
            )
            await cp.start()
        target = f"127.0.0.1:{cp.port}"
        worker = _worker(args, args.module, target, redis_url, dev=True)
        worker_task = asyncio.create_task(worker.run())
        try:
            await worker.connected.wait()
            print(
                f"control plane on {target}; a worker serves {', '.join(sorted(worker.workflows))}"
            )
            if args.run:
                ns = argparse.Namespace(
                    control_plane=target,
                    workflow=args.run,
                    input=args.input,
                    idempotency_key="",
                    tls_ca="",
                )
                return await _cmd_run(ns, view, state)
            await asyncio.Event().wait()  # serve until interrupted
            return 0
        except asyncio.CancelledError:
            if state.get("run_id"):
                _detached(state["run_id"], view)
            raise
        finally:
            worker.request_stop()
            await worker_task
            await cp.shutdown()
            if offline is not None:
                await offline.aclose()

    try:
        return _serve(main)
    finally:
        if embedded is not None:
            embedded.stop()


def _cmd_client(args: argparse.Namespace) -> int:
    view = LiveView(verbose=getattr(args, "verbose", False))
    state: dict[str, str] = {}

    async def main() -> int:
        if args.command == "run":
            return await _cmd_run(args, view, state)
        if args.command == "watch":
            state["run_id"] = args.run_id
            return await _follow(
                args.control_plane, args.run_id, args.after or "", view, args.tls_ca
            )
        async with Client(args.control_plane, tls_ca=args.tls_ca) as client:
            if args.command == "cancel":
                run = await client.get_run(args.run_id).cancel(args.reason or "")
                print(f"run {run.run_id}: {run.status}")
            elif args.command == "runs":
                runs, _ = await client.list_runs(
                    workflow=args.workflow or "", status=args.status, page_size=args.limit
                )
                for r in runs:
                    created = r.create_time.strftime("%Y-%m-%d %H:%M:%S") if r.create_time else ""
                    print(
                        f"{r.run_id}  {r.status:<10} {r.workflow:<20} "
                        f"attempt {r.attempt}  {created}"
                    )
            elif args.command == "trace":
                print_trace(await client.get_run(args.run_id).trace())
            elif args.command == "workflows":
                for w in await client.list_workflows():
                    print(f"{w.name:<24} {w.workers} workers  {w.description}")
            elif args.command == "builds" and args.builds_command == "promote":
                builds, previous = await client.promote_build(
                    args.workflow, args.build_id, policy=args.policy or "", force=args.force
                )
                print(
                    f"{args.workflow}: build {args.build_id} is current "
                    f"(was {previous or 'none'}); new runs go to its workers"
                )
                print_builds([builds])
            elif args.command == "builds":
                print_builds(await client.list_builds(args.workflow or ""))
        return 0

    async def runner() -> int:
        def detach() -> None:
            # Watching holds nothing on the server, so leave at once: no cleanup can hang.
            if state.get("run_id"):
                _detached(state["run_id"], view)
            sys.stdout.flush()
            os._exit(130)

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, detach)
        return await main()

    return asyncio.run(runner())


def print_builds(workflows: list[WorkflowBuilds], out: TextIO = sys.stdout) -> None:
    """A table per workflow: its builds, live workers and runs; unserved runs called out."""
    for w in workflows:
        current = w.current_build_id or "none (any worker takes new runs)"
        print(f"{w.workflow}  current build: {current}  policy: {w.policy}", file=out)
        header = f"{'BUILD':<24} {'WORKERS':>7} {'QUEUED':>7} {'RUNNING':>7} {'UNSERVED':>8}"
        print("  " + header, file=out)
        for b in w.builds:
            name = (b.build_id or "(not started)") + (" *" if b.current else "")
            print(
                f"  {name:<24} {b.workers:>7} {b.queued_runs:>7} {b.running_runs:>7} "
                f"{b.unserved_runs:>8}",
                file=out,
            )
        if w.unserved_runs:
            print(
                f"  warning: {w.unserved_runs} queued runs of {w.workflow} wait for a build no "
                "worker serves: start its workers, or promote a build that has some",
                file=out,
            )


def build_parser() -> argparse.ArgumentParser:
    """The `longline` argument parser."""
    parser = argparse.ArgumentParser(prog="longline", description=__doc__.split("\n")[0])
    _add(parser, "--log-level", "WARNING", help="logging level")
    sub = parser.add_subparsers(dest="command", required=True)

    def worker_flags(p: argparse.ArgumentParser) -> None:
        _add(p, "--slots", 16, type=int, help="runs held at once")
        _add(p, "--build-id", "", help="the build this worker runs (blue-green deploys)")
        _add(p, "--worker-id", "", help="unique id (default: host-pid-random)")
        _add(p, "--heartbeat-interval", 2.0, type=float, help="seconds between lease renewals")
        _add(p, "--max-event-bytes", 1024 * 1024, type=int, help="largest event and result")
        _add(p, "--drain-timeout", 25.0, type=float, help="seconds to finish runs after SIGTERM")
        _add(p, "--health-listen", "", help="HOST:PORT for the gRPC health service")
        _add(p, "--metrics-listen", "", help="HOST:PORT for Prometheus metrics")

    p = sub.add_parser("dev", help="embedded Redis, a control plane and a worker, on this machine")
    _add(p, "--redis", "", help=REDIS_HELP + " (default: start an embedded Redis)")
    _add(p, "--listen", "127.0.0.1:50051", help="control-plane address")
    _add(p, "--module", "longline.examples", help="workflows to serve")
    _add(p, "--run", "", help="run this workflow live, then exit")
    _add(p, "--input", "null", help="JSON input for --run")
    _add(p, "--verbose", False, action="store_true", help="show component events")
    _add(p, "--offline-token-delay", 0.01, type=float, help="offline model: seconds per token")
    worker_flags(p)

    p = sub.add_parser("offline-model", help="the offline OpenAI-compatible model server")
    _add(p, "--listen", "127.0.0.1:8089", help="HOST:PORT to serve on")
    _add(p, "--rate-limit", 0.0, type=float, help="share of requests answered 429")
    _add(p, "--retry-after", 1.0, type=float, help="seconds sent as Retry-After with a 429")
    _add(p, "--server-error", 0.0, type=float, help="share of requests answered 500")
    _add(p, "--drop", 0.0, type=float, help="share of streams cut off half-way")
    _add(p, "--slow-first-token", 0.0, type=float, help="seconds before the first token")
    _add(p, "--token-delay", 0.0, type=float, help="seconds between streamed tokens")
    _add(p, "--seed", 0, type=int, help="seed of the fault dice")

    p = sub.add_parser("control-plane", help="one control-plane replica")
    _add(p, "--listen", "127.0.0.1:50051", help="HOST:PORT to serve gRPC on")
    _add(p, "--redis", "redis://127.0.0.1:6379/0", help=REDIS_HELP)
    _add(p, "--replica-id", "", help="unique replica id (default: random)")
    _add(p, "--max-input-bytes", 1024 * 1024, type=int, help="largest input_json accepted")
    _add(p, "--lease-timeout", 10.0, type=float, help="seconds a lease lasts without a heartbeat")
    _add(p, "--heartbeat-interval", 2.0, type=float, help="seconds between worker heartbeats")
    _add(
        p,
        "--ack-timeout",
        5.0,
        type=float,
        help="seconds a worker has to acknowledge an assignment before it goes elsewhere",
    )
    _add(
        p,
        "--retention",
        "7d",
        type=_duration,
        help="how long a finished run's state and events are kept (e.g. 7d, 12h, 90s); 0: forever",
    )
    _add(p, "--metrics-listen", "", help="HOST:PORT for Prometheus metrics")
    _add(p, "--tokens-file", "", help="TOML file of token hashes (or the TOML in LONGLINE_TOKENS)")
    _add(p, "--insecure-no-auth", False, action="store_true", help="serve with no tokens at all")
    _add(p, "--tls-cert", "", help="PEM certificate: serve TLS")
    _add(p, "--tls-key", "", help="PEM private key of --tls-cert")
    _add(p, "--worker-listen", "", help="HOST:PORT serving workers only (default: --listen)")
    _add(p, "--tls-client-ca", "", help="PEM CA: --worker-listen takes only workers it signed")
    _add(p, "--max-queued-per-tenant", 100_000, type=int, help="QUEUED runs per tenant; 0: any")
    _add(p, "--start-rate-per-tenant", 2000.0, type=float, help="StartRun/s per tenant; 0: any")
    _add(p, "--start-burst-per-tenant", 10_000, type=int, help="StartRun burst per tenant")
    _add(p, "--max-streams-per-tenant", 10_000, type=int, help="open streams per tenant; 0: any")

    p = sub.add_parser("worker", help="one worker serving the workflows of MODULE")
    p.add_argument("module", help="a dotted module path or a .py file")
    _add(p, "--control-plane", DEFAULT_TARGET, help="HOST:PORT, or several separated by commas")
    _add(p, "--redis", "redis://127.0.0.1:6379/0", help=REDIS_HELP)
    _add(p, "--token", "", help="worker token")
    _add(
        p, "--insecure-no-auth", False, action="store_true", help="for a control plane with no auth"
    )
    _add(p, "--tls", False, action="store_true", help="connect to the control plane over TLS")
    _add(p, "--tls-ca", "", help="PEM CA to verify the control plane with (implies --tls)")
    _add(p, "--tls-cert", "", help="PEM client certificate (mutual TLS)")
    _add(p, "--tls-key", "", help="PEM private key of --tls-cert")
    worker_flags(p)

    def client_flags(p: argparse.ArgumentParser) -> None:
        _add(p, "--control-plane", DEFAULT_TARGET, help="control-plane HOST:PORT")
        _add(p, "--tls-ca", "", help="PEM CA to verify the control plane with (TLS)")

    p = sub.add_parser("run", help="start a run and show it live until it ends")
    p.add_argument("workflow")
    _add(p, "--input", "null", help="JSON input")
    _add(p, "--idempotency-key", "", help="a second run with this key returns the first")
    _add(p, "--verbose", False, action="store_true", help="show component events")
    client_flags(p)

    p = sub.add_parser("watch", help="follow a run live from where it is, or from --after")
    p.add_argument("run_id")
    _add(p, "--after", "", help="resume after this event id")
    _add(p, "--verbose", False, action="store_true", help="show component events")
    client_flags(p)

    p = sub.add_parser("runs", help="list runs, newest first")
    _add(p, "--workflow", "", help="only this workflow")
    _add(p, "--status", None, type=str.upper, help="only this status, e.g. RUNNING")
    _add(p, "--limit", 20, type=int, help="how many")
    client_flags(p)

    p = sub.add_parser("cancel", help="cancel a queued or running run")
    p.add_argument("run_id")
    _add(p, "--reason", "", help="why (recorded in the run)")
    client_flags(p)

    p = sub.add_parser("trace", help="a run's trace tree: attempts, steps, durations, tokens")
    p.add_argument("run_id")
    client_flags(p)

    p = sub.add_parser("workflows", help="list the workflows workers serve")
    client_flags(p)

    p = sub.add_parser("tokens", help="make tokens and their hashes for the tokens file")
    tokens = p.add_subparsers(dest="tokens_command", required=True)
    p = tokens.add_parser("new", help="a new random token, and its entry for the tokens file")
    p.add_argument(
        "--kind",
        choices=["client", "worker", "cluster-admin", "admin"],
        required=True,
        help="cluster-admin (or its old name admin): BuildService, for every tenant",
    )
    p.add_argument("--tenant", default="", help="client and admin tokens: the tenant")
    p.add_argument("--name", default="", help="a name for logs")
    p.add_argument("--workflows", default="", help="worker tokens: only these (a,b,c)")
    tokens.add_parser("hash", help="the SHA-256 of a token read from standard input")

    p = sub.add_parser("builds", help="blue-green deploys: list builds, promote one")
    builds = p.add_subparsers(dest="builds_command", required=True)
    p = builds.add_parser("list", help="each workflow's builds, workers and runs")
    p.add_argument("workflow", nargs="?", default="")
    client_flags(p)
    p = builds.add_parser("promote", help="make BUILD_ID the build new runs of WORKFLOW go to")
    p.add_argument("workflow")
    p.add_argument("build_id")
    p.add_argument(
        "--policy",
        choices=["WHEN_UNSERVED", "NEVER"],
        type=str.upper,
        help="runs pinned to a build with no workers left: move to the current build "
        "(WHEN_UNSERVED, the default) or wait for their own (NEVER)",
    )
    p.add_argument(
        "--force", action="store_true", help="promote even if no worker of the build is live"
    )
    client_flags(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the longline command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "dev": _cmd_dev,
        "offline-model": _cmd_offline_model,
        "control-plane": _cmd_control_plane,
        "worker": _cmd_worker,
        "tokens": _cmd_tokens,
    }
    try:
        return commands.get(args.command, _cmd_client)(args)
    except LonglineError as exc:
        print(f"longline: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

"""The SDK's own serving commands: `dev` (a `DevStack` on this machine) and
`offline-model`. The planes' commands live in the planes (see `longline._plugins`)."""

from __future__ import annotations

import argparse
import asyncio

from .._devstack import DEFAULT_MODULE, DEV_CLUSTER_MASTERS, DevStack
from .._offline_model import Faults, OfflineModel
from .._options import REDIS_HELP, Option, options_of, values_of
from .._plugins import Plane
from ._client_commands import INPUT, VERBOSE, Session, start_and_follow
from ._command import Command, CommandError
from ._render import LiveView
from ._runtime import serve

__all__ = ["dev_command", "offline_model_command"]

DEV_OPTIONS = (
    Option("--redis", REDIS_HELP + " (default: start an embedded Redis)", "", shown="embedded"),
    Option(
        "--redis-cluster",
        f"start a local Redis Cluster of {DEV_CLUSTER_MASTERS} masters instead of one embedded "
        "Redis (not with --redis)",
        False,
        switch=True,
    ),
    Option("--module", "workflows to serve", DEFAULT_MODULE),
    Option("--run", "run this workflow live, then exit", ""),
    Option(INPUT.flag, "JSON input for --run", INPUT.default),
    VERBOSE,
    Option("--offline-token-delay", "offline model: seconds per token", 0.01, type=float),
)
MODEL_OPTIONS = (
    Option("--listen", "HOST:PORT to serve on", "127.0.0.1:8089"),
    *options_of(Faults),
)


def dev_command(planes: dict[str, Plane]) -> Command:
    """`longline dev`: its own flags, then those the planes offer it (`Plane.dev_options`)."""
    cp, worker = planes["control-plane"], planes["worker"]

    def run(args: argparse.Namespace) -> int:
        if args.redis_cluster and args.redis:
            raise CommandError(
                "longline dev: --redis-cluster starts a Redis Cluster of its own; "
                "it cannot go with --redis (or LONGLINE_REDIS)"
            )
        stack = DevStack(
            args.module,
            redis_url=args.redis,
            redis_cluster=args.redis_cluster,
            offline_token_delay=args.offline_token_delay,
            control_plane=values_of(args, cp.dev_options),
            worker=values_of(args, worker.dev_options),
            report=print,
        )
        return serve(lambda: _dev(stack, args))

    return Command(
        "dev",
        "embedded Redis, a control plane and a worker, on this machine",
        (*DEV_OPTIONS, *cp.dev_options, *worker.dev_options),
        run,
    )


async def _dev(stack: DevStack, args: argparse.Namespace) -> int:
    try:
        await stack.start()
    except ValueError as exc:
        raise CommandError(f"longline dev: {exc}") from None
    where = argparse.Namespace(control_plane=stack.target, tls_ca="")
    session = Session(where, LiveView(verbose=args.verbose))
    try:
        served = ", ".join(stack.workflows)
        print(f"control plane on {stack.target}; a worker serves {served}")
        if stack.http_url:
            print(f"HTTP API on {stack.http_url} (OpenAPI: {stack.http_url}/openapi.json)")
            print(f"web UI on {stack.http_url}/ui/")
        if args.run:
            return await start_and_follow(session, args.run, args.input)
        await asyncio.Event().wait()  # serve until interrupted
        return 0
    except asyncio.CancelledError:
        session.detached()
        raise
    finally:
        await stack.aclose()


def _offline_model(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    faults = Faults(**values_of(args, MODEL_OPTIONS))
    model = OfflineModel(host or "127.0.0.1", int(port or 0), faults)

    async def main() -> int:
        await model.start()
        print(f"offline model serving at {model.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await model.aclose()
        return 0

    return serve(main)


def offline_model_command() -> Command:
    """`longline offline-model`: the offline OpenAI-compatible server, its faults as flags."""
    return Command(
        "offline-model", "the offline OpenAI-compatible model server", MODEL_OPTIONS, _offline_model
    )

"""The compute plane's command, `worker`, and its `Plane` for the dev stack: registered as
entry points in pyproject.toml (`longline.commands`, `longline.planes`), which the SDK's
`longline` script finds without importing this plane (see `longline._plugins`).
Entry-point code: it may run a loop and handle signals.

The flags of `worker` are `WorkerSettings`' fields (`longline._options`); those marked
`dev` are offered by `longline dev` too, through `PLANE.dev_options`.
"""

from __future__ import annotations

import argparse
from typing import Any

from longline import _telemetry
from longline._cli import Command, CommandError, serve
from longline._options import Option, options_of, values_of
from longline._plugins import Plane
from longline._store import InvalidArgumentError, check_build_id

from ._loader import load_workflows
from ._settings import WorkerSettings
from ._worker import Worker

__all__ = ["COMMAND", "PLANE"]

OPTIONS = options_of(WorkerSettings)
MODULE = Option("module", "a dotted module path or a .py file")


def _serve(args: argparse.Namespace) -> int:
    shutdown_tracing = _telemetry.setup("longline-worker")
    try:
        try:
            workflows = load_workflows(args.module)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            check_build_id(args.build_id or "", allow_empty=True)
        except InvalidArgumentError as exc:
            raise CommandError(f"--build-id: {exc}") from None
        try:
            settings = WorkerSettings(**values_of(args, OPTIONS))
        except ValueError as exc:
            raise CommandError(f"longline worker: {exc}") from None
        worker = Worker(settings, workflows)

        async def main() -> int:
            await worker.run()
            return 0

        return serve(main, [worker.request_stop])
    finally:
        shutdown_tracing()


def _in_process(module: str, **settings: Any) -> Worker:
    """A worker serving `module`, for a dev stack; a ValueError says what is wrong."""
    workflows = load_workflows(module)
    try:
        check_build_id(settings.get("build_id", ""), allow_empty=True)
    except InvalidArgumentError as exc:
        raise ValueError(f"--build-id: {exc}") from None
    return Worker(WorkerSettings(**settings), workflows)


COMMAND = Command(
    "worker", "one worker serving the workflows of MODULE", (MODULE, *OPTIONS), _serve
)
PLANE = Plane("worker", _in_process, tuple(o for o in OPTIONS if o.dev))

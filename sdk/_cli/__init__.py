"""The `longline` command (the console script `longline`, or `python -m longline._cli`).

How it is put together, one concern per module:

    longline._options               flags declared once, on the settings dataclasses
    longline._plugins               entry points: how the SDK reaches the planes
    longline._devstack              the dev stack (`longline dev`, and tests)
    longline._cli._command          a command as data; the argparse parser made from it
    longline._cli._client_commands  run, watch, runs, input, cancel, trace, workflows, builds
    longline._cli._servers          dev, offline-model
    longline._cli._render           what a person sees: a run live, a trace, builds
    longline._cli._panel            the live panel of `run` and `watch` on a terminal (rich)
    longline._cli._form             asking a person for a run's input: a form from its schema
    longline._cli._runtime          the event loop and the signals
    longline._cli._docs             the configuration table of docs/configuration.md
    longline.control_plane._cli     control-plane, tokens   (registered entry points)
    longline.compute_plane._cli     worker                  (registered entry points)

The SDK never imports a plane, not even lazily: the planes' commands and dev-stack
factories are entry points (`longline._plugins`). Every flag also reads LONGLINE_<FLAG>
(`--redis` <- LONGLINE_REDIS); a flag given wins. This is entry-point code: `main` is the
one place that exits, and the commands run the loop and handle signals.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from .._errors import LonglineError
from .._options import Option
from .._plugins import COMMANDS_GROUP, planes, registered
from ._client_commands import COMMANDS as CLIENT_COMMANDS
from ._command import RUN, Command, CommandError, add_options
from ._render import LiveView, print_builds, print_trace
from ._runtime import serve

# What the planes' own command modules build on (they import it from here, not from the
# private modules: see the import contracts in pyproject.toml).
__all__ = [
    "LOG_LEVEL",
    "Command",
    "CommandError",
    "LiveView",
    "build_parser",
    "commands",
    "main",
    "print_builds",
    "print_trace",
    "serve",
]

DESCRIPTION = "longline: durable, resumable, streamable long-running AI workflows."
LOG_LEVEL = Option("--log-level", "logging level", "WARNING")


def commands() -> list[Command]:
    """Every command, in the order `--help` lists them: the serving ones (the SDK's, then
    the planes' registered ones, by name), then the client commands."""
    from ._servers import dev_command, offline_model_command  # the offline model: aiohttp

    planes_found = planes()
    plane_commands = registered(COMMANDS_GROUP, Command).values()
    return [dev_command(planes_found), offline_model_command(), *plane_commands, *CLIENT_COMMANDS]


def _chosen(argv: Sequence[str]) -> str | None:
    """The command `argv` asks for, or None when it does not say before an option (--help)."""
    tokens = iter(argv)
    for token in tokens:
        if token == LOG_LEVEL.flag:
            next(tokens, None)
        elif not token.startswith("-"):
            return token
        elif not token.startswith(LOG_LEVEL.flag + "="):
            return None
    return None


def build_parser(
    environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """The `longline` argument parser; defaults read from `environ` (os.environ if None).
    Given the `argv` it will parse, a client command's parser is built without loading the
    planes (their imports cost a client command most of a second)."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="longline", description=DESCRIPTION)
    add_options(parser, (LOG_LEVEL,), env)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in _needed(_chosen(argv) if argv is not None else None):
        command.add_to(sub, env)
    return parser


def _needed(chosen: str | None) -> list[Command]:
    """The commands a parser for `chosen` needs: that one alone when it is a client command
    or a plane's own (a plane command loads its plane only: a worker process does not
    import the control plane, nor a replica the worker), else every command."""
    client = [c for c in CLIENT_COMMANDS if c.name == chosen]
    if client:
        return client
    if chosen is not None:
        own = registered(COMMANDS_GROUP, Command, only=chosen)
        if own:
            return list(own.values())
    return commands()


def main(argv: list[str] | None = None) -> int:
    """Run the longline command; a command's one-line refusal exits with it (code 1)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv=argv).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(getattr(args, RUN)(args))
    except CommandError as exc:
        raise SystemExit(str(exc)) from None
    except LonglineError as exc:
        print(f"longline: {exc}", file=sys.stderr)
        return 1

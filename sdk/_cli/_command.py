"""A `longline` subcommand as data, the argparse parser made from it, and where commands
come from.

A `Command` is a name, a help line, its `Option`s (see `longline._options`) and the
function that runs it, or subcommands of its own (`tokens new`). The parser and the
configuration table in docs/configuration.md are both made from these, so `--help` and
the docs say the same thing.

Where commands come from: the SDK's own (the client commands, `dev`, `offline-model`)
are listed in `longline._cli`; each plane owns its commands in its own `_cli` module and
registers them as entry points (`longline.commands`, see `longline._plugins`), so the
SDK never imports a plane.

Command functions are entry-point code: they may run an event loop and install signal
handlers (through `longline._cli._runtime`). They report a reason to stop by raising
`CommandError`; only `longline._cli.main` turns that into an exit.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._options import Option

__all__ = ["Command", "CommandError", "add_options", "walk"]

RUN = "_command_run"  # where the parsed namespace keeps the chosen command's function


class CommandError(Exception):
    """Why a command cannot go on, as one line for its user; `main` exits with it (code 1)."""


@dataclass(frozen=True)
class Command:
    """One `longline` subcommand: `run(args)` returns the exit code; or its `subcommands`."""

    name: str
    help: str
    options: Sequence[Option] = ()
    run: Callable[[argparse.Namespace], int] | None = None
    subcommands: Sequence[Command] = ()

    def add_to(self, parsers: argparse._SubParsersAction[Any], environ: Mapping[str, str]) -> None:
        """Add this command (and its subcommands) to `parsers`, defaults read from environ."""
        parser = parsers.add_parser(self.name, help=self.help)
        add_options(parser, self.options, environ)
        if self.run is not None:
            parser.set_defaults(**{RUN: self.run})
        if self.subcommands:
            nested = parser.add_subparsers(dest=f"{self.name}_command", required=True)
            for sub in self.subcommands:
                sub.add_to(nested, environ)


def add_options(
    parser: argparse.ArgumentParser, options: Sequence[Option], environ: Mapping[str, str]
) -> None:
    """Add `options` to `parser`; a flag's help names the variable it reads ([env ...])."""
    for o in options:
        default = o.env_default(environ)
        if o.env_only:
            parser.set_defaults(**{o.dest: default})
            continue
        help = f"{o.help} [env {o.env_name}]".strip() if o.reads_env else o.help or None
        if o.positional:
            kw: dict[str, Any] = {"nargs": o.nargs} if o.nargs else {}
            parser.add_argument(o.flag, help=help, default=default, **kw)
        elif o.switch:
            parser.add_argument(o.flag, action="store_true", default=default, help=help)
        else:
            # A text default (from the environment, or "7d") is converted by argparse with
            # `type`, as a typed value given on the command line is.
            kw = {"type": o.type} if o.type is not None else {}
            parser.add_argument(
                o.flag,
                default=default,
                choices=o.choices,
                required=o.required,
                nargs=o.nargs,
                help=help,
                **kw,
            )


def walk(commands: Sequence[Command], path: str = "") -> Iterator[tuple[str, Command]]:
    """Every command and subcommand with its full name (`tokens new`), parents first."""
    for command in commands:
        name = f"{path} {command.name}".strip()
        yield name, command
        yield from walk(command.subcommands, name)

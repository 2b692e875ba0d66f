"""The control plane's commands, `control-plane` and `tokens`, and its `Plane` for the dev
stack: registered as entry points in pyproject.toml (`longline.commands`,
`longline.planes`), which the SDK's `longline` script finds without importing this
plane (see `longline._plugins`). Entry-point code: it may run a loop and handle signals.

The flags of `control-plane` are `ControlPlaneSettings`' fields (`longline._options`);
the settings are made from the parsed flags in one call, and refused in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from longline import _telemetry
from longline._cli import Command, CommandError, serve
from longline._options import Option, options_of, values_of
from longline._plugins import Plane
from longline._store import DomainError

from . import _processes
from ._auth import hash_token, new_token, parse_tokens
from ._server import ControlPlane
from ._settings import ControlPlaneSettings

__all__ = ["COMMAND", "PLANE", "TOKENS"]

OPTIONS = options_of(ControlPlaneSettings)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = ControlPlaneSettings(**values_of(args, OPTIONS))
        if _processes.count(settings) > 1:
            return _processes.supervise(settings, _replica)
    except ValueError as exc:
        raise CommandError(f"longline control-plane: {exc}") from None
    return _serve_settings(settings)


def _replica(settings: ControlPlaneSettings, supervisor: int) -> None:
    """One replica of --processes, in a process of its own (spawned: it imports afresh)."""
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only, which passes it on
    _die_with_parent(supervisor)
    try:
        code = _serve_settings(settings)
    except CommandError as exc:
        print(exc, file=sys.stderr)
        code = 1
    sys.exit(code)


def _die_with_parent(supervisor: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux): no replica outlives it,
    holding the port."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before that (the supervisor may be pid 1)
        os.kill(os.getpid(), signal.SIGTERM)


def _serve_settings(settings: ControlPlaneSettings) -> int:
    try:
        cp = ControlPlane(settings)
    except ValueError as exc:
        raise CommandError(f"longline control-plane: {exc}") from None
    if settings.insecure_no_auth:
        print(
            "longline control-plane: --insecure-no-auth: authentication is OFF; anyone who can "
            "reach this port can start, read and cancel every run",
            file=sys.stderr,
        )
    shutdown_tracing = _telemetry.setup("longline-control-plane")

    async def main() -> int:
        try:
            await cp.run()
        except DomainError as exc:  # the deployment refuses this replica: say why, plainly
            raise CommandError(f"longline control-plane: {exc}") from None
        return 0

    try:
        return serve(main, [cp.request_stop], reload=cp.reload_tokens)
    finally:
        shutdown_tracing()


def _new_token(args: argparse.Namespace) -> int:
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
        raise CommandError(f"longline tokens new: {exc}") from None
    print(
        "# The token, for the caller (LONGLINE_TOKEN); it is not stored anywhere:", file=sys.stderr
    )
    print(f"#   {token}", file=sys.stderr)
    print("# Add this to the control plane's tokens file:", file=sys.stderr)
    print("\n".join(lines))
    return 0


def _hash_token(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip()
    if not token:
        raise CommandError("longline tokens hash: give the token on standard input")
    print(hash_token(token))
    return 0


def _in_process(**settings: Any) -> ControlPlane:
    return ControlPlane(ControlPlaneSettings(**settings))


COMMAND = Command("control-plane", "one control-plane replica", OPTIONS, _serve)
TOKENS = Command(
    "tokens",
    "make tokens and their hashes for the tokens file",
    subcommands=(
        Command(
            "new",
            "a new random token, and its entry for the tokens file",
            (
                Option(
                    "--kind",
                    "what the token may do; cluster-admin (old name: admin) calls "
                    "BuildService for every tenant",
                    choices=("client", "worker", "cluster-admin", "admin"),
                    required=True,
                    env=False,
                ),
                Option("--tenant", "client and admin tokens: the tenant", "", env=False),
                Option("--name", "a name for logs", "", env=False),
                Option("--workflows", "worker tokens: only these (a,b,c)", "", env=False),
            ),
            _new_token,
        ),
        Command("hash", "the SHA-256 of a token read from standard input", run=_hash_token),
    ),
)
PLANE = Plane("control-plane", _in_process, tuple(o for o in OPTIONS if o.dev))

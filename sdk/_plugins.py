"""How the SDK reaches the planes without importing them: entry points.

The import boundaries: the SDK (`longline`) never imports `longline.control_plane` or
`longline.compute_plane`, not even lazily inside a function, and the two planes never
import each other; both planes import the SDK. Yet the one `longline` command runs
either plane, and `longline dev` runs both. So each plane registers what it offers as
Python entry points in pyproject.toml, and the SDK looks them up by group at run time
with importlib.metadata:

    longline.commands   the plane's subcommands (a `longline._cli.Command` each):
                        control-plane, tokens (control plane); worker (compute plane)
    longline.planes     how to run the plane inside a dev stack (a `Plane` each):
                        control-plane, worker

A name missing from a group means that plane is not installed; a broken import in a
plane fails the lookup loudly rather than hiding the command.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ._options import Option

__all__ = [
    "COMMANDS_GROUP",
    "PLANES_GROUP",
    "ControlPlaneLike",
    "Plane",
    "WorkerLike",
    "planes",
    "registered",
]

COMMANDS_GROUP = "longline.commands"
PLANES_GROUP = "longline.planes"
T = TypeVar("T")


class ControlPlaneLike(Protocol):
    """What a dev stack uses of a control plane (`longline.control_plane.ControlPlane`)."""

    @property
    def port(self) -> int:
        """The bound gRPC port, once started."""

    @property
    def http_port(self) -> int:
        """The bound HTTP port once started (0: no HTTP face)."""

    async def start(self) -> None:
        """Serve in the background; return once the port is bound."""

    async def shutdown(self) -> None:
        """Stop serving and wait; safe to call twice."""


class WorkerLike(Protocol):
    """What a dev stack uses of a worker (`longline.compute_plane.Worker`)."""

    @property
    def connected(self) -> asyncio.Event:
        """Set while connected to a control plane."""

    @property
    def workflows(self) -> Mapping[str, object]:
        """The workflows it serves, by name."""

    async def run(self) -> None:
        """Serve until request_stop() and the drain."""

    def request_stop(self) -> None:
        """Stop taking runs, drain, then let run() return."""


@dataclass(frozen=True)
class Plane:
    """How a plane runs inside a dev stack; each plane registers one (`longline.planes`).

    `build(**settings)` returns the plane's object, given its settings by field name
    (the worker's also takes `module`, the workflows to serve); a ValueError says which
    setting is wrong. `dev_options` are the plane's flags `longline dev` offers too.
    """

    name: str
    build: Callable[..., Any]
    dev_options: tuple[Option, ...] = ()


def registered(group: str, kind: type[T], only: str | None = None) -> dict[str, T]:
    """The `kind` objects installed distributions register under an entry-point group (only
    the one named `only`, when given: loading one imports its plane).

    Sorted by name; a name registered twice (a stale copy of an install) counts once.
    """
    found: dict[str, T] = {}
    for point in sorted(importlib.metadata.entry_points(group=group), key=lambda p: p.name):
        if point.name in found or (only is not None and point.name != only):
            continue
        value = point.load()
        if not isinstance(value, kind):
            raise TypeError(f"entry point {point.value} ({group}) is not a {kind.__name__}")
        found[point.name] = value
    return found


def planes() -> dict[str, Plane]:
    """The installed planes by name; a LookupError names the one missing."""
    found = registered(PLANES_GROUP, Plane)
    for name in ("control-plane", "worker"):
        if name not in found:
            raise LookupError(
                f"no {name!r} in the entry points {PLANES_GROUP!r}: longline is not fully "
                "installed (pip install -e . registers the planes)"
            )
    return found

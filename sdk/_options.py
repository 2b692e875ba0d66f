"""Command-line options, declared once: on the settings dataclass a process is built from.

A settings field becomes a flag by its metadata, and the flag takes everything else from
the field: its default, and its type as the converter (`int`, `float`, `str`; a `bool` is
a switch). The flag is the field's name with `-` for `_` unless the metadata names it
(`redis_url` is `--redis`); it reads the environment variable `LONGLINE_` plus the flag's
name in capitals with `_` for `-` (`--redis` <- `LONGLINE_REDIS`), and a flag given on the
command line wins over the variable, which wins over the default:

    listen: str = field(default=DEFAULT_ADDRESS, metadata=option("HOST:PORT to serve gRPC on"))
    retention: float = field(default=7 * 86400.0, metadata=option("...", type=duration))
    reclaim_after: float = field(default=30.0, metadata=internal("a timing of the protocol"))

A field whose default is a factory (a random id) becomes a flag whose empty value means
"the factory's". Every field says which it is: `options_of` refuses a field with neither
`option` nor `internal` metadata, so a new setting cannot be left without a decision.
Values are checked where they always were, in the dataclass's `__post_init__`.

The argparse parser (`longline._cli`) and the configuration table in
docs/configuration.md are both made from these `Option`s, so neither can drift from the
settings. This module knows neither argparse's parser nor any plane: the planes import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_REDIS",
    "REDIS_HELP",
    "Option",
    "duration",
    "internal",
    "option",
    "options_of",
    "show_duration",
    "values_of",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"  # where a control plane listens, and where others look
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
REDIS_HELP = (
    "Redis URL: redis://HOST:PORT/DB (rediss:// for TLS), or through Sentinel "
    "redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"
    "[?sentinel_password=...], or a Redis Cluster "
    "redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...] (rediss+cluster:// for TLS)"
)
TRUE_WORDS = ("1", "true", "yes", "on")  # what a switch's environment variable takes as on
_KEY = "longline.option"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CONVERTERS: dict[Any, Callable[[str], Any] | None] = {int: int, float: float, str: None}


def duration(text: str) -> float:
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


def show_duration(seconds: float) -> str:
    """A duration as a person writes it: the largest unit that divides it (604800 -> 7d)."""
    for unit, scale in sorted(_UNITS.items(), key=lambda u: -u[1]):
        if seconds and seconds % scale == 0:
            return f"{seconds // scale:.0f}{unit}"
    return f"{seconds:g}"


@dataclass(frozen=True)
class Option:
    """One argument of a command: how it is spelt, its default, and what it means.

    `flag` is `--name` for a flag and a bare name for a positional argument. `env` says
    whether it reads LONGLINE_<NAME>; `env_only` options have no flag at all (a value
    that does not belong on a command line, where `ps` shows it). `field` is the
    settings field it fills; `factory` means an empty value leaves that field to its
    factory. `shown` is the default as docs print it where the value is made at run time
    or reads better another way (`7d`); `dev` offers the option on `longline dev` too.
    """

    flag: str
    help: str = ""
    default: Any = None
    type: Callable[[str], Any] | None = None
    switch: bool = False
    env: bool = True
    env_only: bool = False
    choices: Sequence[str] | None = None
    required: bool = False
    nargs: str | None = None
    field: str = ""
    factory: bool = False
    shown: str = ""
    dev: bool = False

    @property
    def positional(self) -> bool:
        """A positional argument (`MODULE`), not a flag."""
        return not self.flag.startswith("-")

    @property
    def dest(self) -> str:
        """The attribute argparse stores it in."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def reads_env(self) -> bool:
        """Whether it reads LONGLINE_<NAME> (a positional argument never does)."""
        return self.env_only or (self.env and not self.positional)

    @property
    def env_name(self) -> str:
        """The environment variable it reads: `--redis` <- LONGLINE_REDIS."""
        return "LONGLINE_" + self.flag.lstrip("-").upper().replace("-", "_")

    def env_default(self, environ: Mapping[str, str]) -> Any:
        """The default in force: the environment variable's text when set, else `default`.

        A switch's variable is on for 1, true, yes or on; any other text is the raw
        string, which argparse converts with `type` as it converts a typed default.
        """
        if not self.reads_env or self.env_name not in environ:
            return self.default
        text = environ[self.env_name]
        return text.strip().lower() in TRUE_WORDS if self.switch else text


@dataclass(frozen=True)
class _Declared:
    help: str
    flag: str
    type: Callable[[str], Any] | None
    dev: bool
    shown: str
    env_only: bool


@dataclass(frozen=True)
class _Internal:
    why: str


def option(
    help: str,
    *,
    flag: str = "",
    type: Callable[[str], Any] | None = None,
    dev: bool = False,
    shown: str = "",
    env_only: bool = False,
) -> dict[str, Any]:
    """Field metadata making a settings field a flag (see the module docstring).

    `flag` renames it (default: the field's name); `type` converts its text in place of
    the field's type (`duration`); `shown` is its default as docs print it; `dev` offers
    it on `longline dev`; `env_only` reads it from LONGLINE_<NAME> alone, with no flag.
    """
    return {_KEY: _Declared(help, flag, type, dev, shown, env_only)}


def internal(why: str) -> dict[str, Any]:
    """Field metadata for a setting that is no flag: not an operator's to change (say why)."""
    return {_KEY: _Internal(why)}


def options_of(settings: type[Any]) -> tuple[Option, ...]:
    """The options a settings dataclass declares, in field order (internal ones left out)."""
    hints = typing.get_type_hints(settings)
    found: list[Option] = []
    for f in dataclasses.fields(settings):
        declared = f.metadata.get(_KEY)
        if isinstance(declared, _Internal):
            continue
        if not isinstance(declared, _Declared):
            raise TypeError(
                f"{settings.__name__}.{f.name} is neither option(...) nor internal(...): "
                "decide whether operators set it"
            )
        found.append(_option(f, hints[f.name], declared))
    return tuple(found)


def _option(f: dataclasses.Field[Any], kind: Any, declared: _Declared) -> Option:
    factory = f.default is dataclasses.MISSING
    if factory and f.default_factory is dataclasses.MISSING:
        raise TypeError(f"setting {f.name} has no default: a flag needs one")
    if kind is not bool and declared.type is None and kind not in _CONVERTERS:
        raise TypeError(f"setting {f.name}: give option(type=...) to read a {kind}")
    if kind is bool and f.default is not False:
        raise TypeError(f"setting {f.name}: a switch is off by default (store_true)")
    default: Any = "" if factory else f.default
    shown = declared.shown
    if declared.type is duration and not shown:
        shown = show_duration(default)
    return Option(
        flag=declared.flag or "--" + f.name.replace("_", "-"),
        help=declared.help,
        default=default,
        type=None if kind is bool else declared.type or _CONVERTERS[kind],
        switch=kind is bool,
        env_only=declared.env_only,
        field=f.name,
        factory=factory,
        shown=shown,
        dev=declared.dev,
    )


def values_of(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    """The settings fields the parsed `args` give, by field name, for `Settings(**values)`.

    An empty value of a factory field is left out, so the factory makes it.
    """
    values: dict[str, Any] = {}
    for o in options:
        value = getattr(args, o.dest)
        if o.field and not (o.factory and not value):
            values[o.field] = value
    return values

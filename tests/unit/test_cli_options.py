"""The `longline` flags are the settings' fields: one default, one help, LONGLINE_* from the
name; and the SDK reaches the planes through entry points, never by importing them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from longline._cli import build_parser, commands
from longline._cli._command import walk
from longline._offline_model import Faults
from longline._options import Option, internal, option, options_of, values_of
from longline.compute_plane import WorkerSettings
from longline.compute_plane._cli import OPTIONS as WORKER_OPTIONS
from longline.control_plane import ControlPlaneSettings
from longline.control_plane._cli import OPTIONS as CP_OPTIONS


def _settings(cls: type, options: tuple[Option, ...], *argv: str, env: dict | None = None):
    args = build_parser(env or {}).parse_args(list(argv))
    return cls(**values_of(args, options))


def _without(settings: object, *names: str) -> dict:
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in names}


def test_a_plane_with_no_flags_has_its_settings_defaults() -> None:
    built = _settings(ControlPlaneSettings, CP_OPTIONS, "control-plane")
    assert _without(built, "replica_id") == _without(ControlPlaneSettings(), "replica_id")
    assert built.replica_id.startswith("cp-")  # an empty --replica-id: the factory's
    worker = _settings(WorkerSettings, WORKER_OPTIONS, "worker", "m", "--insecure-no-auth")
    expected = WorkerSettings(insecure_no_auth=True)
    assert _without(worker, "worker_id") == _without(expected, "worker_id")


def test_variables_are_read_by_the_flag_name_and_a_given_flag_wins() -> None:
    env = {
        "LONGLINE_RETENTION": "12h",
        "LONGLINE_INSECURE_NO_AUTH": "yes",
        "LONGLINE_TOKENS": "# none",
        "LONGLINE_REDIS": "redis://10.0.0.1:6379/2",
        "LONGLINE_MAX_INPUT_BYTES": "2048",
        "LONGLINE_REPLICA_ID": "cp-7",
    }
    cp = _settings(ControlPlaneSettings, CP_OPTIONS, "control-plane", env=env)
    assert (cp.retention, cp.insecure_no_auth, cp.tokens) == (43200.0, True, "# none")
    assert (cp.redis_url, cp.max_input_bytes, cp.replica_id) == (
        "redis://10.0.0.1:6379/2",
        2048,
        "cp-7",
    )
    given = _settings(
        ControlPlaneSettings, CP_OPTIONS, "control-plane", "--retention", "90s", env=env
    )
    assert given.retention == 90.0
    off = _settings(
        ControlPlaneSettings, CP_OPTIONS, "control-plane", env={"LONGLINE_INSECURE_NO_AUTH": "0"}
    )
    assert off.insecure_no_auth is False


def test_a_value_that_cannot_be_read_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, env in [
        (["control-plane", "--retention", "7w"], {}),
        (["worker", "m"], {"LONGLINE_SLOTS": "many"}),
    ]:
        with pytest.raises(SystemExit) as caught:
            build_parser(env).parse_args(argv)
        assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "argument --retention: '7w' is not a duration" in err
    assert "argument --slots: invalid int value: 'many'" in err


def test_every_setting_is_a_flag_or_says_why_not() -> None:
    for cls in (ControlPlaneSettings, WorkerSettings, Faults):
        options = {o.field for o in options_of(cls)}
        for f in dataclasses.fields(cls):
            assert f.name in options or "longline.option" in f.metadata, f.name

    @dataclasses.dataclass
    class Undecided:
        decided: int = dataclasses.field(default=1, metadata=option("a flag"))
        hidden: int = dataclasses.field(default=2, metadata=internal("tests only"))
        forgotten: int = 3

    with pytest.raises(TypeError, match="forgotten is neither option"):
        options_of(Undecided)


def test_dev_offers_the_worker_flags_marked_dev() -> None:
    dev = next(c for c in commands() if c.name == "dev")
    flags = {o.flag for o in dev.options}
    marked = {o.flag for o in WORKER_OPTIONS + CP_OPTIONS if o.dev}
    assert marked <= flags and {"--slots", "--build-id", "--listen"} <= marked
    assert "--token" not in flags and "--tls" not in flags  # the dev stack sets those


def test_every_command_has_help() -> None:
    paths = [name.split() for name, command in walk(commands())]
    assert {"control-plane", "worker", "tokens", "dev", "run"} <= {p[0] for p in paths}
    for path in [[], *paths]:
        with pytest.raises(SystemExit) as caught:
            build_parser({}).parse_args([*path, "--help"])
        assert caught.value.code == 0, path


def test_processes_count_the_cores_a_cpu_limit_leaves(tmp_path: Path) -> None:
    """--processes 0 starts one replica per core the pod may use: a CPU limit, not the
    node's cores (cgroup v2's cpu.max: quota and period in microseconds)."""
    from longline.control_plane._processes import cores

    limit = tmp_path / "cpu.max"
    every = len(os.sched_getaffinity(0))
    limit.write_text("max 100000\n")
    assert cores(str(limit)) == every
    limit.write_text("150000 100000\n")  # 1.5 CPUs: two processes, the second half-busy
    assert cores(str(limit)) == min(every, 2)
    limit.write_text("10000 100000\n")
    assert cores(str(limit)) == 1
    assert cores(str(tmp_path / "none")) == every

"""The secured setup of docs/security.md, typed as a user would: tokens made with
`longline tokens new`, a control plane that refuses to start without them, a worker and a
client with theirs."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.procs import Proc, spawn, start_control_plane, start_worker

SECURED = {"LONGLINE_INSECURE_NO_AUTH": "0"}


async def _longline(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "longline._cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **SECURED, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _new_token(tokens: Path, *args: str) -> str:
    code, entry, note = await _longline("tokens", "new", *args)
    assert code == 0, note
    with tokens.open("a") as f:
        f.write(entry)
    (token,) = re.findall(r"#\s+(ll[cwa]_\S+)", note)
    return token


async def test_a_secured_setup_from_the_readme(
    redis_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    refused = spawn("no-tokens", "control-plane", "--redis", redis_url, env=SECURED)
    assert refused.popen.wait(30) != 0
    assert "refusing to start without tokens" in refused.output()

    tokens = tmp_path / "tokens.toml"
    worker_token = await _new_token(tokens, "--kind", "worker", "--name", "workers")
    client_token = await _new_token(tokens, "--kind", "client", "--tenant", "acme")
    assert worker_token not in tokens.read_text() and client_token not in tokens.read_text()

    cp, target = await start_control_plane(
        redis_url, "--tokens-file", str(tokens), env=SECURED, name="cp"
    )
    procs.append(cp)
    procs.append(
        await start_worker(
            redis_url,
            target,
            env={**SECURED, "LONGLINE_TOKEN": worker_token},
            client_token=client_token,
        )
    )
    code, out, err = await _longline(
        "run",
        "echo",
        "--input",
        '"hello"',
        "--control-plane",
        target,
        env={"LONGLINE_TOKEN": client_token},
    )
    assert code == 0, out + err
    assert "hello" in out
    code, out, err = await _longline("runs", "--control-plane", target)
    assert code == 1
    assert "UNAUTHENTICATED" in err and "no token" in err
    code, out, err = await _longline(
        "runs", "--control-plane", target, env={"LONGLINE_TOKEN": worker_token}
    )
    assert code == 1 and "PERMISSION_DENIED" in err

"""The Node.js client (sdk/node), generated from the protos, against a real stack.

Needs node and npm: where they are missing the test says so and skips, except
under CI=true, where it must run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_auth import secret, tokens_toml
from tests.procs import Proc, start_control_plane, start_worker

NODE = ROOT / "sdk" / "node"


def _require_node() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not found on PATH: the Node.js client is not tested"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true requires it)")
        print(reason)
        pytest.skip(reason)


async def _npm(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "npm",
        *args,
        cwd=NODE,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.fixture(scope="module")
def node_modules() -> None:
    """node and npm present, and sdk/node's packages installed (npm ci, from the lock file)."""
    _require_node()
    if not (NODE / "node_modules").exists():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}{done.stderr}"


# Once, on one Redis: its Redis calls are test_stub_client's and test_auth's, run on the cluster.
@pytest.mark.single_redis
async def test_node_client_resumes_streams_and_reads_error_reasons(
    redis_url: str, procs: list[Proc], node_modules: None
) -> None:
    secured = {"LONGLINE_INSECURE_NO_AUTH": "0"}
    cp, target = await start_control_plane(
        redis_url, env={**secured, "LONGLINE_TOKENS": tokens_toml(["alice", "worker"])}
    )
    procs.append(cp)
    procs.append(
        await start_worker(
            redis_url,
            target,
            env={**secured, "LONGLINE_TOKEN": secret("worker")},
            client_token=secret("alice"),
        )
    )
    code, out = await _npm(
        "test", env={"LONGLINE_TARGET": target, "LONGLINE_TOKEN": secret("alice")}
    )
    print(out)
    assert code == 0, out
    assert "# pass 5" in out and "# fail 0" in out


def test_committed_node_stubs_match_the_protos(tmp_path: Path, node_modules: None) -> None:
    """Like the Python stubs: sdk/node/src/gen is what `make protos` makes."""
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = {p.relative_to(tmp_path): p.read_text() for p in module.generate_node(tmp_path)}
    committed_dir = NODE / "src" / "gen"
    committed = {p.relative_to(committed_dir): p.read_text() for p in committed_dir.rglob("*.ts")}
    assert fresh == committed, "sdk/node/src/gen differs from protos/: run `make protos`"

"""Both a plain install and the editable install of the dev venv import every package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

IMPORTS = (
    "import longline, longline.v1.runs_pb2, longline.control_plane, longline.compute_plane, "
    "longline.examples, longline._store; print(longline.__file__)"
)


def test_editable_install_imports() -> None:
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True, cwd="/"
    )
    assert Path(out.stdout.strip()).parent == ROOT / "sdk"


def test_plain_install_imports(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "longline" / "_store" / "_scripts.py").exists()
    assert (target / "longline" / "py.typed").exists()
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    # -I would drop PYTHONPATH; -S is not wanted (dependencies live in site-packages), so run
    # from / where no source folder can shadow the install, and check where it imported from.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); " + IMPORTS,
            str(target),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        env=env,
    )
    assert Path(out.stdout.strip()).parent == target / "longline"

"""The import contracts of pyproject.toml hold (`make lint` checks them too), and they fail on
a forbidden import: one is added to a copy of the package to show it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as a plain install lays it out (the editable install's import hook is
    invisible to the import graph)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    # Built from a copy: setuptools writes build/ and egg-info beside the sources.
    source = build / "source"
    skip = shutil.ignore_patterns("node_modules", "__pycache__", ".venv", "*.egg-info", "build")
    for name in ("sdk", "control_plane", "compute_plane"):
        shutil.copytree(ROOT / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"),
            *("--target", str(target), str(source)),
        ],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(build), "PIP_NO_INDEX": "1"},
        cwd=build,
    )
    return target


def _lint(site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml")],
        cwd=site,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold(plain_install: Path) -> None:
    result = _lint(plain_install)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("control_plane/_monitor.py", "import redis", "reach Redis only through the store"),
        ("compute_plane/_worker.py", "import longline.control_plane", "control plane imports"),
        ("_client.py", "import longline.compute_plane", "compute plane imports"),
        ("control_plane/_runs.py", "from longline._store import _runs", "private modules"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(
    plain_install: Path, tmp_path: Path, module: str, line: str, contract: str
) -> None:
    site = tmp_path / "site"
    shutil.copytree(plain_install, site)
    path = site / "longline" / module
    path.write_text(path.read_text() + f"\n{line}  # forbidden\n")
    result = _lint(site)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout

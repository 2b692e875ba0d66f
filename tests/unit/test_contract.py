"""The protos are a contract: buf lint passes, and buf breaking catches a breaking change."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BUF = str(Path(sys.executable).parent / "buf")
BASELINE = ROOT / "protos" / "baseline.binpb"


def _breaking(protos: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BUF, "breaking", "--against", str(BASELINE)],
        cwd=protos,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy, ignore=shutil.ignore_patterns("baseline.binpb"))
    return copy


def test_the_protos_as_committed_are_compatible_with_the_baseline(tmp_path: Path) -> None:
    result = _breaking(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_renamed_field_breaks_the_build(tmp_path: Path) -> None:
    protos = _copy(tmp_path)
    runs = protos / "longline" / "v1" / "runs.proto"
    text = runs.read_text()
    edited = text.replace(
        "message GetRunRequest {\n  string run_id = 1;", "message GetRunRequest {\n  string id = 1;"
    )
    assert edited != text
    runs.write_text(edited)
    result = _breaking(protos)
    assert result.returncode != 0
    assert "GetRunRequest" in result.stdout


def test_a_renumbered_field_breaks_the_build(tmp_path: Path) -> None:
    protos = _copy(tmp_path)
    runs = protos / "longline" / "v1" / "runs.proto"
    text = runs.read_text()
    edited = text.replace("  string after_event_id = 2;", "  string after_event_id = 7;")
    assert edited != text
    runs.write_text(edited)
    result = _breaking(protos)
    assert result.returncode != 0
    assert "StreamRunRequest" in result.stdout

"""The committed stubs are exactly what `make protos` generates from the protos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import ROOT

OPENAPI = "openapi.json"


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    committed = ROOT / "sdk" / "v1"
    fresh = {p.name: p.read_text() for p in written}
    # openapi.json is generated beside the stubs, by generate_openapi (its own test below).
    on_disk = {
        p.name: p.read_text() for p in committed.iterdir() if p.is_file() and p.name != OPENAPI
    }
    stale = sorted(n for n in fresh if fresh[n] != on_disk.get(n))
    extra = sorted(set(on_disk) - set(fresh))
    assert not stale and not extra, (
        f"sdk/v1 differs from protos/ (changed: {stale}, not generated: {extra}); run `make protos`"
    )


def test_committed_openapi_document_matches_the_protos(tmp_path: Path) -> None:
    fresh = _generator().generate_openapi(tmp_path / OPENAPI).read_text(encoding="utf-8")
    committed = ROOT / "sdk" / "v1" / OPENAPI
    on_disk = committed.read_text(encoding="utf-8") if committed.exists() else None
    assert fresh == on_disk, (
        "sdk/v1/openapi.json differs from protos/longline/v1/runs.proto's google.api.http"
        " annotations and protos/generate.py's FACE_ONLY; run `make protos`"
    )

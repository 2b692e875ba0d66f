"""The planes' process runtime (longline._cli._runtime): what serve() does to a process
before its main() runs. Each check runs in a subprocess of its own, so that the test
process's garbage collector is left as it is."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

# A main() that reports how many objects are frozen out of the collector's walks, and how
# many a full collection still walks (gc.get_objects lists the tracked, unfrozen ones).
_PROBE = """
import gc, json
from longline._cli._runtime import serve

async def main() -> int:
    print(json.dumps({"frozen": gc.get_freeze_count(), "walked": len(gc.get_objects())}))
    return 0

raise SystemExit(serve(main))
"""


def _probe(**env: str) -> dict[str, int]:
    import json

    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_serve_freezes_what_the_process_made_before_main() -> None:
    frozen = _probe()
    assert frozen["frozen"] > 10_000, frozen  # the modules' objects, and the rest of start-up
    assert frozen["walked"] < frozen["frozen"] // 10, frozen  # what a collection still walks


def test_longline_gc_freeze_0_leaves_the_collector_alone() -> None:
    untouched = _probe(LONGLINE_GC_FREEZE="0")
    assert untouched["frozen"] == 0, untouched
    assert untouched["walked"] > 10_000, untouched

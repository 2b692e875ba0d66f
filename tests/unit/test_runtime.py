"""The planes' process runtime (longline._cli._runtime): what serve() does to a process
before its main() runs. Each check runs in a subprocess of its own, so that the test
process's garbage collector is left as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

# A main() that reports how many objects are frozen out of the collector's walks, and how
# many a full collection still walks (gc.get_objects lists the tracked, unfrozen ones).
# And whether garbage made at start-up (a cycle no one refers to) was freed, not frozen.
_PROBE = """
import gc, json, weakref
from longline._cli._runtime import serve

class Cycle:
    pass

gc.disable()  # no automatic collection frees it first: only serve() may
garbage = Cycle()
garbage.me = garbage
dead = weakref.ref(garbage)
del garbage

async def main() -> int:
    print(json.dumps({
        "frozen": gc.get_freeze_count(),
        "walked": len(gc.get_objects()),
        "garbage_left": dead() is not None,
    }))
    return 0

raise SystemExit(serve(main))
"""


def _probe(freeze: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env={**os.environ, "LONGLINE_GC_FREEZE": freeze},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_serve_frees_start_up_garbage_then_freezes_the_rest_before_main() -> None:
    frozen = _probe("1")
    assert frozen["frozen"] > 10_000, frozen  # the modules' objects, and the rest of start-up
    assert frozen["walked"] < frozen["frozen"] // 10, frozen  # what a collection still walks
    assert not frozen["garbage_left"], frozen  # collected first: nothing dead is kept for good


def test_longline_gc_freeze_0_leaves_the_collector_alone() -> None:
    untouched = _probe("0")
    assert untouched["frozen"] == 0, untouched
    assert untouched["walked"] > 10_000, untouched

"""The event loop and the signals of a `longline` process: entry-point code only.

Library code (the planes, `DevStack`, the client) never creates a loop, installs a signal
handler or exits; the command functions call one of these two, which do.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["detachable", "freeze_startup_objects", "loop_factory", "serve"]

Main = Callable[[], Coroutine[Any, Any, int]]


def serve(
    main: Main,
    stoppers: list[Callable[[], None]] | None = None,
    reload: Callable[[], object] | None = None,
) -> int:
    """Run main() on the planes' loop; SIGINT/SIGTERM ask every stopper to stop (or, with
    none, cancel main: it returns 130); SIGHUP calls `reload`. What the process made before
    main() is frozen out of the garbage collector's walks (freeze_startup_objects).

    A second stop signal quits at once.
    """

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                os._exit(130)
            if stoppers is None and task is not None:
                task.cancel()
            for stop in stoppers or []:
                stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload)
        freeze_startup_objects()
        try:
            return await main()
        except asyncio.CancelledError:
            return 130

    with asyncio.Runner(loop_factory=loop_factory()) as runner_loop:
        return runner_loop.run(runner())


def freeze_startup_objects() -> None:
    """Put what the process made before serving (its modules, protobuf descriptors and
    the like: 80,000-125,000 objects) beyond the garbage collector for good (`gc.freeze`).

    A full collection otherwise walks them all each time, and a plane stops while it does:
    with 2,000 runs watched, full collections took up to 73-78 ms in the control plane and
    143 ms in the worker on Python 3.11, most of B3's delivery tail (docs/performance.md).
    Nearly all of it lives as long as the process; what of it dies later in a reference
    cycle is never freed (bounded: the start-up set, once). LONGLINE_GC_FREEZE=0 leaves the
    collector as Python sets it (and lets gc.get_objects() see everything, to hunt leaks).
    """
    if os.environ.get("LONGLINE_GC_FREEZE", "1") == "0":
        return
    gc.collect()  # garbage made while starting is freed, not kept frozen
    gc.freeze()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the long-running planes where it is installed (LONGLINE_UVLOOP=0: asyncio's)."""
    if os.environ.get("LONGLINE_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def detachable(main: Main, on_detach: Callable[[], None]) -> int:
    """Run a client's main(); at SIGINT call on_detach() and leave at once (code 130).

    Watching holds nothing on the server, so leaving needs no cleanup that could hang.
    """

    async def runner() -> int:
        def detach() -> None:
            on_detach()
            sys.stdout.flush()  # os._exit skips it
            os._exit(130)

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, detach)
        return await main()

    return asyncio.run(runner())

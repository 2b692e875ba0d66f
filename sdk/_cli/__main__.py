"""`python -m longline._cli`: the `longline` command."""

from __future__ import annotations

import contextlib
import sys

from . import main

if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

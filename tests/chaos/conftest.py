"""Chaos tests: real subprocesses, real signals. Marked slow: `--skip-slow` skips them
locally; CI (CI=true) always runs them."""

from __future__ import annotations

LEASE = ("--lease-timeout", "2", "--heartbeat-interval", "0.5")

"""The control plane's settings, built once by the entry point."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ControlPlaneSettings:
    """Everything a control-plane replica is configured with."""

    redis_url: str
    listen: str = "127.0.0.1:50051"
    replica_id: str = field(default_factory=lambda: "cp-" + secrets.token_hex(4))
    max_input_bytes: int = 1024 * 1024
    lease_timeout: float = 10.0
    heartbeat_interval: float = 2.0
    redis_pool_size: int = 32
    shutdown_grace: float = 5.0
    metrics_listen: str = ""  # HOST:PORT for Prometheus; empty: none
    # Queue entries another replica was handed and has not acted on for this long are taken
    # over (that replica died between reading and assigning them).
    reclaim_after: float = 30.0

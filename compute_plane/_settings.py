"""The worker's settings, built once by the entry point."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field

from longline._store import check_build_id


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process is configured with."""

    redis_url: str
    control_plane: str = "127.0.0.1:50051"  # one target, or several separated by commas
    slots: int = 16
    build_id: str = ""
    worker_id: str = field(default_factory=_default_worker_id)
    heartbeat_interval: float = 2.0
    drain_timeout: float = 25.0
    health_listen: str = ""  # host:port for grpc.health.v1; empty: none
    metrics_listen: str = ""  # HOST:PORT for Prometheus; empty: none

    def __post_init__(self) -> None:
        check_build_id(self.build_id, allow_empty=True)

    @property
    def targets(self) -> list[str]:
        """The control-plane targets to connect to, in order."""
        return [t.strip() for t in self.control_plane.split(",") if t.strip()]

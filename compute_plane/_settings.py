"""The worker's settings, built once by the entry point."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field

from longline._store import check_build_id, check_redis_url


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
    max_event_bytes: int = 1024 * 1024  # one event's message + data, and the result; 0: any
    # A worker token (see the control plane's tokens file); without one the worker refuses to
    # start unless insecure_no_auth says the control plane runs without authentication.
    token: str = ""
    insecure_no_auth: bool = False
    # TLS to the control plane: verify it against tls_ca (system roots when empty and tls is
    # set); tls_cert and tls_key present a client certificate (mutual TLS).
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def __post_init__(self) -> None:
        check_redis_url(self.redis_url)
        check_build_id(self.build_id, allow_empty=True)
        if not self.token and not self.insecure_no_auth:
            raise ValueError(
                "a worker needs a worker token (--token or LONGLINE_TOKEN), or "
                "--insecure-no-auth for a control plane that runs without authentication"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")

    @property
    def targets(self) -> list[str]:
        """The control-plane targets to connect to, in order."""
        return [t.strip() for t in self.control_plane.split(",") if t.strip()]

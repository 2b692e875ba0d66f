"""The worker's settings, built once by the entry point.

Each field is a flag of `longline worker` (its default, type and help are the flag's; it
reads LONGLINE_<FLAG>); those marked `dev` are flags of `longline dev` too. See
`longline._options`; docs/configuration.md is generated from these.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field

from longline._options import DEFAULT_ADDRESS, DEFAULT_REDIS, REDIS_HELP, option
from longline._store import check_build_id, check_redis_url


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process is configured with."""

    redis_url: str = field(default=DEFAULT_REDIS, metadata=option(REDIS_HELP, flag="--redis"))
    control_plane: str = field(
        default=DEFAULT_ADDRESS,
        metadata=option(
            "control-plane HOST:PORT, or several separated by commas (tried in turn); a "
            "dns:///NAME:PORT target resolving to several addresses is handed to gRPC, whose "
            "pick_first tries them in order"
        ),
    )
    slots: int = field(default=16, metadata=option("runs held at once", dev=True))
    build_id: str = field(
        default="", metadata=option("the build this worker runs (blue-green deploys)", dev=True)
    )
    worker_id: str = field(
        default_factory=_default_worker_id,
        metadata=option("unique id (default: host-pid-random)", dev=True, shown="host-pid-random"),
    )
    heartbeat_interval: float = field(
        default=2.0,
        metadata=option(
            "seconds between lease renewals, until the control plane sends its own", dev=True
        ),
    )
    drain_timeout: float = field(
        default=25.0, metadata=option("seconds to finish runs after SIGTERM", dev=True)
    )
    health_listen: str = field(
        default="", metadata=option("HOST:PORT for the gRPC health service; empty: none", dev=True)
    )
    metrics_listen: str = field(
        default="", metadata=option("HOST:PORT for Prometheus metrics; empty: none", dev=True)
    )
    park_after: float = field(
        default=1.0,
        metadata=option(
            "seconds: a ctx.sleep longer than this parks the run (WAITING) and frees its slot; "
            "a shorter one waits in memory (a wait for input always parks)",
            dev=True,
        ),
    )
    max_event_bytes: int = field(
        default=1024 * 1024,
        metadata=option("largest event (message and data), and largest result; 0: any", dev=True),
    )
    # A worker token (see the control plane's tokens file); without one the worker refuses to
    # start unless insecure_no_auth says the control plane runs without authentication.
    token: str = field(default="", metadata=option("worker token"))
    insecure_no_auth: bool = field(
        default=False, metadata=option("for a control plane with no auth")
    )
    # TLS to the control plane: verify it against tls_ca (system roots when empty and tls is
    # set); tls_cert and tls_key present a client certificate (mutual TLS).
    tls: bool = field(default=False, metadata=option("connect to the control plane over TLS"))
    tls_ca: str = field(
        default="", metadata=option("PEM CA to verify the control plane with (implies --tls)")
    )
    tls_cert: str = field(default="", metadata=option("PEM client certificate (mutual TLS)"))
    tls_key: str = field(default="", metadata=option("PEM private key of --tls-cert"))

    def __post_init__(self) -> None:
        check_redis_url(self.redis_url)
        check_build_id(self.build_id, allow_empty=True)
        if not self.token and not self.insecure_no_auth:
            raise ValueError(
                "a worker needs a worker token (--token or LONGLINE_TOKEN), or "
                "--insecure-no-auth for a control plane that runs without authentication"
            )
        if not (self.park_after >= 0 and self.park_after < float("inf")):
            raise ValueError(f"--park-after must be 0 or more seconds, got {self.park_after}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")

    @property
    def targets(self) -> list[str]:
        """The control-plane targets to connect to, in order."""
        return [t.strip() for t in self.control_plane.split(",") if t.strip()]

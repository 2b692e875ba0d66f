"""The control plane's settings, built once by the entry point."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from longline._store import check_redis_url

MAX_RETENTION = 3650 * 86400.0  # ten years; 0 keeps finished runs forever


@dataclass(frozen=True)
class ControlPlaneSettings:
    """Everything a control-plane replica is configured with."""

    redis_url: str
    listen: str = "127.0.0.1:50051"
    replica_id: str = field(default_factory=lambda: "cp-" + secrets.token_hex(4))
    max_input_bytes: int = 1024 * 1024
    lease_timeout: float = 10.0
    heartbeat_interval: float = 2.0
    # A worker that does not acknowledge an assignment within this many seconds is taken for
    # stalled: the run goes back to the queue (not a lost attempt) and the worker gets no
    # more until it answers.
    ack_timeout: float = 5.0
    # How long a finished run's keys (state, events, checkpoints, idempotency key) stay in
    # Redis after it ends, in seconds; 0 keeps them forever.
    retention: float = 7 * 86400.0
    redis_pool_size: int = 32
    shutdown_grace: float = 5.0
    metrics_listen: str = ""  # HOST:PORT for Prometheus; empty: none
    # Queue entries another replica was handed and has not acted on for this long are taken
    # over (that replica died between reading and assigning them).
    reclaim_after: float = 30.0
    # Authentication (see _auth): a tokens file, or the same TOML as text (LONGLINE_TOKENS).
    # With neither, the control plane refuses to start unless insecure_no_auth is set.
    tokens_file: str = ""
    tokens: str = ""
    insecure_no_auth: bool = False
    # TLS: a certificate and key (PEM files) make every port TLS. worker_listen serves
    # WorkerService on a port of its own (and not on `listen`); with tls_client_ca that port
    # takes only workers presenting a client certificate signed by that CA (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    worker_listen: str = ""
    # Limits on what callers send, and per tenant (0 = no limit where noted).
    max_labels: int = 64
    max_label_bytes: int = 256
    max_page_size: int = 1000
    max_queued_per_tenant: int = 100_000  # QUEUED runs of one tenant; 0 = no limit
    start_rate_per_tenant: float = 2000.0  # StartRun/RunWorkflow per second, sustained; 0 = none
    start_burst_per_tenant: int = 10_000  # ... and in a burst
    max_streams_per_tenant: int = 10_000  # concurrent StreamRun/RunWorkflow per replica; 0 = none

    def __post_init__(self) -> None:
        check_redis_url(self.redis_url)
        if not 0 < self.ack_timeout <= 3600:  # also refuses nan
            raise ValueError("--ack-timeout must be more than 0 seconds and at most an hour")
        if not 0 <= self.retention <= MAX_RETENTION:
            raise ValueError(
                "--retention must be between 0 (keep finished runs forever) and 3650 days"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
        if self.tls_client_ca and not (self.tls_cert and self.worker_listen):
            raise ValueError(
                "--tls-client-ca (mutual TLS for workers) needs --tls-cert/--tls-key and a "
                "--worker-listen port of its own"
            )

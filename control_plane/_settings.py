"""The control plane's settings, built once by the entry point.

Each field is a flag of `longline control-plane` (its default, type and help are the
flag's; it reads LONGLINE_<FLAG>), or `internal`, saying why it is not one; see
`longline._options`. docs/configuration.md is generated from these.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from longline._options import DEFAULT_ADDRESS, DEFAULT_REDIS, REDIS_HELP, duration, internal, option
from longline._store import DEFAULT_PARTITIONS, MAX_PARTITIONS, check_redis_url

MAX_RETENTION = 3650 * 86400.0  # ten years; 0 keeps finished runs forever
_LIMIT = "a limit of the API contract, the same for every deploy, so clients can rely on it"


@dataclass(frozen=True)
class ControlPlaneSettings:
    """Everything a control-plane replica is configured with."""

    redis_url: str = field(default=DEFAULT_REDIS, metadata=option(REDIS_HELP, flag="--redis"))
    listen: str = field(
        default=DEFAULT_ADDRESS, metadata=option("HOST:PORT to serve gRPC on", dev=True)
    )
    replica_id: str = field(
        default_factory=lambda: "cp-" + secrets.token_hex(4),
        metadata=option(
            "unique replica id, its consumer name in the queue group (default: random)",
            shown="random",
        ),
    )
    processes: int = field(
        default=1,
        metadata=option(
            "processes serving the same ports, each a replica with an event loop of its own "
            "(SO_REUSEPORT: the kernel spreads connections over them); 0: one per core"
        ),
    )
    # Set by --processes for the processes it starts: their ports are shared.
    reuse_port: bool = field(
        default=False, metadata=internal("set by --processes for the processes it starts")
    )
    partitions: int = field(
        default=DEFAULT_PARTITIONS,
        metadata=option(
            "partitions runs are spread over (1-4096): set once per deployment, checked at "
            "start-up; more partitions spread over more Redis Cluster masters"
        ),
    )
    max_input_bytes: int = field(
        default=1024 * 1024,
        metadata=option("largest input_json accepted; a larger one is RESOURCE_EXHAUSTED"),
    )
    lease_timeout: float = field(
        default=10.0, metadata=option("seconds a lease lasts without a heartbeat")
    )
    heartbeat_interval: float = field(
        default=2.0, metadata=option("seconds between worker heartbeats (sent to workers)")
    )
    # A worker that does not acknowledge an assignment within this many seconds is taken for
    # stalled: the run goes back to the queue (not a lost attempt) and the worker gets no
    # more until it answers.
    ack_timeout: float = field(
        default=5.0,
        metadata=option(
            "seconds a worker has to acknowledge an assignment (at most half the lease) before "
            "the run goes elsewhere, not counted as a lost attempt"
        ),
    )
    # How long a finished run's keys (state, events, checkpoints, idempotency key) stay in
    # Redis after it ends, in seconds; 0 keeps them forever.
    retention: float = field(
        default=7 * 86400.0,
        metadata=option(
            "how long a finished run's state, events, checkpoints and idempotency key are kept "
            "(e.g. 7d, 12h, 90s, or seconds); 0: forever",
            type=duration,
        ),
    )
    redis_pool_size: int = field(
        default=32,
        metadata=option("most connections in the shared Redis pool (subscriptions have their own)"),
    )
    shutdown_grace: float = field(
        default=5.0,
        metadata=option("seconds open calls and streams get to finish when the replica stops"),
    )
    metrics_listen: str = field(
        default="", metadata=option("HOST:PORT for Prometheus metrics; empty: none")
    )
    # Queue entries another replica was handed and has not acted on for this long are taken
    # over (that replica died between reading and assigning them).
    reclaim_after: float = field(
        default=30.0, metadata=internal("a timing of the dispatch protocol; tests shorten it")
    )
    # Authentication (see _auth): a tokens file, or the same TOML as text (LONGLINE_TOKENS).
    # With neither, the control plane refuses to start unless insecure_no_auth is set.
    tokens_file: str = field(
        default="",
        metadata=option("TOML file of token hashes (or the TOML itself in LONGLINE_TOKENS)"),
    )
    tokens: str = field(
        default="",
        metadata=option(
            "the TOML of a tokens file, for where no file can be mounted", env_only=True
        ),
    )
    insecure_no_auth: bool = field(default=False, metadata=option("serve with no tokens at all"))
    # Run tokens (CreateRunToken, see _run_tokens): the secret that signs them, the same on
    # every replica. An environment variable only: a flag would show in `ps`.
    run_token_secret: str = field(
        default="",
        metadata=option(
            "secret (at least 32 bytes, the same on every replica) that signs run tokens; "
            "none: run tokens are refused while tokens are on",
            env_only=True,
        ),
    )
    # The HTTP face (see _http): REST routes from the protos' google.api.http annotations,
    # Server-Sent Events, /openapi.json.
    http_listen: str = field(
        default="",
        metadata=option(
            "HOST:PORT to serve the HTTP API on (REST, Server-Sent Events, /openapi.json); "
            "empty: none (longline dev serves it on 127.0.0.1:8080)",
            dev=True,
        ),
    )
    http_cors_origin: str = field(
        default="",
        metadata=option(
            "origins whose pages may call the HTTP API (comma-separated SCHEME://HOST[:PORT], "
            "as a browser sends them); '*' for any; empty: none"
        ),
    )
    # TLS: a certificate and key (PEM files) make every port TLS. worker_listen serves
    # WorkerService on a port of its own (and not on `listen`); with tls_client_ca that port
    # takes only workers presenting a client certificate signed by that CA (mutual TLS).
    tls_cert: str = field(default="", metadata=option("PEM certificate: serve TLS"))
    tls_key: str = field(default="", metadata=option("PEM private key of --tls-cert"))
    tls_client_ca: str = field(
        default="", metadata=option("PEM CA: --worker-listen takes only workers it signed")
    )
    worker_listen: str = field(
        default="", metadata=option("HOST:PORT serving workers only (default: --listen)")
    )
    # Limits on what callers send, and per tenant (0 = no limit where noted).
    # Silence on an event stream before a comment line keeps proxies from closing it: under
    # every common idle timeout (nginx 60 s, cloud load balancers 60 s and more).
    http_keep_alive: float = field(
        default=15.0, metadata=internal("a timing of the HTTP event stream; tests shorten it")
    )
    # An HTTP request with no answer from Redis by then is answered 503 BACKEND_TIMEOUT (a
    # frozen Redis keeps its connections open; browsers and curl bring no deadline).
    http_request_timeout: float = field(
        default=30.0, metadata=internal("a timing of the HTTP face; tests shorten it")
    )
    max_labels: int = field(default=64, metadata=internal(_LIMIT))
    max_label_bytes: int = field(default=256, metadata=internal(_LIMIT))
    max_page_size: int = field(default=1000, metadata=internal(_LIMIT))
    max_queued_per_tenant: int = field(
        default=100_000, metadata=option("QUEUED runs per tenant; 0: any")
    )
    start_rate_per_tenant: float = field(
        default=2000.0, metadata=option("StartRun/RunWorkflow per second per tenant; 0: any")
    )
    start_burst_per_tenant: int = field(
        default=10_000, metadata=option("StartRun/RunWorkflow burst per tenant")
    )
    max_streams_per_tenant: int = field(
        default=10_000,
        metadata=option("open StreamRun/RunWorkflow streams per tenant per replica; 0: any"),
    )

    def __post_init__(self) -> None:
        check_redis_url(self.redis_url)
        if not 0 <= self.processes <= 256:
            raise ValueError("--processes must be 0 (one per core) to 256")
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"--partitions must be 1 to {MAX_PARTITIONS}")
        if not 0 < self.ack_timeout <= 3600:  # also refuses nan
            raise ValueError("--ack-timeout must be more than 0 seconds and at most an hour")
        if not 0 <= self.retention <= MAX_RETENTION:
            raise ValueError(
                "--retention must be between 0 (keep finished runs forever) and 3650 days"
            )
        if self.run_token_secret and len(self.run_token_secret.encode()) < 32:
            raise ValueError("LONGLINE_RUN_TOKEN_SECRET must be at least 32 bytes")
        if self.http_listen and not _address(self.http_listen):
            raise ValueError(f"--http-listen must be HOST:PORT, got {self.http_listen!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
        if self.tls_client_ca and not (self.tls_cert and self.worker_listen):
            raise ValueError(
                "--tls-client-ca (mutual TLS for workers) needs --tls-cert/--tls-key and a "
                "--worker-listen port of its own"
            )


def _address(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep) and port.isascii() and port.isdigit() and 0 <= int(port) < 65536

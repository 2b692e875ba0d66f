"""gRPC channels to a control plane: plaintext or TLS (optionally with a client
certificate, for mutual TLS), and the bearer token sent with every call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# gRPC keepalive, so that a half-open connection or a stalled peer (its process stopped, its
# TCP still up) is found within seconds, not when the kernel gives up after hours: each
# end pings the other after KEEPALIVE_MS of silence and drops the connection when no answer
# comes within KEEPALIVE_TIMEOUT_MS. Servers accept pings that often from clients.
KEEPALIVE_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
CLIENT_KEEPALIVE: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),  # gRPC core's own, 60 s by default
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
# A channel whose replica is gone tries again within 5 s at most (gRPC's default waits up to
# 120 s), so a read retried within the client's resume_for meets a replica that is back.
CLIENT_RECONNECT: list[tuple[str, Any]] = [("grpc.max_reconnect_backoff_ms", 5000)]
SERVER_KEEPALIVE: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),  # else it stops pinging after two
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),
]


def read_pem(path: str, what: str) -> bytes:
    """A PEM file's bytes; ValueError naming `what` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path!r}: {exc.strerror}") from None


def open_channel(
    target: str,
    *,
    tls: bool = False,
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
    options: list[tuple[str, Any]] | None = None,
) -> Any:
    """A grpc.aio channel. TLS verifies the server against `tls_ca` (a PEM file; the system's
    roots when empty); `tls_cert` and `tls_key` present a client certificate (mutual TLS)."""
    import grpc

    given = dict(options or [])
    defaults = [*CLIENT_KEEPALIVE, *CLIENT_RECONNECT]
    options = [*[(k, v) for k, v in defaults if k not in given], *(options or [])]
    if not (tls or tls_ca or tls_cert):
        return grpc.aio.insecure_channel(target, options=options)
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("a client certificate needs both tls_cert and tls_key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls_ca, "CA certificate") if tls_ca else None,
        private_key=read_pem(tls_key, "client key") if tls_key else None,
        certificate_chain=read_pem(tls_cert, "client certificate") if tls_cert else None,
    )
    return grpc.aio.secure_channel(target, credentials, options=options)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that carries a token ('' = none)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def env_token() -> str:
    """LONGLINE_TOKEN, the token clients and workers use when none is given."""
    return os.environ.get("LONGLINE_TOKEN", "")


def env_tls_ca() -> str:
    """LONGLINE_TLS_CA, the CA file that clients and workers verify the server against."""
    return os.environ.get("LONGLINE_TLS_CA", "")

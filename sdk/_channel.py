"""gRPC channels to a control plane: plaintext or TLS (optionally with a client
certificate, for mutual TLS), and the bearer token sent with every call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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

    if not (tls or tls_ca or tls_cert):
        return grpc.aio.insecure_channel(target, options=options or [])
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("a client certificate needs both tls_cert and tls_key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls_ca, "CA certificate") if tls_ca else None,
        private_key=read_pem(tls_key, "client key") if tls_key else None,
        certificate_chain=read_pem(tls_cert, "client certificate") if tls_cert else None,
    )
    return grpc.aio.secure_channel(target, credentials, options=options or [])


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that carries a token ('' = none)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def env_token() -> str:
    """LONGLINE_TOKEN, the token clients and workers use when none is given."""
    return os.environ.get("LONGLINE_TOKEN", "")


def env_tls_ca() -> str:
    """LONGLINE_TLS_CA, the CA file that clients and workers verify the server against."""
    return os.environ.get("LONGLINE_TLS_CA", "")

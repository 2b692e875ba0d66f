"""Who is calling: bearer tokens, kept only as SHA-256 hashes, with their kind and tenant.

A tokens file (TOML) lists one table per token:

    [[tokens]]
    name = "acme-web"          # for logs; not secret
    kind = "client"            # client | worker | cluster-admin
    tenant = "acme"            # client and cluster-admin tokens: whose runs they see
    sha256 = "3f1c...e9"       # hex SHA-256 of the token (`longline tokens new` prints both)

    [[tokens]]
    name = "workers"
    kind = "worker"
    sha256 = "9a0b...17"
    workflows = ["blog_post"]  # optional: the only workflows this worker token may serve

Client tokens call RunService as their tenant; run tokens (see _run_tokens), minted by a
client for one run, read that run and nothing else; worker tokens open WorkerService.Connect;
cluster-admin tokens call BuildService, for every tenant (builds are per workflow, shared by
all tenants), and RunService as their tenant. Health and reflection
are open, so that probes and generic tools work. The file is read again on SIGHUP and
when it changes; a file that no longer parses is refused and the tokens in force stay.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import re
import secrets
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from longline._store import PermissionDeniedError, UnauthenticatedError

from ._run_tokens import RunTokens, looks_like_run_token

log = logging.getLogger("longline.control_plane.auth")

# A cluster-admin token acts on what every tenant shares: builds are per workflow, and
# workflows are served by the same workers for every tenant, so promoting a build moves the
# runs of all tenants. Its tenant applies to its RunService calls only. "admin", the name it
# had first, is still read, as cluster-admin.
KINDS = ("client", "worker", "cluster-admin")
ALIASES = {"admin": "cluster-admin"}
_PREFIXES = {"client": "llc", "worker": "llw", "cluster-admin": "lla"}
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
# Which kinds of token may call each service; services not listed here are open.
ACCESS = {
    "longline.v1.RunService": frozenset({"client", "cluster-admin"}),
    "longline.v1.BuildService": frozenset({"cluster-admin"}),
    "longline.v1.ScheduleService": frozenset({"client", "cluster-admin"}),
    "longline.v1.WorkerService": frozenset({"worker"}),
}
# What a run token may call: reads of its own run (the servicer checks the run id).
RUN_READS = frozenset(
    {
        "/longline.v1.RunService/GetRun",
        "/longline.v1.RunService/GetRunTrace",
        "/longline.v1.RunService/StreamRun",
    }
)
RUN_READER = "run-reader"


@dataclass(frozen=True)
class Principal:
    """The caller of one RPC."""

    kind: str  # client | worker | admin, or "anonymous" when auth is off
    tenant: str  # "" is the tenant of every run when auth is off
    name: str
    workflows: frozenset[str] | None = None  # a worker token limited to these workflows
    run_id: str = ""  # a run token: the one run it may read


ANONYMOUS = Principal("anonymous", "", "auth off")
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "longline_principal", default=ANONYMOUS
)


def current() -> Principal:
    """The caller of the RPC being served (ANONYMOUS with auth off)."""
    return _current.get()


def set_current(principal: Principal) -> contextvars.Token[Principal]:
    """Make `principal` the caller for the rest of this task (the interceptor calls this)."""
    return _current.set(principal)


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as the tokens file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(kind: str) -> str:
    """A fresh random token (256 bits) with a prefix that says its kind to a human."""
    kind = ALIASES.get(kind, kind)
    return f"{_PREFIXES.get(kind, 'll' + kind[0])}_{secrets.token_urlsafe(32)}"


def parse_tokens(text: str, source: str) -> dict[str, Principal]:
    """hash -> Principal from a tokens file's text; ValueError says what is wrong and where."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from None
    entries = data.get("tokens", [])
    if not isinstance(entries, list):
        raise ValueError(f"{source}: 'tokens' must be an array of tables ([[tokens]])")
    found: dict[str, Principal] = {}
    for n, entry in enumerate(entries, 1):
        where = f"{source}: token {n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table")
        name = str(entry.get("name") or f"token {n}")
        kind = entry.get("kind")
        if kind in ALIASES:
            log.warning(
                "%s (%s): kind %r is read as %r: it acts on the builds of every tenant; "
                "write that name",
                where,
                name,
                kind,
                ALIASES[kind],
            )
            kind = ALIASES[kind]
        if kind not in KINDS:
            raise ValueError(f"{where} ({name}): kind must be one of {', '.join(KINDS)}")
        digest = str(entry.get("sha256", "")).lower()
        if not _HASH.match(digest):
            raise ValueError(
                f"{where} ({name}): sha256 must be the 64 hex digits of the token's SHA-256 "
                "(the token itself is never written down; `longline tokens new` prints both)"
            )
        tenant = str(entry.get("tenant", ""))
        if kind == "worker":
            if tenant:
                raise ValueError(f"{where} ({name}): worker tokens serve every tenant; no tenant")
        elif not TENANT.match(tenant):
            raise ValueError(
                f"{where} ({name}): {kind} tokens need a tenant: 1-64 letters, digits, "
                "'.', '_' or '-'"
            )
        workflows = entry.get("workflows")
        if workflows is not None:
            if kind != "worker" or not isinstance(workflows, list):
                raise ValueError(f"{where} ({name}): workflows is a list, for worker tokens")
            workflows = frozenset(str(w) for w in workflows)
        if digest in found:
            raise ValueError(f"{where} ({name}): the same token is listed twice")
        found[digest] = Principal(kind, tenant, name, workflows)
    return found


class TokenStore:
    """The tokens in force, from a file (reloadable) or from the environment's text."""

    def __init__(self, path: str = "", text: str = "") -> None:
        if not path and not text:
            raise ValueError("a TokenStore needs a tokens file or the tokens' text")
        self.path = path
        self._text = text
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: dict[str, Principal] = {}
        self.load()

    def __len__(self) -> int:
        return len(self._tokens)

    def _file_stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> None:
        """Read the tokens; raises ValueError (and keeps the old ones) when they do not parse."""
        if self.path:
            stamp = self._file_stamp()
            tokens = parse_tokens(Path(self.path).read_text(), self.path)
            self._stamp = stamp
        else:
            tokens = parse_tokens(self._text, "LONGLINE_TOKENS")
        if not tokens:
            raise ValueError(f"{self.path or 'LONGLINE_TOKENS'}: no tokens: nobody could call")
        self._tokens = tokens

    def reload(self, why: str) -> bool:
        """Read the file again; on an error log it and keep the tokens in force."""
        try:
            self.load()
        except (OSError, ValueError) as exc:
            log.error("tokens not reloaded (%s): %s; the previous tokens stay in force", why, exc)
            return False
        log.info("tokens reloaded (%s): %d tokens", why, len(self._tokens))
        return True

    def reload_if_changed(self) -> bool:
        """Reload when the file changed since it was read (rotation without a restart)."""
        if not self.path:
            return False
        try:
            changed = self._file_stamp() != self._stamp
        except OSError:
            return False
        return self.reload("the file changed") if changed else False

    def find(self, token: str) -> Principal | None:
        """The principal of a presented token, or None."""
        return self._tokens.get(hash_token(token))


class Authenticator:
    """Decides who calls each RPC, or refuses it; used by the server interceptor and the
    HTTP face (which hands it the request's metadata)."""

    def __init__(self, tokens: TokenStore | None, run_tokens: RunTokens | None = None) -> None:
        self.tokens = tokens
        self.run_tokens = run_tokens or RunTokens()

    def __call__(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        return self.check(method, context.invocation_metadata() or ())

    def check(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        """The caller of `method` (/package.Service/Method) from the call's metadata."""
        service = method.lstrip("/").split("/", 1)[0]
        allowed = ACCESS.get(service)
        if allowed is None:
            return ANONYMOUS  # health, reflection
        if self.tokens is None:
            return ANONYMOUS
        principal = self._principal(metadata)
        if principal.kind == RUN_READER:
            if method not in RUN_READS:
                raise PermissionDeniedError(
                    f"a run token may only read its run (GetRun, GetRunTrace, StreamRun), not "
                    f"call {method.rsplit('/', 1)[-1]}: use a client token",
                    "RUN_TOKEN_READ_ONLY",
                )
            return principal
        if principal.kind not in allowed:
            needed = " or ".join(sorted(allowed))
            raise PermissionDeniedError(
                f"a {principal.kind} token ({principal.name}) cannot call {service}: it takes "
                f"a {needed} token",
                "WRONG_TOKEN_KIND",
            )
        return principal

    def _principal(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        assert self.tokens is not None
        values = [v for k, v in metadata if k == "authorization"]
        if not values:
            raise UnauthenticatedError(
                "no token: send 'authorization: Bearer <token>' (LONGLINE_TOKEN for the CLI, "
                "Client(token=...) in Python)",
                "TOKEN_MISSING",
            )
        scheme, _, token = str(values[0]).partition(" ")
        token = token.strip()
        principal = self.tokens.find(token) if scheme.lower() == "bearer" else None
        if principal is None and scheme.lower() == "bearer" and looks_like_run_token(token):
            run_id, tenant = self.run_tokens.read(token)
            return Principal(RUN_READER, tenant, f"run token for {run_id}", run_id=run_id)
        if principal is None:
            raise UnauthenticatedError(
                "the token is not valid (unknown, revoked, or not of the form 'Bearer <token>')",
                "TOKEN_INVALID",
            )
        return principal

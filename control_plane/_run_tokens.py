"""Run tokens: short-lived, signed, read-only tokens for one run (CreateRunToken).

A page in a browser watches a run with one of these instead of its tenant's token: it can
read that run (GetRun, GetRunTrace, StreamRun, and their HTTP routes) and nothing else, and
it expires (default 10 minutes, at most an hour). It is a JWT signed with HS256, so any
language's JWT library reads its claims: `run` (the run id), `ten` (the tenant), `sub`
(who minted it), `iat`, `exp`, `jti`, `iss` "longline" and `aud` "longline:run-read".

Every replica must sign with the same secret (LONGLINE_RUN_TOKEN_SECRET, at least 32
bytes). Without one, a replica whose authentication is on refuses to mint
(FAILED_PRECONDITION, RUN_TOKENS_OFF); with authentication off nobody needs a token to
read, and tokens are minted with a secret of the process's own, for pages written to
use them either way. A token is checked when a call or a stream starts: a stream that
outlives its token goes on, and its next reconnect (EventSource's, with the same URL) is
refused, so the page mints a new one and resumes from the last event id it saw.
"""

from __future__ import annotations

import secrets
import time

import jwt

from longline._store import InvalidArgumentError, UnauthenticatedError

ISSUER = "longline"
AUDIENCE = "longline:run-read"
DEFAULT_TTL = 600
MAX_TTL = 3600
MIN_SECRET_BYTES = 32
_LEEWAY = 5  # seconds of clock difference between replicas


def looks_like_run_token(token: str) -> bool:
    """A JWT has three dot-separated parts; longline's tenant tokens have none."""
    return token.count(".") == 2


class RunTokens:
    """Mints and reads run tokens with one secret (`secret`, or one of the process's own:
    `shared` says whether other replicas can read what this one mints)."""

    def __init__(self, secret: str = "") -> None:
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the run token secret must be at least {MIN_SECRET_BYTES} bytes "
                "(`python -c 'import secrets; print(secrets.token_urlsafe(32))'` makes one)"
            )
        self.shared = bool(secret)
        self._secret = secret or secrets.token_urlsafe(32)

    def mint(self, run_id: str, tenant: str, minted_by: str, ttl: int) -> tuple[str, int]:
        """A token for `run_id` of `tenant`, and when it expires (Unix seconds)."""
        if ttl == 0:
            ttl = DEFAULT_TTL
        if not 0 < ttl <= MAX_TTL:
            raise InvalidArgumentError(
                f"ttl_seconds must be 1 to {MAX_TTL} (0 for {DEFAULT_TTL}), got {ttl}",
                "INVALID_TTL",
            )
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": minted_by,
            "ten": tenant,
            "run": run_id,
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._secret, algorithm="HS256"), now + ttl

    def read(self, token: str) -> tuple[str, str]:
        """(run id, tenant) of a valid token; UnauthenticatedError says what is wrong."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=_LEEWAY,
                options={"require": ["exp", "iat", "run", "ten"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError(
                "the run token expired: mint a new one (CreateRunToken, "
                "POST /v1/runs/{run_id}/tokens) and resume from the last event id seen",
                "TOKEN_EXPIRED",
            ) from None
        except jwt.InvalidTokenError:
            raise UnauthenticatedError(
                "the run token is not valid (not signed by this deployment's secret, or altered)",
                "TOKEN_INVALID",
            ) from None
        run_id, tenant = claims.get("run"), claims.get("ten")
        if not isinstance(run_id, str) or not isinstance(tenant, str) or not run_id:
            raise UnauthenticatedError("the run token names no run", "TOKEN_INVALID")
        return run_id, tenant

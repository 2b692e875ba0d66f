"""The same no-op job for each peer (arq, Celery, RQ); imported by their workers, which run
in the peers' own virtualenv (.venv/peers), never in longline's."""

from __future__ import annotations

import os
from typing import Any

REDIS = os.environ.get("PEER_REDIS", "redis://127.0.0.1:6379")


# -- arq ---------------------------------------------------------------------
async def arq_noop(ctx: dict[str, Any]) -> None:
    return None


try:
    from arq.connections import RedisSettings

    class ArqSettings:
        functions = [arq_noop]
        redis_settings = RedisSettings.from_dsn(REDIS + "/1")
        max_jobs = 256  # as many in flight as longline's worker slots in B1
        poll_delay = float(os.environ.get("ARQ_POLL_DELAY", "0.5"))  # arq's default
        keep_result = 3600
except ImportError:  # pragma: no cover - only the peers' venv has arq
    pass


# -- Celery ------------------------------------------------------------------
try:
    from celery import Celery

    celery_app = Celery("peers", broker=REDIS + "/2", backend=REDIS + "/2")
    celery_app.conf.worker_hijack_root_logger = False

    @celery_app.task(name="noop")
    def celery_noop() -> None:
        return None
except ImportError:  # pragma: no cover
    pass


# -- RQ ----------------------------------------------------------------------
def rq_noop() -> None:
    return None

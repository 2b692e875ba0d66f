"""The control plane: accepts runs, queues them in Redis, assigns them to workers, and
serves resumable event streams read from Redis."""

from __future__ import annotations

from ._server import ControlPlane
from ._settings import ControlPlaneSettings

__all__ = ["ControlPlane", "ControlPlaneSettings"]

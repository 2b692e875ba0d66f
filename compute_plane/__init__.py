"""The compute plane: workers that run workflows and write everything to Redis."""

from __future__ import annotations

from ._loader import load_workflows
from ._settings import WorkerSettings
from ._worker import Worker

__all__ = ["Worker", "WorkerSettings", "load_workflows"]

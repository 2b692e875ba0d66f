"""Find the workflows a worker serves: every Workflow object in a module or .py file."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from longline import Workflow


def load_workflows(spec: str) -> dict[str, Workflow]:
    """The workflows of a module given by dotted path or file path, by name."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ValueError(f"workflow file {spec!r} does not exist")
        name = f"longline_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot import {spec!r} as a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            raise ValueError(f"cannot import workflow module {spec!r}: {exc}") from exc
    found: dict[str, Workflow] = {}
    for value in vars(module).values():
        if isinstance(value, Workflow):
            if value.name in found and found[value.name] is not value:
                raise ValueError(f"two workflows in {spec!r} are named {value.name!r}")
            found[value.name] = value
    if not found:
        raise ValueError(f"no @longline.workflow found in {spec!r}")
    return found

"""Every Redis key has one owner in the store, named in `_keys.OWNERS`, in the owner's own
docstring, and in docs/architecture.md; nothing outside the store builds key names."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from longline._store import _keys as keys

ROOT = Path(__file__).resolve().parents[2]
# Names of `_keys` that are not keys: the partition helpers and constants.
_NOT_KEYS = {
    "PREFIX",
    "OWNERS",
    "MAX_PARTITIONS",
    "DEFAULT_PARTITIONS",
    "LAYOUT",
    "MAX_EARLY_INPUTS",
    "MAX_CHILDREN",
    "MAX_SCHEDULES",
    "family_keys",
    "slot",
    "tag",
    "partition_numbers",
    "partition_of",
    "partition_of_key",
    "partition_for_key",
    "run_id_in",
    "queue_of",
}


def _key_names() -> set[str]:
    return {
        name
        for name, value in vars(keys).items()
        if not name.startswith("_")
        and name not in _NOT_KEYS
        and (
            name.isupper()
            or (callable(value) and getattr(value, "__module__", "") == keys.__name__)
        )
    }


def test_every_key_has_one_owner_that_says_so() -> None:
    assert _key_names() == set(keys.OWNERS)
    for name, owner in keys.OWNERS.items():
        module = importlib.import_module(f"longline._store.{owner}")
        assert f"keys.{name}" in (module.__doc__ or ""), f"{owner}'s docstring omits keys.{name}"


def test_the_architecture_doc_names_the_same_owners() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    seen: dict[str, str] = {}
    for line in text.splitlines():
        names = re.findall(r"`keys\.(\w+)", line)
        owner = re.search(r"`sdk/_store/(_\w+)\.py`", line)
        if names and owner and line.startswith("|"):
            for name in names:
                seen[name] = owner.group(1)
    assert seen == keys.OWNERS


def test_the_planes_and_the_sdk_neither_build_key_names_nor_send_commands() -> None:
    allowed = {
        # Informational fields of an Assignment (the worker does not use them).
        ROOT / "control_plane" / "_workers.py": {"keys.events_key", "keys.run_key"},
    }
    for folder in ("sdk", "control_plane", "compute_plane"):
        for path in (ROOT / folder).rglob("*.py"):
            if "_store" in path.parts or "v1" in path.parts:
                continue
            text = path.read_text()
            used = set(re.findall(r"\bkeys\.\w+", text))
            assert used <= allowed.get(path, set()), f"{path}: {sorted(used)}"
            # Nor do they send Redis commands through the store's client.
            assert not re.search(r"\.redis\.", text), f"{path} uses a Redis client directly"

"""Blue-green routing by build id, as every replica's dispatcher and BuildService see it.

A run has not started on any build until it is claimed; then it is pinned to the claiming
worker's build (the run hash's `build`), and a requeued attempt waits in that build's queue
(keys.queue_key(workflow, build)). New runs wait in the workflow's own queue, which only
workers of the current build read (any worker when no build was promoted). The pinned queue
of a build that has no live, non-draining worker left is read by the current build's workers
when the workflow's policy is WHEN_UNSERVED, and by nobody (reported) when it is NEVER.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from . import _keys as keys
from ._errors import InvalidArgumentError

BUILD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
# Workflow names appear in keys and in tab-separated counter fields: no spaces, no tabs.
WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
WHEN_UNSERVED = "WHEN_UNSERVED"
NEVER = "NEVER"
POLICIES = (WHEN_UNSERVED, NEVER)


def check_workflow_name(name: str) -> None:
    """Raise InvalidArgumentError unless `name` is a usable workflow name."""
    if not WORKFLOW_NAME.match(name):
        raise InvalidArgumentError(
            f"workflow name {name[:80]!r} is not valid: use 1-128 letters, digits, '_', '.', "
            "':' or '-', starting with a letter, digit or '_'",
            "INVALID_WORKFLOW_NAME",
        )


def check_build_id(build_id: str, *, allow_empty: bool) -> None:
    """Raise InvalidArgumentError unless `build_id` is a usable build id."""
    if not build_id and allow_empty:
        return
    if not BUILD_ID.match(build_id):
        raise InvalidArgumentError(
            f"build id {build_id[:80]!r} is not valid: use 1-64 letters, digits, '.', '_', "
            "'+' or '-', starting with a letter or digit (an image tag or a git sha fits)",
            "INVALID_BUILD_ID",
        )


@dataclass
class BuildView:
    """A snapshot of the routing state of some workflows."""

    current: dict[str, str] = field(default_factory=dict)  # workflow -> current build
    policy: dict[str, str] = field(default_factory=dict)  # workflow -> policy
    live: dict[str, set[str]] = field(default_factory=dict)  # builds with a live worker
    builds: dict[str, set[str]] = field(default_factory=dict)  # every build ever seen
    # Workers whose presence (renewed by their heartbeats) has not run out, with how many
    # ms it has left at `loaded` (time.monotonic() of the read); draining ones are not among
    # them.
    present: dict[str, int] = field(default_factory=dict)
    loaded: float = 0.0

    def takes_new_runs(self, workflow: str, build: str) -> bool:
        """Whether a worker of `build` takes runs that have not started on any build yet."""
        current = self.current.get(workflow, "")
        return not current or current == build

    def served(self, workflow: str, build: str) -> bool:
        """Whether some live worker will take the queued runs of `build` ('' = not started)."""
        live = self.live.get(workflow, set())
        current = self.current.get(workflow, "")
        current_served = current in live if current else bool(live)
        if not build:
            return current_served
        if build in live:
            return True
        return self.policy.get(workflow, WHEN_UNSERVED) != NEVER and current_served

    def streams_for(self, workflow: str, build: str) -> list[str]:
        """The queue streams a worker of `build` takes runs of `workflow` from."""
        streams = [keys.queue_key(workflow, build)] if build else []
        if not self.takes_new_runs(workflow, build):
            return streams
        streams.append(keys.queue_key(workflow))
        if self.policy.get(workflow) != NEVER:
            live = self.live.get(workflow, set())
            streams += [
                keys.queue_key(workflow, other)
                for other in sorted(self.builds.get(workflow, set()))
                if other and other != build and other not in live
            ]
        return streams


async def load_view(redis: aioredis.Redis, workflows: list[str]) -> BuildView:
    """Read the routing state of `workflows` in one round trip."""
    loaded = time.monotonic()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.hgetall(keys.BUILDS_CURRENT)
        pipe.hgetall(keys.BUILDS_POLICY)
        for name in workflows:
            pipe.smembers(keys.builds_key(name))
            pipe.zrange(keys.build_workers_key(name), 0, -1, withscores=True)
        replies = await pipe.execute()
    (seconds, micros), current, policy, *rest = replies
    now = int(seconds) * 1000 + int(micros) // 1000
    view = BuildView(current=dict(current), policy=dict(policy), loaded=loaded)
    for i, name in enumerate(workflows):
        view.builds[name] = set(rest[2 * i])
        view.live[name] = set()
        for member, expiry in rest[2 * i + 1]:
            if expiry >= now:
                build, _, worker = member.partition("\t")
                view.live[name].add(build)
                view.present[worker] = max(view.present.get(worker, 0), int(expiry) - now)
    return view


def queue_workflow(stream: str) -> tuple[str, str]:
    """(workflow, build) of a queue stream key."""
    if stream.startswith(keys.PINNED_QUEUE_PREFIX):
        build, _, workflow = stream.removeprefix(keys.PINNED_QUEUE_PREFIX).partition(":")
        return workflow, build
    return stream.removeprefix(keys.queue_key("")), ""

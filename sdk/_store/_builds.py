"""Blue-green routing by build id, as every replica's dispatcher and BuildService see it.

A run has not started on any build until it is claimed; then it is pinned to the claiming
worker's build (the run hash's `build`), and a requeued attempt waits in that build's queue
(keys.queue_key(workflow, build)). New runs wait in the workflow's own queue, which only
workers of the current build read (any worker when no build was promoted). The pinned queue
of a build that has no live, non-draining worker left is read by the current build's workers
when the workflow's policy is WHEN_UNSERVED, and by nobody (reported) when it is NEVER.

Owns `keys.BUILDS_CURRENT` (a hash: workflow -> promoted build), its copy in every
partition `keys.builds_current_key(n)` (which CLAIM_RUN reads in the run's slot; a
promotion writes them all, each taking only a later promotion than it holds, counted in
`keys.BUILDS_GEN`), `keys.BUILDS_POLICY` (workflow -> move policy) and
`keys.builds_key(workflow)` (a set: every build seen; a worker's announcement adds its own,
in `_presence`'s round trip, and the sweep removes builds of the past); reads the presence
zsets of `_presence` and the partitions' build counters (`keys.stats_keys`), summed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from . import _keys as keys
from ._connection import redis_time_ms, scripts_together
from ._errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from ._presence import Presence

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

    def queues_for(self, workflow: str, build: str) -> list[tuple[str, str]]:
        """The queues (workflow, build) a worker of `build` takes runs of `workflow` from,
        each one stream per partition (keys.queue_key); '' is the workflow's own queue."""
        queues = [(workflow, build)] if build else []
        if not self.takes_new_runs(workflow, build):
            return queues
        queues.append((workflow, ""))
        if self.policy.get(workflow) != NEVER:
            live = self.live.get(workflow, set())
            queues += [
                (workflow, other)
                for other in sorted(self.builds.get(workflow, set()))
                if other and other != build and other not in live
            ]
        return queues


async def load_view(redis: aioredis.Redis, workflows: list[str]) -> BuildView:
    """Read the routing state of `workflows` in one round trip."""
    loaded = time.monotonic()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.BUILDS_CURRENT)
        pipe.hgetall(keys.BUILDS_POLICY)
        for name in workflows:
            pipe.smembers(keys.builds_key(name))
            pipe.zrange(keys.build_workers_key(name), 0, -1, withscores=True)
        # Redis's clock beside the reads (a cluster pipelines no TIME: it is no key's).
        now, replies = await asyncio.gather(redis_time_ms(redis), pipe.execute())
    current, policy, *rest = replies
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


async def build_counts(
    redis: aioredis.Redis, partitions: tuple[int, ...]
) -> dict[tuple[str, str, str], int]:
    """(workflow, build, QUEUED|RUNNING|WAITING) -> runs, summed over the partitions."""
    async with redis.pipeline(transaction=False) as pipe:
        for n in partitions:
            pipe.hgetall(keys.stats_keys(n)[1])
        replies = await pipe.execute()
    counts: dict[tuple[str, str, str], int] = {}
    for reply in replies:
        for field_name, value in reply.items():
            parts = field_name.split("\t")
            if len(parts) == 3:  # names cannot hold tabs; anything else is not ours
                key = (parts[0], parts[1], parts[2])
                counts[key] = counts.get(key, 0) + int(value)
    return counts


# KEYS: a partition's copy of the current builds. ARGV: workflow, build, the promotion's
# generation. Takes the build only from a later promotion than the copy holds: copies written
# out of order (two promotions at once, a sweep with an older view) never go back.
_COPY_CURRENT = """
local field = ARGV[1] .. '\tgen'
if tonumber(ARGV[3]) <= tonumber(redis.call('HGET', KEYS[1], field) or '-1') then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], field, ARGV[3])
return 1
"""


async def copy_current(
    redis: aioredis.Redis,
    partitions: tuple[int, ...],
    current: dict[str, tuple[str, int]],
) -> None:
    """Write current builds (workflow -> (build, generation)) into every partition's copy."""
    script = redis.register_script(_COPY_CURRENT)
    await scripts_together(
        redis,
        [
            (script, [keys.builds_current_key(n)], [workflow, build, gen])
            for n in partitions
            for workflow, (build, gen) in current.items()
        ],
    )


# KEYS: keys.BUILDS_CURRENT, keys.BUILDS_GEN. ARGV: workflow, the highest generation a copy
# holds. Raises the workflow's generation past the copies' when it is not (its node failed
# over and lost the last promotion's MULTI, while the copies, in other slots, kept it), and
# returns {current build, generation}, read together.
_PAST_COPIES = """
local gen = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if gen <= tonumber(ARGV[2]) then
  gen = tonumber(ARGV[2]) + 1
  redis.call('HSET', KEYS[2], ARGV[1], gen)
end
return {redis.call('HGET', KEYS[1], ARGV[1]) or '', gen}
"""


async def sync_current(
    redis: aioredis.Redis, partitions: tuple[int, ...], workflows: Iterable[str] | None = None
) -> None:
    """Make every partition's copy of the current builds (of `workflows`; None: all) whole
    again from `keys.BUILDS_CURRENT`."""
    # The generations first: a build read after them is from that promotion or a later one,
    # and a later one's own copy (with its greater generation) still wins over this.
    gens = await redis.hgetall(keys.BUILDS_GEN)
    current = await redis.hgetall(keys.BUILDS_CURRENT)
    wanted = sorted(set(current) if workflows is None else set(workflows) & set(current))
    if not wanted:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for name in wanted:
            for n in partitions:
                pipe.hget(keys.builds_current_key(n), name + "\tgen")
        held = await pipe.execute()
    copies: dict[str, tuple[str, int]] = {}
    past = redis.register_script(_PAST_COPIES)
    for i, name in enumerate(wanted):
        gen = int(gens.get(name) or 0)
        highest = max(
            int(h)
            for h in [*held[i * len(partitions) : (i + 1) * len(partitions)], 0]
            if h is not None
        )
        if highest > gen:  # ahead of the counter: raised past them, with the build
            build, gen = await past(
                keys=[keys.BUILDS_CURRENT, keys.BUILDS_GEN], args=[name, highest]
            )
            if not build:
                continue
            copies[name] = (str(build), int(gen))
        else:
            copies[name] = (current[name], gen)
    await copy_current(redis, partitions, copies)


@dataclass(frozen=True, slots=True)
class BuildStats:
    """One build of one workflow: its live workers and its runs."""

    build: str
    workers: int
    queued: int
    running: int
    unserved: int
    current: bool
    waiting: int = 0  # parked runs pinned to it: they wake into its queue


@dataclass(frozen=True)
class WorkflowBuilds:
    """One workflow's current build, move policy and builds."""

    workflow: str
    current: str
    policy: str
    builds: list[BuildStats]

    @property
    def unserved(self) -> int:
        """Queued runs no worker will take as things stand."""
        return sum(b.unserved for b in self.builds)


class Builds:
    """Current builds, move policies and what each build holds (BuildService's data)."""

    def __init__(
        self, redis: aioredis.Redis, presence: Presence, partitions: tuple[int, ...]
    ) -> None:
        self._redis = redis
        self._presence = presence
        self._partitions = partitions

    async def view(self, workflows: Iterable[str]) -> BuildView:
        """The routing state of `workflows` (current builds, policies, live builds)."""
        return await load_view(self._redis, sorted(set(workflows)))

    async def promote(self, workflow: str, build: str, policy: str, force: bool) -> str:
        """Make `build` the current build of `workflow`; returns the previous one ('')."""
        check_build_id(build, allow_empty=False)
        if not await self._presence.known(workflow):
            raise NotFoundError(
                f"workflow {workflow[:100]!r} is not known: no worker has announced it",
                "WORKFLOW_NOT_FOUND",
            )
        view = await self.view([workflow])
        if not force and build not in view.live.get(workflow, set()):
            raise FailedPreconditionError(
                f"no live worker of build {build!r} serves workflow {workflow!r}, so new runs "
                "would wait: start its workers first (longline worker --build-id "
                f"{build}), or promote with force",
                "BUILD_HAS_NO_WORKERS",
            )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(keys.BUILDS_CURRENT, workflow)
            pipe.hset(keys.BUILDS_CURRENT, workflow, build)
            pipe.hincrby(keys.BUILDS_GEN, workflow, 1)
            pipe.sadd(keys.builds_key(workflow), build)
            if policy:
                pipe.hset(keys.BUILDS_POLICY, workflow, policy)
            previous, _, gen, *_ = await pipe.execute()
        # Each partition's claims read the partition's copy (one slot each). A promotion cut
        # short here is made whole by a claim that finds a copy behind (`sync`), or by the
        # sweep (`_sweep`).
        await copy_current(self._redis, self._partitions, {workflow: (build, int(gen))})
        return previous or ""

    async def sync(self, workflows: Iterable[str]) -> None:
        """Make the partitions' copies of the workflows' current builds whole again (a claim
        found one behind the current build)."""
        await sync_current(self._redis, self._partitions, workflows)

    async def list_all(self, workflow: str = "") -> list[WorkflowBuilds]:
        """Every workflow's builds with their workers and queued and running runs."""
        names = [workflow] if workflow else sorted(await self._redis.hkeys(keys.WORKFLOWS))
        if workflow and not await self._presence.known(workflow):
            raise NotFoundError(
                f"workflow {workflow[:100]!r} is not known: no worker has announced it",
                "WORKFLOW_NOT_FOUND",
            )
        view = await self.view(names)
        counts = await build_counts(self._redis, self._partitions)
        now = await redis_time_ms(self._redis)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrangebyscore(keys.build_workers_key(name), now, "+inf")
            members = await pipe.execute()
        result = []
        for name, live_members in zip(names, members, strict=True):
            workers: dict[str, int] = {}
            for member in live_members:
                build = member.partition("\t")[0]
                workers[build] = workers.get(build, 0) + 1
            current = view.current.get(name, "")
            builds = view.builds.get(name, set()) | {b for (w, b, _) in counts if w == name}
            statuses = []
            for build in sorted(builds):
                queued = counts.get((name, build, "QUEUED"), 0)
                running = counts.get((name, build, "RUNNING"), 0)
                waiting = counts.get((name, build, "WAITING"), 0)
                if not (queued or running or waiting or workers.get(build) or build == current):
                    continue  # a build of the past: nothing left of it
                statuses.append(
                    BuildStats(
                        build=build,
                        workers=workers.get(build, 0),
                        queued=queued,
                        running=running,
                        waiting=waiting,
                        unserved=0 if view.served(name, build) else queued,
                        current=build == current,
                    )
                )
            result.append(
                WorkflowBuilds(
                    workflow=name,
                    current=current,
                    policy=view.policy.get(name, WHEN_UNSERVED),
                    builds=statuses,
                )
            )
        return result

"""Every Redis key longline uses, in one place.

All keys of one run share the hash tag ``{run_id}`` so that they land in one
Redis Cluster slot. Global keys (queues, indexes, presence) are few and named
here too.
"""

from __future__ import annotations

PREFIX = "ll:"

# Global keys.
RUNS_INDEX = PREFIX + "runs"  # zset: run_id -> create time (ms), for ListRuns
LEASES = PREFIX + "leases"  # zset: run_id -> lease expiry (ms) of every RUNNING run
STATS_STATUS = PREFIX + "stats:status"  # hash: status -> runs in it now (kept by the scripts)
STATS_QUEUED = PREFIX + "stats:queued"  # hash: workflow -> runs queued now
STATS_TENANTS = PREFIX + "stats:tenants"  # hash: tenant -> its QUEUED runs (for its limit)
STATS_BUILDS = PREFIX + "stats:builds"  # hash: "workflow\tbuild\tQUEUED|RUNNING" -> runs
WORKFLOWS = PREFIX + "workflows"  # hash: workflow name -> description
BUILDS_CURRENT = PREFIX + "builds:current"  # hash: workflow -> promoted build id
BUILDS_POLICY = PREFIX + "builds:policy"  # hash: workflow -> run move policy (see builds.proto)
PINNED_QUEUE_PREFIX = PREFIX + "queue@"  # + build + ":" + workflow (build ids have no ':')
CONTROL_CHANNEL = PREFIX + "control"  # pub/sub: cancel notices between replicas
DISPATCH_GROUP = "dispatch"  # consumer group on every queue stream


def run_key(run_id: str) -> str:
    """The run's record (a hash)."""
    return f"{PREFIX}{{{run_id}}}:run"


def events_key(run_id: str) -> str:
    """The run's append-only event stream; entry ids are event ids."""
    return f"{PREFIX}{{{run_id}}}:events"


def steps_key(run_id: str) -> str:
    """The run's step checkpoints (a hash: step key -> JSON result)."""
    return f"{PREFIX}{{{run_id}}}:steps"


def queue_key(workflow: str, build: str = "") -> str:
    """The stream of queued attempts of one workflow, read by a consumer group.

    Runs that have not started on a build yet (and runs of workers without a build id) are
    queued in the workflow's stream; a run pinned to a build is requeued in that build's.
    """
    if build:
        return f"{PINNED_QUEUE_PREFIX}{build}:{workflow}"
    return f"{PREFIX}queue:{workflow}"


def builds_key(workflow: str) -> str:
    """set: every build id a worker of the workflow ever announced."""
    return f"{PREFIX}builds:{workflow}"


def build_workers_key(workflow: str) -> str:
    """zset: "build\tworker_id" -> presence expiry (ms), live workers that take new runs."""
    return f"{PREFIX}buildworkers:{workflow}"


def runs_key(tenant: str = "") -> str:
    """zset: run_id -> create time (ms), the runs of one tenant ('' with auth off)."""
    return f"{PREFIX}runs:t:{tenant}" if tenant else RUNS_INDEX


def runs_by_workflow_key(workflow: str, tenant: str = "") -> str:
    """zset: run_id -> create time (ms), the runs of one workflow of one tenant."""
    if tenant:  # tenant names have no ':', so this cannot meet another tenant's keys
        return f"{PREFIX}runs:t:{tenant}:wf:{workflow}"
    return f"{PREFIX}runs:wf:{workflow}"


def idempotency_key(key: str, tenant: str = "") -> str:
    """string: the run id the tenant first started with this idempotency key."""
    return f"{PREFIX}idem@{tenant}:{key}" if tenant else f"{PREFIX}idem:{key}"


def start_rate_key(tenant: str) -> str:
    """hash: the token bucket of the tenant's StartRun rate."""
    return f"{PREFIX}rate:start:{tenant}"


def workflow_workers_key(workflow: str) -> str:
    """zset: worker_id -> presence expiry (ms), the live workers of a workflow."""
    return f"{PREFIX}workers:{workflow}"


def wake_key(replica_id: str) -> str:
    """A tiny stream that wakes one replica's multiplexed event reader."""
    return f"{PREFIX}wake:{replica_id}"

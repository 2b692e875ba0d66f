"""Every Redis key longline uses, in one place, each with what removes it.

All keys of one run share the hash tag ``{run_id}`` so that they land in one
Redis Cluster slot. Global keys (queues, indexes, presence) are few and named
here too.

Every key is one of three kinds (docs/architecture.md lists every key, its owner and what
removes it; docs/durability.md explains the kinds):

- OWNED BY A RUN: the run's hash, events and checkpoints, and its idempotency key. They
  expire together `--retention` after the run ends (the terminal scripts set the TTL; the
  run carries its retention from creation; 0 keeps them forever).
- OWNED BY A LIVE PROCESS: presence, wake streams, rate buckets, limits, the sweep lock.
  They carry a TTL (or a score that runs out) that their owner pushes back while it lives,
  and the owner makes them again when it finds them missing, whatever removed them.
- BOUNDED BY THE DEPLOYMENT, not by runs: counters (one field per status, workflow, tenant,
  build; a field that falls to zero is removed), known workflows, current builds, queue
  streams (one per workflow and build; acknowledged entries are trimmed by the sweep), and
  the run indexes, whose entries the sweep removes once their run's keys expired
  (control_plane/_janitor.py, sdk/_store/_sweep.py).
"""

from __future__ import annotations

PREFIX = "ll:"

# Global keys.
# zset: run_id -> create time (ms), for ListRuns. Entries: removed by the sweep once the run's
# hash expired.
RUNS_INDEX = PREFIX + "runs"
# zset: run_id -> lease expiry (ms) of every RUNNING run. Entries: removed by the terminal and
# requeue scripts, and by EXPIRE_LEASE for a run that is gone.
LEASES = PREFIX + "leases"
# hash: status -> runs that entered it (QUEUED/RUNNING: in it now; terminal ones: ever, the
# runs expire but the count stays). Bounded: one field per status.
STATS_STATUS = PREFIX + "stats:status"
STATS_QUEUED = PREFIX + "stats:queued"  # hash: workflow -> runs queued now (0: field removed)
STATS_TENANTS = PREFIX + "stats:tenants"  # hash: tenant -> its QUEUED runs (0: field removed)
# hash: "workflow\tbuild\tQUEUED|RUNNING" -> runs (0: field removed)
STATS_BUILDS = PREFIX + "stats:builds"
# hash: workflow name -> description. Bounded by the workflows a deployment serves; made
# again by every worker heartbeat.
WORKFLOWS = PREFIX + "workflows"
BUILDS_CURRENT = PREFIX + "builds:current"  # hash: workflow -> promoted build id (one each)
BUILDS_POLICY = PREFIX + "builds:policy"  # hash: workflow -> run move policy (see builds.proto)
# stream per build and workflow: + build + ":" + workflow (build ids have no ':'). Deleted by
# the sweep once empty and its build is of the past (see queue_key for the entries).
PINNED_QUEUE_PREFIX = PREFIX + "queue@"
CONTROL_CHANNEL = PREFIX + "control"  # pub/sub: cancel notices between replicas (not a key)
DISPATCH_GROUP = "dispatch"  # consumer group on every queue stream
# string: the replica running this round of the sweep; PX of one sweep interval.
SWEEP_LOCK = PREFIX + "sweep"


def run_key(run_id: str) -> str:
    """The run's record (a hash). Expires `retention_ms` (a field of its own) after the run
    ends; a run that has not ended never expires."""
    return f"{PREFIX}{{{run_id}}}:run"


def events_key(run_id: str) -> str:
    """The run's append-only event stream; entry ids are event ids. Expires with the run."""
    return f"{PREFIX}{{{run_id}}}:events"


def steps_key(run_id: str) -> str:
    """The run's step checkpoints (a hash: step key -> JSON result). Expires with the run."""
    return f"{PREFIX}{{{run_id}}}:steps"


def queue_key(workflow: str, build: str = "") -> str:
    """The stream of queued attempts of one workflow, read by a consumer group.

    Runs that have not started on a build yet (and runs of workers without a build id) are
    queued in the workflow's stream; a run pinned to a build is requeued in that build's.
    Entries are acknowledged once handled and trimmed by the sweep; a replica's consumer
    with nothing pending and idle for an hour is forgotten by it.
    """
    if build:
        return f"{PINNED_QUEUE_PREFIX}{build}:{workflow}"
    return f"{PREFIX}queue:{workflow}"


def builds_key(workflow: str) -> str:
    """set: the build ids workers of the workflow announced. The sweep removes a build with no
    live worker, no queued or running run, that is not current."""
    return f"{PREFIX}builds:{workflow}"


def build_workers_key(workflow: str) -> str:
    """zset: "build\tworker_id" -> presence expiry (ms), live workers that take new runs.
    Members an hour past their expiry are removed by every announce."""
    return f"{PREFIX}buildworkers:{workflow}"


def runs_key(tenant: str = "") -> str:
    """zset: run_id -> create time (ms), the runs of one tenant ('' with auth off). Entries of
    expired runs: removed by the sweep."""
    return f"{PREFIX}runs:t:{tenant}" if tenant else RUNS_INDEX


def runs_by_workflow_key(workflow: str, tenant: str = "") -> str:
    """zset: run_id -> create time (ms), the runs of one workflow of one tenant. Entries of
    expired runs: removed by the sweep."""
    if tenant:  # tenant names have no ':', so this cannot meet another tenant's keys
        return f"{PREFIX}runs:t:{tenant}:wf:{workflow}"
    return f"{PREFIX}runs:wf:{workflow}"


def idempotency_key(key: str, tenant: str = "") -> str:
    """string: the run id the tenant first started with this idempotency key. Expires with
    that run (the run's hash names it in `idem_key`)."""
    return f"{PREFIX}idem@{tenant}:{key}" if tenant else f"{PREFIX}idem:{key}"


def start_rate_key(tenant: str) -> str:
    """hash: the token bucket of the tenant's StartRun rate. PX: the time to refill it."""
    return f"{PREFIX}rate:start:{tenant}"


def workflow_workers_key(workflow: str) -> str:
    """zset: worker_id -> presence expiry (ms), the live workers of a workflow. Members an
    hour past their expiry are removed by every announce."""
    return f"{PREFIX}workers:{workflow}"


def hub_channel(replica_id: str) -> str:
    """pub/sub, not a key: a channel nobody publishes on, which one replica's event hub holds
    so that its connection always has a subscription to wait on."""
    return wake_key(replica_id + ":hub")


def cache_key(key: str) -> str:
    """string: a component's cached JSON result. PX: the component's cache TTL."""
    return f"{PREFIX}cache:{key}"


def limit_key(name: str, part: str) -> str:
    """A cluster-wide limit's state, by part (a zset window, a counter, a pause): each has a
    PX renewed while callers use it (see _services)."""
    return f"{PREFIX}limit:{{{name}}}:{part}"


def wake_key(replica_id: str) -> str:
    """A tiny stream (MAXLEN ~16) that wakes one replica's dispatcher. EXPIRE one hour,
    pushed back every minute while the replica lives and made again when missing."""
    return f"{PREFIX}wake:{replica_id}"


# The one module of the store that owns each key: it says in its docstring what the key holds
# and issues the commands on it outside the Lua scripts (`_scripts`), but for the few its
# docstring names (a neighbour's write in the same round trip, the sweep's reads).
# docs/architecture.md's key table follows this, and a unit test holds both to it.
OWNERS: dict[str, str] = {
    "run_key": "_runs",
    "RUNS_INDEX": "_runs",
    "runs_key": "_runs",
    "runs_by_workflow_key": "_runs",
    "idempotency_key": "_runs",
    "start_rate_key": "_runs",
    "STATS_STATUS": "_runs",
    "STATS_QUEUED": "_runs",
    "STATS_TENANTS": "_runs",
    "STATS_BUILDS": "_runs",
    "LEASES": "_attempts",
    "steps_key": "_attempts",
    "events_key": "_events",
    "hub_channel": "_events",
    "queue_key": "_queues",
    "PINNED_QUEUE_PREFIX": "_queues",
    "DISPATCH_GROUP": "_queues",
    "wake_key": "_queues",
    "WORKFLOWS": "_presence",
    "workflow_workers_key": "_presence",
    "build_workers_key": "_presence",
    "BUILDS_CURRENT": "_builds",
    "BUILDS_POLICY": "_builds",
    "builds_key": "_builds",
    "CONTROL_CHANNEL": "_notices",
    "SWEEP_LOCK": "_sweep",
    "cache_key": "_services",
    "limit_key": "_services",
}

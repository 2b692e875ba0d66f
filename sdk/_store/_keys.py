"""Every Redis key longline uses, in one place, each with what removes it.

Partitions. The keys that transitions touch are split into a fixed number of partitions
(`--partitions`, set once per deployment and checked at start-up against `META`). Each
partition is a Redis Cluster hash tag (`tag(n)`), so every key of one partition lands in one
slot, and every script and MULTI touches one partition only. A run belongs to one partition
for life, chosen when it is created and written into its id: the last three hex digits of a
run id are its partition number (`partition_of`), so any process finds a run's keys from its
id alone, without knowing the partition count. Partition numbers run over 0..4095; a
deployment of P partitions uses P of them spread evenly (`partition_numbers`), and each
number's tag is chosen so that its slot sits at its share of the slot space: on a cluster
whose masters hold equal slot ranges, the partitions spread evenly over the masters. A
single Redis is the case where every partition lives on one node.

Every key is one of three kinds (docs/architecture.md lists every key, its owner and what
removes it; docs/durability.md explains the kinds):

- OWNED BY A RUN: the run's hash, events, checkpoints, waits and children, and its
  idempotency key. They expire together `--retention` after the run ends (the terminal
  scripts set the TTL; the run carries its retention from creation, a child run its
  parent's; 0 keeps them forever).
- OWNED BY A LIVE PROCESS: presence, rate buckets, limits, the sweep lock. They carry a TTL
  (or a score that runs out) that their owner pushes back while it lives, and the owner
  makes them again when it finds them missing, whatever removed them.
- BOUNDED BY THE DEPLOYMENT, not by runs: counters (one field per status, workflow, tenant,
  build, in each partition; a field that falls to zero is removed), known workflows,
  current builds, queue streams (one per partition, workflow and build; acknowledged
  entries are trimmed by the sweep), and the run indexes, whose entries the sweep removes
  once their run's keys expired (control_plane/_janitor.py, sdk/_store/_sweep.py).
"""

from __future__ import annotations

import binascii
import functools
import itertools
import zlib

PREFIX = "ll:"

MAX_PARTITIONS = 4096  # partition numbers are three hex digits
DEFAULT_PARTITIONS = 64
_SLOTS = 16384  # Redis Cluster's hash slots
_WINDOW = 64  # how near its share of the slot space a partition's tag must fall

# hash: the deployment's layout: "partitions" (the count runs are spread over) and "layout"
# (the key layout's version). Written once by the first control plane; never removed.
META = PREFIX + "meta"
LAYOUT = "2"
# A key of the layout before partitions: found with no META, it means data to migrate.
OLD_LAYOUT_KEY = PREFIX + "stats:status"


def slot(key: str) -> int:
    """The Redis Cluster hash slot of a key (its hash tag's, when it has one)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key.encode(), 0) % _SLOTS


@functools.cache
def tag(n: int) -> str:
    """Partition `n`'s hash tag, braces included: a short name whose slot lies at the
    partition's share of the slot space (n * 4 .. n * 4 + 64), found by counting."""
    low = n * (_SLOTS // MAX_PARTITIONS)
    for k in itertools.count():
        name = f"p{n:03x}.{k}"
        if (slot(name) - low) % _SLOTS < _WINDOW:
            return "{" + name + "}"
    raise AssertionError("unreachable")


def partition_numbers(count: int) -> tuple[int, ...]:
    """The partition numbers a deployment of `count` partitions uses, spread evenly over
    0..4095."""
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"the partition count must be 1 to {MAX_PARTITIONS}, not {count}")
    return tuple(i * MAX_PARTITIONS // count for i in range(count))


_HEX = frozenset("0123456789abcdef")


def partition_of(run_id: str) -> int:
    """The partition number of a run: the last three of the 32 hex digits of its id. Any
    other string (an id longline never made) is in partition 0, which every deployment
    has: its keys hold nothing, or what a test put there."""
    if len(run_id) == 32 and _HEX.issuperset(run_id):
        return int(run_id[-3:], 16)
    return 0


def run_id_in(n: int, random_hex: str) -> str:
    """A run id in partition `n`: 29 random hex digits, then the partition's three."""
    return random_hex[:29] + f"{n:03x}"


def partition_for_key(key: str, tenant: str, numbers: tuple[int, ...]) -> int:
    """The partition of the runs a tenant starts with an idempotency key: always the same one
    for the same key, so the key and its run share a slot."""
    return numbers[zlib.crc32(f"{tenant}\0{key}".encode()) % len(numbers)]


def _in(n: int) -> str:
    return PREFIX + tag(n)


def run_key(run_id: str) -> str:
    """The run's record (a hash). Expires `retention_ms` (a field of its own) after the run
    ends; a run that has not ended never expires."""
    return f"{_in(partition_of(run_id))}:run:{run_id}"


def events_key(run_id: str) -> str:
    """The run's append-only event stream; entry ids are event ids. Expires with the run."""
    return f"{_in(partition_of(run_id))}:events:{run_id}"


def steps_key(run_id: str) -> str:
    """The run's step checkpoints (a hash: step key -> JSON result). Expires with the run."""
    return f"{_in(partition_of(run_id))}:steps:{run_id}"


def waits_key(run_id: str) -> str:
    """The run's waits (a hash): "t:<step>" -> when a durable sleep ends (ms); per input
    name, "r:<name>" -> the request (prompt, schema, timeout) as JSON, "w:<name>" -> when it
    times out (ms, '' for never), "v:<name>" -> the payload received, "u:<name>" -> set while
    that payload came before the request (not checked against its schema yet), "x:<name>" ->
    set once the request timed out; "early" -> how many inputs are kept that the run has not
    asked for yet. Expires with the run. Bounded by what the workflow waits for, and by
    SEND_INPUT, which keeps at most `MAX_EARLY_INPUTS` inputs nobody asked for (each at most
    the control plane's --max-input-bytes)."""
    return f"{_in(partition_of(run_id))}:waits:{run_id}"


MAX_EARLY_INPUTS = 16


def timers_key(n: int) -> str:
    """zset: run_id -> when it wakes (ms), every WAITING run of partition `n` with a timer (a
    sleep, an input's timeout, a child run it waits for that ended: due at once). Entries:
    removed by WAKE_RUN, SEND_INPUT and CANCEL_RUN, and by WAKE_RUN for a run that is gone or
    no longer waits."""
    return f"{_in(n)}:timers"


def children_key(run_id: str) -> str:
    """set: the child runs the run started (but detached ones) that have not ended: those to
    cancel should the run end first. Each child removes itself from it when it ends (the
    terminal scripts); expires with the run. Bounded by `MAX_CHILDREN`. A child run lives in
    its parent's partition, so a parent and its children share one slot."""
    return f"{_in(partition_of(run_id))}:children:{run_id}"


MAX_CHILDREN = 10_000  # child runs one run may start in its life


def orphans_key(n: int) -> str:
    """zset: run_id -> when it ended (ms), the runs of partition `n` that ended while child
    runs of theirs had not: the control plane cancels those children, then removes the entry
    (`_children`); an entry whose children set is empty or gone is removed the same way."""
    return f"{_in(n)}:orphans"


def family_keys(run_id: str, parent_run_id: str) -> list[str]:
    """The seven keys the scripts that end a run declare right before the counters (see
    `ended` in `_scripts`): the run's children, the partition's orphans, the parent's hash,
    events, steps and children (the run's own keys when it has no parent), and the
    partition's timers."""
    n = partition_of(run_id)
    parent = parent_run_id or run_id
    return [
        children_key(run_id),
        orphans_key(n),
        run_key(parent),
        events_key(parent),
        steps_key(parent),
        children_key(parent),
        timers_key(n),
    ]


def idempotency_key(n: int, key: str, tenant: str = "") -> str:
    """string: the run id the tenant first started with this idempotency key, in the
    partition `partition_for_key` gives. Expires with that run (the run's hash names it in
    `idem_key`)."""
    return f"{_in(n)}:idem@{tenant}:{key}"


def leases_key(n: int) -> str:
    """zset: run_id -> lease expiry (ms) of every RUNNING run of partition `n`. Entries:
    removed by the terminal and requeue scripts, and by EXPIRE_LEASE for a run that is
    gone."""
    return f"{_in(n)}:leases"


def stats_keys(n: int) -> tuple[str, str, str, str]:
    """Partition `n`'s counters, which every script takes as its last four KEYS (read them
    summed over the partitions):

    - tenants, hash: tenant -> its QUEUED runs (0: field removed);
    - builds, hash: "workflow\\tbuild\\tQUEUED|RUNNING|WAITING" -> runs (0: field removed);
    - status, hash: status -> runs that entered it (QUEUED/RUNNING: in it now; terminal
      ones: ever, the runs expire but the count stays). One field per status;
    - queued, hash: workflow -> runs queued now (0: field removed).
    """
    base = _in(n) + ":stats:"
    return (base + "tenants", base + "builds", base + "status", base + "queued")


def builds_current_key(n: int) -> str:
    """hash: workflow -> promoted build id, partition `n`'s copy of `BUILDS_CURRENT`, read by
    CLAIM_RUN in the partition's slot, and "workflow\tgen" -> the promotion it came from
    (`BUILDS_GEN`); written after every promotion, and made whole again by the sweep and by
    a claim that found it behind."""
    return f"{_in(n)}:builds:current"


def queue_key(n: int, workflow: str, build: str = "") -> str:
    """The stream of queued attempts of one workflow in partition `n`, read by a consumer
    group.

    Runs that have not started on a build yet (and runs of workers without a build id) are
    queued in the workflow's stream; a run pinned to a build is requeued in that build's.
    Entries are acknowledged once handled and trimmed by the sweep; a replica's consumer
    with nothing pending and idle for an hour is forgotten by it.
    """
    if build:
        return f"{_in(n)}:queue@{build}:{workflow}"
    return f"{_in(n)}:queue:{workflow}"


def partition_of_key(key: str) -> int:
    """The partition number of a partition's key (one `tag` made)."""
    return int(key[key.index("{p") + 2 : key.index("{p") + 5], 16)


def queue_of(stream: str) -> tuple[str, str]:
    """(workflow, build) of a queue stream key."""
    rest = stream.partition("}:")[2]
    if rest.startswith("queue@"):
        build, _, workflow = rest.removeprefix("queue@").partition(":")
        return workflow, build
    return rest.removeprefix("queue:"), ""


def work_channel(n: int) -> str:
    """pub/sub, not a key: partition `n`'s notices that a queue of it has an entry to read;
    the message is the queue's key. The scripts that queue an attempt publish it."""
    return f"{_in(n)}:work"


def runs_key(n: int, tenant: str = "") -> str:
    """zset: run_id -> create time (ms), the runs of one tenant ('' with auth off) in
    partition `n`. Entries of expired runs: removed by the sweep."""
    return f"{_in(n)}:runs:t:{tenant}" if tenant else f"{_in(n)}:runs"


def runs_by_workflow_key(n: int, workflow: str, tenant: str = "") -> str:
    """zset: run_id -> create time (ms), the runs of one workflow of one tenant in partition
    `n`. Entries of expired runs: removed by the sweep."""
    if tenant:  # tenant names have no ':', so this cannot meet another tenant's keys
        return f"{_in(n)}:runs:t:{tenant}:wf:{workflow}"
    return f"{_in(n)}:runs:wf:{workflow}"


# Keys of no partition: read and written outside the scripts.
# hash: workflow name -> description. Bounded by the workflows a deployment serves; made
# again by every worker heartbeat.
WORKFLOWS = PREFIX + "workflows"
# A promotion changes these three in one MULTI: they share the hash tag {builds} (one slot).
BUILDS_CURRENT = PREFIX + "{builds}:current"  # hash: workflow -> promoted build id (one each)
BUILDS_POLICY = PREFIX + "{builds}:policy"  # hash: workflow -> run move policy (builds.proto)
# hash: workflow -> how many promotions it had: the copies in the partitions take a current
# build only from a later promotion than the one they hold (never an older one back).
BUILDS_GEN = PREFIX + "{builds}:gen"
CONTROL_CHANNEL = PREFIX + "control"  # pub/sub: cancel notices between replicas (not a key)
DISPATCH_GROUP = "dispatch"  # consumer group on every queue stream
# string: the replica running this round of the sweep; PX of one sweep interval.
SWEEP_LOCK = PREFIX + "sweep"


# Schedules share the hash tag {schedules} (one slot): a schedule, its tenant's index and the
# due zset change together in one script. Bounded by the deployment's use: at most
# MAX_SCHEDULES per tenant, each removed by DeleteSchedule.
SCHEDULES_DUE = PREFIX + "{schedules}:due"  # zset: "tenant\tschedule_id" -> next tick (ms)
# string: a counter every change of any schedule takes its new version from (so a schedule
# deleted and made again never has a version an old pass read). One key; never removed.
SCHEDULE_VERSIONS = PREFIX + "{schedules}:versions"
MAX_SCHEDULES = 1000  # schedules one tenant may have


def schedule_key(tenant: str, schedule_id: str) -> str:
    """hash: one schedule of a tenant: its spec (JSON), paused and why, its next and last
    tick, its last run, its counters and a version every change bumps. Removed by
    DeleteSchedule (`_schedules`)."""
    return f"{PREFIX}{{schedules}}:s:{tenant}:{schedule_id}"


def schedule_ids_key(tenant: str) -> str:
    """zset (scores 0, read in id order): the ids of a tenant's schedules. Members: removed
    by DeleteSchedule."""
    return f"{PREFIX}{{schedules}}:ids:{tenant}"


def builds_key(workflow: str) -> str:
    """set: the build ids workers of the workflow announced. The sweep removes a build with no
    live worker, no queued or running run, that is not current."""
    return f"{PREFIX}{{builds}}:wf:{workflow}"


def build_workers_key(workflow: str) -> str:
    """zset: "build\tworker_id" -> presence expiry (ms), live workers that take new runs.
    Members an hour past their expiry are removed by every announce."""
    return f"{PREFIX}buildworkers:{workflow}"


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
    return f"{PREFIX}hub:{replica_id}"


def cache_key(key: str) -> str:
    """string: a component's cached JSON result. PX: the component's cache TTL."""
    return f"{PREFIX}cache:{key}"


def limit_key(name: str, part: str) -> str:
    """A cluster-wide limit's state, by part (a zset window, a counter, a pause): each has a
    PX renewed while callers use it (see _services)."""
    return f"{PREFIX}limit:{{{name}}}:{part}"


# The one module of the store that owns each key: it says in its docstring what the key holds
# and issues the commands on it outside the Lua scripts (`_scripts`), but for the few its
# docstring names (a neighbour's write in the same round trip, the sweep's reads).
# docs/architecture.md's key table follows this, and a unit test holds both to it.
OWNERS: dict[str, str] = {
    "META": "_partitions",
    "OLD_LAYOUT_KEY": "_partitions",
    "run_key": "_runs",
    "runs_key": "_runs",
    "runs_by_workflow_key": "_runs",
    "idempotency_key": "_runs",
    "start_rate_key": "_runs",
    "stats_keys": "_runs",
    "leases_key": "_attempts",
    "steps_key": "_attempts",
    "waits_key": "_waits",
    "timers_key": "_waits",
    "children_key": "_children",
    "orphans_key": "_children",
    "events_key": "_events",
    "hub_channel": "_events",
    "queue_key": "_queues",
    "work_channel": "_queues",
    "DISPATCH_GROUP": "_queues",
    "WORKFLOWS": "_presence",
    "workflow_workers_key": "_presence",
    "build_workers_key": "_presence",
    "BUILDS_CURRENT": "_builds",
    "builds_current_key": "_builds",
    "BUILDS_GEN": "_builds",
    "BUILDS_POLICY": "_builds",
    "builds_key": "_builds",
    "CONTROL_CHANNEL": "_notices",
    "SWEEP_LOCK": "_sweep",
    "SCHEDULES_DUE": "_schedules",
    "SCHEDULE_VERSIONS": "_schedules",
    "schedule_key": "_schedules",
    "schedule_ids_key": "_schedules",
    "cache_key": "_services",
    "limit_key": "_services",
}

"""Tokens, their kinds and tenants, rotation, and per-tenant limits, on a real control plane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import longline
from longline._errors import error_reason, retry_delay
from longline._store import Store, connect
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.control_plane import ControlPlane, ControlPlaneSettings
from longline.control_plane._auth import hash_token
from longline.v1 import (
    builds_pb2,
    builds_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from tests.conftest import FLOWS, eventually

TOKENS = {
    "alice": ("client", "tenant-a", None),
    "bob": ("client", "tenant-b", None),
    "worker": ("worker", "", None),
    "echo-only": ("worker", "", ["echo"]),
    "ops": ("admin", "tenant-a", None),
}


def tokens_toml(names: list[str]) -> str:
    """A tokens file for the named test tokens (each token's secret is its name + '-secret')."""
    out = []
    for name in names:
        kind, tenant, workflows = TOKENS[name]
        out += ["[[tokens]]", f'name = "{name}"', f'kind = "{kind}"']
        if tenant:
            out.append(f'tenant = "{tenant}"')
        if workflows is not None:
            out.append("workflows = [" + ", ".join(f'"{w}"' for w in workflows) + "]")
        out.append(f'sha256 = "{hash_token(name + "-secret")}"')
    return "\n".join(out) + "\n"


def secret(name: str) -> str:
    return name + "-secret"


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason of a failing call."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), error_reason(caught.value)


def _md(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret(name)}"),)


async def _announce(redis_url: str, *workflows: str) -> None:
    """Make workflows known, as a worker that has come and gone would have."""
    redis = connect(redis_url)
    try:
        await Store(redis).presence.announce("gone", [(w, "") for w in workflows], 1)
    finally:
        await redis.aclose()


@pytest.fixture
async def secured(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, Path]]:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(list(TOKENS)))
    cp = ControlPlane(
        ControlPlaneSettings(
            redis_url=redis_url,
            listen="127.0.0.1:0",
            tokens_file=str(path),
            max_queued_per_tenant=3,
            start_rate_per_tenant=0,
            max_streams_per_tenant=2,
        )
    )
    await cp.start()
    yield cp, path
    await cp.shutdown()


async def test_a_plane_without_tokens_refuses_to_start(redis_url: str) -> None:
    with pytest.raises(ValueError, match="refusing to start without tokens"):
        ControlPlane(ControlPlaneSettings(redis_url=redis_url))
    with pytest.raises(ValueError, match="a worker needs a worker token"):
        WorkerSettings(redis_url=redis_url)
    with pytest.raises(ValueError, match="no tokens: nobody could call"):
        ControlPlane(ControlPlaneSettings(redis_url=redis_url, tokens="# nothing here\n"))
    with pytest.raises(ValueError, match="sha256 must be the 64 hex digits"):
        ControlPlane(
            ControlPlaneSettings(
                redis_url=redis_url,
                tokens='[[tokens]]\nkind = "client"\ntenant = "a"\nsha256 = "my-password"\n',
            )
        )


async def test_each_kind_of_token_reaches_only_its_service(
    secured: tuple[ControlPlane, Path], redis_url: str
) -> None:
    cp, _ = secured
    await _announce(redis_url, "echo")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        runs = runs_pb2_grpc.RunServiceStub(channel)
        builds = builds_pb2_grpc.BuildServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        start = runs_pb2.StartRunRequest(workflow="echo")

        assert await _code(runs.StartRun(start)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_MISSING",
        )
        wrong = (("authorization", "Bearer not-a-token"),)
        assert await _code(runs.StartRun(start, metadata=wrong)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_INVALID",
        )
        basic = (("authorization", f"Basic {secret('alice')}"),)
        assert (await _code(runs.StartRun(start, metadata=basic)))[0] == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert await _code(runs.StartRun(start, metadata=_md("worker"))) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "WRONG_TOKEN_KIND",
        )
        assert await _code(
            builds.ListBuilds(builds_pb2.ListBuildsRequest(), metadata=_md("alice"))
        ) == (grpc.StatusCode.PERMISSION_DENIED, "WRONG_TOKEN_KIND")
        assert (await runs.StartRun(start, metadata=_md("alice"))).created
        assert (await runs.StartRun(start, metadata=_md("ops"))).created  # admin: its tenant
        await builds.ListBuilds(builds_pb2.ListBuildsRequest(), metadata=_md("ops"))

        async def hello() -> AsyncIterator[worker_pb2.ConnectRequest]:
            yield worker_pb2.ConnectRequest(
                hello=worker_pb2.WorkerHello(
                    worker_id="w",
                    slots=1,
                    workflows=[worker_pb2.WorkflowInfo(name="echo")],
                )
            )
            await asyncio.sleep(5)

        for name, expected in (
            ("alice", (grpc.StatusCode.PERMISSION_DENIED, "WRONG_TOKEN_KIND")),
            ("nobody", (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")),
        ):
            call = workers.Connect(hello(), metadata=_md(name))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
            assert (caught.value.code(), error_reason(caught.value)) == expected
        # Probes need no token.
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_worker_token_serves_runs_and_may_be_limited_to_workflows(
    secured: tuple[ControlPlane, Path], redis_url: str
) -> None:
    cp, _ = secured
    target = f"127.0.0.1:{cp.port}"
    worker = Worker(
        WorkerSettings(redis_url=redis_url, control_plane=target, token=secret("worker")),
        load_workflows(str(FLOWS)),
    )
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.connected.wait(), 10)
    async with longline.Client(target, token=secret("alice")) as client:
        assert await client.run("echo", {"hi": 1}) == {"hi": 1}
    worker.request_stop()
    await task

    async def hello(*names: str) -> AsyncIterator[worker_pb2.ConnectRequest]:
        yield worker_pb2.ConnectRequest(
            hello=worker_pb2.WorkerHello(
                worker_id="w2",
                slots=1,
                workflows=[worker_pb2.WorkflowInfo(name=n) for n in names],
            )
        )
        await asyncio.sleep(30)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        call = stub.Connect(hello("echo", "boom"), metadata=_md("echo-only"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(caught.value) == "WORKFLOW_NOT_ALLOWED"
        assert "may serve only echo; not boom" in (caught.value.details() or "")
        allowed = stub.Connect(hello("echo"), metadata=_md("echo-only"))
        first = await anext(aiter(allowed))
        assert first.HasField("welcome")
        allowed.cancel()


async def test_tenants_never_see_each_others_runs(
    secured: tuple[ControlPlane, Path], redis_url: str
) -> None:
    cp, _ = secured
    await _announce(redis_url, "echo")
    target = f"127.0.0.1:{cp.port}"
    async with (
        longline.Client(target, token=secret("alice")) as alice,
        longline.Client(target, token=secret("bob")) as bob,
    ):
        mine = await alice.start("echo", 1, idempotency_key="order-7", labels={"k": "v"})
        theirs = bob.get_run(mine.run_id)
        for attempt in (
            theirs.describe(),
            theirs.cancel("not yours"),
            theirs.trace(),
            theirs.send_input("approval", {"approved": True}),
            anext(aiter(theirs.events())),
        ):
            with pytest.raises(longline.NotFound) as caught:
                await attempt
            # The same answer as for a run that does not exist: ids do not leak.
            assert caught.value.reason == "RUN_NOT_FOUND"
            assert mine.run_id in caught.value.details
        runs, _ = await bob.list_runs()
        assert runs == []
        runs, _ = await bob.list_runs(workflow="echo")
        assert runs == []
        assert [r.run_id for r in (await alice.list_runs())[0]] == [mine.run_id]
        # Idempotency keys are per tenant: bob's "order-7" is a run of its own.
        bobs = await bob.start("echo", 2, idempotency_key="order-7")
        assert bobs.created and bobs.run_id != mine.run_id
        again = await alice.start("echo", 1, idempotency_key="order-7")
        assert not again.created and again.run_id == mine.run_id
        assert (await mine.describe()).status == "QUEUED"  # bob's cancel did nothing


async def test_tokens_rotate_without_a_restart(
    secured: tuple[ControlPlane, Path], redis_url: str
) -> None:
    cp, path = secured
    await _announce(redis_url, "echo")
    target = f"127.0.0.1:{cp.port}"
    async with (
        longline.Client(target, token=secret("alice")) as alice,
        longline.Client(target, token=secret("bob")) as bob,
    ):
        await alice.list_runs()
        path.write_text(tokens_toml(["bob", "worker"]))  # alice's token revoked

        async def revoked() -> bool:
            try:
                await alice.list_runs()
            except longline.Unauthenticated:
                return True
            return False

        await eventually(revoked, what="the changed tokens file to be read")
        await bob.list_runs()
        # A file that does not parse is refused; the tokens in force stay.
        path.write_text("[[tokens]]\nkind = 'nonsense'\n")
        assert not cp.reload_tokens()
        await bob.list_runs()
        path.write_text(tokens_toml(["alice", "worker"]))
        assert cp.reload_tokens()  # what SIGHUP does
        await alice.list_runs()
        with pytest.raises(longline.Unauthenticated):
            await bob.list_runs()


async def test_per_tenant_limits_answer_resource_exhausted_with_a_hint(
    secured: tuple[ControlPlane, Path], redis_url: str
) -> None:
    cp, _ = secured
    await _announce(redis_url, "echo")
    target = f"127.0.0.1:{cp.port}"
    async with (
        longline.Client(target, token=secret("alice")) as alice,
        longline.Client(target, token=secret("bob")) as bob,
    ):
        queued = [await alice.start("echo", n) for n in range(3)]  # nobody runs them
        with pytest.raises(longline.ResourceExhausted) as caught:
            await alice.start("echo", 4)
        assert caught.value.reason == "TOO_MANY_QUEUED_RUNS"
        assert caught.value.retry_after == 1.0
        await bob.start("echo", 1)  # another tenant is not held back
        await queued[0].cancel()
        await alice.start("echo", 5)  # a place freed

    # Streams: two open per tenant on this replica; a third waits for one to close.
    async with grpc.aio.insecure_channel(target) as channel:
        stub = runs_pb2_grpc.RunServiceStub(channel)

        def stream(handle: longline.RunHandle) -> object:
            return stub.StreamRun(
                runs_pb2.StreamRunRequest(run_id=handle.run_id), metadata=_md("alice")
            )

        open_calls = [stream(h) for h in queued[1:]]
        for call in open_calls:
            assert (await call.read()).event.type == runs_pb2.EVENT_TYPE_RUN_QUEUED  # type: ignore[attr-defined]
        third = stream(queued[1])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await third.read()  # type: ignore[attr-defined]
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(refused.value) == "TOO_MANY_STREAMS"
        assert retry_delay(refused.value) == 1.0
        open_calls[0].cancel()  # type: ignore[attr-defined]

        async def admitted() -> bool:
            call = stream(queued[2])
            try:
                await call.read()  # type: ignore[attr-defined]
                return True
            except grpc.aio.AioRpcError:
                return False
            finally:
                call.cancel()  # type: ignore[attr-defined]

        await eventually(admitted, what="a stream to be admitted once one closed")
        open_calls[1].cancel()  # type: ignore[attr-defined]


async def test_the_start_rate_of_a_tenant_is_limited(redis_url: str) -> None:
    await _announce(redis_url, "echo")
    cp = ControlPlane(
        ControlPlaneSettings(
            redis_url=redis_url,
            listen="127.0.0.1:0",
            tokens=tokens_toml(["alice", "bob"]),
            start_rate_per_tenant=0.5,
            start_burst_per_tenant=2,
        )
    )
    async with cp, longline.Client(f"127.0.0.1:{cp.port}", token=secret("alice")) as alice:
        await alice.start("echo", 1)
        await alice.start("echo", 2)
        with pytest.raises(longline.ResourceExhausted) as caught:
            await alice.start("echo", 3)
        assert caught.value.reason == "START_RATE_EXCEEDED"
        # One start per 2 s refills: the hint says how long until the next one is allowed.
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 2.0
        async with longline.Client(f"127.0.0.1:{cp.port}", token=secret("bob")) as bob:
            await bob.start("echo", 1)  # its own bucket


def test_admin_tokens_are_read_as_cluster_admin_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from longline.control_plane._auth import parse_tokens

    entry = '[[tokens]]\nname = "ops"\nkind = "admin"\ntenant = "t"\nsha256 = "' + "a" * 64 + '"'
    found = parse_tokens(entry, "tokens.toml")
    assert [p.kind for p in found.values()] == ["cluster-admin"]
    assert "every tenant" in caplog.text


async def test_tenants_never_see_each_others_schedules(
    secured: tuple[ControlPlane, Path], redis_url: str
) -> None:
    from longline.v1 import schedules_pb2, schedules_pb2_grpc

    cp, _ = secured
    await _announce(redis_url, "echo")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        stub = schedules_pb2_grpc.ScheduleServiceStub(channel)
        spec = schedules_pb2.ScheduleSpec(cron="0 8 * * *", workflow="echo")
        made = await stub.CreateSchedule(
            schedules_pb2.CreateScheduleRequest(schedule_id="digest", spec=spec),
            metadata=_md("alice"),
        )
        assert made.schedule.schedule_id == "digest"
        # Bob's tenant has no such schedule: not found, whatever he tries.
        for call in (
            stub.GetSchedule(
                schedules_pb2.GetScheduleRequest(schedule_id="digest"), metadata=_md("bob")
            ),
            stub.PauseSchedule(
                schedules_pb2.PauseScheduleRequest(schedule_id="digest"), metadata=_md("bob")
            ),
            stub.TriggerSchedule(
                schedules_pb2.TriggerScheduleRequest(schedule_id="digest"), metadata=_md("bob")
            ),
            stub.DeleteSchedule(
                schedules_pb2.DeleteScheduleRequest(schedule_id="digest"), metadata=_md("bob")
            ),
        ):
            assert await _code(call) == (grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
        listed = await stub.ListSchedules(schedules_pb2.ListSchedulesRequest(), metadata=_md("bob"))
        assert list(listed.schedules) == []
        # Bob may have his own of the same id; a worker token may not call the service.
        await stub.CreateSchedule(
            schedules_pb2.CreateScheduleRequest(schedule_id="digest", spec=spec),
            metadata=_md("bob"),
        )
        code, _ = await _code(
            stub.ListSchedules(schedules_pb2.ListSchedulesRequest(), metadata=_md("worker"))
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # A triggered run is alice's: bob cannot see it.
        run = await stub.TriggerSchedule(
            schedules_pb2.TriggerScheduleRequest(schedule_id="digest"), metadata=_md("alice")
        )
        runs = runs_pb2_grpc.RunServiceStub(channel)
        code, _ = await _code(
            runs.GetRun(runs_pb2.GetRunRequest(run_id=run.run.run_id), metadata=_md("bob"))
        )
        assert code == grpc.StatusCode.NOT_FOUND


async def test_a_tenants_limits_hold_for_its_schedules_runs(redis_url: str) -> None:
    """No worker serves echo here: the runs stay queued, and the queued limit stops the
    ticks past it, each counted skipped with the reason."""
    await _announce(redis_url, "echo")
    cp = ControlPlane(
        ControlPlaneSettings(
            redis_url=redis_url,
            listen="127.0.0.1:0",
            tokens=tokens_toml(["alice"]),
            max_queued_per_tenant=2,
            start_rate_per_tenant=0,
        )
    )
    async with cp, longline.Client(f"127.0.0.1:{cp.port}", token=secret("alice")) as alice:
        await alice.create_schedule("busy", "echo", cron="* * * * * *", overlap="ALLOW_ALL")

        async def refused() -> longline.Schedule | None:
            s = await alice.get_schedule("busy")
            return s if s.skipped_ticks >= 2 else None

        schedule = await eventually(refused, what="ticks over the limit", timeout=30)
        await alice.pause_schedule("busy")
    assert schedule.started_runs == 2
    assert "runs of this tenant are queued" in schedule.last_error

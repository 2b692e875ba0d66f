"""BuildService: promote a build of a workflow and report where every build's runs stand."""

from __future__ import annotations

import logging

import grpc

from longline._store import POLICIES, InvalidArgumentError, Store, WorkflowBuilds
from longline.v1 import builds_pb2, builds_pb2_grpc

from ._workers import Dispatcher

log = logging.getLogger("longline.control_plane.builds")


def _policy_name(policy: int) -> str:
    if policy not in builds_pb2.RunMovePolicy.values():
        raise InvalidArgumentError(
            f"policy {policy} is not a RunMovePolicy: use "
            + " or ".join(f"RUN_MOVE_POLICY_{p}" for p in POLICIES),
            "INVALID_POLICY",
        )
    return str(builds_pb2.RunMovePolicy.Name(policy)).removeprefix("RUN_MOVE_POLICY_")


def workflow_builds_to_proto(w: WorkflowBuilds) -> builds_pb2.WorkflowBuilds:
    """The wire form of one workflow's builds."""
    return builds_pb2.WorkflowBuilds(
        workflow=w.workflow,
        current_build_id=w.current,
        policy=builds_pb2.RunMovePolicy.Value(f"RUN_MOVE_POLICY_{w.policy}"),
        unserved_runs=w.unserved,
        builds=[
            builds_pb2.BuildStatus(
                build_id=b.build,
                workers=b.workers,
                queued_runs=b.queued,
                running_runs=b.running,
                unserved_runs=b.unserved,
                current=b.current,
                waiting_runs=b.waiting,
            )
            for b in w.builds
        ],
    )


class BuildServicer(builds_pb2_grpc.BuildServiceServicer):
    """PromoteBuild and ListBuilds, read from and written to Redis."""

    def __init__(self, store: Store, dispatcher: Dispatcher) -> None:
        self._store = store
        self._dispatcher = dispatcher

    async def PromoteBuild(
        self, request: builds_pb2.PromoteBuildRequest, context: grpc.aio.ServicerContext
    ) -> builds_pb2.PromoteBuildResponse:
        if not request.workflow:
            raise InvalidArgumentError("workflow is required", "WORKFLOW_REQUIRED")
        name = _policy_name(request.policy)
        policy = "" if name == "UNSPECIFIED" else name
        previous = await self._store.builds.promote(
            request.workflow, request.build_id, policy, request.force
        )
        log.info(
            "build %s of workflow %s promoted (was %s)",
            request.build_id,
            request.workflow,
            previous or "none",
        )
        await self._dispatcher.builds_changed()
        (builds,) = await self._store.builds.list_all(request.workflow)
        return builds_pb2.PromoteBuildResponse(
            workflow=workflow_builds_to_proto(builds), previous_build_id=previous
        )

    async def ListBuilds(
        self, request: builds_pb2.ListBuildsRequest, context: grpc.aio.ServicerContext
    ) -> builds_pb2.ListBuildsResponse:
        found = await self._store.builds.list_all(request.workflow)
        return builds_pb2.ListBuildsResponse(workflows=[workflow_builds_to_proto(w) for w in found])

"""Which queues a worker of a build reads, and which queued runs count as unserved."""

from __future__ import annotations

import pytest

from longline._store import BuildView, InvalidArgumentError, check_build_id


def Q(workflow: str, build: str = "") -> tuple[str, str]:  # noqa: N802 - reads as a queue
    return (workflow, build)


def test_without_builds_every_worker_reads_the_workflow_queue_only() -> None:
    view = BuildView(builds={"wf": {""}}, live={"wf": {""}})
    assert view.queues_for("wf", "") == [Q("wf")]
    assert view.served("wf", "")


def test_the_current_build_takes_new_runs_and_runs_of_builds_with_no_worker_left() -> None:
    view = BuildView(
        current={"wf": "v3"},
        builds={"wf": {"", "v1", "v2", "v3"}},
        live={"wf": {"v2", "v3"}},
    )
    assert view.queues_for("wf", "v3") == [Q("wf", "v3"), Q("wf"), Q("wf", "v1")]
    assert view.queues_for("wf", "v2") == [Q("wf", "v2")], "pinned runs only"
    assert view.queues_for("wf", "") == [], "no build id: no new runs once one is promoted"
    assert all(view.served("wf", b) for b in ("", "v1", "v2", "v3"))


def test_policy_never_keeps_runs_on_their_build_and_reports_them() -> None:
    view = BuildView(
        current={"wf": "v2"},
        policy={"wf": "NEVER"},
        builds={"wf": {"v1", "v2"}},
        live={"wf": {"v2"}},
    )
    assert view.queues_for("wf", "v2") == [Q("wf", "v2"), Q("wf")]
    assert not view.served("wf", "v1")


def test_a_current_build_without_workers_leaves_new_runs_unserved() -> None:
    view = BuildView(current={"wf": "v2"}, builds={"wf": {"v1"}}, live={"wf": {"v1"}})
    assert not view.served("wf", "")
    assert view.served("wf", "v1")


def test_pinned_queues_cannot_collide_with_workflow_queues() -> None:
    assert Q("a", "b") != Q("b:a") and Q("a", "b") != Q("a@b")


@pytest.mark.parametrize("build", ["v1", "2026.11.26-abc123", "sha-0f3e", "1.2.3+build.4"])
def test_good_build_ids(build: str) -> None:
    check_build_id(build, allow_empty=False)


@pytest.mark.parametrize("build", ["", "v 1", "a:b", "-x", "x" * 65, "é"])
def test_bad_build_ids(build: str) -> None:
    with pytest.raises(InvalidArgumentError, match="is not valid"):
        check_build_id(build, allow_empty=False)

"""The client commands (`run`, `watch`, `runs`, `input`, `cancel`, `trace`, `workflows`,
`builds`, `schedules`):
a table of small functions, each given a `Session`, none touching a plane.

They talk to a control plane through `longline.Client` only. A client's token comes from
LONGLINE_TOKEN (read by the client); every flag also reads its LONGLINE_* variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .._client import Client, RunHandle
from .._errors import FailedPrecondition, InvalidArgument
from .._options import DEFAULT_ADDRESS, Option
from .._types import Event, EventType, RunStatus, Schedule
from ._command import Command, CommandError
from ._form import ask_input
from ._render import LiveView, print_builds, print_schedule, print_trace, schedule_zone
from ._runtime import detachable

__all__ = ["COMMANDS", "Session", "follow", "start_and_follow"]

CONTROL_PLANE = Option("--control-plane", "control-plane HOST:PORT", default=DEFAULT_ADDRESS)
TLS_CA = Option(
    "--tls-ca",
    "PEM CA to verify the control plane with (TLS); the token comes from LONGLINE_TOKEN",
    default="",
)
CLIENT = (CONTROL_PLANE, TLS_CA)
VERBOSE = Option("--verbose", "show component events", default=False, switch=True)
NO_PROMPT = Option(
    "--no-prompt",
    "on a terminal too, print how to answer the run's input requests instead of asking",
    default=False,
    switch=True,
)
PLAIN = Option("--plain", "plain lines even on a terminal", default=False, switch=True)
INPUT = Option("--input", "JSON input", default="null")
RUN_ID = Option("run_id")
WORKFLOW = Option("workflow")


@dataclass
class Session:
    """One client command's arguments, its live view, and the run it follows (if any)."""

    args: argparse.Namespace
    view: LiveView
    run_id: str = ""  # set once known, for the "detached" note at Ctrl-C
    # A person is at a terminal: the run's input requests are asked for there.
    interactive: bool = False

    def client(self) -> Client:
        """A client of the control plane the flags name."""
        return Client(self.args.control_plane, tls_ca=self.args.tls_ca)

    def detached(self) -> None:
        """Say how to follow the run again (at Ctrl-C; nothing if no run is known yet)."""
        if not self.run_id:
            return
        after = f" --after {self.view.last_event_id}" if self.view.last_event_id else ""
        print(
            f"\ndetached; the run goes on. Follow it again with:\n"
            f"  longline watch {self.run_id}{after}"
        )


async def follow(session: Session, run_id: str, after: str = "") -> int:
    """Show the run's events until it ends; exit code 0 succeeded, 2 cancelled, 1 failed.

    On a terminal, a request for input the run still waits for is asked for there (a form
    from its schema) and sent; elsewhere the view prints the `longline input` command."""
    session.run_id = run_id
    async with session.client() as client:
        handle = client.get_run(run_id)
        async for event in handle.events(after=after or None):
            session.view.show(event)
            if event.type is EventType.INPUT_REQUESTED and session.interactive:
                await _answer(session, handle, event)
        run = await handle.describe()
    return {RunStatus.SUCCEEDED: 0, RunStatus.CANCELLED: 2}.get(run.status, 1)


async def _answer(session: Session, handle: RunHandle, event: Event) -> None:
    """Ask the person for the input the event requests, if the run still waits for it (the
    event may be history, answered long ago), and send it."""
    request = event.data if isinstance(event.data, dict) else {}
    name = str(request.get("name", ""))
    run = await handle.describe()
    if run.wait is None or run.wait.kind != "input" or run.wait.input_name != name:
        return
    while True:
        with session.view.paused():
            try:
                payload = await asyncio.to_thread(ask_input, request)
            except EOFError:
                print(f"\nno answer; send it with: longline input {run.run_id} {name} --data ...")
                return
        try:
            await handle.send_input(name, payload)
            return
        except InvalidArgument as exc:  # the schema the server holds said no
            print(f"refused: {exc.details}")
        except FailedPrecondition as exc:  # answered elsewhere, timed out, or ended
            print(f"not sent: {exc.details}")
            return


async def start_and_follow(session: Session, workflow: str, text: str, key: str = "") -> int:
    """Start `workflow` with the JSON `text` as input, then follow the run."""
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--input is not valid JSON: {exc}") from None
    async with session.client() as client:
        handle = await client.start(workflow, payload, idempotency_key=key)
    return await follow(session, handle.run_id)


async def _run(s: Session) -> int:
    return await start_and_follow(s, s.args.workflow, s.args.input, s.args.idempotency_key or "")


async def _watch(s: Session) -> int:
    return await follow(s, s.args.run_id, s.args.after or "")


async def _runs(s: Session) -> int:
    async with s.client() as client:
        runs, _ = await client.list_runs(
            workflow=s.args.workflow or "", status=s.args.status, page_size=s.args.limit
        )
    for r in runs:
        created = r.create_time.strftime("%Y-%m-%d %H:%M:%S") if r.create_time else ""
        waits = ""
        if r.wait is not None:
            wake = r.wait.wake_time.strftime("%Y-%m-%d %H:%M:%S") if r.wait.wake_time else ""
            if r.wait.kind == "input":
                waits = f"  waits for input {r.wait.input_name}" + (
                    f" until {wake}" if wake else ""
                )
            elif r.wait.kind == "child":
                n = len(r.wait.child_run_ids)
                waits = (
                    "  waits for a child run" if n == 1 else f"  waits for one of {n} child runs"
                )
            else:
                waits = f"  sleeps until {wake}"
        print(f"{r.run_id}  {r.status:<10} {r.workflow:<20} attempt {r.attempt}  {created}{waits}")
    return 0


def _payload(text: str) -> object:
    """--data: a JSON text, '@PATH' for a file's, '-' for standard input's."""
    where = "--data"
    if text == "-":
        text, where = sys.stdin.read(), "standard input"
    elif text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text, where = f.read(), text[1:]
        except OSError as exc:
            raise CommandError(f"--data {text}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{where} is not valid JSON: {exc}") from None


async def _input(s: Session) -> int:
    payload = _payload(s.args.data)
    async with s.client() as client:
        run = await client.get_run(s.args.run_id).send_input(s.args.name, payload)
    print(f"run {run.run_id}: input {s.args.name} sent; the run is {run.status}")
    return 0


async def _cancel(s: Session) -> int:
    async with s.client() as client:
        run = await client.get_run(s.args.run_id).cancel(s.args.reason or "")
    print(f"run {run.run_id}: {run.status}")
    return 0


async def _trace(s: Session) -> int:
    async with s.client() as client:
        print_trace(await client.get_run(s.args.run_id).trace())
    return 0


async def _workflows(s: Session) -> int:
    async with s.client() as client:
        for w in await client.list_workflows():
            print(f"{w.name:<24} {w.workers} workers  {w.description}")
    return 0


async def _builds_list(s: Session) -> int:
    async with s.client() as client:
        print_builds(await client.list_builds(s.args.workflow or ""))
    return 0


async def _builds_promote(s: Session) -> int:
    a = s.args
    async with s.client() as client:
        builds, previous = await client.promote_build(
            a.workflow, a.build_id, policy=a.policy or "", force=a.force
        )
    print(
        f"{a.workflow}: build {a.build_id} is current (was {previous or 'none'}); "
        "new runs go to its workers"
    )
    print_builds([builds])
    return 0


async def _schedules_list(s: Session) -> int:
    async with s.client() as client:
        schedules = await client.list_schedules()
    for schedule in schedules:
        state = "paused" if schedule.paused else "next " + _when(schedule)
        print(
            f"{schedule.schedule_id:<24} {schedule.cron!r:<20} {schedule.time_zone or 'UTC':<16} "
            f"{schedule.workflow:<20} {state}"
        )
    if not schedules:
        print("no schedules")
    return 0


def _when(schedule: Schedule) -> str:
    """The schedule's next tick in its own time zone (UTC without one)."""
    if schedule.next_tick_time is None:
        return "never"
    return schedule.next_tick_time.astimezone(schedule_zone(schedule)).isoformat(timespec="seconds")


def _spec_args(a: argparse.Namespace) -> dict[str, object]:
    if not a.cron:
        raise CommandError("--cron is required, e.g. --cron '0 8 * * *' (08:00 every day)")
    try:
        value = json.loads(a.input)
    except ValueError as exc:
        raise CommandError(f"--input is not JSON: {exc}") from None
    return {
        "cron": a.cron,
        "time_zone": a.time_zone,
        "input": value,
        "overlap": a.overlap,
        "catchup_window": a.catchup_window,
    }


async def _schedules_create(s: Session) -> int:
    a = s.args
    async with s.client() as client:
        made = await client.create_schedule(
            a.schedule_id,
            a.workflow,
            paused=a.paused,
            **_spec_args(a),  # type: ignore[arg-type]
        )
    print_schedule(made)
    return 0


async def _schedules_update(s: Session) -> int:
    a = s.args
    async with s.client() as client:
        made = await client.update_schedule(
            a.schedule_id,
            a.workflow,
            **_spec_args(a),  # type: ignore[arg-type]
        )
    print_schedule(made)
    return 0


async def _schedules_get(s: Session) -> int:
    async with s.client() as client:
        print_schedule(await client.get_schedule(s.args.schedule_id))
    return 0


async def _schedules_pause(s: Session) -> int:
    async with s.client() as client:
        print_schedule(await client.pause_schedule(s.args.schedule_id, s.args.note or ""))
    return 0


async def _schedules_resume(s: Session) -> int:
    async with s.client() as client:
        print_schedule(await client.resume_schedule(s.args.schedule_id))
    return 0


async def _schedules_trigger(s: Session) -> int:
    async with s.client() as client:
        handle = await client.trigger_schedule(s.args.schedule_id)
    print(f"started run {handle.run_id}; follow it with: longline watch {handle.run_id}")
    return 0


async def _schedules_delete(s: Session) -> int:
    async with s.client() as client:
        await client.delete_schedule(s.args.schedule_id)
    print(f"schedule {s.args.schedule_id} deleted; the runs it started go on")
    return 0


def _client(main: Callable[[Session], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    """A command running main(session) on a plain asyncio loop; Ctrl-C detaches at once."""

    def run(args: argparse.Namespace) -> int:
        verbose = getattr(args, "verbose", False)
        # A live panel for a person at a terminal that can draw one; plain lines for a pipe,
        # a file, TERM=dumb, --plain, and the commands that follow no run (no --plain).
        view = LiveView(verbose=verbose)
        if (
            not getattr(args, "plain", True)
            and sys.stdout.isatty()
            and os.environ.get("TERM", "") != "dumb"
        ):
            from ._panel import PanelView  # rich is loaded only to draw a panel

            view = PanelView(verbose=verbose, workflow=getattr(args, "workflow", "") or "")
        session = Session(
            args,
            view,
            interactive=sys.stdin.isatty() and not getattr(args, "no_prompt", False),
        )

        async def go() -> int:
            try:
                return await main(session)
            finally:
                session.view.close()

        def detach() -> None:
            session.view.close()  # the cursor back and the panel's last state on the screen
            session.detached()

        return detachable(go, detach)

    return run


SCHEDULE_ID = Option("schedule_id")
SPEC = (
    Option(
        "--cron",
        "when it ticks: five fields (minute hour day month weekday), six with seconds first, "
        "or @hourly, @daily, @weekly, @monthly",
        env=False,
    ),
    Option(
        "--time-zone",
        "the IANA time zone the cron reads in, e.g. Europe/Berlin",
        "",
        env=False,
        shown="UTC",
    ),
    Option("--input", "the JSON input of every run", "null", env=False),
    Option(
        "--overlap",
        "a tick while the last tick's run goes on: SKIP it, BUFFER_ONE (run it after), or "
        "ALLOW_ALL",
        "SKIP",
        type=str.upper,
        choices=("SKIP", "BUFFER_ONE", "ALLOW_ALL"),
        env=False,
    ),
    Option(
        "--catchup-window",
        "seconds: ticks missed while nothing ran are run late when at most this old",
        None,
        type=float,
        env=False,
        shown="3600",
    ),
)

COMMANDS = (
    Command(
        "run",
        "start a run and show it live until it ends",
        (
            WORKFLOW,
            INPUT,
            Option("--idempotency-key", "a second run with this key returns the first", ""),
            VERBOSE,
            NO_PROMPT,
            PLAIN,
            *CLIENT,
        ),
        _client(_run),
    ),
    Command(
        "watch",
        "follow a run live from where it is, or from --after",
        (
            RUN_ID,
            Option("--after", "resume after this event id", ""),
            VERBOSE,
            NO_PROMPT,
            PLAIN,
            *CLIENT,
        ),
        _client(_watch),
    ),
    Command(
        "runs",
        "list runs, newest first",
        (
            Option("--workflow", "only this workflow", ""),
            Option("--status", "only this status, e.g. RUNNING", None, type=str.upper, shown="any"),
            Option("--limit", "how many", 20, type=int),
            *CLIENT,
        ),
        _client(_runs),
    ),
    Command(
        "input",
        "answer a run's request for input (ctx.wait_for_input)",
        (
            RUN_ID,
            Option("name", "the input's name, as the run asked for it"),
            Option(
                "--data",
                "the payload: JSON, @PATH for a file's, - for standard input's",
                "null",
                env=False,
            ),
            *CLIENT,
        ),
        _client(_input),
    ),
    Command(
        "cancel",
        "cancel a queued, running or waiting run",
        (RUN_ID, Option("--reason", "why (recorded in the run)", ""), *CLIENT),
        _client(_cancel),
    ),
    Command(
        "trace",
        "a run's trace tree: attempts, steps, durations, tokens",
        (RUN_ID, *CLIENT),
        _client(_trace),
    ),
    Command("workflows", "list the workflows workers serve", CLIENT, _client(_workflows)),
    Command(
        "builds",
        "blue-green deploys: list builds, promote one",
        subcommands=(
            Command(
                "list",
                "each workflow's builds, workers and runs",
                (Option("workflow", nargs="?", default=""), *CLIENT),
                _client(_builds_list),
            ),
            Command(
                "promote",
                "make BUILD_ID the build new runs of WORKFLOW go to",
                (
                    WORKFLOW,
                    Option("build_id"),
                    Option(
                        "--policy",
                        "runs pinned to a build with no workers left: WHEN_UNSERVED moves "
                        "them to the current build, NEVER leaves them waiting for their own",
                        type=str.upper,
                        choices=("WHEN_UNSERVED", "NEVER"),
                        env=False,
                        shown="WHEN_UNSERVED",
                    ),
                    Option(
                        "--force",
                        "promote even if no worker of the build is live",
                        default=False,
                        switch=True,
                        env=False,
                    ),
                    *CLIENT,
                ),
                _client(_builds_promote),
            ),
        ),
    ),
    Command(
        "schedules",
        "cron schedules that start runs: list, create, update, pause, resume, trigger, delete",
        subcommands=(
            Command("list", "this tenant's schedules", CLIENT, _client(_schedules_list)),
            Command(
                "get",
                "one schedule and where it stands",
                (SCHEDULE_ID, *CLIENT),
                _client(_schedules_get),
            ),
            Command(
                "create",
                "make a schedule that runs WORKFLOW on every tick of --cron",
                (
                    SCHEDULE_ID,
                    WORKFLOW,
                    *SPEC,
                    Option("--paused", "create it paused", default=False, switch=True, env=False),
                    *CLIENT,
                ),
                _client(_schedules_create),
            ),
            Command(
                "update",
                "replace what a schedule does",
                (SCHEDULE_ID, WORKFLOW, *SPEC, *CLIENT),
                _client(_schedules_update),
            ),
            Command(
                "pause",
                "stop a schedule's ticks until resumed",
                (SCHEDULE_ID, Option("--note", "why (shown with it)", "", env=False), *CLIENT),
                _client(_schedules_pause),
            ),
            Command(
                "resume",
                "let a paused schedule tick again",
                (SCHEDULE_ID, *CLIENT),
                _client(_schedules_resume),
            ),
            Command(
                "trigger",
                "start one run of a schedule now",
                (SCHEDULE_ID, *CLIENT),
                _client(_schedules_trigger),
            ),
            Command(
                "delete",
                "remove a schedule (its runs go on)",
                (SCHEDULE_ID, *CLIENT),
                _client(_schedules_delete),
            ),
        ),
    ),
)

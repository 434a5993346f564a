"""The scheduled deadline watch: finds lapsed deadlines with indexed queries and wakes the cases concerned.

Deadlines are not suspend timeouts (a suspend timeout fails the run); instead this flow runs on a schedule,
writes a "deadline lapsed" signal for each lapsed order or follow-up window, and resumes those cases; summoned
units that missed their whistle report are escalated; reminders go out at the policy's fractions. It also
wakes any case whose signal could not wake it, starts runs for cases recorded while Prefect was unreachable,
retries webhook deliveries that are due, and deletes its own rounds that Prefect cancelled because the previous
one still ran. For deliberations (大家商量着办) it signals those whose item cases are all closed, wakes those with
pending signals and starts the runs of those recorded while Prefect was unreachable.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound

from flows import NO_RESULTS
from flows.control import live_starter_shards, start_cases, start_deliberation_flow, unstarted_cases, wake
from hotline.clock import now
from hotline.db import read_scope, session_scope
from notifications.webhooks import deliver_due
from services import cases, deliberations, whistles

# What the watch leaves to the writer of a record for a while: intake and the executors' starters start their
# cases' runs, an answer wakes its case's run. Past this grace the watch does it (the writer's own attempt failed,
# or its process stopped).
WRITER_GRACE_SECONDS = 15

# The watch runs every few seconds (`HOTLINE_WATCH_INTERVAL_SECONDS`, 10 by default): 8,640 runs a day. Its steps
# are plain calls, not task runs: five task runs a round were 43,200 task runs and about 130,000 events a day in
# Prefect's DB (each persisted, ordered and evaluated by its services), more than the cases' own. Each round's run
# shows what every step did in one log line (below). A step that raises is logged with its traceback and the
# other steps still run (a failing delivery retry must not stop escalations); then the round's run fails.


def _signal_lapses() -> dict[str, int]:
    with session_scope() as session:
        at = now()
        lapsed = cases.lapsed_deadlines(session, at)
        signalled = sum(1 for wo, which in lapsed if cases.signal_lapse(session, wo, which))
        follow_ups = len(cases.signal_follow_up_lapses(session, at))
    with session_scope() as session:
        missed_reports = whistles.escalate_missed_reports(session, now())
    with session_scope() as session:
        reminders = cases.send_reminders(session, now())
    return {"deadlines": signalled, "follow_ups": follow_ups, "whistle_reports": missed_reports,
            "reminders": reminders}


async def find_lapsed() -> dict[str, int]:
    return await asyncio.to_thread(_signal_lapses)


def _past_grace() -> datetime:
    return now() - timedelta(seconds=WRITER_GRACE_SECONDS)


def _waiting_runs(round_started: datetime) -> list[tuple[str, int]]:
    with read_scope() as session:
        return cases.waiting_runs(session, written_since=round_started, older_than=_past_grace())


async def wake_cases(round_started: datetime) -> int:
    """Wake the case runs with signals this round wrote, or whose writer's wake was lost."""
    woken = 0
    for run_id, signal_id in await asyncio.to_thread(_waiting_runs, round_started):
        woken += await wake(run_id, "signal_pending", signal_id)
    return woken


async def start_unstarted() -> int:
    """Cases recorded while Prefect was unreachable, or whose starter stopped: past the grace that intake and the
    executors' starters have to start them themselves. The shares that live executors start are left to them: their
    cases wait in our DB on purpose while Prefect has runs enough to take (the starters' pacing)."""
    starting = await asyncio.to_thread(live_starter_shards)
    recorded = await asyncio.to_thread(unstarted_cases, limit=200, older_than_seconds=WRITER_GRACE_SECONDS,
                                       except_shards=starting)
    return await start_cases(recorded)


def _deliberations_to_move(round_started: datetime) -> tuple[int, list[tuple[str, int]], list]:
    with session_scope() as session:
        done = len(deliberations.signal_items_done(session))
    with read_scope() as session:
        waiting = deliberations.waiting_runs(session, written_since=round_started, older_than=_past_grace())
        unstarted = [(d, deliberations.run_tags(d)) for d in deliberations.unstarted(session, _past_grace())]
    return done, waiting, unstarted


async def move_deliberations(round_started: datetime) -> dict[str, int]:
    """Deliberations whose items are all closed are told so; runs with signals this round wrote or whose writer's
    wake was lost are woken; unstarted ones are started."""
    done, waiting, unstarted = await asyncio.to_thread(_deliberations_to_move, round_started)
    woken = 0
    for run_id, signal_id in waiting:
        woken += await wake(run_id, "signal_pending", signal_id)
    for deliberation, tags in unstarted:
        await start_deliberation_flow(deliberation, tags)
    return {"items_done": done, "woken": woken, "started": len(unstarted)}


async def retry_deliveries() -> dict[str, int]:
    return await deliver_due()


# Prefect 3.8's message on a run its deployment's CANCEL_NEW limit cancelled (at a claim, or when it went late)
LIMIT_CANCELLED = "Deployment concurrency limit reached."


async def forget_skipped_rounds() -> int:
    """Delete the rounds of this deployment that Prefect cancelled because the previous one still ran (one round
    at a time, `CANCEL_NEW`; the server cancels a due round as soon as it is late while another runs, whoever
    executes them). They never started and hold nothing, and Prefect's cancellation cleanup re-reads every run
    cancelled in the last day every 20 s: on a saturated machine two rounds in three were such runs, and that
    cleanup grew to a seventh of Prefect's services' CPU (docs/performance.md). A round an operator cancelled is
    kept."""
    context = FlowRunContext.get()
    deployment_id = context.flow_run.deployment_id if context and context.flow_run else None
    if deployment_id is None:
        return 0
    async with get_client() as client:
        cancelled = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.CANCELLED]))),
            sort=FlowRunSort.ID_DESC, limit=200)
        skipped = [run for run in cancelled  # never ran (Prefect gives a cancelled run a start time all the same)
                   if not run.total_run_time and run.state and run.state.message == LIMIT_CANCELLED]
        for run in skipped:
            try:
                await client.delete_flow_run(run.id)
            except ObjectNotFound:
                pass  # the next round, which started meanwhile, was first
    return len(skipped)


@flow(name="deadline-watch", **NO_RESULTS, description="Escalates lapsed deadlines and keeps every case moving.")
async def deadline_watch() -> dict:
    started = now()
    steps = {
        "lapsed": find_lapsed,
        "woken": lambda: wake_cases(started),
        "started": start_unstarted,
        "deliberations": lambda: move_deliberations(started),
        "deliveries": retry_deliveries,
        "skipped_rounds_forgotten": forget_skipped_rounds,
    }
    logger = get_run_logger()
    summary: dict[str, object] = {}
    failed: list[str] = []
    for name, step in steps.items():
        try:
            summary[name] = await step()
        except Exception:  # one step's failure must not stop the others (escalations above all): all run
            logger.exception("deadline watch: step %r failed", name)
            summary[name] = "failed"
            failed.append(name)
    logger.info("deadline watch: %s", summary)
    if failed:
        raise WatchStepFailed(f"deadline watch: {', '.join(failed)} failed (tracebacks above); the other steps ran")
    return summary


class WatchStepFailed(RuntimeError):
    """A round whose steps did not all succeed: the run fails so operators see it in the UI."""

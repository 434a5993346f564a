"""The scheduled deadline watch: finds lapsed deadlines with indexed queries and wakes the cases concerned.

Deadlines are not suspend timeouts (a suspend timeout fails the run); instead this flow runs on a schedule,
writes a "deadline lapsed" signal for each lapsed order or follow-up window, and resumes those cases; summoned
units that missed their whistle report are escalated; reminders go out at the policy's fractions. It also
wakes any case whose signal could not wake it, starts runs for cases recorded while Prefect was unreachable,
retries webhook deliveries that are due, deletes its own rounds that Prefect cancelled because the previous one
still ran, and marks crashed its rounds whose process was killed (they no longer hold the watch's slot). For
deliberations (大家商量着办) it signals those whose item cases are all closed, wakes those with pending signals and
starts the runs of those recorded while Prefect was unreachable.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Crashed

from flows import NO_RESULTS
from flows.control import (
    live_starter_shards, runs_in_states, start_cases, start_deliberation_flow, unstarted_cases, wake,
)
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


# One round at a time: the watch's deployment has a concurrency limit of 1 (CANCEL_NEW, flows/serve.py), whose slot
# the running round holds by a lease. Prefect's engine renews that lease for 300 s at the start of a run, so a round
# whose process was killed (its serve, worker or executor died) held the slot, and stopped the watch and its
# escalations, for up to five minutes. The round keeps its lease short instead: ROUND_LEASE_SECONDS (the shortest
# Prefect accepts), renewed every ROUND_LEASE_RENEW_SECONDS while it runs; a killed round's slot is free again
# within that and one loop of Prefect's repossessor (15 s), and a later round marks the killed one crashed
# (`crash_dead_rounds`).
ROUND_LEASE_SECONDS = 60
ROUND_LEASE_RENEW_SECONDS = 15
ROUND_LEASE_FIRST_RENEW_SECONDS = 2  # the second renewal (see `short_slot_lease`)


def _slot_lease_id() -> UUID | None:
    """The lease on the watch's slot that this round holds (None outside a deployment's run)."""
    context = FlowRunContext.get()
    state = context.flow_run.state if context and context.flow_run else None
    return state.state_details.deployment_concurrency_lease_id if state else None


@asynccontextmanager
async def short_slot_lease() -> AsyncIterator[None]:
    """Keep this round's lease on the watch's slot at ROUND_LEASE_SECONDS while the round runs (above)."""
    lease_id = _slot_lease_id()
    if lease_id is None:
        yield
        return
    logger = get_run_logger()

    async def renew() -> None:
        # The engine's own renewals (300 s) are sent from threads as the run starts, and may land after this
        # round's first: the second, soon after, settles it.
        pauses = iter([ROUND_LEASE_FIRST_RENEW_SECONDS])
        async with get_client() as client:
            while True:
                try:
                    await client.renew_concurrency_lease(lease_id, lease_duration=ROUND_LEASE_SECONDS)
                except PrefectHTTPStatusError as error:
                    if error.response.status_code == 410:  # lapsed: the slot may be another round's now
                        logger.warning("deadline watch: this round's slot lease %s lapsed", lease_id)
                        return
                    if error.response.status_code < 500:  # refused: asking again would not help
                        logger.error("deadline watch: Prefect refused to renew the slot lease: %s", error)
                        return
                    logger.warning("deadline watch: renewing the slot lease failed: %s", error)
                except Exception as error:  # Prefect unreachable for a moment: try again at the next beat
                    logger.warning("deadline watch: renewing the slot lease failed: %r", error)
                await asyncio.sleep(next(pauses, ROUND_LEASE_RENEW_SECONDS))

    renewing = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)


def _this_deployment_id() -> UUID | None:
    context = FlowRunContext.get()
    return context.flow_run.deployment_id if context and context.flow_run else None


async def crash_dead_rounds() -> int:
    """Mark crashed the other rounds of this deployment still shown Running: this round holds the watch's only
    slot, so their leases lapsed, and a live round renews its lease every few seconds (`short_slot_lease`): their
    process was killed. A round that started within the lease is left alone (it may still be starting)."""
    deployment_id = _this_deployment_id()
    if deployment_id is None:
        return 0
    this_run = FlowRunContext.get().flow_run.id
    started_before = now() - timedelta(seconds=ROUND_LEASE_SECONDS)
    async with get_client() as client:
        running = await runs_in_states(client, [deployment_id], [StateType.RUNNING], limit=20)
        dead = [run for run in running
                if run.id != this_run and run.start_time and run.start_time < started_before]
        for run in dead:
            await client.set_flow_run_state(run.id, Crashed(
                message="crashed: its process stopped mid-round (it no longer held the watch's slot)"), force=True)
    return len(dead)


# Prefect 3.8's message on a run its deployment's CANCEL_NEW limit cancelled (at a claim, or when it went late)
LIMIT_CANCELLED = "Deployment concurrency limit reached."


async def forget_skipped_rounds() -> int:
    """Delete the rounds of this deployment that Prefect cancelled because the previous one still ran (one round
    at a time, `CANCEL_NEW`; the server cancels a due round as soon as it is late while another runs, whoever
    executes them). They never started and hold nothing, and Prefect's cancellation cleanup re-reads every run
    cancelled in the last day every 20 s: on a saturated machine two rounds in three were such runs, and that
    cleanup grew to a seventh of Prefect's services' CPU (docs/performance.md). A round an operator cancelled is
    kept."""
    deployment_id = _this_deployment_id()
    if deployment_id is None:
        return 0
    async with get_client() as client:
        cancelled = await runs_in_states(client, [deployment_id], [StateType.CANCELLED], limit=200)
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
        "dead_rounds_crashed": crash_dead_rounds,
    }
    logger = get_run_logger()
    summary: dict[str, object] = {}
    failed: list[str] = []
    async with short_slot_lease():
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

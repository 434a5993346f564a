"""The steps of a case, each a small task, idempotent: on replay they find the work done and do nothing. The reads,
the bookkeeping between them and webhook delivery (recorded in our DB) are plain calls (below): a task run costs
Prefect several events, so a step that has nothing to do (no answer to apply) is not made a task run."""
from __future__ import annotations

import asyncio

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import OperationalError

from hotline.db import read_scope, session_scope
from models.states import CaseStatus
from notifications.webhooks import deliver_due, due_deliveries
from services import cases
from services.run_view import RunView, run_view


def _transient(task, task_run, state) -> bool:
    """Retry only database hiccups (a lock timeout, a dropped connection), not bugs."""
    try:
        state.result()
    except OperationalError:
        return True
    except Exception:
        return False
    return False


step = task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 3, 10], retry_condition_fn=_transient)


def in_session(fn, *args):
    """Run `fn(session, *args)` in a worker thread, in one transaction."""
    def run():
        with session_scope() as session:
            return fn(session, *args)
    return asyncio.to_thread(run)


@step(name="collect")
async def collect_case(case_id: int) -> dict:
    """受理: category and jurisdiction."""
    case = await in_session(cases.collect, case_id)
    return {"number": case.number, "category": case.category, "district": case.district,
            "street": case.street, "community": case.community}


@step(name="dispatch")
async def dispatch_case(case_id: int) -> str | None:
    """派单: work order to the unit the responsibility list names (or 直派 to the street)."""
    case = await in_session(cases.dispatch, case_id)
    return case.lead_unit


async def settle_case(case_id: int) -> CaseStatus:
    """Apply the answers that arrived (unit events, lapsed deadlines, follow-up) and return the case's status: a
    task run when there is an answer to apply, else a plain read (a new case, or a run woken for nothing)."""
    if await first_pending_signal(case_id) is None:
        return await in_read(cases.status_of, case_id)
    return await settle(case_id)


@step(name="settle")
async def settle(case_id: int) -> CaseStatus:
    applied: list[str] = []
    status = await in_session(cases.settle, case_id, applied)
    if applied:
        get_run_logger().info("case %s applied %s: now %s", case_id, ", ".join(applied), status)
    return status


@step(name="close")
async def close_case(case_id: int) -> dict:
    """考评 and 办结."""
    case = await in_session(cases.evaluate_and_close, case_id)
    return {"status": case.status, "responded_in_time": case.responded_in_time,
            "completed_in_time": case.completed_in_time, "resolved": case.resolved,
            "satisfaction": case.satisfaction, "follow_up": case.follow_up_outcome}


async def deliver_webhooks(case_id: int) -> dict[str, int] | None:
    """Send the case's due webhooks (None when nothing is due). A plain call, not a task run: every delivery and
    attempt is recorded in our DB (notifications/webhooks.py), a failure stays pending with backoff and the deadline
    watch retries it, so a task run would add nothing but Prefect's events for it. What did not go is logged."""
    if not await asyncio.to_thread(due_deliveries, case_id, 1):
        return None
    counts = await deliver_due(case_id)
    if not_sent := {k: v for k, v in counts.items() if k != "delivered" and v}:
        get_run_logger().warning("case %s: webhooks not delivered yet: %s (retried with backoff)", case_id,
                                 ", ".join(f"{k} {v}" for k, v in sorted(not_sent.items())))
    return counts


def in_read(fn, *args):
    """Run `fn(session, *args)` in a worker thread, reading only."""
    def run():
        with read_scope() as session:
            return fn(session, *args)
    return asyncio.to_thread(run)


async def read_stage(case_id: int) -> RunView:
    """Where the case stands, in words, with the run's tags and timeline artifact (services.run_view). A plain
    read, not a task run."""
    return await in_read(run_view, case_id)


async def is_received(case_id: int) -> bool:
    """Still as received (受理 and 派单 not done yet)? A plain read, not a task run: a resumed run skips both steps
    without asking Prefect for two task runs that would do nothing."""
    return await in_read(cases.is_received, case_id)


async def prepare_wait(case_id: int) -> int | None:
    """The new wait's number, or None when an answer is already pending. A plain call, not a task run: it is the
    run's own bookkeeping, not a step of the case."""
    return await in_session(cases.next_wait, case_id)


async def first_pending_signal(case_id: int) -> tuple[str, int] | None:
    """(kind, id) of the oldest answer not applied yet, if any. A plain read."""
    return await in_read(cases.first_pending_signal, case_id)

"""Intake (受理), shared by every channel (native API, Open311): record the case durably first, then start its
flow run. Idempotent by source + source_ref: the same request twice is one case and one run."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from sqlalchemy.exc import IntegrityError

from flows.control import in_background, start_case_flow
from hotline.db import session_scope
from hotline.settings import get_settings
from models import Case
from services import cases

log = logging.getLogger(__name__)

START_CONCURRENCY = 16  # run creations at once per process: a burst queues here instead of flooding Prefect
_slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


@dataclass
class Intake:
    case: Case
    created: bool
    flow_run_id: str | None


def _record(fields: dict[str, Any]) -> tuple[Case, bool]:
    try:
        with session_scope() as session:
            return cases.create_case(session=session, fields=fields)
    except IntegrityError:  # the same source_ref arrived twice at once: the other request recorded it
        with session_scope() as session:
            existing = cases.find_by_source(session, fields["source"], fields["source_ref"])
        if existing is None:
            raise
        return existing, False


async def receive(fields: dict[str, Any]) -> Intake:
    """`fields` are Case columns (source, source_ref, description, location, citizen_*, reported_at, …)."""
    case, created = await to_thread.run_sync(_record, fields)
    flow_run_id = case.flow_run_id
    if flow_run_id is None:
        started = start_soon(case)
        wait = get_settings().intake_wait_seconds
        if wait > 0:  # answer with the run's id if Prefect creates it in time; the start goes on regardless
            try:
                flow_run_id = await asyncio.wait_for(asyncio.shield(started), wait)
            except Exception as exc:
                log.warning("case %s recorded, flow run not started yet: %s", case.number, exc or "timed out")
    return Intake(case=case, created=created, flow_run_id=flow_run_id)


def start_soon(case: Case) -> asyncio.Task:
    """Start the case's flow run in the background, at most START_CONCURRENCY at once per process. Whatever fails
    here (Prefect refused, the process stopped) the deadline watch starts later: the case is already recorded."""
    loop = asyncio.get_running_loop()
    slots = _slots.setdefault(loop, asyncio.Semaphore(START_CONCURRENCY))

    async def start() -> str | None:
        async with slots:
            try:
                return await start_case_flow(case)
            except Exception as exc:
                log.warning("case %s: flow run not started (the deadline watch retries): %s", case.number, exc)
                return None

    return in_background(start())

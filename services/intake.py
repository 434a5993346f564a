"""Intake (受理), shared by every channel (native API, Open311): record the case durably first, then start its
flow run. Idempotent by source + source_ref: the same request twice is one case and one run."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from sqlalchemy.exc import IntegrityError

from flows.control import start_case_flow
from hotline.db import session_scope
from models import Case
from services import cases

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 15  # a busy Prefect server must not hold the caller; the watch starts the run later


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
        try:
            flow_run_id = await asyncio.wait_for(start_case_flow(case), START_TIMEOUT_SECONDS)
        except Exception as exc:  # timed out or refused: the case is recorded; the deadline watch starts its run
            log.warning("case %s recorded, flow run not started yet: %s", case.number, exc)
    return Intake(case=case, created=created, flow_run_id=flow_run_id)

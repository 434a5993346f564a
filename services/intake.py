"""Intake (受理), shared by every channel (native API, Open311): record the case durably first, then start its
flow run. Idempotent by source + source_ref: the same request twice is one case and one run.

Who starts the run is a setting (`HOTLINE_RUN_STARTER`): `api`, here, waiting up to `HOTLINE_INTAKE_WAIT_SECONDS`
to answer with the run's id (the embedded default); or `executor` (the scaled shape): intake only records, and
the in-process executors start the runs of recorded cases as they have room (flows/executor.py)."""
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


def _record_many(many: list[dict[str, Any]]) -> list[tuple[Case, bool] | BaseException]:
    """One transaction for a group of requests; if it fails (a duplicate recorded by another process meanwhile,
    or one request's bad value), each is recorded on its own, so one request's error is its own only."""
    try:
        with session_scope() as session:
            return list(cases.create_cases(session=session, many=many))
    except Exception:
        if len(many) == 1:
            raise
    results: list[tuple[Case, bool] | BaseException] = []
    for fields in many:
        try:
            results.append(_record(fields))
        except Exception as exc:
            results.append(exc)
    return results


class GroupCommit:
    """Intake's writes, grouped: requests that arrive while a group is being written are written together next,
    in one transaction (one INSERT per table, one commit). Nothing waits for a group to fill: under light load a
    group is one request; under a burst the round trips and commits are shared. An answer is given only after
    its group has committed, so an accepted case is durable."""
    MAX_GROUP = 64
    WRITERS = 2  # groups in flight at once: one is prepared while the other commits

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future]] = asyncio.Queue()
        # held here, not in flows.control's background set: they live as long as the loop
        loop = asyncio.get_running_loop()
        self.writers = [loop.create_task(self._write()) for _ in range(self.WRITERS)]

    async def record(self, fields: dict[str, Any]) -> tuple[Case, bool]:
        done = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((fields, done))
        return await done

    async def _write(self) -> None:
        while True:
            group = [await self.queue.get()]
            while len(group) < self.MAX_GROUP and not self.queue.empty():
                group.append(self.queue.get_nowait())
            try:
                results = await to_thread.run_sync(_record_many, [fields for fields, _ in group])
            except asyncio.CancelledError:  # the loop is closing: nobody is left to answer
                for _, done in group:
                    done.cancel()
                raise
            except Exception as exc:
                results = [exc] * len(group)
            for (_, done), result in zip(group, results):
                if done.done():
                    continue
                if isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(result)


_groups: dict[asyncio.AbstractEventLoop, GroupCommit] = {}


async def receive(fields: dict[str, Any]) -> Intake:
    """`fields` are Case columns (source, source_ref, description, location, citizen_*, reported_at, …)."""
    loop = asyncio.get_running_loop()
    if loop not in _groups:
        _groups[loop] = GroupCommit()
    case, created = await _groups[loop].record(fields)
    flow_run_id = case.flow_run_id
    if flow_run_id is None and get_settings().run_starter == "api":  # else the executors' starters start it
        started = start_soon(case)
        wait = get_settings().intake_wait_seconds
        if wait > 0:  # answer with the run's id if Prefect creates it in time; the start goes on regardless
            try:
                flow_run_id = await asyncio.wait_for(asyncio.shield(started), wait)
            except Exception as exc:
                log.warning("case %s recorded, flow run not started yet: %s", case.number,
                            str(exc) or type(exc).__name__)
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

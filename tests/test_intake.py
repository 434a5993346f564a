"""Intake (受理) answers once the case is recorded, waiting for its flow run at most HOTLINE_INTAKE_WAIT_SECONDS;
the run's start goes on in the background either way. Prefect's run creation (`start_case_flow`) is replaced by a
recorder here: the edge we don't own. The stack tests cover the real creation."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from flows.control import background_tasks
from services import intake


def fields() -> dict:
    from hotline.clock import now
    return {"source": "hotline", "source_ref": f"t-{uuid.uuid4().hex[:12]}", "category": "street_lights",
            "description": "d", "urgency": "normal", "location": {"community": "c1"}, "anonymous": False,
            "citizen_name": "陈阿姨", "citizen_phone": "13912345678", "reported_at": now()}


class Starter:
    """Records the cases whose run was started; each start takes `delay` seconds, and waits for `gate` if set."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.delay, self.fail, self.started = delay, fail, []
        self.gate: asyncio.Event | None = None

    async def __call__(self, case):
        await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("prefect refused")
        self.started.append(case.id)
        return f"run-{case.id}"


@pytest.fixture
def starter(monkeypatch):
    def make(delay=0.0, fail=False, wait=15.0):
        from hotline.settings import get_settings
        monkeypatch.setenv("HOTLINE_INTAKE_WAIT_SECONDS", str(wait))
        get_settings.cache_clear()
        s = Starter(delay, fail)
        monkeypatch.setattr(intake, "start_case_flow", s)
        return s
    return make


def test_waits_for_the_run_and_answers_with_its_id(db, starter):
    s = starter(delay=0.05, wait=5)

    async def go():
        return await intake.receive(fields())
    got = asyncio.run(go())
    assert got.created and got.flow_run_id == f"run-{got.case.id}"
    assert s.started == [got.case.id]


def test_wait_zero_answers_at_once_and_starts_the_run_in_the_background(db, starter):
    """The start cannot finish until intake has answered (a gate, not a stopwatch: a slow machine cannot make
    this pass or fail); were intake to wait for it, the answer would never come."""
    s = starter(wait=0)

    async def go():
        s.gate = asyncio.Event()
        got = await asyncio.wait_for(intake.receive(fields()), 60)
        assert s.started == []  # not started yet when intake answered
        s.gate.set()
        await asyncio.gather(*background_tasks)
        return got
    got = asyncio.run(go())
    assert got.created and got.flow_run_id is None
    assert s.started == [got.case.id]


def test_a_timed_out_wait_does_not_cancel_the_start(db, starter):
    s = starter(delay=1.0, wait=0.2)

    async def go():
        got = await intake.receive(fields())
        await asyncio.gather(*background_tasks)
        return got
    got = asyncio.run(go())
    assert got.flow_run_id is None
    assert s.started == [got.case.id]  # the deadline watch has nothing left to start


def test_a_burst_starts_at_most_start_concurrency_runs_at_once(db, starter, monkeypatch):
    s = starter(delay=0.05, wait=0)
    monkeypatch.setattr(intake, "START_CONCURRENCY", 3)
    running = peak = 0
    inner = s.__call__

    async def counting(case):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await inner(case)
        finally:
            running -= 1
    monkeypatch.setattr(intake, "start_case_flow", counting)

    async def go():
        got = [await intake.receive(fields()) for _ in range(10)]
        await asyncio.gather(*background_tasks)
        return got
    got = asyncio.run(go())
    assert sorted(s.started) == sorted(g.case.id for g in got)
    assert peak == 3


def test_a_refused_start_leaves_the_case_recorded_for_the_watch(db, starter):
    starter(fail=True, wait=5)

    async def go():
        return await intake.receive(fields())
    got = asyncio.run(go())
    assert got.flow_run_id is None
    from hotline.db import read_scope
    from models import Case
    with read_scope() as session:
        stored = session.get(Case, got.case.id)
        assert stored is not None and stored.flow_run_id is None  # what the watch's start_unstarted picks up


# ---------------------------------------------------------------- group commit (a burst's writes share transactions)

def test_a_burst_is_recorded_in_groups_one_case_per_source_ref(db, starter, monkeypatch):
    starter(wait=0)
    groups = []
    inner = intake._record_many

    def counting(many):
        groups.append(len(many))
        return inner(many)
    monkeypatch.setattr(intake, "_record_many", counting)
    burst = [fields() for _ in range(40)]
    twice = [dict(f, citizen_phone="13900000000") for f in burst[:5]]  # the same requests again (a caller retried)

    async def go():
        got = await asyncio.gather(*(intake.receive(f) for f in burst + twice))
        await asyncio.gather(*background_tasks)
        return got
    got = asyncio.run(go())
    by_ref: dict[str, set[int]] = {}
    for g, f in zip(got, burst + twice):
        by_ref.setdefault(f["source_ref"], set()).add(g.case.id)
        assert g.case.number and g.case.source_ref == f["source_ref"]
    assert all(len(ids) == 1 for ids in by_ref.values()) and len(by_ref) == 40
    assert sum(g.created for g in got) == 40  # each repeat answered "already recorded"
    assert len(groups) < 45 and max(groups) > 1  # grouped, not one transaction per request
    from hotline.db import read_scope
    from models import Case, TimelineEntry
    from sqlmodel import func, select
    with read_scope() as session:
        assert session.exec(select(func.count()).select_from(Case)).one() == 40
        assert session.exec(select(func.count()).select_from(TimelineEntry)
                            .where(TimelineEntry.kind == "received")).one() == 40


def test_a_bad_request_in_a_group_fails_alone(db, starter):
    starter(wait=0)
    good = [fields() for _ in range(6)]
    bad = fields()
    bad.pop("description")  # NOT NULL: the group's transaction fails, then each is recorded on its own

    async def go():
        return await asyncio.gather(*(intake.receive(f) for f in good[:3] + [bad] + good[3:]),
                                    return_exceptions=True)
    got = asyncio.run(go())
    assert isinstance(got[3], Exception)
    assert all(not isinstance(g, BaseException) and g.created for g in got[:3] + got[4:])


def test_with_executor_starters_intake_only_records(db, starter, monkeypatch):
    s = starter(wait=15)
    monkeypatch.setenv("HOTLINE_RUN_STARTER", "executor")
    from hotline.settings import get_settings
    get_settings.cache_clear()

    async def go():
        got = await intake.receive(fields())
        await asyncio.gather(*background_tasks)
        return got
    got = asyncio.run(go())
    assert got.created and got.flow_run_id is None and s.started == []

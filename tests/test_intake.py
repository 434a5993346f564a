"""Intake (受理) answers once the case is recorded, waiting for its flow run at most HOTLINE_INTAKE_WAIT_SECONDS;
the run's start goes on in the background either way. Prefect's run creation (`start_case_flow`) is replaced by a
recorder here: the edge we don't own. The stack tests cover the real creation."""
from __future__ import annotations

import asyncio
import time
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
    """Records the cases whose run was started; each start takes `delay` seconds."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.delay, self.fail, self.started = delay, fail, []

    async def __call__(self, case):
        await asyncio.sleep(self.delay)
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
    s = starter(delay=0.5, wait=0)

    async def go():
        t0 = time.monotonic()
        got = await intake.receive(fields())
        answered = time.monotonic() - t0
        assert s.started == []  # not started yet when intake answered
        await asyncio.gather(*background_tasks)
        return got, answered
    got, answered = asyncio.run(go())
    assert got.created and got.flow_run_id is None
    assert answered < 0.5
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

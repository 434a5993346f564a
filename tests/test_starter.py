"""The executors' starter (HOTLINE_RUN_STARTER=executor): each executor starts the runs of its shard of recorded
cases, oldest first, and holds back while Prefect has due runs waiting. Prefect's run creation is replaced by a
recorder (the edge we don't own); the stack tests and the benchmark's scaled shape run the real one."""
from __future__ import annotations

import asyncio
import uuid

import pytest

import flows.control as control
from flows.executor import START_BATCH, Executor


def record(n: int) -> list[int]:
    from hotline.clock import now
    from hotline.db import session_scope
    from services import cases
    many = [{"source": "hotline", "source_ref": f"s-{uuid.uuid4().hex[:12]}", "category": "street_lights",
             "description": "d", "location": {"community": "c1"}, "reported_at": now()} for _ in range(n)]
    with session_scope() as session:
        return [case.id for case, _ in cases.create_cases(session=session, many=many)]


@pytest.fixture
def started(monkeypatch):
    """The cases whose run was started; a start gives the case its run id, as the real one does."""
    ids: list[int] = []

    async def start(case):
        from hotline.db import session_scope
        from models import Case
        ids.append(case.id)
        with session_scope() as session:
            stored = session.get(Case, case.id)
            stored.flow_run_id = f"run-{case.id}"
            session.add(stored)
        return f"run-{case.id}"
    monkeypatch.setattr(control, "start_case_flow", start)
    return ids


def test_each_executor_starts_its_own_shard_oldest_first(db, started):
    ids = record(10)
    even, odd = Executor(deploy=[], shard=(0, 2), starts_recorded=True), Executor(deploy=[], shard=(1, 2), starts_recorded=True)
    assert asyncio.run(even.start_recorded()) == 5
    assert started == [i for i in ids if i % 2 == 0]
    assert asyncio.run(odd.start_recorded()) == 5
    assert sorted(started) == ids
    assert asyncio.run(even.start_recorded()) == 0  # nothing left: each case started once


def test_the_starter_holds_back_while_prefect_has_due_runs_waiting(db, started):
    ids = record(START_BATCH + 10)
    executor = Executor(deploy=[], starts_recorded=True)
    assert asyncio.run(executor.start_recorded()) == START_BATCH  # one batch: they wait as due runs now
    assert asyncio.run(executor.start_recorded()) == 0  # not claimed yet: the rest waits in our DB
    executor.due_waiting = 0  # the poll took them
    assert asyncio.run(executor.start_recorded()) == 10
    assert started == ids


def test_unless_told_to_the_executor_starts_nothing(db, started):
    record(3)
    assert asyncio.run(Executor(deploy=[]).start_recorded()) == 0 and started == []


def test_the_watch_starts_only_cases_past_their_grace(db, started):
    record(2)
    assert control.unstarted_cases(limit=10, older_than_seconds=60) == []
    assert len(control.unstarted_cases(limit=10)) == 2


def test_each_executor_claims_its_share_first_and_the_others_after_a_wait():
    from datetime import timedelta
    from uuid import UUID, uuid4

    from prefect.client.schemas.objects import FlowRun

    from flows.executor import OTHERS_AFTER
    from hotline.clock import now

    def due(run_id: int, waited: float) -> FlowRun:
        return FlowRun(id=UUID(int=run_id), flow_id=uuid4(),
                       next_scheduled_start_time=now() - timedelta(seconds=waited))
    first, second = Executor(deploy=[], shard=(0, 2)), Executor(deploy=[], shard=(1, 2))
    fresh = due(10, 0)  # id % 2 == 0: the first executor's
    assert first._claims_now(fresh) and not second._claims_now(fresh)
    assert second._claims_now(due(10, OTHERS_AFTER + 1))  # waited: taken by whoever polls
    assert Executor(deploy=[])._claims_now(due(11, 0))  # alone: everything



def test_the_loops_end_on_stop_without_being_cancelled():
    """Python 3.11's asyncio.wait_for can swallow a cancellation that arrives as its inner call completes: an
    executor polled on after SIGTERM and never stopped. So the loops end when `stopping` is set, cancelled or not."""
    executor = Executor(deploy=[], poll_seconds=0.05, heartbeat_seconds=0.05)
    polls, watched = [], []

    async def poll_once(_client) -> int:
        polls.append(1)
        return 0

    async def step(_client) -> None:
        watched.append(1)

    executor.poll_once = poll_once
    executor._heartbeat = executor._cancel_requested = executor.reap = step

    async def scenario() -> None:
        loops = [asyncio.create_task(executor._poll_loop(None)), asyncio.create_task(executor._watch_loop(None))]
        await asyncio.sleep(0.3)
        executor.stop()  # and no cancel: as if it had been swallowed
        await asyncio.wait_for(asyncio.gather(*loops), 5)

    asyncio.run(scenario())
    assert len(polls) >= 2 and len(watched) >= 2  # they ran until told to stop


def test_callers_first_the_starter_holds_while_intake_takes_a_burst(db, started):
    """Above the hold rate the starter starts nothing, for at most the longest hold, then as usual for as long
    again; below it, it starts at once. Time is given, not waited for."""
    executor = Executor(deploy=[], starts_recorded=True, hold_rate=20, max_hold_seconds=60)
    assert not executor.intake_busy(100, at=0.0)       # one sample: no rate yet
    assert not executor.intake_busy(110, at=1.0)       # 10 cases/s: a district's peak, not a burst
    assert executor.intake_busy(200, at=2.0)           # 90 in 1 s (over the last 2 s: 45/s): hold
    assert executor.intake_busy(10_000, at=61.0)       # still a burst, still within the longest hold
    assert not executor.intake_busy(20_000, at=63.0)   # held 61 s: start again,
    assert not executor.intake_busy(30_000, at=100.0)  # and go on starting through the surge for as long again
    assert executor.intake_busy(40_000, at=124.0)      # then hold again
    assert not executor.intake_busy(40_001, at=127.0)  # one case in the last 3 s: the burst is over

    never = Executor(deploy=[], hold_rate=0)
    assert not never.intake_busy(0, at=0.0) and not never.intake_busy(10_000, at=1.0)


def test_the_starter_starts_the_burst_once_it_is_over(db, started):
    executor = Executor(deploy=[], starts_recorded=True, hold_rate=20)
    executor.clock = iter([0.0, 0.5, 5.0]).__next__
    assert asyncio.run(executor.start_recorded()) == 0  # nothing recorded yet
    record(50)  # 50 cases in half a second
    assert asyncio.run(executor.start_recorded()) == 0 and started == []
    assert asyncio.run(executor.start_recorded()) == START_BATCH  # 4.5 s later: the burst is over


def test_the_watch_starts_only_the_shares_no_live_executor_starts(db, started, monkeypatch):
    """The executors' starters keep a burst's cases in our DB on purpose (their pacing); the watch starts only the
    cases of a share whose starter is dead or stopped, as their heartbeats say, and every case where no executor
    starts them (intake does)."""
    from datetime import timedelta

    from sqlalchemy import update

    from flows import deadline_watch
    from hotline.clock import now
    from hotline.db import session_scope
    from models import ExecutorBeat
    monkeypatch.setattr(deadline_watch, "WRITER_GRACE_SECONDS", 0)
    ids = record(6)
    even, odd = (Executor(deploy=[], shard=(i, 2), starts_recorded=True) for i in (0, 1))
    claims_only = Executor(deploy=[], shard=(1, 2))  # runs claimed, cases not started: covers no share
    for executor in (even, odd, claims_only):
        executor._beat()
    with session_scope() as session:  # the odd share's starter fell silent a minute ago
        session.execute(update(ExecutorBeat).where(ExecutorBeat.id == odd.id)
                        .values(seen_at=now() - timedelta(seconds=60)))
    assert control.live_starter_shards() == [(0, 2)]
    assert asyncio.run(deadline_watch.start_unstarted()) == 3
    assert started == [i for i in ids if i % 2 == 1]
    assert asyncio.run(deadline_watch.start_unstarted()) == 0  # the even share waits for its starter

    even._retire()  # a clean stop
    assert control.live_starter_shards() == []
    assert asyncio.run(deadline_watch.start_unstarted()) == 3
    assert sorted(started) == ids

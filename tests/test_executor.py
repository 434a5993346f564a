"""The in-process executor (flows/executor.py) on the real stack: cases run to their end in one process, each run
is claimed by one executor only, and a killed executor's runs are found and run again without losing or
duplicating a case."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from uuid import UUID

import pytest
from sqlmodel import Session, create_engine

from hotline.clock import now
from models import ExecutorBeat
from hotline.runtime import REPO_ROOT
from tests.conftest import Env, eventually, stack_env

EXECUTOR_ENV = {"HOTLINE_EXECUTOR_HEARTBEAT_SECONDS": "1", "HOTLINE_EXECUTOR_DEAD_AFTER_SECONDS": "6"}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def inproc(request) -> Iterator[Env]:
    saved = {k: os.environ.get(k) for k in EXECUTOR_ENV}
    os.environ.update(EXECUTOR_ENV)  # read by the executor process the stack starts
    try:
        with stack_env(request, request.param, executor="inprocess") as built:
            yield built
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def runs_of(env: Env, run_ids: list[str]) -> list[dict]:
    r = env.prefect_post("/api/flow_runs/filter", {"flow_runs": {"id": {"any_": run_ids}}})
    assert r.status_code == 200, r.text
    return r.json()


def task_runs(env: Env, run_id: str, name: str, settle: float = 2.0) -> int:
    """How many task runs named `name` the run has, as Prefect records them.

    Prefect 3 records task runs from the events the flow run emits (the server's task-run recorder), so a
    task that has run shows up a moment later, longer on a loaded SQLite server. Wait for the first, then
    count again after `settle` seconds so a duplicate that is still on its way is counted too."""
    def count() -> int:
        r = env.prefect_post("/api/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}},
                                                       "task_runs": {"name": {"like_": name}}})
        assert r.status_code == 200, r.text
        return len(r.json())
    eventually(count, f"a {name} task run")
    time.sleep(settle)
    return count()


def kill_runner(env: Env) -> None:
    proc = env.stack.procs.pop(env.stack.runner)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)


def start_runner(env: Env) -> subprocess.Popen:
    env.stack._spawn(env.stack.runner, [sys.executable, "-m", "flows.executor"])
    return env.stack.procs[env.stack.runner]


def start_slow_executor(env: Env, tmp_path, log_name: str) -> tuple[subprocess.Popen, str]:
    """An executor of its own for tests/slow_flow.py (a flow that sleeps as long as it is told); returns it and
    the slow flow's deployment id once it has registered."""
    slow = subprocess.Popen([sys.executable, "-m", "tests.slow_flow", str(tmp_path)], env=env.stack.env(),
                            cwd=str(REPO_ROOT), stdout=open(env.stack.home / "logs" / log_name, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        r = eventually(lambda: env.prefect.get("/api/deployments/name/test-slow/slow"),
                       "the slow flow's deployment", lambda r: r.status_code == 200 or slow.poll() is not None)
        assert slow.poll() is None, f"the slow flow's executor exited with {slow.returncode}"
    except BaseException:
        if slow.poll() is None:
            os.killpg(slow.pid, signal.SIGKILL)
        raise
    return slow, r.json()["id"]


def wait_started(slow: subprocess.Popen, tmp_path) -> None:
    eventually(lambda: (tmp_path / "long.started").exists() or slow.poll() is not None, "the slow flow to start",
               interval=0.2)
    assert slow.poll() is None, f"the slow flow's executor exited with {slow.returncode}"


def our_db(env: Env) -> Session:
    url = env.stack.env().get("HOTLINE_DATABASE_URL") or f"sqlite:///{env.stack.home / 'hotline.db'}"
    return Session(create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)), expire_on_commit=False)


def test_a_case_runs_to_its_end_in_the_executor(inproc: Env):
    created = inproc.submit(category="street_lights")
    case_id, run_id = created["case_id"], created["flow_run_id"]
    order = inproc.wait_orders(case_id, 1)["work_orders"][0]
    run = inproc.wait_paused(run_id)
    assert run["state_name"] == "Awaiting unit"
    assert run["infrastructure_pid"].startswith("executor:")  # claimed and run by the in-process executor
    inproc.resolve(order["work_order_id"], order["unit"])
    inproc.wait(case_id, lambda d: d["status"] == "awaiting_follow_up", "follow-up")
    assert inproc.follow_up(case_id, reached=True, resolved=True, satisfaction="satisfied").status_code == 200
    detail = inproc.wait(case_id, lambda d: d["status"] == "closed", "close")
    assert len(detail["work_orders"]) == 1
    assert len(inproc.receiver.of(type="work_order.assigned", case_number=created["number"])) == 1
    inproc.wait_run(run_id, "COMPLETED")  # the case is closed; the run still publishes its last stage
    # at least two executions (intake; then the answers — a follow-up arriving while the run is still busy
    # is applied without another suspension); 受理 and 派单 ran in the first only
    r = inproc.prefect.get("/api/flow_run_states/", params={"flow_run_id": run_id})
    assert r.status_code == 200, r.text
    assert sum(1 for s in r.json() if s["type"] == "RUNNING") >= 2
    assert task_runs(inproc, run_id, "collect") == 1 and task_runs(inproc, run_id, "dispatch") == 1
    # webhooks went out (above) as plain calls, not task runs (our DB records each delivery)
    r = inproc.prefect_post("/api/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    assert r.status_code == 200, r.text
    assert {t["name"].rsplit("-", 1)[0] for t in r.json()} <= {"collect", "dispatch", "settle", "close"}, r.json()
    # the deadline watch (every few seconds) works in plain calls: its runs make no task runs. On a fast machine
    # the case can close before the watch's first run has completed, so wait for one
    def completed_watch_runs() -> list[str]:
        r = inproc.prefect_post("/api/flow_runs/filter", {"flows": {"name": {"any_": ["deadline-watch"]}},
                                                          "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
                                                          "sort": "START_TIME_ASC", "limit": 3})
        assert r.status_code == 200, r.text
        return [w["id"] for w in r.json()]
    watch_runs = eventually(completed_watch_runs, "a completed deadline-watch run")
    r = inproc.prefect_post("/api/task_runs/filter", {"flow_runs": {"id": {"any_": watch_runs}}})
    assert r.status_code == 200 and r.json() == [], r.text
    # the executor's runs emit no heartbeat events (it detects dead executors itself): their other events are there
    r = inproc.prefect_post("/api/events/filter", {"filter": {"resource": {"id": [f"prefect.flow-run.{run_id}"]},
                                                              "event": {"prefix": ["prefect.flow-run."]}},
                                                   "limit": 50})
    assert r.status_code == 200, r.text
    names = {e["event"] for e in r.json()["events"]}
    assert "prefect.flow-run.Running" in names and "prefect.flow-run.heartbeat" not in names, names
    log = (inproc.stack.home / "logs" / f"{inproc.stack.runner}.log").read_text(encoding="utf-8", errors="replace")
    assert " serves case, deadline-watch" in log  # its own INFO lines are kept (Prefect's root logger is WARNING)


def test_two_executors_run_each_run_once(inproc: Env):
    second = subprocess.Popen([sys.executable, "-m", "flows.executor"], env=inproc.stack.env(),
                              cwd=str(inproc.stack.home), stdout=open(inproc.stack.home / "logs" / "executor-2.log", "ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        created = [inproc.submit(category="street_lights") for _ in range(6)]
        for c in created:
            inproc.wait_orders(c["case_id"], 1)
            inproc.wait_paused(c["flow_run_id"])
        runs = runs_of(inproc, [c["flow_run_id"] for c in created])
        executors = {r["infrastructure_pid"] for r in runs}
        assert all(e.startswith("executor:") for e in executors)
        for c in created:  # one execution so far: a second executor running it too would have a second `collect`
            assert task_runs(inproc, c["flow_run_id"], "collect") == 1
            assert len(inproc.case(c["case_id"])["work_orders"]) == 1
    finally:
        stop_within(second, inproc.stack.home / "logs" / "executor-2.log", seconds=60)


def test_a_stop_that_hangs_ends_the_process():
    """The watchdog behind SIGTERM: whatever hangs, the executor process is gone soon after its bound."""
    script = ("import asyncio, time\n"
              "from flows.executor import _stop_within\n"
              "class Hung:\n"
              "    id = 'executor:test'\n"
              "    stopping = asyncio.Event()\n"
              "    def stop(self): self.stopping.set()\n"
              "_stop_within(Hung(), 1.0)\n"
              "time.sleep(60)\n")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=str(REPO_ROOT), capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 1, done.stderr
    assert "still stopping" in done.stderr
    assert time.monotonic() - began < 45  # importing Prefect takes a while; the sleep would take 60 s


def stop_within(proc: subprocess.Popen, log_path, seconds: float) -> None:
    """SIGTERM an executor with nothing running: it must be gone well inside a pod's termination grace."""
    began = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
        tail = log_path.read_text(errors="replace")[-4000:]
        pytest.fail(f"the executor did not stop within {seconds} s of SIGTERM; its log ends:\n{tail}")
    print(f"executor stopped {time.monotonic() - began:.1f} s after SIGTERM")


def test_a_dead_executors_running_run_is_run_again(inproc: Env):
    """An executor that claimed a run and died: the live executor reschedules it once the heartbeat is stale."""
    kill_runner(inproc)
    try:
        created = inproc.api.post("/api/cases", json={
            "source": "hotline", "source_ref": f"dead-{time.time_ns()}", "description": "路灯不亮",
            "category": "street_lights", "location": {"community": "小南庄社区"},
            "citizen": {"name": "赵先生", "phone": "13811112222"}}).json()
        run_id = created["flow_run_id"] or inproc.wait(created["case_id"], lambda d: d["flow_run_id"],
                                                       "the run")["flow_run_id"]
        # play the executor that died: it claimed the run and started it, then stopped beating
        for state in ("PENDING", "RUNNING"):
            r = inproc.prefect_post(f"/api/flow_runs/{run_id}/set_state", {"state": {"type": state}, "force": True})
            assert r.status_code in (200, 201), r.text
        r = inproc.prefect.patch(f"/api/flow_runs/{run_id}", json={"infrastructure_pid": "executor:gone:1:abc"})
        assert r.status_code == 204, r.text
        with our_db(inproc) as session:
            session.add(ExecutorBeat(id="executor:gone:1:abc", host="gone", pid=1,
                                     started_at=now() - timedelta(minutes=5), seen_at=now() - timedelta(minutes=1)))
            session.commit()
        assert inproc.case(created["case_id"])["work_orders"] == []
    finally:
        start_runner(inproc)
    order = inproc.wait_orders(created["case_id"], 1)["work_orders"][0]
    run = inproc.wait_paused(run_id)
    assert run["infrastructure_pid"] != "executor:gone:1:abc"
    with our_db(inproc) as session:
        assert session.get(ExecutorBeat, "executor:gone:1:abc").reaped_by.startswith("executor:")
    assert len(inproc.case(created["case_id"])["work_orders"]) == 1 and order["unit"] == "haidian_st"


def test_killing_the_executor_mid_run_loses_and_duplicates_nothing(inproc: Env):
    """Every case gets one work order and its webhook exactly once. A webhook the killed executor had leased
    (claimed, maybe posted, outcome not recorded) goes out when the lease lapses, from the watch's retry round:
    the receiver keeps each webhook-id once, so a re-post is the same delivery, not a second order."""
    created = [inproc.submit(category="street_lights") for _ in range(4)]
    run_ids = [c["flow_run_id"] for c in created]
    eventually(lambda: any(r["state_type"] in ("PENDING", "RUNNING") for r in runs_of(inproc, run_ids)),
               "a run to start", interval=0.1)
    kill_runner(inproc)
    states = Counter(r["state_type"] for r in runs_of(inproc, run_ids))
    start_runner(inproc)
    for c in created:
        detail = inproc.wait_orders(c["case_id"], 1, timeout=120)
        inproc.wait_paused(c["flow_run_id"], timeout=120)
        detail = inproc.case(c["case_id"])
        assert len(detail["work_orders"]) == 1, (states, detail["work_orders"])
        assert Counter(t["kind"] for t in detail["timeline"])["work_order.assigned"] <= 1
        sent = eventually(lambda: inproc.receiver.of(type="work_order.assigned", case_number=c["number"]),
                          f"case {c['number']}'s work_order.assigned webhook", timeout=120)
        assert len(sent) == 1, sent


def test_a_running_run_cancelled_by_an_operator_stops(inproc: Env, tmp_path):
    """Cancel in the UI = propose `Cancelling`; the executor running it stops it and marks it `Cancelled`, and goes
    on running other runs."""
    slow, deployment = start_slow_executor(inproc, tmp_path, "executor-slow.log")
    try:

        def start(seconds: float, tag: str) -> str:
            r = inproc.prefect_post(f"/api/deployments/{deployment}/create_flow_run",
                                    {"parameters": {"seconds": seconds, "tag": tag}})
            assert r.status_code == 201, r.text
            return r.json()["id"]

        long_run = start(600, "long")
        run = inproc.wait_run(long_run, "RUNNING")
        assert run["infrastructure_pid"].startswith("executor:")
        wait_started(slow, tmp_path)  # Running is proposed just before the flow's body starts
        r = inproc.prefect_post(f"/api/flow_runs/{long_run}/set_state", {"state": {"type": "CANCELLING"}})
        assert r.status_code in (200, 201), r.text
        cancelled = inproc.wait_run(long_run, "CANCELLED")
        assert cancelled["state"]["message"].startswith("cancelled on executor:")
        assert not (tmp_path / "long.finished").exists()
        short_run = start(0, "short")  # the executor is still there for the next run
        inproc.wait_run(short_run, "COMPLETED")
        assert (tmp_path / "short.finished").exists() and not (tmp_path / "long.finished").exists()
    finally:
        os.killpg(slow.pid, signal.SIGTERM)
        slow.wait(timeout=60)


def test_sigterm_with_a_run_in_progress_drains_and_hands_it_back(inproc: Env, tmp_path):
    """A rolling update: SIGTERM while a run executes. Prefect's engine would raise TerminationSignal in the
    executor's event loop (ending it at once and marking the run Crashed, which nobody recovers); the executor
    instead lets the run go on for its grace, then stops it and hands it back, and exits cleanly."""
    slow, deployment = start_slow_executor(inproc, tmp_path, "executor-sigterm.log")
    log = inproc.stack.home / "logs" / "executor-sigterm.log"
    try:
        r = inproc.prefect_post(f"/api/deployments/{deployment}/create_flow_run",
                                {"parameters": {"seconds": 600, "tag": "long"}})
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        wait_started(slow, tmp_path)
        began = time.monotonic()
        os.killpg(slow.pid, signal.SIGTERM)
        code = slow.wait(timeout=90)
        took = time.monotonic() - began
    finally:
        if slow.poll() is None:
            os.killpg(slow.pid, signal.SIGKILL)
            slow.wait(timeout=20)
    assert code == 0, log.read_text(errors="replace")[-3000:]
    assert 15 <= took < 60, took  # it waited for the run (grace 20 s), then stopped well inside a pod's grace
    run = inproc.flow_run(run_id)
    # handed back: a case run would be rescheduled (replayed from the top); this flow is not replayable
    assert run["state_type"] == "CRASHED" and run["state"]["message"].startswith("crashed: executor "), run["state"]
    assert not (tmp_path / "long.finished").exists()


def test_a_claimed_run_is_read_again_before_it_runs(inproc: Env):
    """The run as listed can be stale when its turn to be claimed comes: here it was paused (its pause key recorded
    by the server) and resumed after the listing. Prefect's engine writes the run's `empirical_policy` back from
    the object it is given, so the executor must hand it the run as claimed, pause keys included."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import StateType as T

    from flows.executor import Executor

    flow = inproc.prefect_post("/api/flows/", {"name": "test-stale-listing"}).json()
    deployment = inproc.prefect_post("/api/deployments/", {"name": "stale", "flow_id": flow["id"]}).json()
    run_id = inproc.prefect_post(f"/api/deployments/{deployment['id']}/create_flow_run", {}).json()["id"]

    async def go():
        async with PrefectClient(api=f"{inproc.stack.prefect_url}/api") as client:
            listed = await client.read_flow_run(UUID(run_id))  # the listing, before anything happened to the run
            for state in ({"type": "PENDING"}, {"type": "RUNNING"},
                          {"type": "PAUSED", "name": "Awaiting unit",
                           "state_details": {"pause_key": "case-x-wait-0", "pause_reschedule": True}}):
                r = inproc.prefect_post(f"/api/flow_runs/{run_id}/set_state", {"state": state})
                assert r.json()["status"] == "ACCEPT", r.text
            assert inproc.prefect_post(f"/api/flow_runs/{run_id}/resume", {}).json()["status"] == "ACCEPT"
            assert inproc.flow_run(run_id)["state_type"] == "SCHEDULED"  # Resuming
            claimed = await Executor(deploy=[])._claim(client, listed)
            return listed, claimed
    listed, claimed = asyncio.run(go())
    assert "case-x-wait-0" not in listed.empirical_policy.pause_keys  # stale
    assert claimed is not None and claimed.state.type == T.PENDING
    assert "case-x-wait-0" in claimed.empirical_policy.pause_keys


def test_a_round_claimed_while_one_is_under_way_is_cancelled_as_the_watch_expects(inproc: Env, monkeypatch, caplog):
    """The deadline watch runs one round at a time (`CANCEL_NEW`): the server refuses the claim of a round that finds
    one under way and cancels it, with the message by which the watch's next round deletes it
    (flows/deadline_watch.py, `forget_skipped_rounds`; its deletion is tested in tests/test_deadline_watch.py).
    A round deleted so after an executor listed it is passed over without a warning."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Completed, Running

    from flows.deadline_watch import LIMIT_CANCELLED
    from flows.executor import Executor

    @flow(name="test-one-at-a-time")
    async def one_at_a_time() -> None:
        pass

    options = dict(name="limited", concurrency_limit=ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW))
    monkeypatch.setattr(Executor, "_beat", lambda self: None)  # this test process has no executor of its own

    async def go():
        with temporary_settings({PREFECT_API_URL: f"{inproc.stack.prefect_url}/api"}):
            executor = Executor(deploy=[(one_at_a_time, options)])
            await executor.start()
            (deployment_id,) = executor.flows
            async with get_client() as client:
                first = await client.create_flow_run_from_deployment(deployment_id)
                assert await executor._claim(client, first) is not None
                assert (await client.set_flow_run_state(first.id, Running())).status.value == "ACCEPT"
                second = await client.create_flow_run_from_deployment(deployment_id)
                refused = await executor._claim(client, second)
                state = (await client.read_flow_run(second.id)).state
                third = await client.create_flow_run_from_deployment(deployment_id)
                await client.delete_flow_run(third.id)  # as the watch deletes a skipped round after it was listed
                gone = await executor._claim(client, third)
                await client.set_flow_run_state(first.id, Completed())
                return refused, state, gone
    with caplog.at_level(logging.WARNING, logger="hotline.executor"):
        refused, state, gone = asyncio.run(go())
    assert refused is None
    assert state.is_cancelled() and state.message == LIMIT_CANCELLED
    assert gone is None and not caplog.records  # nothing to warn about: neither is a failed claim


def test_a_run_claimed_and_never_started_is_handed_back_saying_so(inproc: Env, monkeypatch):
    """A run left Pending past the dead bound by a claimant that no longer beats (it died between the claim and
    the start) is handed back by the reaper, with a message that says what happened rather than that an executor
    stopped. A live claimant's run is left for LIVE_CLAIM_FACTOR bounds (it is likely slow under load: handing
    back a run about to start would run it twice), then handed back too (the claimant may have lost it)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.executor
    from flows.executor import Executor

    @flow(name="test-claimed-only")
    async def claimed_only() -> None:
        pass

    live = ["executor:reaper", "executor:slow"]  # "executor:gone" no longer beats
    monkeypatch.setattr(Executor, "_beat", lambda self: None)  # this test process has no executor of its own
    monkeypatch.setattr(Executor, "_live_executors", lambda self: live)
    monkeypatch.setattr(Executor, "_claim_dead", lambda self: [])
    monkeypatch.setattr(flows.executor, "LIVE_CLAIM_FACTOR", 4)

    async def go():
        with temporary_settings({PREFECT_API_URL: f"{inproc.stack.prefect_url}/api"}):
            reaper = Executor(deploy=[(claimed_only, dict(name="claimed-only"))], dead_after_seconds=1,
                              executor_id="executor:reaper")
            await reaper.start()
            (deployment_id,) = reaper.flows
            async with get_client() as client:
                fresh = await client.create_flow_run_from_deployment(deployment_id)
                gone = await client.create_flow_run_from_deployment(deployment_id)
                slow = await client.create_flow_run_from_deployment(deployment_id)
                for claimant, flow_run in (("executor:gone", gone), ("executor:slow", slow)):
                    assert await Executor(deploy=[], executor_id=claimant)._claim(client, flow_run) is not None
                claimed_at = time.monotonic()
                assert await reaper.reap(client) == 0  # claimed a moment ago: its claimant may still start it
                await asyncio.sleep(1.5)
                assert await reaper.reap(client) == 1  # the dead claimant's run only
                assert (await client.read_flow_run(slow.id)).state.is_pending()
                await asyncio.sleep(max(0.0, 4.5 - (time.monotonic() - claimed_at)))
                assert await reaper.reap(client) == 1  # the live claimant's, after four bounds
                return [(await client.read_flow_run(r.id)).state for r in (gone, slow, fresh)]
    gone, slow, fresh = asyncio.run(go())
    assert gone.is_crashed() and "claimed by executor:gone and not started within 1 s" in gone.message
    assert slow.is_crashed() and "claimed by executor:slow and not started within 4 s" in slow.message
    assert fresh.is_scheduled()  # never claimed: nothing to hand back

"""The deadline watch's housekeeping of its own runs on the real stack (its escalations are tested with the cases)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

from flows.deadline_watch import LIMIT_CANCELLED, ROUND_LEASE_FIRST_RENEW_SECONDS, ROUND_LEASE_SECONDS
from hotline.clock import now
from hotline.settings import REPO_ROOT
from tests.conftest import Env, eventually


def _scheduled_round(env: Env, deployment_id: str, ahead: timedelta = timedelta(hours=1)) -> str:
    """A round of the watch scheduled ahead (an hour: nothing runs it meanwhile)."""
    later = (now() + ahead).isoformat()
    r = env.prefect_post(f"/api/deployments/{deployment_id}/create_flow_run",
                         {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": later}}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _cancelled_round(env: Env, deployment_id: str, message: str) -> str:
    """A round of the watch cancelled before it started, as Prefect cancels one."""
    run_id = _scheduled_round(env, deployment_id)
    r = env.prefect_post(f"/api/flow_runs/{run_id}/set_state",
                         {"state": {"type": "CANCELLED", "message": message}, "force": True})
    assert r.json()["status"] == "ACCEPT", r.text
    return run_id


def test_rounds_the_limit_cancelled_are_deleted_and_an_operators_cancel_is_kept(env: Env):
    deployment = env.prefect.get("/api/deployments/name/deadline-watch/hotline").json()
    skipped = _cancelled_round(env, deployment["id"], LIMIT_CANCELLED)
    by_hand = _cancelled_round(env, deployment["id"], "cancelled by an operator")
    eventually(lambda: env.prefect.get(f"/api/flow_runs/{skipped}").status_code == 404,
               "the next watch round to delete the round its limit cancelled")
    assert env.flow_run(by_hand)["state_type"] == "CANCELLED"


def test_a_failing_step_fails_the_round_after_the_other_steps_ran(env: Env, monkeypatch):
    """One step's failure (here the search for lapsed deadlines) does not stop the others: the round still wakes,
    starts, moves deliberations, retries deliveries, forgets skipped rounds and crashes dead ones; then its run
    fails naming the step, so operators see it in the UI."""
    import asyncio

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import deadline_watch as watch

    ran = []

    def step(name: str):
        async def run(*_args):
            ran.append(name)
            return 0
        return run

    async def broken():
        raise RuntimeError("our DB went away")

    monkeypatch.setattr(watch, "find_lapsed", broken)
    others = ["wake_cases", "start_unstarted", "move_deliberations", "retry_deliveries", "forget_skipped_rounds",
              "crash_dead_rounds"]
    for name in others:
        monkeypatch.setattr(watch, name, step(name))
    with temporary_settings({PREFECT_API_URL: f"{env.stack.prefect_url}/api"}):
        state = asyncio.run(watch.deadline_watch(return_state=True))
    assert ran == others
    assert state.is_failed() and "deadline watch: lapsed failed" in state.message, state.message


def _claimed_round(env: Env, deployment_id: str) -> str:
    """A round of the watch claimed by the test (Pending: it holds the watch's one slot; Prefect lets it run a
    second later, its scheduled time). Serve cannot claim it then; while serve's own round holds the slot, or if
    serve claimed it first, the claim fails: try again."""
    def claim() -> str | None:
        run_id = _scheduled_round(env, deployment_id, ahead=timedelta(seconds=1))
        r = env.prefect_post(f"/api/flow_runs/{run_id}/set_state", {"state": {"type": "PENDING"}})
        assert r.status_code in (200, 201), r.text
        return run_id if r.json()["status"] == "ACCEPT" else None
    return eventually(claim, "a claim of the watch's slot", interval=0.2)


def test_a_round_killed_mid_run_frees_the_watch_within_its_lease_and_is_crashed_by_a_later_round(env: Env):
    """A round's process is killed mid-round (a worker's pod or an executor gone; serve keeps running). Prefect's
    engine had leased the watch's one slot to that round for 300 s, and every round due meanwhile was cancelled:
    the watch, and its escalations, stopped for five minutes. The round keeps its lease at ROUND_LEASE_SECONDS, so
    the watch runs again within that and a loop of Prefect's repossessor (15 s), and a later round marks the
    killed one crashed instead of leaving it Running in the UI forever."""
    deployment = env.prefect.get("/api/deployments/name/deadline-watch/hotline").json()
    run_id = _claimed_round(env, deployment["id"])
    log = env.stack.home / "logs" / "slow_watch_round.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "tests.slow_watch_round", run_id], env=env.stack.env(),
                                   cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        eventually(lambda: process.poll() is not None or env.flow_run(run_id)["state_type"] == "RUNNING",
                   "the round to run", timeout=60)
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(ROUND_LEASE_FIRST_RENEW_SECONDS + 3)  # past the round's second renewal of its lease
        assert process.poll() is None and env.flow_run(run_id)["state_type"] == "RUNNING"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    killed = datetime.now(timezone.utc)
    eventually(lambda: env.watch_rounds(["COMPLETED"], started_after=killed), "serve's rounds to run again",
               timeout=ROUND_LEASE_SECONDS + 45)  # not 300 s
    crashed = env.wait_run(run_id, "CRASHED", timeout=60)
    assert "no longer held the watch's slot" in crashed["state"]["message"]

"""The deadline watch's housekeeping of its own runs on the real stack (its escalations are tested with the cases)."""
from __future__ import annotations

from datetime import timedelta

from flows.deadline_watch import LIMIT_CANCELLED
from hotline.clock import now
from tests.conftest import Env, eventually


def _cancelled_round(env: Env, deployment_id: str, message: str) -> str:
    """A round of the watch cancelled before it started, as Prefect cancels one (scheduled an hour ahead, so that
    nothing runs it meanwhile)."""
    later = (now() + timedelta(hours=1)).isoformat()
    r = env.prefect_post(f"/api/deployments/{deployment_id}/create_flow_run",
                         {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": later}}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
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
    starts, moves deliberations, retries deliveries and forgets skipped rounds; then its run fails naming the
    step, so operators see it in the UI."""
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
    others = ["wake_cases", "start_unstarted", "move_deliberations", "retry_deliveries", "forget_skipped_rounds"]
    for name in others:
        monkeypatch.setattr(watch, name, step(name))
    with temporary_settings({PREFECT_API_URL: f"{env.stack.prefect_url}/api"}):
        state = asyncio.run(watch.deadline_watch(return_state=True))
    assert ran == others
    assert state.is_failed() and "deadline watch: lapsed failed" in state.message, state.message

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

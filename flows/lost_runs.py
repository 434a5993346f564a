"""Runs whose execution was lost: the process that ran or had claimed them (an executor, `serve`) died. One rule
for every runner: what can run again from the top does; the rest crash, visibly."""
from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.states import Crashed, Scheduled

from flows.case_flow import case_lifecycle
from flows.deliberation_flow import deliberation_process

# flows whose runs may simply run again from the top after a crash (every step idempotent against our DB)
REPLAYABLE = {case_lifecycle.name, deliberation_process.name}


async def hand_back(client: PrefectClient, flow_run_id: UUID, flow_name: str | None, why: str) -> bool:
    """A case or deliberation run is rescheduled, due now, and replays from the top; any other run (a deadline-watch
    round, a monthly report) is marked Crashed, and its schedule starts the next one. Returns whether it runs
    again."""
    replays = flow_name in REPLAYABLE
    state = Scheduled(name="Rescheduled", message=f"rescheduled: {why}") if replays \
        else Crashed(message=f"crashed: {why}")
    await client.set_flow_run_state(flow_run_id, state, force=True)
    return replays

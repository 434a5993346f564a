"""One durable flow run per deliberation (大家商量着办), named by its number:
确定议题 → 邀请代表 → 组织商量 → 办理事项 → 反馈结果.

Like a case run, it suspends (freeing its process) between steps. The organisers' records (invitations, sessions,
the decision, the published result) and the deadline watch (all item cases closed) leave signals in our DB first,
then resume the run, which starts again from the top: every step is idempotent against the DB, so a replay
duplicates nothing. After each step it sends the deliberation's pending notices itself (`send_notices`: the
invitations and the published result, through the delivery outbox); the deadline watch retries what fails.
Each decision item is carried out as a case of its own, through intake, with its own case run.
Its only parameter is the deliberation id: no participant or citizen details reach Prefect.
"""
from __future__ import annotations

from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.input import RunInput

from flows import NO_RESULTS
from flows.waiting import suspend_as
from models.deliberations import DeliberationStep
from tasks.deliberation_tasks import (
    carry_out_items, prepare_wait, send_notices, settle_deliberation,
)


class DeliberationAnswer(RunInput):
    """What woke the run: the kind of answer and the id of its signal."""

    kind: str
    signal_id: int | None = None


@flow(name="deliberation", **NO_RESULTS, description="One deliberation from its topic to its feedback (大家商量着办).")
async def deliberation_process(deliberation_id: int) -> str:
    while not (state := await settle_deliberation(deliberation_id))["concluded"]:
        await send_notices(deliberation_id)                 # invitations recorded since the last round
        if state["step"] == DeliberationStep.carrying_out:
            await carry_out_items(deliberation_id)          # 办理事项: a case per item
        await wait_for_answer(deliberation_id, state)
    await send_notices(deliberation_id)                     # the published result to the unit participants
    return f"concluded: {state['number']}"


async def wait_for_answer(deliberation_id: int, state: dict) -> None:
    """Suspend until the organisers or the deadline watch answer; the resumed run starts again from the top and
    applies the answer from our DB (each wait has a key of its own, as for cases)."""
    seq = await prepare_wait(deliberation_id)
    if seq is None:
        return
    get_run_logger().info("deliberation %s waits: %s (wait %s)", deliberation_id, state["stage"], seq)

    async def show_step(run_id: UUID) -> None:
        async with get_client() as client:
            await client.update_flow_run(run_id, tags=state["tags"])

    await suspend_as(state["stage"], key=f"deliberation-{deliberation_id}-wait-{seq}",
                     wait_for_input=DeliberationAnswer, on_suspended=show_step)

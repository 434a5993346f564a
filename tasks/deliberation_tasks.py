"""The steps of a deliberation's flow, each a small task, idempotent against the DB (a replay re-does nothing)."""
from __future__ import annotations

import asyncio

from prefect import task
from prefect.cache_policies import NO_CACHE

from hotline.db import read_scope, session_scope
from notifications.webhooks import deliver_due
from services import deliberations, intake
from tasks.case_tasks import in_session, step


@step(name="settle-deliberation")
async def settle_deliberation(deliberation_id: int) -> dict:
    """Apply what was recorded (invitations, sessions, the decision, items done, the published result)."""
    def run():
        with session_scope() as session:
            d = deliberations.settle(session, deliberation_id)
            return {"number": d.number, "step": str(d.step), "concluded": d.concluded_at is not None,
                    "stage": deliberations.STAGE_NAMES[d.step], "tags": deliberations.run_tags(d)}
    return await asyncio.to_thread(run)


@step(name="carry-out-items")
async def carry_out_items(deliberation_id: int) -> list[str]:
    """办理事项: each decision item becomes a case through intake (once per item: intake is idempotent by
    source + source_ref), directed to the item's unit; its flow run handles, escalates and closes it."""
    def pending():
        with read_scope() as session:
            return deliberations.item_intakes(session, deliberation_id)
    numbers = []
    for item_id, fields in await asyncio.to_thread(pending):
        received = await intake.receive(fields)
        await in_session(deliberations.link_item_case, item_id, received.case.id)
        numbers.append(received.case.number)
    return numbers


@task(name="send-deliberation-notices", cache_policy=NO_CACHE)
async def send_notices(deliberation_id: int) -> dict[str, int]:
    """Send this deliberation's due webhooks (邀请 `deliberation.invited`, 结果 `deliberation.result`) now, as the case
    flow sends its work orders. Idempotent: only pending deliveries are sent, each leased by one sender, so a
    replay or the deadline watch (the safety net for what fails here) never sends a delivered notice again."""
    return await deliver_due(deliberation_id=deliberation_id)


async def prepare_wait(deliberation_id: int) -> int | None:
    """The new wait's number, or None when an answer is already pending. A plain call, as for cases."""
    return await in_session(deliberations.next_wait, deliberation_id)

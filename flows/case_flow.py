"""One durable flow run per case: 受理 → 派单 → 办理 → 回访 → 考评/办结.

The run waits (suspends, freeing its process) whenever the case waits for a unit, the citizen or the clock.
Whatever answers — a unit's event, a lapsed deadline found by the deadline watch, a follow-up — is first written
to our DB as a signal, then the run is resumed. A resumed run starts again from the top; every step is idempotent
against the DB, so a replay re-does nothing and the loop simply applies what is new, then waits anew (a wait is
never replayed: the answer is the signal in our DB, not the run input). Reads that decide the path
(`is_received`, `read_stage`) and the run's own bookkeeping (`prepare_wait`) are plain calls, not task runs: each
task run costs Prefect several events, and a replay would repeat them for nothing.
"""
from __future__ import annotations

from uuid import UUID

from prefect import flow, get_run_logger
from prefect.input import RunInput
from prefect.runtime import flow_run

from flows import NO_RESULTS
from flows.control import show_stage, wake
from flows.waiting import suspend_as
from models.states import CaseStatus
from services.run_view import RunView
from tasks.case_tasks import (
    close_case, collect_case, deliver_webhooks, dispatch_case, first_pending_signal, is_received, prepare_wait,
    read_stage, settle_case,
)

FINISHED = (CaseStatus.evaluating, CaseStatus.closed)


class CaseAnswer(RunInput):
    """What woke the case: the kind of answer and the id of its signal (never a citizen's details)."""

    kind: str
    signal_id: int | None = None


@flow(name="case", **NO_RESULTS, description="One citizen request from intake to close (接诉即办).")
async def case_lifecycle(case_id: int) -> str:
    if await is_received(case_id):                          # a resumed run goes straight on to 办理
        await collect_case(case_id)                          # 受理: category, jurisdiction
        await dispatch_case(case_id)                         # 派单 / 直派: the first work order
    while await settle_case(case_id) not in FINISHED:       # 办理, 升级, 退单, 回访, 重办
        await deliver_webhooks(case_id)
        await wait_for_answer(case_id)
    result = await close_case(case_id)                       # 考评, 办结
    await deliver_webhooks(case_id)
    await show_stage(flow_run.id, await read_stage(case_id))
    return f"closed: {result}"


async def wait_for_answer(case_id: int) -> None:
    """Suspend until a unit, the citizen or the clock answers (the answer is in our DB; the resumed run starts
    again from the top and `settle` applies it). Each wait has a key of its own, so no earlier wait is replayed."""
    seq = await prepare_wait(case_id)
    if seq is None:  # something arrived while we were busy: apply it first
        return
    view = await read_stage(case_id)  # the stage in words names the waiting state
    get_run_logger().info("case %s waits: %s (wait %s)", case_id, view.stage, seq)
    await suspend_as(view.stage, key=f"case-{case_id}-wait-{seq}", wait_for_input=CaseAnswer,
                     on_suspended=lambda run_id: after_suspension(case_id, run_id, view))


async def after_suspension(case_id: int, run_id: UUID, view: RunView) -> None:
    """Show the stage; then, if an answer came in between the check above and the pause (its own wake found the
    run still running), wake the run now rather than leave it to the deadline watch's next round."""
    await show_stage(run_id, view)
    if (pending := await first_pending_signal(case_id)) is not None:
        await wake(str(run_id), *pending)

"""The follow-up staff's queue (回访): cases waiting for a call, with the brief and call script to use."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from sqlmodel import col, select

from api.deps import FollowUpStaff
from hotline.clock import iso
from hotline.db import read_scope
from models import Case, Unit, WorkOrder
from models.states import CaseStatus, WorkOrderStatus
from notifications.payloads import citizen_view, follow_up_script

router = APIRouter(prefix="/api/follow-ups", tags=["follow-up"])


@router.get("")
async def follow_up_queue(_actor: FollowUpStaff, status: Literal["open"] = "open",
                          limit: int = Query(100, ge=1, le=500, description="the oldest so many")):
    """Oldest first (by follow-up due time), at most `limit`. The citizen's contact is shown in full: the follow-up
    staff must call them. Three queries whatever the length: the cases, their lead units' completed orders, the
    units (the queue is polled by every follow-up desk)."""
    def read():
        with read_scope() as session:
            waiting = session.exec(select(Case).where(Case.status == CaseStatus.awaiting_follow_up)
                                   .order_by(col(Case.follow_up_due_at), col(Case.id)).limit(limit)).all()
            orders: dict[int, WorkOrder] = {}
            for order in session.exec(select(WorkOrder).where(
                    col(WorkOrder.case_id).in_([case.id for case in waiting]), WorkOrder.role == "lead",
                    WorkOrder.status == WorkOrderStatus.completed).order_by(col(WorkOrder.id))).all():
                orders[order.case_id] = order  # the newest completed lead order of each case
            units = {unit.code: unit for unit in session.exec(select(Unit).where(
                col(Unit.code).in_({order.unit for order in orders.values()}))).all()}
            out = []
            for case in waiting:
                order = orders.get(case.id)
                unit = units.get(order.unit) if order else None
                out.append({"case_id": str(case.id), "number": case.number, "category": case.category,
                            "due_at": iso(case.follow_up_due_at), "reopened": case.reopen_count,
                            "attempts": case.follow_up_attempts,
                            "citizen": citizen_view(case, full=True), "unit": unit.code if unit else None,
                            "script": follow_up_script(case, order, unit)})
            return out
    return await run_in_threadpool(read)

"""The follow-up staff's queue (回访): cases waiting for a call, with the brief and call script to use."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
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
async def follow_up_queue(_actor: FollowUpStaff, status: Literal["open"] = "open"):
    """Oldest first. The citizen's contact is shown in full: the follow-up staff must call them."""
    def read():
        with read_scope() as session:
            waiting = session.exec(select(Case).where(Case.status == CaseStatus.awaiting_follow_up)
                                   .order_by(col(Case.follow_up_due_at))).all()
            out = []
            for case in waiting:
                order = session.exec(select(WorkOrder).where(
                    WorkOrder.case_id == case.id, WorkOrder.role == "lead",
                    WorkOrder.status == WorkOrderStatus.completed).order_by(col(WorkOrder.id).desc())).first()
                unit = session.get(Unit, order.unit) if order else None
                out.append({"case_id": str(case.id), "number": case.number, "category": case.category,
                            "due_at": iso(case.follow_up_due_at), "reopened": case.reopen_count,
                            "attempts": case.follow_up_attempts,
                            "citizen": citizen_view(case, full=True), "unit": unit.code if unit else None,
                            "script": follow_up_script(case, order, unit)})
            return out
    return await run_in_threadpool(read)

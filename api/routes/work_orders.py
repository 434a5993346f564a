"""Units answering on their work orders (CONTRACT 2b)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sqlmodel import col, select

from api.deps import CurrentUnit
from api.schemas import UnitEvent
from flows.control import wake_soon
from hotline.clock import iso
from hotline.db import read_scope, session_scope
from models import Case, WorkOrder
from models.states import OPEN_WORK_ORDER
from services import cases

router = APIRouter(prefix="/api/work-orders", tags=["work orders"])


@router.post("/{work_order_id}/events")
async def post_event(work_order_id: int, body: UnitEvent, unit: CurrentUnit):
    """A unit's answer on its own work order (others: 404). An illegal transition is a 409 with the order's
    current state; a repeated event (see `event_id`) is a 200 with `duplicate: true` and changes nothing."""
    def write():
        with session_scope() as session:
            if body.type == "extend":
                result = cases.request_extension(session=session, unit=unit, work_order_id=work_order_id,
                                                 reason=body.reason, until=body.until, event_id=body.event_id)
            else:
                result = cases.apply_unit_event(session=session, unit=unit, work_order_id=work_order_id,
                                                event=body.model_dump())
            wo = session.get(WorkOrder, work_order_id)
            return result, session.get(Case, wo.case_id).flow_run_id
    result, flow_run_id = await run_in_threadpool(write)
    if result.get("signal_id"):
        wake_soon(flow_run_id, "unit_event", result["signal_id"])
    return {"work_order_id": str(work_order_id), "status": result["status"], "duplicate": result["duplicate"]}


@router.get("")
async def list_orders(unit: CurrentUnit, status: Literal["open", "all"] = "open"):
    def read():
        with read_scope() as session:
            query = select(WorkOrder, Case.number).join(Case, Case.id == WorkOrder.case_id).where(
                WorkOrder.unit == unit.code)
            if status == "open":
                query = query.where(col(WorkOrder.status).in_([s.value for s in OPEN_WORK_ORDER]))
            return [{"work_order_id": str(o.id), "case_number": number, "status": o.status, "role": o.role,
                     "respond_by": iso(o.respond_by), "due_at": iso(o.due_at)}
                    for o, number in session.exec(query.order_by(col(WorkOrder.id))).all()]
    return await run_in_threadpool(read)

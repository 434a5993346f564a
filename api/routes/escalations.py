"""Escalations and decisions for supervisors (CONTRACT 4), the dispatcher's queue, categories and policy checks."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sqlmodel import col, select

from api.deps import Admin, Dispatcher, Supervisor
from api.schemas import Decision, ManualDispatch
from flows.control import wake_soon
from hotline.clock import iso
from hotline.db import read_scope, session_scope
from models import Case, Escalation, Unit
from services import cases, policies

router = APIRouter(prefix="/api", tags=["operations"])


@router.get("/escalations")
async def list_escalations(_actor: Dispatcher, status: Literal["open", "decided", "all"] = "open"):
    def read():
        with read_scope() as session:
            query = select(Escalation, Case.number).join(Case, Case.id == Escalation.case_id)
            if status != "all":
                query = query.where(Escalation.status == status)
            return [{"id": str(e.id), "case_id": str(e.case_id), "case_number": number, "trigger": e.trigger,
                     "from_unit": e.from_unit, "to_unit": e.to_unit, "status": e.status,
                     "opened_at": iso(e.opened_at), "decided_at": iso(e.decided_at), "decided_by": e.decided_by,
                     "decision": e.decision or None}
                    for e, number in session.exec(query.order_by(col(Escalation.opened_at))).all()]
    return await run_in_threadpool(read)


@router.post("/escalations/{escalation_id}/decision")
async def decide(escalation_id: int, body: Decision, actor: Supervisor):
    def write():
        with session_scope() as session:
            result = cases.decide(session=session, escalation_id=escalation_id, actor=actor,
                                  **body.model_dump())
            case = session.get(Case, session.get(Escalation, escalation_id).case_id)
            return result, case.flow_run_id
    result, flow_run_id = await run_in_threadpool(write)
    if result["signal_id"]:
        wake_soon(flow_run_id, "decision", result["signal_id"])
    return result


@router.get("/dispatch-queue")
async def dispatch_queue(_actor: Dispatcher):
    def read():
        with read_scope() as session:
            return [{"case_id": str(c.id), "number": c.number, "category": c.category, "urgency": c.urgency,
                     "street": c.street, "community": c.community, "last_unit": c.lead_unit,
                     "reported_at": iso(c.reported_at)} for c in cases.dispatch_queue(session)]
    return await run_in_threadpool(read)


@router.post("/cases/{case_id}/dispatch")
async def manual_dispatch(case_id: int, body: ManualDispatch, actor: Dispatcher):
    def write():
        with session_scope() as session:
            signal = cases.request_dispatch(session=session, case_id=case_id, unit=body.unit, reason=body.reason,
                                            actor=actor)
            return signal.id, session.get(Case, case_id).flow_run_id
    signal_id, flow_run_id = await run_in_threadpool(write)
    wake_soon(flow_run_id, "decision", signal_id)
    return {"case_id": str(case_id), "unit": body.unit, "accepted": True}


@router.get("/categories")
async def list_categories():
    return [{"code": code, "name": name} for code, name in policies.categories().items()]


@router.get("/policies/check")
async def check_policies(_admin: Admin):
    """Validate every policy file against the unit registry; overlaps are warnings (first match wins)."""
    def read():
        with read_scope() as session:
            return set(session.exec(select(Unit.code)).all())
    problems, warnings = policies.check_all(await run_in_threadpool(read))
    return {"ok": not problems, "problems": problems, "warnings": warnings}

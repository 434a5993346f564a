"""Intake (CONTRACT 1a), case detail with timeline (4) and the follow-up visit (3)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import col, select

from api.deps import AnyStaff, FollowUpStaff
from api.routes.deliveries import attempt_logs
from api.schemas import CaseCreate, CaseCreated, FollowUpAnswer
from flows.control import wake_soon
from hotline.clock import iso, now, to_utc
from hotline.db import read_scope, session_scope
from models import Case, CaseStatus, Delivery, Escalation, TimelineEntry, WorkOrder
from notifications.payloads import citizen_view
from services import cases, intake, repeats
router = APIRouter(prefix="/api/cases", tags=["cases"])


@router.post("", status_code=201, response_model=CaseCreated,
             responses={200: {"description": "already recorded (same source + source_ref)"}})
async def create_case(body: CaseCreate):
    result = await intake.receive({
        "source": body.source, "source_ref": body.source_ref, "category": body.category or "uncategorised",
        "title": body.title, "description": body.description, "urgency": body.urgency,
        "location": body.location.model_dump(exclude_none=True),
        "citizen_name": body.citizen.name, "citizen_phone": body.citizen.phone,
        "anonymous": body.citizen.anonymous,
        "reported_at": to_utc(body.reported_at) if body.reported_at else now(),
    })
    case = result.case
    out = CaseCreated(case_id=str(case.id), number=case.number, status=case.status, flow_run_id=result.flow_run_id)
    return JSONResponse(out.model_dump(), status_code=201 if result.created else 200)


def case_detail(case_id: int) -> dict | None:
    with read_scope() as session:
        case = session.get(Case, case_id)
        if case is None:
            return None
        orders = session.exec(select(WorkOrder).where(WorkOrder.case_id == case_id).order_by(col(WorkOrder.id)))
        timeline = session.exec(select(TimelineEntry).where(TimelineEntry.case_id == case_id)
                                .order_by(col(TimelineEntry.id)))
        escalations = session.exec(select(Escalation).where(Escalation.case_id == case_id)
                                   .order_by(col(Escalation.id)))
        deliveries = session.exec(select(Delivery).where(Delivery.case_id == case_id)
                                  .order_by(col(Delivery.id))).all()
        attempts = attempt_logs(session, [d.id for d in deliveries])
        return {
            "case_id": str(case.id), "number": case.number, "status": case.status, "source": case.source,
            "source_ref": case.source_ref, "category": case.category, "title": case.title,
            "description": case.description, "urgency": case.urgency, "location": case.location,
            "citizen": citizen_view(case, full=False),
            "jurisdiction": {"district": case.district, "street": case.street, "community": case.community},
            "lead_unit": case.lead_unit, "flow_run_id": case.flow_run_id, "reopen_count": case.reopen_count,
            "reported_at": iso(case.reported_at), "follow_up_due_at": iso(case.follow_up_due_at),
            "evaluation": {
                "responded_in_time": case.responded_in_time, "completed_in_time": case.completed_in_time,
                "resolved": case.resolved, "satisfaction": case.satisfaction,
                "follow_up": case.follow_up_outcome, "closed_at": iso(case.closed_at),
            },
            "work_orders": [{
                "work_order_id": str(o.id), "unit": o.unit, "role": o.role, "status": o.status,
                "reason": o.reason, "respond_by": iso(o.respond_by), "due_at": iso(o.due_at),
                "responded_at": iso(o.responded_at), "completed_at": iso(o.completed_at),
                "respond_lapsed": o.respond_lapsed, "due_lapsed": o.due_lapsed,
            } for o in orders],
            "escalations": [{
                "id": str(e.id), "trigger": e.trigger, "from_unit": e.from_unit, "to_unit": e.to_unit,
                "status": e.status, "opened_at": iso(e.opened_at),
            } for e in escalations],
            "deliveries": [{
                "webhook_id": d.msg_id, "unit": d.unit, "type": d.event_type, "status": d.status,
                "attempts": d.attempts, "last_status_code": d.last_status_code, "last_error": d.last_error,
                "attempt_log": attempts[d.id],
            } for d in deliveries],
            "related": repeats.related(session, case_id),
            "timeline": [{
                "at": iso(t.at), "kind": t.kind, "actor": t.actor, "note": t.note, "data": t.data,
            } for t in timeline],
        }


@router.get("")
async def list_cases(_actor: AnyStaff, status: CaseStatus | None = None, street: str | None = None,
                     unit: str | None = None, limit: int = Query(50, ge=1, le=500)):
    """Newest first; filters by status, street (code) and lead unit (code). No citizen details."""
    def read():
        with read_scope() as session:
            query = select(Case).order_by(col(Case.id).desc()).limit(limit)
            if status:
                query = query.where(Case.status == status)
            if street:
                query = query.where(Case.street == street)
            if unit:
                query = query.where(Case.lead_unit == unit)
            return [{"case_id": str(c.id), "number": c.number, "status": c.status, "category": c.category,
                     "urgency": c.urgency, "street": c.street, "community": c.community, "lead_unit": c.lead_unit,
                     "reported_at": iso(c.reported_at), "closed_at": iso(c.closed_at)}
                    for c in session.exec(query)]
    return await run_in_threadpool(read)


@router.get("/{case_id}")
async def get_case(case_id: int, _actor: AnyStaff):
    detail = await run_in_threadpool(case_detail, case_id)
    if detail is None:
        raise HTTPException(404, f"case {case_id} not found")
    return detail


@router.post("/{case_id}/follow-up")
async def follow_up(case_id: int, body: FollowUpAnswer, actor: FollowUpStaff):
    def write():
        with session_scope() as session:
            return cases.record_follow_up(session=session, case_id=case_id, answer=body.model_dump(), actor=actor)
    result = await run_in_threadpool(write)
    if result["signal_id"]:
        wake_soon(result["flow_run_id"], "follow_up", result["signal_id"])
    return {"case_id": str(case_id), "accepted": True, "attempts": result["attempts"],
            "max_attempts": result["max_attempts"]}

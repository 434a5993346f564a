"""Webhook deliveries and ops alerts for operators: what failed, what gave up, re-send; a unit sees its own log."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import Session, col, select

from api.deps import Admin, AdminOrUnit
from hotline.clock import iso, now
from hotline.db import session_scope
from models import Delivery, DeliveryAttempt, OpsAlert, Unit
from notifications import webhooks

router = APIRouter(prefix="/api", tags=["operations"])

Status = Literal["pending", "failed", "dead_letter", "delivered", "no_endpoint", "all"]


def attempt_logs(session: Session, delivery_ids: list[int]) -> dict[int, list[dict]]:
    """The attempt log of each delivery (time, status code, latency, error, outcome), oldest first: shown per unit
    here and per case in GET /api/cases/{id}."""
    logs: dict[int, list[dict]] = {i: [] for i in delivery_ids}
    if logs:
        for a in session.exec(select(DeliveryAttempt).where(col(DeliveryAttempt.delivery_id).in_(list(logs)))
                              .order_by(col(DeliveryAttempt.id))).all():
            logs[a.delivery_id].append({"at": iso(a.at), "status_code": a.status_code, "latency_ms": a.latency_ms,
                                        "error": a.error, "outcome": a.outcome})
    return logs


def _delivery(d: Delivery, disabled: bool, attempts: list[dict] | None = None) -> dict:
    out = {
        "id": str(d.id), "webhook_id": d.msg_id, "unit": d.unit, "type": d.event_type, "status": d.status,
        "endpoint_disabled": disabled and d.status == "pending",  # waits for the unit's endpoint to be given again
        "case_id": str(d.case_id) if d.case_id else None,
        "work_order_id": str(d.work_order_id) if d.work_order_id else None,
        "attempts": d.attempts, "last_status_code": d.last_status_code, "last_error": d.last_error,
        "created_at": iso(d.created_at), "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
        "delivered_at": iso(d.delivered_at), "resent_at": iso(d.resent_at),
    }
    if attempts is not None:
        out["attempt_log"] = attempts
    return out


def _list(session: Session, *, status: str, unit: str | None, limit: int, with_attempts: bool) -> list[dict]:
    query = select(Delivery, Unit.webhook_disabled_at).join(Unit, Unit.code == Delivery.unit)
    if status != "all":
        query = query.where(Delivery.status == status)
    if unit:
        query = query.where(Delivery.unit == unit)
    rows = session.exec(query.order_by(col(Delivery.id).desc()).limit(limit)).all()
    logs = attempt_logs(session, [d.id for d, _ in rows]) if with_attempts else {}
    return [_delivery(d, disabled is not None, logs[d.id] if with_attempts else None) for d, disabled in rows]


@router.get("/deliveries")
async def list_deliveries(_admin: Admin, status: Status = "all", unit: str | None = None,
                          limit: int = Query(default=200, ge=1, le=1000)):
    """Deliveries, newest first: `status=dead_letter` what gave up, `failed` what a unit refused (4xx),
    `pending` what is still being tried (`endpoint_disabled`: waiting for the unit's endpoint)."""
    def read():
        with session_scope() as session:
            return _list(session, status=status, unit=unit, limit=limit, with_attempts=False)
    return await run_in_threadpool(read)


@router.post("/deliveries/{delivery_id}/resend")
async def resend_delivery(delivery_id: int, _admin: Admin):
    """Put a failed or dead-letter delivery back to pending now, with the same webhook-id (the deadline watch
    sends it on its next round)."""
    def write():
        with session_scope() as session:
            delivery = webhooks.resend(session, delivery_id)
            unit = session.get(Unit, delivery.unit)
            return _delivery(delivery, unit.webhook_disabled_at is not None)
    try:
        return await run_in_threadpool(write)
    except webhooks.NotResendable as exc:
        return JSONResponse({"detail": str(exc), "current": exc.current}, status_code=409)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.get("/units/{code}/deliveries")
async def unit_deliveries(code: str, actor: AdminOrUnit, status: Status = "all",
                          limit: int = Query(default=100, ge=1, le=1000)):
    """A unit's deliveries with their attempt log (status code, latency, error): the admin, or the unit itself."""
    if actor is not None and actor.code != code:
        raise HTTPException(403, "a unit may see only its own deliveries")

    def read():
        with session_scope() as session:
            unit = session.get(Unit, code)
            if unit is None:
                return None
            return {"unit": unit.code, "webhook_url": unit.webhook_url,
                    "webhook_disabled_at": iso(unit.webhook_disabled_at),
                    "deliveries": _list(session, status=status, unit=code, limit=limit, with_attempts=True)}
    out = await run_in_threadpool(read)
    if out is None:
        raise HTTPException(404, f"unit {code} not found")
    return out


def _alert(a: OpsAlert) -> dict:
    return {"id": str(a.id), "kind": a.kind, "unit": a.unit, "message": a.message,
            "delivery_id": str(a.delivery_id) if a.delivery_id else None, "created_at": iso(a.created_at),
            "resolved_at": iso(a.resolved_at), "resolved_by": a.resolved_by}


@router.get("/alerts")
async def list_alerts(_admin: Admin, status: Literal["open", "resolved", "all"] = "open"):
    """Ops alerts, newest first: an endpoint gone (410), deliveries refused or dead-lettered."""
    def read():
        with session_scope() as session:
            query = select(OpsAlert)
            if status == "open":
                query = query.where(col(OpsAlert.resolved_at).is_(None))
            elif status == "resolved":
                query = query.where(col(OpsAlert.resolved_at).is_not(None))
            return [_alert(a) for a in session.exec(query.order_by(col(OpsAlert.id).desc()).limit(500)).all()]
    return await run_in_threadpool(read)


@router.post("/alerts/{alert_id}/resolve")
async def resolve_alert(alert_id: int, _admin: Admin):
    def write():
        with session_scope() as session:
            alert = session.get(OpsAlert, alert_id)
            if alert is None:
                return None
            if alert.resolved_at is None:
                alert.resolved_at, alert.resolved_by = now(), "admin"
                session.add(alert)
            return _alert(alert)
    out = await run_in_threadpool(write)
    if out is None:
        raise HTTPException(404, f"alert {alert_id} not found")
    return out

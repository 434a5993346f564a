"""Unit and staff registry (CONTRACT 2d)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import col, select

from api.deps import Admin, AnyStaff
from api.schemas import StaffCreate, UnitPut
from hotline.clock import iso
from hotline.db import read_scope, session_scope
from models import Unit
from models.units import UnitBase
from services import registry, stats

router = APIRouter(prefix="/api", tags=["registry"])


@router.get("/units")
async def list_units():
    def read():
        with read_scope() as session:
            return [{"code": u.code, "name": u.name, "level": u.level, "parent": u.parent,
                     "webhook_url": u.webhook_url}
                    for u in session.exec(select(Unit).order_by(col(Unit.code))).all()]
    return await run_in_threadpool(read)


@router.put("/units/{code}")
async def put_unit(code: str, body: UnitPut, _admin: Admin):
    if not code or len(code) > 64 or not code.replace("_", "").replace("-", "").isalnum():
        raise HTTPException(422, [{"field": "code", "message": "letters, digits, - and _ only (max 64)"}])

    def write():
        with session_scope() as session:
            return registry.upsert_unit(session=session, code=code, unit_in=UnitBase(**body.model_dump()))
    creds = await run_in_threadpool(write)
    out = {"code": creds.code, "created": creds.created}
    if creds.created:
        out |= {"token": creds.token, "webhook_secret": creds.webhook_secret}
    return JSONResponse(out, status_code=201 if creds.created else 200)


@router.post("/units/{code}/rotate")
async def rotate(code: str, _admin: Admin):
    """A new token (the old one stops working at once) and a new webhook secret. Until
    `previous_secret_valid_until` (policy delivery.yaml `secret_rotation_grace`, default 24 h) deliveries are
    signed with both secrets (two signatures in `webhook-signature`), so the unit's receiver can switch without
    a failed delivery."""
    def write():
        with session_scope() as session:
            unit = session.get(Unit, code)
            if unit is None:
                return None
            return registry.rotate_unit(session=session, unit=unit)
    creds = await run_in_threadpool(write)
    if creds is None:
        raise HTTPException(404, f"unit {code} not found")
    return {"code": creds.code, "token": creds.token, "webhook_secret": creds.webhook_secret,
            "previous_secret_valid_until": iso(creds.previous_secret_until)}


@router.post("/staff", status_code=201)
async def create_staff(body: StaffCreate, _admin: Admin):
    def write():
        with session_scope() as session:
            return registry.create_staff(session=session, name=body.name, role=body.role, unit=body.unit)
    return {"token": await run_in_threadpool(write)}


@router.get("/units/{code}/stats")
async def unit_stats(code: str, _actor: AnyStaff):
    """Orders by state, bounces (退单), lapses, escalations and whistle reports and ratings of one unit."""
    def read():
        with read_scope() as session:
            if session.get(Unit, code) is None:
                return None
            return stats.unit_stats(session, code)
    found = await run_in_threadpool(read)
    if found is None:
        raise HTTPException(404, f"unit {code} not found")
    return found

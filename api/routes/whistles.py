"""吹哨报到 (CONTRACT 2c): blow, report, rate."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from api.deps import AnyStaff, CurrentUnit
from api.schemas import WhistleCreate, WhistleRatings, WhistleReport
from hotline.db import read_scope, session_scope
from services import whistles

router = APIRouter(prefix="/api", tags=["whistles"])


@router.post("/cases/{case_id}/whistle", status_code=201)
async def blow(case_id: int, body: WhistleCreate, unit: CurrentUnit):
    def write():
        with session_scope() as session:
            whistle = whistles.blow(session=session, blower=unit, case_id=case_id, units=body.units,
                                    kind=body.kind, note=body.note)
            return whistles.detail(session, whistle.id)
    return await run_in_threadpool(write)


@router.post("/whistles/{whistle_id}/report")
async def report(whistle_id: int, body: WhistleReport, unit: CurrentUnit):
    def write():
        with session_scope() as session:
            return whistles.report(session=session, unit=unit, whistle_id=whistle_id, note=body.note)
    return await run_in_threadpool(write)


@router.post("/whistles/{whistle_id}/ratings")
async def rate(whistle_id: int, body: WhistleRatings, unit: CurrentUnit):
    def write():
        with session_scope() as session:
            return whistles.rate(session=session, blower=unit, whistle_id=whistle_id,
                                 ratings=[r.model_dump() for r in body.ratings])
    return {"rated": await run_in_threadpool(write)}


@router.get("/whistles/{whistle_id}")
async def get_whistle(whistle_id: int, _actor: AnyStaff):
    def read():
        with read_scope() as session:
            return whistles.detail(session, whistle_id)
    found = await run_in_threadpool(read)
    if found is None:
        raise HTTPException(404, f"whistle {whistle_id} not found")
    return found

"""The console's deliberation pages (大家商量着办): the list by step, and one deliberation with its participants,
sessions, decision items and their cases, publicity, residents' evaluations and timeline. Read-only: the steps
are recorded through the API (docs/deliberations.md). Reads go through `services.deliberations`."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from api.console.routes import _login_redirect, _names, _page, _user
from hotline.db import read_scope
from models.deliberations import DeliberationStep
from services import deliberations

router = APIRouter(prefix="/console/deliberations", include_in_schema=False)


def _list(step: DeliberationStep | None) -> dict:
    with read_scope() as session:
        rows = deliberations.listing(session, step, limit=200)
        every = deliberations.listing(session, None, limit=500)
        names = _names(session)
    counts = {s: sum(1 for r in every if r["step"] == s) for s in DeliberationStep}
    return {"rows": rows, "counts": counts, "steps": deliberations.STEP_LABELS, **names}


@router.get("", response_class=HTMLResponse)
async def deliberation_list(request: Request, step: str | None = None):
    user = _user(request)
    if user is None:
        return _login_redirect()
    chosen = DeliberationStep(step) if step in DeliberationStep.__members__ else None
    data = await run_in_threadpool(_list, chosen)
    return _page(request, "deliberations.html", user, step=chosen, **data)


def _detail(deliberation_id: int) -> dict | None:
    with read_scope() as session:
        found = deliberations.detail(session, deliberation_id)
        names = _names(session)
    if found is None:
        return None
    participants = {p["participant_id"]: p["name"] for p in found["participants"]}
    return {"d": found, "participant_names": participants, "steps": deliberations.STEP_LABELS, **names}


@router.get("/{deliberation_id}", response_class=HTMLResponse)
async def deliberation_page(request: Request, deliberation_id: int):
    user = _user(request)
    if user is None:
        return _login_redirect()
    context = await run_in_threadpool(_detail, deliberation_id)
    if context is None:
        return _page(request, "error.html", user, status_code=404, message=f"没有编号为 {deliberation_id} 的议题。")
    return _page(request, "deliberation.html", user, **context)

"""Open311 GeoReport v2 (CONTRACT 1b): services, posting a request, reading requests — as XML or JSON by suffix.

Thin: the mapping and the renderings live in `services.open311`; intake is `services.intake.receive`.
POST answers 201 for a new request and 200 (same service_request_id) when the same client key was seen before.
Every client mistake is a spec-shaped error (`<errors><error><code/><description/></error></errors>` or
`[{"code": …, "description": …}]`): 400 bad input, 404 unknown id or service, 415 a body we cannot read.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from importlib.util import find_spec
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import col, func, select
from starlette.exceptions import HTTPException

from hotline.clock import now
from hotline.db import read_scope
from models import Case, TimelineEntry, Unit, WorkOrder
from models.states import CaseStatus
from models.units import UnitLevel
from services import intake, open311, policies
from services.open311 import Filters, Open311Error

router = APIRouter(prefix="/open311/v2", tags=["open311"])
_MULTIPART = find_spec("python_multipart") is not None  # starlette parses multipart bodies only with it

_DOC = {200: {"content": {"application/xml": {}, "application/json": {}}},
        400: {"description": "spec-shaped errors"}, 404: {"description": "spec-shaped errors"}}
_POST_BODY = {"requestBody": {"required": True, "content": {
    "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {
        name: {"type": "string"} for name in (
            "service_code", "description", "lat", "long", "address_string", "first_name", "last_name", "phone",
            "email", "media_url", "attribute[source_ref]", "attribute[urgency]", "attribute[community]",
            "jurisdiction_id", "api_key", "device_id", "account_id")}, "required": ["service_code"]}},
    "application/json": {"schema": {"type": "object"}}}}}


def _render(fmt: str, root: str, payload: Any, status: int = 200) -> Response:
    if fmt == "xml":
        return Response(open311.to_xml(root, payload), status_code=status,
                        media_type="application/xml; charset=utf-8")
    return JSONResponse(open311.to_json_ready(payload), status_code=status)  # UTF-8, no \u escapes


async def _answer(fmt: str, produce: Callable[[], Awaitable[tuple[str, Any, int]]]) -> Response:
    if fmt not in open311.FORMATS:
        return _render("json", "errors", Open311Error(404, f"format: {fmt!r} is not served, use .xml or .json")
                       .payload(), 404)
    try:
        root, payload, status = await produce()
    except Open311Error as exc:
        return _render(fmt, "errors", exc.payload(), exc.status)
    except policies.PolicyError as exc:
        return _render(fmt, "errors", Open311Error(503, f"policy files are invalid: {exc}").payload(), 503)
    return _render(fmt, root, payload, status)


# ---------------------------------------------------------------- services

@router.get("/services.{fmt}", responses=_DOC)
async def list_services(fmt: str):
    async def produce():
        return "services", open311.services(await run_in_threadpool(policies.categories)), 200
    return await _answer(fmt, produce)


@router.get("/services/{service_code}.{fmt}", responses=_DOC)
async def service_definition(service_code: str, fmt: str):
    async def produce():
        categories = await run_in_threadpool(policies.categories)
        return "service_definition", open311.service_definition(service_code, categories), 200
    return await _answer(fmt, produce)


# ---------------------------------------------------------------- posting a request

async def _body(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if kind == "application/json" or kind.endswith("+json") or (not kind and raw.lstrip().startswith(b"{")):
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise Open311Error(400, "body: not valid JSON") from None
        if not isinstance(data, dict):
            raise Open311Error(400, "body: a JSON object is required")
        return open311.collect(data.items())
    if kind in ("application/x-www-form-urlencoded", ""):
        try:  # what starlette's form parser does, without needing python-multipart
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=1000)
        except (UnicodeDecodeError, ValueError):
            raise Open311Error(400, "body: not UTF-8 form data") from None
        return open311.collect(pairs)
    if kind == "multipart/form-data" and _MULTIPART:
        try:
            form = await request.form()
        except HTTPException as exc:  # starlette's answer to a malformed multipart body
            raise Open311Error(400, f"body: {exc.detail}") from None
        return open311.collect((k, v) for k, v in form.multi_items() if isinstance(v, str))
    raise Open311Error(415, f"body: {kind} is not accepted, send application/x-www-form-urlencoded or JSON")


def _intake_context() -> tuple[dict[str, str], list[tuple[str, str]]]:
    categories = policies.categories()
    with read_scope() as session:
        places = session.exec(select(Unit.level, Unit.name).where(
            col(Unit.level).in_([UnitLevel.community.value, UnitLevel.street.value]))).all()
    return categories, [(str(level), name) for level, name in places]


@router.post("/requests.{fmt}", responses=_DOC | {201: {"description": "recorded"}}, openapi_extra=_POST_BODY)
async def post_request(fmt: str, request: Request):
    async def produce():
        fields, attributes = await _body(request)
        categories, places = await run_in_threadpool(_intake_context)
        case_fields = open311.parse_request(fields, attributes, categories=categories, places=places, at=now())
        result = await intake.receive(case_fields)
        return "service_requests", open311.created(result.case.number, result.created), (
            201 if result.created else 200)
    return await _answer(fmt, produce)


# ---------------------------------------------------------------- reading requests

def _read(filters: Filters) -> list[dict]:
    categories = policies.categories()
    with read_scope() as session:
        # Only requests that came in through Open311: hotline calls and grid reports are not published.
        query = select(Case).where(col(Case.number).is_not(None), Case.source == "open311")
        if filters.numbers:
            query = query.where(col(Case.number).in_(filters.numbers))
        else:
            if filters.codes:
                query = query.where(col(Case.category).in_(filters.codes))
            if filters.statuses == {"open"}:
                query = query.where(Case.status != CaseStatus.closed)
            elif filters.statuses == {"closed"}:
                query = query.where(Case.status == CaseStatus.closed)
            query = query.where(Case.reported_at >= filters.start, Case.reported_at <= filters.end)
        found = session.exec(query.order_by(col(Case.reported_at).desc(), col(Case.id).desc())
                             .limit(filters.limit)).all()
        notes: dict[int, str] = {}
        expected: dict[int, Any] = {}
        units: dict[str, str] = {}
        ids = [c.id for c in found]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            # the latest note the system wrote (units' and citizens' own words stay internal)
            latest_note = select(func.max(TimelineEntry.id)).where(
                col(TimelineEntry.case_id).in_(chunk), TimelineEntry.actor == "system",
                col(TimelineEntry.note).is_not(None)).group_by(TimelineEntry.case_id)
            notes.update(session.exec(select(TimelineEntry.case_id, TimelineEntry.note).where(
                col(TimelineEntry.id).in_(latest_note))).all())
            newest_lead = select(func.max(WorkOrder.id)).where(
                col(WorkOrder.case_id).in_(chunk), WorkOrder.role == "lead").group_by(WorkOrder.case_id)
            expected.update(session.exec(select(WorkOrder.case_id, WorkOrder.due_at).where(
                col(WorkOrder.id).in_(newest_lead))).all())
        leads = sorted({c.lead_unit for c in found if c.lead_unit})
        if leads:
            units.update(session.exec(select(Unit.code, Unit.name).where(col(Unit.code).in_(leads))).all())
        return [open311.request_view(c, service_name=categories.get(c.category), agency=units.get(c.lead_unit),
                                     status_notes=notes.get(c.id), expected_at=expected.get(c.id))
                for c in found]


@router.get("/requests.{fmt}", responses=_DOC)
async def list_requests(fmt: str, service_request_id: str | None = None, service_code: str | None = None,
                        start_date: str | None = None, end_date: str | None = None, status: str | None = None):
    """Newest first, at most 1000; without dates the last 90 days. `service_request_id` (comma-separated)
    overrides the other filters; `service_code` and `status` (open, closed) may be comma-separated."""
    params = {"service_request_id": service_request_id, "service_code": service_code, "start_date": start_date,
              "end_date": end_date, "status": status}

    async def produce():
        categories = await run_in_threadpool(policies.categories)
        filters = open311.parse_filters(params, categories=categories, at=now())
        return "service_requests", await run_in_threadpool(_read, filters), 200
    return await _answer(fmt, produce)


@router.get("/requests/{service_request_id}.{fmt}", responses=_DOC)
async def get_request(service_request_id: str, fmt: str):
    async def produce():
        found = await run_in_threadpool(_read, Filters(numbers=[service_request_id], limit=1))
        if not found:
            raise Open311Error(404, f"service_request_id: unknown request {service_request_id!r}")
        return "service_requests", found, 200
    return await _answer(fmt, produce)

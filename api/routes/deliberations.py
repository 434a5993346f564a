"""大家商量着办 (docs/deliberations.md): a deliberation's steps, each recorded by `services.deliberations` and
applied by the deliberation's flow run, which is woken after every record that moves it."""
from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import Actor, StaffOrUnit, SupervisorOrUnit
from api.schemas import (
    DeliberationCreate, Invitations, ProposalAdopt, PublicityIn, ResidentEvaluationIn, Rsvp, SessionIn,
)
from flows.control import start_deliberation_flow, wake_soon
from hotline.clock import to_utc
from hotline.db import read_scope, session_scope
from models import Deliberation
from models.deliberations import DeliberationStep
from services import deliberations, topic_proposals

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/deliberations", tags=["deliberations"])

START_TIMEOUT_SECONDS = 15  # as intake: a busy Prefect must not hold the caller; the deadline watch starts it later


def _organiser(actor: Actor) -> None:
    """Staff (supervisors) and the admin organise anywhere; of the units, communities and streets in their area."""
    if actor.unit is not None and not deliberations.organiser_may(actor.unit):
        raise HTTPException(403, "only a community or a street organises deliberations")


async def start_run(deliberation: Deliberation) -> None:
    """Start the new deliberation's flow run, bounded (the API and the console do this after recording a topic)."""
    if deliberation.flow_run_id:
        return
    try:
        await asyncio.wait_for(start_deliberation_flow(deliberation, deliberations.run_tags(deliberation)),
                               START_TIMEOUT_SECONDS)
    except Exception as exc:  # recorded; the deadline watch starts its run
        log.warning("deliberation %s recorded, flow run not started yet: %s", deliberation.number,
                    str(exc) or type(exc).__name__)


def _write_and_detail(deliberation_id: int, write) -> tuple[dict, str | None]:
    with session_scope() as session:
        write(session)
    with read_scope() as session:
        found = deliberations.detail(session, deliberation_id)
    return found, found["flow_run_id"]


async def _record(deliberation_id: int, kind: str, write) -> dict:
    """Record through the service, wake the run so it applies the record, answer with the detail."""
    found, run_id = await run_in_threadpool(_write_and_detail, deliberation_id, write)
    wake_soon(run_id, kind)
    return found


@router.post("", status_code=201, responses={200: {"description": "the case already continues as this deliberation"}})
async def create(body: DeliberationCreate, actor: SupervisorOrUnit):
    """确定议题: a community or street proposes a topic, or a supervisor converts cases (`case_ids`): their
    citizens are told the case continues as a deliberation. Converting one case twice answers 200 with the same."""
    _organiser(actor)
    if body.case_ids and actor.unit is not None:
        raise HTTPException(403, "a supervisor converts cases into a deliberation")

    def write() -> tuple[Deliberation, bool]:
        with session_scope() as session:
            return deliberations.open_topic(
                session=session, topic_type=body.topic_type, title=body.title, description=body.description,
                location=body.location.model_dump(exclude_none=True), case_ids=body.case_ids, actor=actor.name,
                unit=actor.unit)
    deliberation, created = await run_in_threadpool(write)
    await start_run(deliberation)
    found = await run_in_threadpool(_detail, deliberation.id)
    return JSONResponse(found, status_code=201 if created else 200)


@router.get("")
async def listing(_actor: StaffOrUnit, step: DeliberationStep | None = None, limit: int = Query(100, ge=1, le=500)):
    def read():
        with read_scope() as session:
            rows = deliberations.listing(session, step, limit)
        unit = _actor.unit
        return [r for r in rows if unit is None or unit.code in (r["community"], r["street"])]
    return await run_in_threadpool(read)


def _proposals(actor: Actor) -> list[dict]:
    with read_scope() as session:
        found = topic_proposals.proposals(session)
    unit = actor.unit
    return [p for p in found if unit is None or unit.code in (p["community"], p["street"])]


@router.get("/proposals")
async def proposals(actor: StaffOrUnit) -> list[dict]:
    """议题建议: topics proposed from hot spots and repeated requests (policy `deliberation.yaml` `proposals`), biggest
    first; places with an open deliberation are left out. A community or street sees its own area's."""
    return await run_in_threadpool(_proposals, actor)


@router.post("/proposals", status_code=201)
async def adopt_proposal(body: ProposalAdopt, actor: SupervisorOrUnit):
    """Create the proposed topic with its cases (a supervisor's, as converting cases): their citizens are told on
    their case's timeline. 409 when the place has an open deliberation meanwhile or the proposal is gone."""
    if actor.unit is not None:
        raise HTTPException(403, "a supervisor creates a topic with cases")

    def write() -> Deliberation:
        with session_scope() as session:
            return topic_proposals.adopt(session=session, key=body.key, actor=actor.name, topic_type=body.topic_type,
                                         title=body.title, description=body.description)
    deliberation = await run_in_threadpool(write)
    await start_run(deliberation)
    return await run_in_threadpool(_detail, deliberation.id)


def _detail(deliberation_id: int) -> dict | None:
    with read_scope() as session:
        return deliberations.detail(session, deliberation_id)


@router.get("/{deliberation_id}")
async def get(deliberation_id: int, actor: StaffOrUnit):
    found = await run_in_threadpool(_detail, deliberation_id)
    unit = actor.unit
    if found is None or (unit is not None and unit.code not in (found["jurisdiction"]["community"],
                                                                found["jurisdiction"]["street"])
                         and unit.code not in {p["unit"] for p in found["participants"]}):
        raise HTTPException(404, f"deliberation {deliberation_id} not found")
    return found


@router.post("/{deliberation_id}/participants")
async def invite(deliberation_id: int, body: Invitations, actor: SupervisorOrUnit):
    """邀请代表: units are invited by webhook `deliberation.invited`, people with a message text."""
    _organiser(actor)
    return await _record(deliberation_id, "invited", lambda s: deliberations.invite(
        session=s, deliberation_id=deliberation_id, participants=[p.model_dump() for p in body.participants],
        actor=actor.name, unit=actor.unit))


@router.post("/{deliberation_id}/participants/{participant_id}/rsvp")
async def rsvp(deliberation_id: int, participant_id: int, body: Rsvp, actor: SupervisorOrUnit):
    """A unit answers its own invitation with its token; a supervisor records a person's answer."""
    def write():
        with session_scope() as session:
            p = deliberations.answer_invitation(session=session, deliberation_id=deliberation_id,
                                                participant_id=participant_id, answer=body.answer, note=body.note,
                                                actor=actor.name, unit=actor.unit)
            return {"participant_id": str(p.id), "rsvp": p.rsvp}
    return await run_in_threadpool(write)


def session_record(body: SessionIn) -> dict:
    """A session as `services.deliberations.record_session` takes it (the API and the console)."""
    record = body.model_dump(exclude={"decision", "opinions"})
    record["held_at"] = to_utc(body.held_at)
    record["opinions"] = [o.model_dump() for o in body.opinions]
    record["decision"] = body.decision.as_record() if body.decision else None
    return record


@router.post("/{deliberation_id}/sessions", status_code=201)
async def record_session(deliberation_id: int, body: SessionIn, actor: SupervisorOrUnit):
    """组织商量: one round with attendance, minutes, opinions, options and maybe the decision (each of its items
    becomes a case to the item's unit). 409 naming the required participant types still missing."""
    _organiser(actor)
    record = session_record(body)
    return await _record(deliberation_id, "session", lambda s: deliberations.record_session(
        session=s, deliberation_id=deliberation_id, body=record, actor=actor.name, unit=actor.unit))


@router.post("/{deliberation_id}/publicity", status_code=201)
async def publish(deliberation_id: int, body: PublicityIn, actor: SupervisorOrUnit):
    """四议两公开: what was made public, when, where. `result` tells participants and linked citizens."""
    _organiser(actor)
    return await _record(deliberation_id, "published", lambda s: deliberations.publish(
        session=s, deliberation_id=deliberation_id, stage=body.stage, content=body.content, place=body.place,
        published_at=to_utc(body.published_at) if body.published_at else None, actor=actor.name, unit=actor.unit))


@router.post("/{deliberation_id}/evaluations", status_code=201)
async def evaluate(deliberation_id: int, body: ResidentEvaluationIn, actor: SupervisorOrUnit):
    """群众公开评: a resident's verdict on the published result."""
    _organiser(actor)

    def write():
        with session_scope() as session:
            e = deliberations.evaluate(session=session, deliberation_id=deliberation_id,
                                       satisfaction=body.satisfaction, resident=body.resident, comment=body.comment,
                                       actor=actor.name, unit=actor.unit)
            return {"evaluation_id": str(e.id), "satisfaction": e.satisfaction}
    return await run_in_threadpool(write)

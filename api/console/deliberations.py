"""The console's deliberation pages (大家商量着办): the list by step with the topics proposed from hot spots and
repeated requests (议题建议) and a form to open a topic; one deliberation with its participants, sessions, decision
items and their cases, publicity, residents' evaluations and timeline, and a form for each step.

Thin routes, one way to do each thing: a form is checked with the API's own request shapes (`api.schemas`) and
recorded by the same service function the API route calls (`services.deliberations`, `services.topic_proposals`),
then the deliberation's run is woken as the API wakes it, and the browser is sent back to the page
(POST/redirect/GET). Posts follow the case forms' guard (`_posting_user`: logged in, CSRF token); organising is for
supervisors and the admin, as in the API (a dispatcher looks only). Bad input re-renders the page with a Chinese
message naming the field and the reason, and records nothing.
"""
from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlmodel import col, select

from api.console.routes import _forbidden, _login_redirect, _names, _page, _posting_user, _role, _user
from api.routes.deliberations import session_record, start_run
from api.schemas import (
    DeliberationCreate, Invitations, ProposalAdopt, PublicityIn, ResidentEvaluationIn, Rsvp, SessionIn,
)
from flows.control import wake_soon
from hotline.clock import to_utc
from hotline.db import read_scope, session_scope
from hotline.settings import get_settings
from models import Deliberation, Unit
from models.deliberations import DeliberationStep
from models.units import StaffRole, UnitLevel
from services import deliberations, policies, topic_proposals
from services.cases import Conflict, Invalid, NotFound

router = APIRouter(prefix="/console/deliberations", include_in_schema=False)

DONE = {"created": "已确定议题", "invited": "已邀请代表", "rsvp": "已记录回复", "session": "已记录商量",
        "published": "已记录公开", "evaluated": "已记录评议"}
ITEM_ROWS = 3  # decision item rows on the session form (blank rows are ignored)
ORGANISE_REFUSED = "只有督办人员或管理员可以组织商量; 派单员只能查看。"

# ---------------------------------------------------------------- errors in Chinese: field and reason

FIELD_LABELS = {
    "topic_type": "议题类型", "title": "议题名称", "description": "议题说明", "location": "社区/地点",
    "location.community": "社区", "location.address": "地点", "case_ids": "关联诉求", "key": "议题建议",
    "type": "代表类型", "unit": "单位", "name": "姓名", "contact": "联系方式", "answer": "是否参加", "note": "备注",
    "kind": "商量形式", "held_at": "商量时间", "place": "地点", "attendance": "到会代表",
    "residents_present": "到会居民人数", "minutes": "会议记录", "opinions": "意见", "options": "方案",
    "decision": "决定", "method": "决定方式", "votes": "表决票数", "for": "赞成票数", "against": "反对票数",
    "abstain": "弃权票数", "option": "采纳方案", "summary": "决定内容", "items": "办理事项",
    "stage": "公开环节", "content": "公开内容", "published_at": "公开时间", "satisfaction": "评价",
    "resident": "居民", "comment": "评议意见", "due_at": "办结时限",
}
ERROR_TYPES = {
    "missing": "必须填写", "string_too_short": "不能为空", "string_too_long": "太长", "literal_error": "请从列表中选择",
    "datetime_parsing": "时间格式不对", "datetime_from_date_parsing": "时间格式不对", "datetime_type": "时间格式不对",
    "int_parsing": "须为整数", "int_type": "须为整数", "greater_than_equal": "不能为负数",
    "list_type": "格式不对", "too_long": "条目太多", "extra_forbidden": "不认识的字段",
}
SERVICE_REASONS = (  # the services' messages (English, for the API) → what the console says
    ("unknown unit", "单位不存在"), ("must be in the future", "须晚于现在"),
    ("UTC offset", "须带时区"), ("not a date and time", "时间格式不对"),
    ("required for a person", "邀请个人须填写姓名"), ("invited as a registered unit", "须选择已登记的单位"),
    ("is not invited to this deliberation", "不是本议题邀请的代表"),
    ("the vote did not carry", "表决未通过 (赞成不多于反对), 不能形成办理事项"),
    ("a vote records its counts", "表决须填写赞成、反对、弃权票数"), ("not in the area of", "不在本辖区"),
    ("required (a community", "请选择社区或填写地点"), ("required (unless one case", "必须填写"),
    ("one of", "请从列表中选择"), ("a proposal's key", "请从列表中选择"),
)
CONFLICTS = (
    ("required participants missing: ", "必须参加的代表尚未邀请 (或已表示不参加): "),
    ("invite the participants first", "请先邀请代表, 再记录商量"),
    ("already decided", "已形成决定, 不能再记录商量; 请记录公开或反馈"),
    ("invitations are closed", "已进入办理或反馈环节, 不能再邀请代表"),
    ("there is no decision to publish yet", "尚无决定, 不能公开决议"),
    ("results are published once every item is carried out", "办理事项全部办结 (反馈结果环节) 后才能公开实施结果"),
    ("publish it first", "实施结果公开后才能评议"),
    ("no topic is proposed for", "该议题建议已不存在: 该地可能已有进行中的议题, 或诉求已不足"),
)


COUNTED_BY_TIAO = ("意见", "方案", "到会代表")


def field_label(field: str) -> str:
    """The field in words: `decision.items.1.due_at` → 办理事项第 2 项的办结时限, `opinions.0.text` → 意见第 1 条."""
    words: list[str] = []
    for part in field.split("."):
        if part.isdigit():
            if words:
                words[-1] += f"第 {int(part) + 1} {'条' if words[-1] in COUNTED_BY_TIAO else '项'}"
        elif part not in ("participants", "text", "body", ""):
            words.append(FIELD_LABELS.get(part, part))
    if len(words) > 1 and words[0] == "决定":
        words = words[1:]
    return "的".join(words) or "表单"


def _service_reason(message: str) -> str:
    return next((zh for en, zh in SERVICE_REASONS if en in message), message)


def _conflict_text(message: str) -> str:
    for en, zh in CONFLICTS:
        if en in message:
            return zh + message.split(en, 1)[1] if en.endswith(": ") else zh
    return message


def error_text(exc: Exception) -> str:
    """What went wrong, in Chinese, naming the field; nothing was recorded."""
    if isinstance(exc, ValidationError):
        problems = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()))
            reason = ERROR_TYPES.get(e.get("type", ""))
            if reason is None:
                reason = _service_reason(str(e.get("msg", "")).removeprefix("Value error, "))
            problems.append(f"「{field_label(loc)}」{reason}")
        return "; ".join(problems) + "。未做任何更改。"
    if isinstance(exc, Invalid):
        return f"「{field_label(exc.field)}」{_service_reason(str(exc))}。未做任何更改。"
    if isinstance(exc, Conflict):
        return f"{_conflict_text(str(exc))}。未做任何更改。"
    return str(exc)


# ---------------------------------------------------------------- reading form fields

def _text(form, name: str) -> str | None:
    value = (form.get(name) or "").strip()
    return value or None


def _local_time(value: str | None) -> datetime | str | None:
    """A datetime-local value (no offset) in the installation's time zone; left as text when unparseable (the
    request shape then names the field)."""
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    return at if at.tzinfo else at.replace(tzinfo=ZoneInfo(get_settings().timezone))


def _lines(value: str | None) -> list[str]:
    return [line.strip() for line in (value or "").splitlines() if line.strip()]


def _opinion(line: str) -> dict:
    """`3号楼居民: 晚上10点后调暗` → by and text; a line without a short speaker before the colon is the text."""
    match = re.match(r"^([^:：]{1,30})[:：]\s*(.+)$", line)
    return {"by": match.group(1).strip(), "text": match.group(2).strip()} if match else {"text": line}


def _count(value: str | None) -> int | str | None:
    return int(value) if value and value.strip().lstrip("-").isdigit() else (value or None)


def session_body(form) -> dict:
    """The session form as the API's `SessionIn` body."""
    body: dict = {"kind": form.get("kind") or None, "held_at": _local_time(_text(form, "held_at")),
                  "place": _text(form, "place"), "minutes": _text(form, "minutes"),
                  "attendance": [int(a) for a in form.getlist("attendance") if a.isdigit()],
                  "residents_present": _count(_text(form, "residents_present")) or 0,
                  "opinions": [_opinion(line) for line in _lines(form.get("opinions"))],
                  "options": _lines(form.get("options"))}
    method = form.get("method") or ""
    if method in ("vote", "consensus"):
        decision: dict = {"method": method, "option": _text(form, "option"), "summary": _text(form, "summary"),
                          "items": []}
        if method == "vote":
            votes = {k: _count(_text(form, f"votes_{k}")) for k in ("for", "against", "abstain")}
            if votes["for"] is not None or votes["against"] is not None:
                decision["votes"] = {k: v for k, v in votes.items() if v is not None}
        for n in range(ITEM_ROWS):
            unit, text = _text(form, f"item_unit_{n}"), _text(form, f"item_description_{n}")
            if unit or text:
                item = {"unit": unit or "", "description": text or ""}
                due = _local_time(_text(form, f"item_due_at_{n}"))
                if due is not None:
                    item["due_at"] = due
                decision["items"].append(item)
        body["decision"] = decision
    elif method:
        body["decision"] = {"method": method}
    return {k: v for k, v in body.items() if v is not None}


# ---------------------------------------------------------------- who may post

def _may_organise(user) -> bool:
    return _role(user) in ("admin", StaffRole.supervisor)


async def _organiser(request: Request):
    """(user, form, refusal): the posting user of an organiser's form, as the case forms check it."""
    form = await request.form()
    user, refused = _posting_user(request, str(form.get("csrf") or ""))
    if refused is None and not _may_organise(user):
        refused = _forbidden(request, user, ORGANISE_REFUSED)
    return user, form, refused


# ---------------------------------------------------------------- the list, proposals, a new topic

def _list(step: DeliberationStep | None) -> dict:
    with read_scope() as session:
        rows = deliberations.listing(session, step, limit=200)
        every = deliberations.listing(session, None, limit=500)
        names = _names(session)
        proposals = topic_proposals.proposals(session)
        communities = [{"code": u.code, "name": u.name} for u in session.exec(
            select(Unit).where(Unit.level == UnitLevel.community).order_by(col(Unit.code)))]
    counts = {s: sum(1 for r in every if r["step"] == s) for s in DeliberationStep}
    return {"rows": rows, "counts": counts, "steps": deliberations.STEP_LABELS, "proposals": proposals,
            "communities": communities, "topic_types": policies.deliberation_policy().topic_types, **names}


async def _render_list(request: Request, user, step: DeliberationStep | None = None, error: str | None = None,
                       status_code: int = 200) -> HTMLResponse:
    data = await run_in_threadpool(_list, step)
    return _page(request, "deliberations.html", user, status_code=status_code, step=step, error=error,
                 may_organise=_may_organise(user), **data)


@router.get("", response_class=HTMLResponse)
async def deliberation_list(request: Request, step: str | None = None):
    user = _user(request)
    if user is None:
        return _login_redirect()
    return await _render_list(request, user, DeliberationStep(step) if step in DeliberationStep.__members__ else None)


@router.post("")
async def create_topic(request: Request):
    """确定议题: a new topic at a community (the API's `POST /api/deliberations`)."""
    user, form, refused = await _organiser(request)
    if refused is not None:
        return refused
    try:
        body = DeliberationCreate(topic_type=form.get("topic_type") or "", title=_text(form, "title"),
                                  description=_text(form, "description"),
                                  location={k: v for k, v in (("community", _text(form, "community")),
                                                              ("address", _text(form, "address"))) if v})

        def write() -> Deliberation:
            with session_scope() as session:
                return deliberations.open_topic(
                    session=session, topic_type=body.topic_type, title=body.title, description=body.description,
                    location=body.location.model_dump(exclude_none=True), case_ids=[], actor=user.actor)[0]
        deliberation = await run_in_threadpool(write)
    except (ValidationError, Invalid, Conflict) as exc:
        return await _render_list(request, user, error="议题未创建: " + error_text(exc), status_code=422)
    await start_run(deliberation)
    return RedirectResponse(f"/console/deliberations/{deliberation.id}?done=created", status_code=303)


@router.post("/proposals")
async def adopt_proposal(request: Request):
    """议题建议 → a topic with the proposal's cases (the API's `POST /api/deliberations/proposals`)."""
    user, form, refused = await _organiser(request)
    if refused is not None:
        return refused
    try:
        body = ProposalAdopt(key=form.get("key") or "", topic_type=_text(form, "topic_type"),
                             title=_text(form, "title"))

        def write() -> Deliberation:
            with session_scope() as session:
                return topic_proposals.adopt(session=session, key=body.key, actor=user.actor,
                                             topic_type=body.topic_type, title=body.title)
        deliberation = await run_in_threadpool(write)
    except (ValidationError, Invalid, Conflict) as exc:
        status = 409 if isinstance(exc, Conflict) else 422
        return await _render_list(request, user, error="议题未创建: " + error_text(exc), status_code=status)
    await start_run(deliberation)
    return RedirectResponse(f"/console/deliberations/{deliberation.id}?done=created", status_code=303)


# ---------------------------------------------------------------- one deliberation and its steps

def _detail(deliberation_id: int) -> dict | None:
    with read_scope() as session:
        found = deliberations.detail(session, deliberation_id)
        names = _names(session)
        units = [{"code": u.code, "name": u.name, "level": u.level}
                 for u in session.exec(select(Unit).order_by(col(Unit.level), col(Unit.code)))]
    if found is None:
        return None
    policy = policies.deliberation_policy()
    participants = {p["participant_id"]: p["name"] for p in found["participants"]}
    return {"d": found, "participant_names": participants, "steps": deliberations.STEP_LABELS, "units": units,
            "participant_types": policy.participant_types, "session_kinds": deliberations.SESSION_KINDS,
            "decided": any(s["decision"] for s in found["sessions"]),
            "result_published": any(p["stage"] == "result" for p in found["publicity"]),
            "item_rows": range(ITEM_ROWS), **names}


async def _render(request: Request, user, deliberation_id: int, done: str | None = None, error: str | None = None,
                  status_code: int = 200) -> HTMLResponse:
    context = await run_in_threadpool(_detail, deliberation_id)
    if context is None:
        return _page(request, "error.html", user, status_code=404, message=f"没有编号为 {deliberation_id} 的议题。")
    return _page(request, "deliberation.html", user, status_code=status_code, done=DONE.get(done or ""),
                 error=error, may_organise=_may_organise(user), **context)


@router.get("/{deliberation_id}", response_class=HTMLResponse)
async def deliberation_page(request: Request, deliberation_id: int, done: str | None = None):
    user = _user(request)
    if user is None:
        return _login_redirect()
    return await _render(request, user, deliberation_id, done=done)


async def _step(request: Request, deliberation_id: int, kind: str, what: str, build, write):
    """One organiser's form: check it with the API's request shape (`build(form)`), record it through the service
    (`write(session, body, actor)`), wake the run as the API does, and go back to the page."""
    user, form, refused = await _organiser(request)
    if refused is not None:
        return refused

    def record():
        with session_scope() as session:
            write(session, body, user.actor)
        with read_scope() as session:
            found = session.get(Deliberation, deliberation_id)
            return found.flow_run_id if found else None
    try:
        body = build(form)
        run_id = await run_in_threadpool(record)
    except NotFound:
        return _page(request, "error.html", user, status_code=404, message=f"没有编号为 {deliberation_id} 的议题。")
    except (ValidationError, Invalid, Conflict) as exc:
        return await _render(request, user, deliberation_id, error=f"{what}未完成: {error_text(exc)}",
                             status_code=409 if isinstance(exc, Conflict) else 422)
    if kind in ("invited", "session", "published"):
        wake_soon(run_id, kind)
    return RedirectResponse(f"/console/deliberations/{deliberation_id}?done={kind}", status_code=303)


@router.post("/{deliberation_id}/participants")
async def invite(request: Request, deliberation_id: int):
    """邀请代表 by type: a unit (webhook) or a person (a message text)."""
    def build(form) -> Invitations:
        ptype = form.get("type") or ""
        unit_type = getattr(policies.deliberation_policy().participant_types.get(ptype), "unit", False)
        return Invitations(participants=[{"type": ptype, "unit": _text(form, "unit") if unit_type else None,
                                          "name": None if unit_type else _text(form, "name"),
                                          "contact": None if unit_type else _text(form, "contact")}])
    return await _step(request, deliberation_id, "invited", "邀请", build, lambda s, body, actor: deliberations.invite(
        session=s, deliberation_id=deliberation_id, participants=[p.model_dump() for p in body.participants],
        actor=actor))


@router.post("/{deliberation_id}/participants/{participant_id}/rsvp")
async def rsvp(request: Request, deliberation_id: int, participant_id: int):
    """A participant's answer (参加 / 不参加), recorded by the organiser."""
    return await _step(request, deliberation_id, "rsvp", "记录回复",
                       lambda form: Rsvp(answer=form.get("answer") or "", note=_text(form, "note")),
                       lambda s, body, actor: deliberations.answer_invitation(
                           session=s, deliberation_id=deliberation_id, participant_id=participant_id,
                           answer=body.answer, note=body.note, actor=actor))


@router.post("/{deliberation_id}/sessions")
async def record_session(request: Request, deliberation_id: int):
    """组织商量: one round, maybe with the decision and its items (the API's `POST …/sessions`)."""
    return await _step(request, deliberation_id, "session", "记录商量", lambda form: SessionIn(**session_body(form)),
                       lambda s, body, actor: deliberations.record_session(
                           session=s, deliberation_id=deliberation_id, body=session_record(body), actor=actor))


@router.post("/{deliberation_id}/publicity")
async def publish(request: Request, deliberation_id: int):
    """四议两公开: what was made public, where and when (the result tells participants and citizens)."""
    def build(form) -> PublicityIn:
        return PublicityIn(stage=form.get("stage") or "", content=_text(form, "content") or "",
                           place=_text(form, "place") or "",
                           published_at=_local_time(_text(form, "published_at")))
    return await _step(request, deliberation_id, "published", "公开", build, lambda s, body, actor: deliberations.publish(
        session=s, deliberation_id=deliberation_id, stage=body.stage, content=body.content, place=body.place,
        published_at=to_utc(body.published_at) if body.published_at else None, actor=actor))


@router.post("/{deliberation_id}/evaluations")
async def evaluate(request: Request, deliberation_id: int):
    """群众公开评: a resident's verdict on the published result."""
    def build(form) -> ResidentEvaluationIn:
        return ResidentEvaluationIn(satisfaction=form.get("satisfaction") or "", resident=_text(form, "resident"),
                                    comment=_text(form, "comment"))
    return await _step(request, deliberation_id, "evaluated", "评议", build, lambda s, body, actor: deliberations.evaluate(
        session=s, deliberation_id=deliberation_id, satisfaction=body.satisfaction, resident=body.resident,
        comment=body.comment, actor=actor))

"""The console's pages: login, the escalation queue, a case with its actions, the month's rates.

Thin routes: reads reuse the API's case detail and the evaluation service; decisions go through
`services.cases.decide` — the same writer as `POST /api/escalations/{id}/decision` — and wake the case run.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import col, select

from api.console import session as sessions
from api.deps import is_admin
from api.routes.cases import case_detail
from flows.control import wake_soon
from hotline.clock import local, now
from hotline.db import read_scope, session_scope
from hotline.settings import get_settings
from models import Case, Escalation, Unit
from models.units import StaffRole
from services import cases, policies, registry
from services.evaluation import LEVELS, rates_for_month

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["short"] = lambda v: v[5:16].replace("T", " ") if v else "—"  # ISO (+08:00) -> "11-24 10:14"

TRIGGER_LABELS = {
    "overdue_response": "响应超时", "overdue_completion": "办理超时", "bounced": "退单过多",
    "whistle_not_reported": "吹哨未报到", "unsatisfied": "回访不满意", "unsatisfied_twice": "两次不满意",
    "extension_request": "申请延期", "unroutable": "无法派单",
}
URGENCY_ORDER = {"emergency": 0, "urgent": 1, "normal": 2}
URGENCY_LABELS = {"normal": "普通", "urgent": "紧急", "emergency": "特急"}
ACTIONS = {"reassign": "改派", "extend": "延期", "take_over": "包案", "close": "办结(附理由)"}
CONSOLE_ROLES = (StaffRole.supervisor, StaffRole.dispatcher)


def _user(request: Request) -> sessions.ConsoleUser | None:
    return sessions.read_session(request.cookies.get(sessions.COOKIE))


def _login_redirect() -> RedirectResponse:
    return RedirectResponse("/console/login", status_code=303)


def _page(request: Request, name: str, user, status_code: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"user": user, "labels": TRIGGER_LABELS,
                                                      "urgency_labels": URGENCY_LABELS, **context},
                                      status_code=status_code)


def _forbidden(request: Request, user, message: str) -> HTMLResponse:
    return _page(request, "error.html", user, status_code=403, message=message)


# ---------------------------------------------------------------- login

@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, error: str | None = None):
    cookie, token = sessions.new_login_csrf()
    response = _page(request, "login.html", None, csrf=token, error=error)
    response.set_cookie(sessions.PRE_COOKIE, cookie, httponly=True, samesite="strict", max_age=3600,
                        path="/console")
    return response


@router.post("/login")
async def login(request: Request, token: str = Form(""), csrf: str = Form("")):
    if not sessions.login_csrf_ok(request.cookies.get(sessions.PRE_COOKIE), csrf):
        return _forbidden(request, None, "表单已过期或缺少校验码 (CSRF), 请重新打开登录页。")
    token = token.strip()
    if token and is_admin(token):
        actor, name = "admin", "管理员"
    else:
        def lookup():
            with read_scope() as session:
                return registry.staff_by_token(session, token) if token else None
        staff = await run_in_threadpool(lookup)
        if staff is None or staff.role not in CONSOLE_ROLES:
            return RedirectResponse("/console/login?error=" + quote("令牌无效, 或不是督办/派单人员的令牌"),
                                    status_code=303)
        actor, name = f"staff:{staff.id}:{staff.role}", staff.name
    cookie, _user_ = sessions.new_session(actor, name)
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(sessions.COOKIE, cookie, httponly=True, samesite="strict", max_age=sessions.MAX_AGE,
                        path="/console")
    response.delete_cookie(sessions.PRE_COOKIE, path="/console")
    return response


@router.post("/logout")
async def logout(request: Request, csrf: str = Form("")):
    user = _user(request)
    if user is None:
        return _login_redirect()
    if not sessions.csrf_ok(user, csrf):
        return _forbidden(request, user, "缺少或错误的校验码 (CSRF), 操作已拒绝。")
    response = _login_redirect()
    response.delete_cookie(sessions.COOKIE, path="/console")
    return response


# ---------------------------------------------------------------- the queue

def _queue(trigger: str | None) -> dict:
    with read_scope() as session:
        rows = session.exec(select(Escalation, Case).join(Case, Case.id == Escalation.case_id)
                            .where(Escalation.status == "open")).all()
        units = {u.code: u.name for u in session.exec(select(Unit))}
        waiting = session.exec(select(Case).where(Case.status == "dispatched", col(Case.lead_unit).is_(None))
                               .order_by(col(Case.id))).all()
    items = [{"id": e.id, "trigger": e.trigger, "from_unit": units.get(e.from_unit, e.from_unit),
              "to_unit": units.get(e.to_unit, e.to_unit) if e.to_unit else "督办", "opened_at": e.opened_at,
              "case_id": c.id, "number": c.number, "category": c.category, "urgency": c.urgency,
              "street": units.get(c.street, c.street) if c.street else "—"} for e, c in rows]
    by_trigger = Counter(i["trigger"] for i in items)
    by_street = Counter(i["street"] for i in items)
    if trigger:
        items = [i for i in items if i["trigger"] == trigger]
    items.sort(key=lambda i: (URGENCY_ORDER.get(i["urgency"], 9), i["opened_at"]))  # most urgent, then oldest
    categories = policies.categories()
    at = now()
    for i in items:
        i["waiting"] = _age(at - (i["opened_at"] if i["opened_at"].tzinfo else
                                  i["opened_at"].replace(tzinfo=ZoneInfo("UTC"))))
        i["opened_at"] = local(i["opened_at"]).strftime("%m-%d %H:%M")
        i["category"] = categories.get(i["category"], i["category"])
    return {"items": items, "by_trigger": sorted(by_trigger.items()), "by_street": by_street.most_common(),
            "total": sum(by_trigger.values()), "unrouted": [{"id": c.id, "number": c.number} for c in waiting]}


def _age(delta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 1440}天{minutes % 1440 // 60}小时" if minutes >= 1440 else (
        f"{minutes // 60}小时{minutes % 60}分" if minutes >= 60 else f"{minutes}分钟")


@router.get("", response_class=HTMLResponse)
async def queue(request: Request, trigger: str | None = None):
    user = _user(request)
    if user is None:
        return _login_redirect()
    data = await run_in_threadpool(_queue, trigger if trigger in TRIGGER_LABELS else None)
    return _page(request, "queue.html", user, trigger=trigger, **data)


# ---------------------------------------------------------------- a case and its actions

def _units() -> list[dict]:
    with read_scope() as session:
        return [{"code": u.code, "name": u.name, "level": u.level}
                for u in session.exec(select(Unit).order_by(col(Unit.level), col(Unit.code)))]


@router.get("/cases/{case_id}", response_class=HTMLResponse)
async def case_page(request: Request, case_id: int, done: str | None = None, error: str | None = None,
                    status_code: int = 200):
    user = _user(request)
    if user is None:
        return _login_redirect()
    detail = await run_in_threadpool(case_detail, case_id)
    if detail is None:
        return _page(request, "error.html", user, status_code=404, message=f"没有编号为 {case_id} 的诉求。")
    return _page(request, "case.html", user, status_code=status_code, case=detail, units=await run_in_threadpool(_units),
                 actions=ACTIONS, done=done, error=error,
                 category=policies.categories().get(detail["category"], detail["category"]))


@router.post("/escalations/{escalation_id}/decision")
async def decide(request: Request, escalation_id: int, csrf: str = Form(""), action: str = Form(""),
                 reason: str = Form(""), unit: str = Form(""), until: str = Form(""), leader: str = Form(""),
                 approve: str = Form("yes")):
    user = _user(request)
    if user is None:
        return _login_redirect()
    if not sessions.csrf_ok(user, csrf):
        return _forbidden(request, user, "缺少或错误的校验码 (CSRF), 操作已拒绝。")

    def case_of() -> int | None:
        with read_scope() as session:
            e = session.get(Escalation, escalation_id)
            return e.case_id if e else None
    case_id = await run_in_threadpool(case_of)
    if case_id is None:
        return _page(request, "error.html", user, status_code=404, message=f"没有编号为 {escalation_id} 的升级。")

    problem = None
    if action not in ACTIONS:
        problem = "请选择处理方式"
    elif not reason.strip():
        problem = "理由必填 (reason)"
    until_at = None
    if not problem and action == "extend" and until:
        try:
            until_at = datetime.fromisoformat(until)
            until_at = until_at if until_at.tzinfo else until_at.replace(tzinfo=ZoneInfo(get_settings().timezone))
        except ValueError:
            problem = f"延期时间格式不对: {until}"
    if problem:
        return await case_page(request, case_id, error=problem, status_code=422)

    def write():
        with session_scope() as session:
            result = cases.decide(session=session, escalation_id=escalation_id, action=action,
                                  reason=reason.strip(), actor=user.actor, unit=unit or None, until=until_at,
                                  approve=approve != "no", leader=leader.strip() or None)
            return result, session.get(Case, case_id).flow_run_id
    try:
        result, flow_run_id = await run_in_threadpool(write)
    except (cases.Invalid, cases.Conflict) as exc:
        return await case_page(request, case_id, error=str(exc), status_code=409 if isinstance(
            exc, cases.Conflict) else 422)
    if result["signal_id"]:
        wake_soon(flow_run_id, "decision", result["signal_id"])
    return RedirectResponse(f"/console/cases/{case_id}?done={quote(ACTIONS[action])}", status_code=303)


# ---------------------------------------------------------------- the month's rates

@router.get("/rates", response_class=HTMLResponse)
async def rates(request: Request, month: str | None = None, level: str = "street"):
    user = _user(request)
    if user is None:
        return _login_redirect()
    month = month or f"{local(now()):%Y-%m}"
    level = level if level in LEVELS else "street"

    def read():
        with read_scope() as session:
            return rates_for_month(session, month, level)
    try:
        rows = await run_in_threadpool(read)
    except ValueError as exc:
        return _page(request, "error.html", user, status_code=422, message=str(exc))
    return _page(request, "rates.html", user, rows=rows, month=month, level=level, levels=LEVELS)


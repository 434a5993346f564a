"""The console's pages: login, the escalation queue, a case with its actions, the month's rates, and the
delivery problems and ops alerts (投递异常 / 运维告警).

Thin routes: reads reuse the API's case detail, delivery list and evaluation service; decisions go through
`services.cases.decide` — the same writer as `POST /api/escalations/{id}/decision` — and wake the case run;
a re-send goes through `notifications.webhooks.resend`, closing an alert through the admin API's `resolve_alert`.
Every label people read comes from `api.console.labels`.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import col, select

from api.console import labels
from api.console import session as sessions
from api.deps import is_admin
from api.routes import deliveries as ops_api
from api.routes.cases import case_detail
from flows.control import wake_soon
from hotline.clock import local, now
from hotline.db import read_scope, session_scope
from hotline.settings import get_settings
from models import Case, Escalation, Unit
from models.units import Staff, StaffRole
from notifications import webhooks
from services import cases, policies, registry
from services.evaluation import LEVELS, rates_for_month

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
labels.install(templates.env)

TRIGGERS = labels.LABELS["trigger"]
URGENCY_ORDER = {"emergency": 0, "urgent": 1, "normal": 2}
ACTIONS = labels.LABELS["action"]
CONSOLE_ROLES = (StaffRole.supervisor, StaffRole.dispatcher)
CSRF_REFUSED = "缺少或错误的校验码 (CSRF), 操作已拒绝。"
INVALID_FIELDS = {"unit": "改派至", "until": "延期至", "leader": "包案领导", "action": "处理方式"}


def _user(request: Request) -> sessions.ConsoleUser | None:
    return sessions.read_session(request.cookies.get(sessions.COOKIE))


def _login_redirect() -> RedirectResponse:
    return RedirectResponse("/console/login", status_code=303)


def _page(request: Request, name: str, user, status_code: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"user": user, **context}, status_code=status_code)


def _names(session) -> dict:
    """Unit names (code → name) and staff names (id → name) for the labels."""
    return {"unit_names": {u.code: u.name for u in session.exec(select(Unit))},
            "staff_names": {str(s.id): s.name for s in session.exec(select(Staff))}}


def _posting_user(request: Request, csrf: str) -> tuple[sessions.ConsoleUser | None, Response | None]:
    """The logged-in user of a form post, or the answer that refuses the post (not logged in: to the login page;
    no or a wrong CSRF token: 403)."""
    user = _user(request)
    if user is None:
        return None, _login_redirect()
    if not sessions.csrf_ok(user, csrf):
        return user, _forbidden(request, user, CSRF_REFUSED)
    return user, None


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
    user, refused = _posting_user(request, csrf)
    if refused is not None:
        return refused
    response = _login_redirect()
    response.delete_cookie(sessions.COOKIE, path="/console")
    return response


# ---------------------------------------------------------------- the queue

def _queue(trigger: str | None) -> dict:
    """Open escalations, most urgent then oldest first, with counts per trigger and per street (of all open
    escalations, whatever the filter), and the cases waiting for a dispatcher."""
    with read_scope() as session:
        rows = session.exec(select(Escalation, Case).join(Case, Case.id == Escalation.case_id)
                            .where(Escalation.status == "open")).all()
        waiting = session.exec(select(Case).where(Case.status == "dispatched", col(Case.lead_unit).is_(None))
                               .order_by(col(Case.id))).all()
        names = _names(session)
    items = [{"id": e.id, "trigger": e.trigger, "from_unit": e.from_unit, "to_unit": e.to_unit,
              "opened_at": e.opened_at, "case_id": c.id, "number": c.number, "category": c.category,
              "urgency": c.urgency, "street": c.street} for e, c in rows]
    by_trigger = Counter(i["trigger"] for i in items)
    by_street = Counter(i["street"] for i in items)
    if trigger:
        items = [i for i in items if i["trigger"] == trigger]
    items.sort(key=lambda i: (URGENCY_ORDER.get(i["urgency"], 9), _utc(i["opened_at"]), i["id"]))
    categories = policies.categories()
    at = now()
    for i in items:
        i["waiting"] = _age(at - _utc(i["opened_at"]))
        i["category"] = categories.get(i["category"], i["category"])
    order = list(TRIGGERS)
    return {"items": items, "total": len(rows),
            "by_trigger": sorted(by_trigger.items(), key=lambda t: (order.index(t[0]) if t[0] in order
                                                                    else len(order), t[0])),
            "by_street": sorted(by_street.items(), key=lambda s: (-s[1], s[0] is None, s[0] or "")),
            "unrouted": [{"id": c.id, "number": c.number} for c in waiting], **names}


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=ZoneInfo("UTC"))


def _age(delta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 1440}天{minutes % 1440 // 60}小时" if minutes >= 1440 else (
        f"{minutes // 60}小时{minutes % 60}分" if minutes >= 60 else f"{minutes}分钟")


@router.get("", response_class=HTMLResponse)
async def queue(request: Request, trigger: str | None = None):
    user = _user(request)
    if user is None:
        return _login_redirect()
    data = await run_in_threadpool(_queue, trigger if trigger in TRIGGERS else None)
    return _page(request, "queue.html", user, trigger=trigger, **data)


# ---------------------------------------------------------------- a case and its actions

def _case_context(case_id: int) -> dict | None:
    detail = case_detail(case_id)
    if detail is None:
        return None
    with read_scope() as session:
        units = [{"code": u.code, "name": u.name, "level": u.level}
                 for u in session.exec(select(Unit).order_by(col(Unit.level), col(Unit.code)))]
        names = _names(session)
    return {"case": detail, "units": units, **names,
            "category": policies.categories().get(detail["category"], detail["category"])}


@router.get("/cases/{case_id}", response_class=HTMLResponse)
async def case_page(request: Request, case_id: int, done: str | None = None):
    user = _user(request)
    if user is None:
        return _login_redirect()
    return await _render_case(request, user, case_id, done=done)


async def _render_case(request: Request, user, case_id: int, done: str | None = None, error: str | None = None,
                       status_code: int = 200) -> HTMLResponse:
    context = await run_in_threadpool(_case_context, case_id)
    if context is None:
        return _page(request, "error.html", user, status_code=404, message=f"没有编号为 {case_id} 的诉求。")
    return _page(request, "case.html", user, status_code=status_code, actions=ACTIONS,
                 done=done if done in ACTIONS else None, error=error, **context)


@router.post("/escalations/{escalation_id}/decision")
async def decide(request: Request, escalation_id: int, csrf: str = Form(""), action: str = Form(""),
                 reason: str = Form(""), unit: str = Form(""), until: str = Form(""), leader: str = Form(""),
                 approve: str = Form("yes")):
    user, refused = _posting_user(request, csrf)
    if refused is not None:
        return refused

    def case_of() -> int | None:
        with read_scope() as session:
            e = session.get(Escalation, escalation_id)
            return e.case_id if e else None
    case_id = await run_in_threadpool(case_of)
    if case_id is None:
        return _page(request, "error.html", user, status_code=404, message=f"没有编号为 {escalation_id} 的升级。")

    problem = None
    if action not in ACTIONS:
        problem = "请选择处理方式。"
    elif not reason.strip():
        problem = f"请填写理由: {ACTIONS[action]}必须说明理由, 理由会记入时间线。未做任何更改。"
    until_at = None
    if not problem and action == "extend" and until:
        try:
            until_at = datetime.fromisoformat(until)
            until_at = until_at if until_at.tzinfo else until_at.replace(tzinfo=ZoneInfo(get_settings().timezone))
        except ValueError:
            problem = f"「延期至」的时间格式不对: {until}。未做任何更改。"
    if problem:
        return await _render_case(request, user, case_id, error=problem, status_code=422)

    def write():
        with session_scope() as session:
            result = cases.decide(session=session, escalation_id=escalation_id, action=action,
                                  reason=reason.strip(), actor=user.actor, unit=unit or None, until=until_at,
                                  approve=approve != "no", leader=leader.strip() or None)
            return result, session.get(Case, case_id).flow_run_id
    try:
        result, flow_run_id = await run_in_threadpool(write)
    except cases.Invalid as exc:
        field = INVALID_FIELDS.get(exc.field, exc.field)
        return await _render_case(request, user, case_id, status_code=422,
                                  error=f"{ACTIONS[action]}未完成: 请填写或检查「{field}」— {exc}。未做任何更改。")
    except cases.Conflict as exc:
        return await _render_case(request, user, case_id, status_code=409,
                                  error=f"{ACTIONS[action]}未完成 — {exc}。未做任何更改。")
    if result["signal_id"]:
        wake_soon(flow_run_id, "decision", result["signal_id"])
    return RedirectResponse(f"/console/cases/{case_id}?done={action}", status_code=303)


# ---------------------------------------------------------------- delivery problems and ops alerts

PROBLEM_STATUSES = ("dead_letter", "failed")  # what a person has to look at; pending ones are still being tried


def _role(user: sessions.ConsoleUser) -> str:
    return "admin" if user.actor == "admin" else user.actor.rsplit(":", 1)[-1]


def _may_resend(user: sessions.ConsoleUser) -> bool:
    return _role(user) in ("admin", StaffRole.supervisor)


def _may_resolve(user: sessions.ConsoleUser) -> bool:
    """Only the admin: the API's resolve records the admin as who closed the alert."""
    return _role(user) == "admin"


def _ops() -> dict:
    with read_scope() as session:
        rows = [d for status in PROBLEM_STATUSES
                for d in ops_api._list(session, status=status, unit=None, limit=200, with_attempts=False)]
        case_ids = {int(d["case_id"]) for d in rows if d["case_id"]}
        numbers = {str(i): n for i, n in session.exec(select(Case.id, Case.number)
                                                        .where(col(Case.id).in_(case_ids)))} if case_ids else {}
        names = _names(session)
    rows.sort(key=lambda d: int(d["id"]), reverse=True)
    return {"deliveries": rows, "numbers": numbers, **names}


@router.get("/ops", response_class=HTMLResponse)
async def ops_page(request: Request, resent: int | None = None, resolved: int | None = None):
    """投递异常 / 运维告警: dead-letter and refused webhook deliveries, and the open ops alerts."""
    user = _user(request)
    if user is None:
        return _login_redirect()
    return await _render_ops(request, user, resent=resent, resolved=resolved)


async def _render_ops(request: Request, user, resent: int | None = None, resolved: int | None = None,
                      error: str | None = None, status_code: int = 200) -> HTMLResponse:
    data = await run_in_threadpool(_ops)
    alerts = await ops_api.list_alerts(None, status="open")
    return _page(request, "ops.html", user, status_code=status_code, alerts=alerts, resent=resent,
                 resolved=resolved, error=error, may_resend=_may_resend(user), may_resolve=_may_resolve(user),
                 **data)


@router.post("/deliveries/{delivery_id}/resend")
async def resend(request: Request, delivery_id: int, csrf: str = Form("")):
    """Put a dead-letter or refused delivery back to pending (same webhook-id); the next watch round sends it."""
    user, refused = _posting_user(request, csrf)
    if refused is not None:
        return refused
    if not _may_resend(user):
        return _forbidden(request, user, "只有督办人员或管理员可以重发推送。")

    def write():
        with session_scope() as session:
            webhooks.resend(session, delivery_id)
    try:
        await run_in_threadpool(write)
    except webhooks.NotResendable as exc:
        return await _render_ops(request, user, status_code=409, error=(
            f"推送 #{delivery_id} 不能重发: 只有被拒收或投递失败 (死信) 的推送可以重发, "
            f"它现在是「{labels.zh(exc.current, 'delivery_status')}」。"))
    except LookupError:
        return _page(request, "error.html", user, status_code=404, message=f"没有编号为 {delivery_id} 的推送。")
    return RedirectResponse(f"/console/ops?resent={delivery_id}", status_code=303)


@router.post("/alerts/{alert_id}/resolve")
async def resolve(request: Request, alert_id: int, csrf: str = Form("")):
    user, refused = _posting_user(request, csrf)
    if refused is not None:
        return refused
    if not _may_resolve(user):
        return _forbidden(request, user, "只有管理员可以关闭运维告警。")
    try:
        await ops_api.resolve_alert(alert_id, None)
    except HTTPException:
        return _page(request, "error.html", user, status_code=404, message=f"没有编号为 {alert_id} 的告警。")
    return RedirectResponse(f"/console/ops?resolved={alert_id}", status_code=303)


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


"""The one service that writes cases (cf. Signalen's SignalManager).

Every change to a case, its work orders, its signals, its escalations and its timeline goes through here, inside
the caller's transaction, with the case row locked. Webhook deliveries are written in the same transaction as the
change that causes them (they are sent after commit by `notifications.webhooks`).

Two kinds of callers:
- the API records what arrives from outside (intake, a unit's answer, a follow-up) and leaves a signal;
- the case flow applies signals in order (`settle`) and moves the case through its stages.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, tuple_
from sqlmodel import Session, col, select

from hotline.clock import local, now, stored_utc
from models import Case, CaseSignal, Delivery, Escalation, TimelineEntry, Unit, WorkOrder
from models.states import (
    CASE_TRANSITIONS,
    IDEMPOTENT_EVENTS,
    ONCE_PER_ORDER_EVENTS,
    OPEN_WORK_ORDER,
    UNIT_EVENTS,
    CaseStatus,
    WorkOrderStatus,
)
from models.units import UnitLevel
from notifications.payloads import reminder_text, work_order_payload
from services import policies, registry, repeats
from services.evaluation import citizen_answered, evaluation_record
from services.routing import Place, route


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    def __init__(self, message: str, current: str):
        super().__init__(message)
        self.current = current


class Invalid(ValueError):
    """A request that is well-formed but names something the policy or registry does not allow (422)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------- small writers

def lock_case(session: Session, case_id: int) -> Case:
    case = session.exec(select(Case).where(Case.id == case_id).with_for_update()).first()
    if case is None:
        raise NotFound(f"case {case_id} not found")
    return case


def record(session: Session, case: Case, kind: str, note: str | None = None, actor: str = "system",
           **data: Any) -> None:
    """Append one entry to the case timeline."""
    session.add(TimelineEntry(case_id=case.id, kind=kind, note=note, actor=actor, data=data))


def move(session: Session, case: Case, to: CaseStatus) -> None:
    if to != case.status and to not in CASE_TRANSITIONS[case.status]:
        raise Conflict(f"case cannot go from {case.status} to {to}", current=case.status)
    case.status = to
    case.updated_at = now()
    session.add(case)


def add_signal(session: Session, case_id: int, kind: str, dedupe_key: str | None = None,
               **payload: Any) -> CaseSignal | None:
    """Leave a signal for the case flow; a signal with the same dedupe_key is written once."""
    if dedupe_key and session.exec(select(CaseSignal.id).where(CaseSignal.dedupe_key == dedupe_key)).first():
        return None
    signal = CaseSignal(case_id=case_id, kind=kind, payload=payload, dedupe_key=dedupe_key)
    session.add(signal)
    session.flush()
    return signal


def queue_delivery(session: Session, unit: Unit, event_type: str, data: dict, *, key: str,
                   case: Case | None = None, work_order: WorkOrder | None = None,
                   deliberation_id: int | None = None) -> None:
    """Write a webhook delivery; `key` makes it idempotent (a replay writes nothing new). `case` or
    `deliberation_id` say whose run sends it (`deliver_due`); the deadline watch sends whatever is left."""
    msg_id = f"msg_{key}"
    if session.exec(select(Delivery.id).where(Delivery.msg_id == msg_id)).first():
        return
    session.add(Delivery(
        msg_id=msg_id, unit=unit.code, case_id=case.id if case else None,
        work_order_id=work_order.id if work_order else None, deliberation_id=deliberation_id, event_type=event_type,
        payload={"type": event_type, "timestamp": local(now()).isoformat(), "data": data},
        status="pending" if unit.webhook_url else "no_endpoint",
    ))


# ---------------------------------------------------------------- intake (受理)

def create_case(*, session: Session, fields: dict[str, Any]) -> tuple[Case, bool]:
    """Record a case, or return the one already recorded for the same source + source_ref."""
    return create_cases(session=session, many=[fields])[0]


def create_cases(*, session: Session, many: list[dict[str, Any]]) -> list[tuple[Case, bool]]:
    """Record several cases at once, in order: (case, created) for each, the one already recorded for the same
    source + source_ref when there is one (twice in `many`: recorded once). The ORM sends each table's rows as one
    statement, so a burst's accepts share their round trips and their commit (services/intake.py)."""
    keys = [(f["source"], f["source_ref"]) for f in many]
    found = {(c.source, c.source_ref): c for c in session.exec(
        select(Case).where(tuple_(col(Case.source), col(Case.source_ref)).in_(set(keys))))}
    existing = set(found)
    for key, fields in zip(keys, many):
        if key not in found:
            case = Case(**fields)
            case.citizen_key = repeats.citizen_key(case.citizen_phone) if not case.anonymous else None
            found[key] = case
            session.add(case)
    new = [found[key] for key in dict.fromkeys(keys) if key not in existing]
    session.flush()  # one INSERT for all, returning their ids
    for case in new:
        case.number = f"{local(case.created_at):%Y%m%d}{case.id:06d}"
        session.add(case)
        record(session, case, "received", f"受理: {case.source}", source=case.source, urgency=case.urgency)
    session.flush()
    seen: set[tuple[str, str]] = set()
    results = []
    for key in keys:
        results.append((found[key], key not in existing and key not in seen))
        seen.add(key)
    return results


def find_by_source(session: Session, source: str, source_ref: str) -> Case | None:
    return session.exec(select(Case).where(Case.source == source, Case.source_ref == source_ref)).first()


# ---------------------------------------------------------------- collection and dispatch (flow)

def is_received(session: Session, case_id: int) -> bool:
    """Nothing done yet but 受理 (recorded): collect and dispatch still to do."""
    case = session.get(Case, case_id)
    if case is None:
        raise NotFound(f"case {case_id} not found")
    return case.status == CaseStatus.received


def collect(session: Session, case_id: int) -> Case:
    """Normalise the category and fix the jurisdiction from the location against the unit registry."""
    case = lock_case(session, case_id)
    if case.status != CaseStatus.received or _has_entry(session, case, "collected"):
        return case
    known = policies.categories()
    if case.category not in known:
        record(session, case, "category_unknown", f"未知分类 {case.category}, 按未分类处理", given=case.category)
        case.category = "uncategorised"
    place = registry.resolve_place(session, case.location or {})
    case.district, case.street, case.community = place.district, place.street, place.community
    session.add(case)
    repeats.link_repeats(session, case)  # 重复诉求 and hot spots; may raise the urgency before dispatch
    record(session, case, "collected", "信息采集完成", category=case.category,
           district=place.district, street=place.street, community=place.community)
    return case


def dispatch(session: Session, case_id: int) -> Case:
    """派单: the responsibility list picks the lead (and co-handling) units; no rule -> 直派 to the street.
    A case recorded with a `directed_unit` (指定承办) goes to that unit when it exists."""
    case = lock_case(session, case_id)
    if case.status != CaseStatus.received:
        return case
    move(session, case, CaseStatus.dispatched)
    directed = session.get(Unit, case.directed_unit) if case.directed_unit else None
    if directed is not None:
        record(session, case, "routed", f"指定承办: {directed.name}", rule="指定承办", unit=directed.code,
               co_units=[])
        _assign(session, case, directed, reason="directed")
        return case
    if case.directed_unit:
        record(session, case, "route_unit_unknown", f"指定的单位 {case.directed_unit} 不存在, 按权责清单派单",
               rule="指定承办", unit=case.directed_unit)
    _route_and_assign(session, case)
    return case


def _route_and_assign(session: Session, case: Case, *, exclude: frozenset[str] = frozenset(),
                      reason: str | None = None) -> bool:
    place = Place(case.district, case.street, case.community)
    chosen = route(policies.routing_policy(), case.category, place, case.urgency, local(now()).time(), exclude)
    unit = session.get(Unit, chosen.unit) if chosen.unit else None
    if unit is None and chosen.unit:
        record(session, case, "route_unit_unknown", f"规则指向的单位 {chosen.unit} 不存在, 改为直派",
               rule=chosen.rule, unit=chosen.unit)
    unit = unit or _first_unit(session, *(c for c in (place.street, place.district) if c not in exclude))
    if unit is None:
        _escalate(session, case, None, "unroutable", to_unit=None)
        return False
    record(session, case, "routed", f"派单依据: {chosen.rule}", rule=chosen.rule, unit=unit.code,
           co_units=list(chosen.co_units))
    _assign(session, case, unit, reason=reason or ("dispatch" if chosen.rule != "直派" else "direct"))
    for code in chosen.co_units:
        if (co := session.get(Unit, code)) is not None:
            _assign(session, case, co, reason="co_dispatch", role="co")
    return True


# ---------------------------------------------------------------- units answering (API)

def apply_unit_event(*, session: Session, unit: Unit, work_order_id: int, event: dict[str, Any]) -> dict:
    """A unit's answer on its own work order. Returns {"status", "duplicate"}; raises NotFound / Conflict."""
    wo = session.get(WorkOrder, work_order_id)
    if wo is None or wo.unit != unit.code:
        raise NotFound(f"work order {work_order_id} not found")
    case = lock_case(session, wo.case_id)
    session.refresh(wo)
    kind = event["type"]
    if kind not in UNIT_EVENTS:
        raise Conflict(f"event {kind!r} is not handled here yet", current=wo.status)
    allowed_from, target = UNIT_EVENTS[kind]
    event_id = event.get("event_id")
    if (_received_before(session, case, wo, kind, event_id) or IDEMPOTENT_EVENTS.get(kind) == wo.status
            or (kind in ONCE_PER_ORDER_EVENTS and _answers(session, case, wo, kind))):
        return {"status": wo.status, "duplicate": True}
    if wo.status not in allowed_from:
        raise Conflict(f"cannot {kind} a work order that is {wo.status}", current=wo.status)
    at = now()
    if wo.paused_at is not None:  # any answer from the unit restarts the clock
        _resume_clock(session, case, wo, at)
    if kind == "progress" and event.get("pause_reason"):
        allowed = policies.sla_policy().pause_reasons
        if event["pause_reason"] not in allowed:
            raise Invalid("pause_reason", f"not a reason that pauses the clock; allowed: {allowed}")
        wo.paused_at, wo.pause_reason = at, event["pause_reason"]
        record(session, case, "sla.paused", f"暂停计时: {event['pause_reason']}", actor=unit.code,
               work_order_id=wo.id, reason=event["pause_reason"])
    wo.status = target
    wo.updated_at = at
    if kind == "contacted" or (kind == "complete" and wo.responded_at is None):
        wo.responded_at = wo.responded_at or at
    if kind == "complete":
        wo.completed_at, wo.resolved = at, event.get("resolved")
        wo.note = event.get("note") or wo.note
    if kind == "reject":
        wo.note = event.get("reason")
    session.add(wo)
    record(session, case, f"unit.{kind}", event.get("note") or event.get("reason"), actor=unit.code,
           work_order_id=wo.id, **({"resolved": event.get("resolved")} if kind == "complete" else {}),
           **({"event_id": event_id} if event_id else {}))
    if wo.role == "lead" and kind not in LEAD_EVENTS_FOR_THE_FLOW:  # recorded above; nothing for the run to do
        return {"status": wo.status, "duplicate": False, "signal_id": None}
    signal = add_signal(session, case.id, "unit_event", work_order_id=wo.id, type=kind, note=event.get("note"),
                        at=local(at).isoformat())
    return {"status": wo.status, "duplicate": False, "signal_id": signal.id if signal else None}


# A lead unit's answers that move the case (`_on_unit_event`): each leaves a signal and wakes the case's run. Its
# `contacted` and `progress` notes change the order, its clock and the timeline (all written above) but nothing the
# run does, so they do not wake it: a run execution costs Prefect a dozen calls and events. A co-handling unit's
# answers all go to the lead unit (`_report_to_lead`), so each of them wakes the run.
LEAD_EVENTS_FOR_THE_FLOW = frozenset({"accept", "complete", "reject"})


def record_follow_up(*, session: Session, case_id: int, answer: dict[str, Any], actor: str) -> dict:
    """回访: the citizen's answer, or one call attempt that did not reach them. Attempts are counted; only the
    answer or the last allowed attempt (policy `follow_up.max_attempts`) leaves a signal that moves the case."""
    case = lock_case(session, case_id)
    if case.status != CaseStatus.awaiting_follow_up:
        raise Conflict(f"case is {case.status}, not awaiting a follow-up", current=case.status)
    if session.exec(select(CaseSignal.id).where(
            CaseSignal.case_id == case.id, CaseSignal.kind == "follow_up",
            CaseSignal.processed_at.is_(None))).first():  # type: ignore[union-attr]
        raise Conflict("a follow-up answer for this round is already being processed", current=case.status)
    signal = None
    max_attempts = policies.sla_policy().follow_up.max_attempts
    if answer["reached"]:
        record(session, case, "follow_up.answered", answer.get("note"), actor=actor, reached=True,
               resolved=answer.get("resolved"), satisfaction=answer.get("satisfaction"))
        signal = add_signal(session, case.id, "follow_up", **answer)
    else:
        case.follow_up_attempts += 1
        session.add(case)
        record(session, case, "follow_up.attempt", answer.get("note") or f"第 {case.follow_up_attempts} 次回访未联系上",
               actor=actor, attempt=case.follow_up_attempts, max_attempts=max_attempts)
        if case.follow_up_attempts >= max_attempts:
            signal = add_signal(session, case.id, "follow_up", **answer)
    return {"signal_id": signal.id if signal else None, "attempts": case.follow_up_attempts,
            "max_attempts": max_attempts, "flow_run_id": case.flow_run_id}


# ---------------------------------------------------------------- applying signals (flow)

def _pending(case_id: int):
    """A case's signals not applied yet, in arrival order."""
    return (select(CaseSignal).where(CaseSignal.case_id == case_id, col(CaseSignal.processed_at).is_(None))
            .order_by(col(CaseSignal.id)))


def pending_signals(session: Session, case_id: int) -> list[CaseSignal]:
    return list(session.exec(_pending(case_id)).all())


def status_of(session: Session, case_id: int) -> CaseStatus:
    return session.exec(select(Case.status).where(Case.id == case_id)).one()


def first_pending_signal(session: Session, case_id: int) -> tuple[str, int] | None:
    signal = session.exec(_pending(case_id).limit(1)).first()
    return (signal.kind, signal.id) if signal else None


def waiting_runs(session: Session, *, written_since: datetime, older_than: datetime) -> list[tuple[str, int]]:
    """(flow run id, first pending signal id) of the case runs the deadline watch wakes: those with a signal written
    since `written_since` (by the watch's own round) or older than `older_than` (its writer's wake was lost). A
    signal an answer wrote a moment ago is left to that answer's own wake: a second wake would only be refused,
    the run being resumed already (about two refused resumes per lifecycle in a bench, docs/performance.md)."""
    return first_signal_per_run(session.exec(
        select(Case.flow_run_id, CaseSignal.id)
        .join(CaseSignal, col(CaseSignal.case_id) == Case.id)
        .where(col(CaseSignal.processed_at).is_(None), col(Case.flow_run_id).is_not(None),
               or_(CaseSignal.created_at >= written_since, CaseSignal.created_at <= older_than))
        .order_by(col(CaseSignal.id))).all())


def first_signal_per_run(rows: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """(run id, signal id) rows in signal order -> the first signal of each run."""
    first: dict[str, int] = {}
    for run_id, signal_id in rows:
        first.setdefault(run_id, signal_id)
    return list(first.items())


def settle(session: Session, case_id: int, applied: list[str] | None = None) -> CaseStatus:
    """Apply every pending signal in arrival order; each is applied once (marked processed with the change).
    `applied`, if given, receives "<kind> #<signal id>" of each (for the run's log)."""
    case = lock_case(session, case_id)
    for signal in pending_signals(session, case_id):
        if applied is not None:
            applied.append(f"{signal.kind} #{signal.id}")
        handler = _HANDLERS.get(signal.kind)
        if handler is not None and case.status not in (CaseStatus.evaluating, CaseStatus.closed):
            handler(session, case, signal.payload)
        signal.processed_at = now()
        session.add(signal)
    return case.status


def _on_unit_event(session: Session, case: Case, p: dict) -> None:
    wo = session.get(WorkOrder, p["work_order_id"])
    if wo is not None and wo.role == "co" and case.lead_unit and case.lead_unit != wo.unit:
        _report_to_lead(session, case, wo, p)
        return
    if wo is None or wo.role != "lead" or wo.unit != case.lead_unit or wo.id != _current_order_id(session, case):
        return  # an answer on an order that is no longer the current one changes nothing at case level
    if p["type"] == "accept" and case.status == CaseStatus.dispatched:
        move(session, case, CaseStatus.handling)
        case.owner_unit = case.owner_unit or wo.unit  # 首接负责: the first unit to accept owns the case
        record(session, case, "handling", f"{wo.unit} 签收办理", unit=wo.unit, owner=case.owner_unit)
    elif p["type"] == "complete" and wo.status == WorkOrderStatus.completed:
        _request_follow_up(session, case)
    elif p["type"] == "reject" and wo.status == WorkOrderStatus.rejected:
        _after_reject(session, case, wo)


def _report_to_lead(session: Session, case: Case, wo: WorkOrder, p: dict) -> None:
    """首接负责: co-handling units report to the lead unit, which coordinates them."""
    lead = session.get(Unit, case.lead_unit)
    queue_delivery(session, lead, "work_order.co_report",
                   {"case_number": case.number, "co_unit": wo.unit, "co_work_order_id": str(wo.id),
                    "type": p["type"], "note": p.get("note"), "at": p.get("at")},
                   key=f"wo{wo.id}-co-{p['type']}-{p.get('at')}", case=case, work_order=wo)


def _after_reject(session: Session, case: Case, wo: WorkOrder) -> None:
    """退单: re-route by policy (the street, the next matching rule, or a dispatcher); too many bounces escalate."""
    returned = list(session.exec(select(WorkOrder.unit).where(
        WorkOrder.case_id == case.id, WorkOrder.role == "lead", WorkOrder.status == WorkOrderStatus.rejected)).all())
    move(session, case, CaseStatus.dispatched)
    limit = policies.escalation_policy().max_bounces
    if len(returned) > limit:
        record(session, case, "bounced_too_often", f"已退单 {len(returned)} 次, 超过 {limit} 次, 升级督办",
               bounces=len(returned))
        _escalate(session, case, wo, "bounced", to_unit=None)
        return
    mode = policies.routing_policy().on_reject
    if mode == "dispatcher":
        record(session, case, "awaiting_dispatch", f"{wo.unit} 退单, 等待派单员改派", from_unit=wo.unit)
        return
    if mode == "next_rule":
        record(session, case, "redispatched", f"{wo.unit} 退单, 按下一条规则改派", from_unit=wo.unit, reason=wo.note)
        _route_and_assign(session, case, exclude=frozenset(returned), reason="reject")
        return
    target = _first_unit(session, *(c for c in (case.street, _parent_code(session, wo.unit), case.district)
                                    if c and c not in returned))
    if target is None:
        _escalate(session, case, wo, "unroutable", to_unit=None)
        return
    record(session, case, "redispatched", f"{wo.unit} 退单, 改派 {target.code}", from_unit=wo.unit,
           unit=target.code, reason=wo.note)
    _assign(session, case, target, reason="reject")


def _on_deadline_lapsed(session: Session, case: Case, p: dict) -> None:
    wo = session.get(WorkOrder, p["work_order_id"])
    if wo is None or wo.status not in OPEN_WORK_ORDER:
        return
    trigger = "overdue_response" if p["which"] == "respond" else "overdue_completion"
    parent_code = _parent_code(session, wo.unit)
    parent = session.get(Unit, parent_code) if parent_code else None
    record(session, case, "deadline_lapsed", f"{wo.unit} {'响应' if p['which'] == 'respond' else '办结'}超时",
           work_order_id=wo.id, which=p["which"], unit=wo.unit)
    ladder = policies.escalation_policy()
    escalate_up = ladder.trigger(trigger).escalate_up
    # above the district: 包案 by the leader the ladder names, with that rung's own allowed time
    if parent is None and escalate_up and ladder.take_over and wo.role == "lead" and not case.taken_over_by:
        _escalate(session, case, wo, trigger, to_unit=None, leader=ladder.take_over.leader)
        _take_over(session, case, ladder.take_over.leader, reason=f"{wo.unit} 超时, 按升级规则包案")
        return
    if parent is None or not escalate_up:
        _escalate(session, case, wo, trigger, to_unit=None)  # top of the ladder: supervisors take it from here
        return
    wo.status, wo.updated_at = WorkOrderStatus.lapsed, now()
    session.add(wo)
    queue_delivery(session, session.get(Unit, wo.unit), "work_order.escalated",
                   {"work_order_id": wo.id, "case_number": case.number, "reason": trigger, "escalated_to": parent.code},
                   key=f"wo{wo.id}-escalated", case=case, work_order=wo)
    move(session, case, CaseStatus.dispatched)
    _escalate(session, case, wo, trigger, to_unit=parent.code)
    if wo.role == "lead":
        _assign(session, case, parent, reason="escalation")


def _on_follow_up(session: Session, case: Case, p: dict) -> None:
    if case.status != CaseStatus.awaiting_follow_up:
        return
    if not p.get("reached"):
        _finish_follow_up(session, case, "not_reached")
        return
    case.resolved, case.satisfaction = p.get("resolved"), p.get("satisfaction")
    if p.get("resolved") and p.get("satisfaction") in ("satisfied", "basically_satisfied"):
        _finish_follow_up(session, case, "answered")
    elif case.reopen_count == 0 and policies.sla_policy().follow_up.first_failure == "reopen":
        case.reopen_count = 1
        case.follow_up_attempts = 0  # the 重办 gets its own follow-up round
        move(session, case, CaseStatus.dispatched)
        unit = _reopen_unit(session, case)
        record(session, case, "reopened", f"回访不满意或未解决, 重办: {unit.code}", unit=unit.code)
        _assign(session, case, unit, reason="reopen")
    else:  # the second failure, or the first one when the policy escalates at once: supervisors take it
        _escalate(session, case, None, "unsatisfied_twice" if case.reopen_count else "unsatisfied", to_unit=None)
        _finish_follow_up(session, case, "answered")


def _on_follow_up_lapsed(session: Session, case: Case, p: dict) -> None:
    if case.status == CaseStatus.awaiting_follow_up and case.follow_up_due_at and case.follow_up_due_at <= now():
        _finish_follow_up(session, case, "not_reached")


def _on_decision(session: Session, case: Case, p: dict) -> None:
    """A supervisor's or dispatcher's decision that moves the case: reassign, or close."""
    for wo in _open_orders(session, case, roles=("lead",) if p["action"] == "reassign" else ("lead", "co")):
        _withdraw(session, case, wo, reason=p["action"])
    if p["action"] == "reassign":
        unit = session.get(Unit, p["unit"])
        move(session, case, CaseStatus.dispatched)
        record(session, case, "reassigned", f"改派 {unit.name}: {p.get('reason') or ''}", actor=p.get("actor", "system"),
               unit=unit.code)
        _assign(session, case, unit, reason="reassign")
    elif p["action"] == "close":
        case.follow_up_outcome = "closed_by_supervisor"
        record(session, case, "closed_by_supervisor", p.get("reason"), actor=p.get("actor", "system"))
        move(session, case, CaseStatus.evaluating)


_HANDLERS = {
    "decision": _on_decision,
    "unit_event": _on_unit_event,
    "deadline_lapsed": _on_deadline_lapsed,
    "follow_up": _on_follow_up,
    "follow_up_lapsed": _on_follow_up_lapsed,
}


# ---------------------------------------------------------------- waiting and closing (flow)

def next_wait(session: Session, case_id: int) -> int | None:
    """Before a suspension: the number of the new wait (its own pause key and run-input key), or None when signals
    are already pending (apply them first). Every suspension takes a new number, so a resumed run never proposes
    an earlier wait again: it re-reads the case from our DB and waits anew."""
    case = lock_case(session, case_id)
    if first_pending_signal(session, case_id) is not None:
        return None
    case.wait_seq += 1
    session.add(case)
    return case.wait_seq


def evaluate_and_close(session: Session, case_id: int) -> Case:
    """考评 and 办结: record whether the case was responded to and completed in time, resolved, and satisfied."""
    case = lock_case(session, case_id)
    if case.status != CaseStatus.evaluating:
        return case
    orders = list(session.exec(select(WorkOrder).where(WorkOrder.case_id == case.id)
                               .order_by(col(WorkOrder.id))).all())
    leads = [o for o in orders if o.role == "lead"]
    case.responded_in_time = _responded_in_time(leads, case.lead_unit)
    case.completed_in_time = bool(leads) and not any(o.due_lapsed or o.respond_lapsed for o in leads) and any(
        o.completed_at is not None for o in leads)
    if not citizen_answered(case):  # not reached or anonymous: the unit's own report counts
        last_done = next((o for o in reversed(leads) if o.status == WorkOrderStatus.completed), None)
        case.resolved = last_done.resolved if last_done else None
    for wo in _open_orders(session, case, roles=("lead", "co")):
        _withdraw(session, case, wo, reason="case_closed")
    case.closed_at = now()
    move(session, case, CaseStatus.closed)
    lead = session.get(Unit, case.lead_unit) if case.lead_unit else None
    record(session, case, "closed", "办结", **evaluation_record(case, str(lead.level) if lead else None))
    return case


def _responded_in_time(leads: list[WorkOrder], unit: str | None) -> bool:
    """响应 of the unit the case is attributed to: its own first lead order on the case had its first contact
    with the citizen (`responded_at`) by that order's `respond_by` and did not lapse (docs/evaluation.md). Another
    unit's order — one that 退单'd the case before, or lapsed and was escalated — does not count for it."""
    own = next((o for o in leads if o.unit == unit), None)
    return bool(own and own.responded_at and own.responded_at <= own.respond_by and not own.respond_lapsed)


# ---------------------------------------------------------------- helpers

def _assign(session: Session, case: Case, unit: Unit, *, reason: str, role: str = "lead") -> WorkOrder:
    sla_policy = policies.sla_policy()
    sla = sla_policy.for_case(case.urgency, case.category)
    if reason == "escalation":  # each level of the ladder has its own allowed time
        sla = policies.escalation_policy().levels.get(unit.level) or sla
    at, calendar = now(), policies.calendar()
    respond_by, due_at = sla.respond_within.after(at, calendar), sla.due_within.after(at, calendar)
    fixed = stored_utc(case.directed_due_at) if case.directed_due_at is not None else None
    if fixed is not None and role == "lead" and reason != "escalation" and fixed > at:
        # 限期办结: the case's own deadline (a decision item's due date) replaces the sla.yaml time; the ladder's
        # levels keep their own times once it has lapsed and escalated
        due_at, respond_by = fixed, min(respond_by, fixed)
    wo = WorkOrder(case_id=case.id, unit=unit.code, role=role, reason=reason, respond_by=respond_by, due_at=due_at)
    wo.next_reminder_at = _reminder_at(wo, at, sla_policy.reminders, 0)
    session.add(wo)
    session.flush()
    if role == "lead":
        case.lead_unit = unit.code
        session.add(case)
    record(session, case, "work_order.assigned", f"派至 {unit.name}", unit=unit.code, work_order_id=wo.id,
           role=role, reason=reason)
    queue_delivery(session, unit, "work_order.assigned", work_order_payload(case, wo, unit),
                   key=f"wo{wo.id}-assigned", case=case, work_order=wo)
    return wo


def _reminder_at(wo: WorkOrder, start: datetime, fractions: list[float], n: int) -> datetime | None:
    return start + (wo.due_at - start) * fractions[n] if n < len(fractions) else None


def _resume_clock(session: Session, case: Case, wo: WorkOrder, at: datetime) -> None:
    """The SLA clock restarts: every deadline of the order moves by the time it stood still."""
    paused = at - wo.paused_at
    wo.due_at += paused
    if wo.responded_at is None:
        wo.respond_by += paused
    if wo.next_reminder_at is not None:
        wo.next_reminder_at += paused
    record(session, case, "sla.resumed", f"恢复计时, 暂停 {int(paused.total_seconds())} 秒", work_order_id=wo.id,
           paused_seconds=int(paused.total_seconds()), due_at=local(wo.due_at).isoformat())
    wo.paused_at, wo.pause_reason = None, None


def _open_orders(session: Session, case: Case, roles: tuple[str, ...]) -> list[WorkOrder]:
    return list(session.exec(select(WorkOrder).where(
        WorkOrder.case_id == case.id, col(WorkOrder.role).in_(roles),
        col(WorkOrder.status).in_([s.value for s in OPEN_WORK_ORDER]))).all())


def _withdraw(session: Session, case: Case, wo: WorkOrder, *, reason: str) -> None:
    wo.status, wo.updated_at = WorkOrderStatus.withdrawn, now()
    session.add(wo)
    record(session, case, "work_order.withdrawn", f"撤回 {wo.unit} 的工单", work_order_id=wo.id, reason=reason)
    queue_delivery(session, session.get(Unit, wo.unit), "work_order.withdrawn",
                   {"work_order_id": str(wo.id), "case_number": case.number, "reason": reason},
                   key=f"wo{wo.id}-withdrawn", case=case, work_order=wo)


def _request_follow_up(session: Session, case: Case) -> None:
    if case.anonymous:
        record(session, case, "follow_up.skipped", "匿名诉求, 不回访, 以承办单位报告为准")
        move(session, case, CaseStatus.awaiting_follow_up)
        _finish_follow_up(session, case, "skipped_anonymous")
        return
    case.follow_up_due_at = now() + policies.sla_policy().follow_up.window
    move(session, case, CaseStatus.awaiting_follow_up)
    record(session, case, "follow_up.requested", "待回访", due_at=local(case.follow_up_due_at).isoformat())


def _finish_follow_up(session: Session, case: Case, outcome: str) -> None:
    case.follow_up_outcome = outcome
    if outcome == "not_reached" and citizen_answered(case):  # a 重办 not reached: the earlier answer stands
        record(session, case, "follow_up.not_reached", f"回访未联系上, 以重办前的回访结果为准: {case.satisfaction}",
               earlier_answer=case.satisfaction, earlier_resolved=case.resolved)
    elif outcome == "not_reached":
        record(session, case, "follow_up.not_reached", "回访未联系上")
    move(session, case, CaseStatus.evaluating)


def _escalate(session: Session, case: Case, wo: WorkOrder | None, trigger: str, *, to_unit: str | None,
              from_unit: str | None = None, **decision: Any) -> Escalation:
    """Open an escalation record for supervisors and notify whom the ladder policy names."""
    from_unit = from_unit or (wo.unit if wo else None)
    escalation = Escalation(case_id=case.id, work_order_id=wo.id if wo else None, trigger=trigger,
                            from_unit=from_unit, to_unit=to_unit, decision=decision)
    session.add(escalation)
    session.flush()
    record(session, case, "escalated", f"升级: {trigger}" + (f" → {to_unit}" if to_unit else ", 待督办"),
           trigger=trigger, from_unit=from_unit, to_unit=to_unit, escalation_id=escalation.id)
    targets = {"district": case.district, "street": case.street, "lead_unit": case.lead_unit}
    for who in policies.escalation_policy().trigger(trigger).notify:
        unit = session.get(Unit, targets[who]) if targets.get(who) else None
        if unit is not None:
            queue_delivery(session, unit, "escalation.opened",
                           {"escalation_id": str(escalation.id), "case_number": case.number, "trigger": trigger,
                            "from_unit": from_unit, "to_unit": to_unit},
                           key=f"esc{escalation.id}-{unit.code}", case=case, work_order=wo)
    return escalation


def _current_order_id(session: Session, case: Case) -> int | None:
    return session.exec(select(WorkOrder.id).where(WorkOrder.case_id == case.id, WorkOrder.role == "lead")
                        .order_by(col(WorkOrder.id).desc())).first()


def _parent_code(session: Session, unit_code: str) -> str | None:
    unit = session.get(Unit, unit_code)
    if unit is None:
        return None
    if unit.parent:
        return unit.parent
    if unit.level in (UnitLevel.department, UnitLevel.utility):  # departments answer to the district
        district = session.exec(select(Unit).where(Unit.level == UnitLevel.district)).first()
        return district.code if district else None
    return None


def _first_unit(session: Session, *codes: str | None) -> Unit | None:
    for code in codes:
        if code and (unit := session.get(Unit, code)) is not None:
            return unit
    return None


def _reopen_unit(session: Session, case: Case) -> Unit:
    """重办 goes back to the owner (首接负责: the first unit that accepted owns the case to the end); a case that
    no unit accepted goes back to its lead unit."""
    return _first_unit(session, case.owner_unit, case.lead_unit)


def _has_entry(session: Session, case: Case, kind: str) -> bool:
    return session.exec(select(TimelineEntry.id).where(TimelineEntry.case_id == case.id,
                                                       TimelineEntry.kind == kind)).first() is not None


def lapsed_deadlines(session: Session, at: datetime, limit: int = 500) -> list[tuple[WorkOrder, str]]:
    """Open orders whose respond_by or due_at has passed and that were not yet signalled (indexed queries)."""
    open_states = [s.value for s in OPEN_WORK_ORDER]
    respond = session.exec(select(WorkOrder).where(
        col(WorkOrder.status).in_(open_states), WorkOrder.respond_lapsed == False,  # noqa: E712
        WorkOrder.respond_by <= at, WorkOrder.responded_at.is_(None),  # type: ignore
        WorkOrder.paused_at.is_(None)).limit(limit)).all()  # type: ignore
    due = session.exec(select(WorkOrder).where(
        col(WorkOrder.status).in_(open_states), WorkOrder.due_lapsed == False,  # noqa: E712
        WorkOrder.due_at <= at, WorkOrder.paused_at.is_(None)).limit(limit)).all()  # type: ignore
    return [(wo, "respond") for wo in respond] + [(wo, "due") for wo in due]


def signal_lapse(session: Session, wo: WorkOrder, which: str) -> CaseSignal | None:
    """Mark the order as lapsed for `which` deadline and leave a signal for its case (once per deadline: one that
    was moved since, by 延期 or 包案, can lapse again)."""
    if which == "respond":
        wo.respond_lapsed, deadline = True, wo.respond_by
    else:
        wo.due_lapsed, deadline = True, wo.due_at
    session.add(wo)
    return add_signal(session, wo.case_id, "deadline_lapsed",
                      dedupe_key=f"lapse-{wo.id}-{which}-{int(deadline.timestamp())}",
                      work_order_id=wo.id, which=which)


def signal_follow_up_lapses(session: Session, at: datetime, limit: int = 500) -> list[int]:
    """Leave a follow_up_lapsed signal (once per round) for cases whose follow-up window has passed."""
    cases = session.exec(select(Case).where(
        Case.status == CaseStatus.awaiting_follow_up, Case.follow_up_due_at <= at).limit(limit)).all()
    return [case.id for case in cases
            if add_signal(session, case.id, "follow_up_lapsed", dedupe_key=f"fu-lapse-{case.id}-{case.reopen_count}")]


def request_extension(*, session: Session, unit: Unit, work_order_id: int, reason: str, until: datetime,
                      event_id: str | None = None) -> dict:
    """延期: a unit asks for more time; a supervisor decides (recorded as an escalation to review). One request per
    order is pending at a time: the same request again is a repeat, another one a Conflict until it is decided."""
    wo = session.get(WorkOrder, work_order_id)
    if wo is None or wo.unit != unit.code:
        raise NotFound(f"work order {work_order_id} not found")
    case = lock_case(session, wo.case_id)
    session.refresh(wo)
    if _received_before(session, case, wo, "extend", event_id):
        return {"status": wo.status, "duplicate": True, "signal_id": None}
    pending = _pending_extension(session, wo)
    if pending is not None:
        requested = datetime.fromisoformat(pending.decision["requested_until"])
        if requested == until:
            return {"status": wo.status, "duplicate": True, "signal_id": None}
        raise Conflict(f"an extension until {local(requested).isoformat()} is still pending (escalation "
                       f"{pending.id}); ask again once a supervisor has decided", current=wo.status)
    if wo.status not in OPEN_WORK_ORDER:
        raise Conflict(f"cannot extend a work order that is {wo.status}", current=wo.status)
    record(session, case, "unit.extend", reason, actor=unit.code, work_order_id=wo.id, until=until.isoformat(),
           **({"event_id": event_id} if event_id else {}))
    _escalate(session, case, wo, "extension_request", to_unit=None, requested_until=until.isoformat(), reason=reason)
    return {"status": wo.status, "duplicate": False, "signal_id": None}


def _pending_extension(session: Session, wo: WorkOrder) -> Escalation | None:
    return session.exec(select(Escalation).where(
        Escalation.work_order_id == wo.id, Escalation.trigger == "extension_request", Escalation.status == "open")
        .order_by(col(Escalation.id))).first()


def _answers(session: Session, case: Case, wo: WorkOrder, kind: str | None = None) -> list[TimelineEntry]:
    """The unit's answers on this order as the timeline recorded them (`unit.<type>` entries), oldest first."""
    query = select(TimelineEntry).where(TimelineEntry.case_id == case.id)
    query = query.where(TimelineEntry.kind == f"unit.{kind}") if kind else query.where(
        col(TimelineEntry.kind).startswith("unit."))
    return [e for e in session.exec(query.order_by(col(TimelineEntry.id))).all()
            if (e.data or {}).get("work_order_id") == wo.id]


def _received_before(session: Session, case: Case, wo: WorkOrder, kind: str, event_id: str | None) -> bool:
    """Whether the answer with this client `event_id` was already received on this order. The same id sent
    with another type is a Conflict: an event id names one event."""
    if not event_id:
        return False
    for entry in _answers(session, case, wo):
        if entry.data.get("event_id") == event_id:
            if entry.kind != f"unit.{kind}":
                raise Conflict(f"event_id {event_id!r} was already used for a {entry.kind.removeprefix('unit.')} "
                               f"event on this work order", current=wo.status)
            return True
    return False


# ---------------------------------------------------------------- reminders (deadline watch)

def send_reminders(session: Session, at: datetime, limit: int = 500) -> int:
    """`work_order.reminder` at the policy's fractions of the allowed time (e.g. 50 % and 80 %), once each."""
    orders = session.exec(select(WorkOrder).where(
        col(WorkOrder.status).in_([s.value for s in OPEN_WORK_ORDER]), WorkOrder.next_reminder_at <= at,
        WorkOrder.paused_at.is_(None)).limit(limit)).all()  # type: ignore
    fractions = policies.sla_policy().reminders
    sent = 0
    for wo in orders:
        case = session.get(Case, wo.case_id)
        while wo.next_reminder_at is not None and wo.next_reminder_at <= at:  # a late watch catches up
            n = wo.reminders_sent
            share = fractions[n] if n < len(fractions) else 1.0
            queue_delivery(session, session.get(Unit, wo.unit), "work_order.reminder", {
                "work_order_id": str(wo.id), "case_number": case.number, "due_at": local(wo.due_at).isoformat(),
                "respond_by": local(wo.respond_by).isoformat(), "elapsed": share,
                "text": reminder_text(case, wo, share)},
                key=f"wo{wo.id}-reminder-{n + 1}", case=case, work_order=wo)
            record(session, case, "work_order.reminder", f"提醒 {wo.unit}: 已用时 {share:.0%}", work_order_id=wo.id)
            wo.reminders_sent = n + 1
            wo.next_reminder_at = _reminder_at(wo, wo.created_at, fractions, n + 1)
            sent += 1
        session.add(wo)
    return sent


# ---------------------------------------------------------------- supervisors and dispatchers (API)

DECISIONS = ("reassign", "extend", "take_over", "close")


def decide(*, session: Session, escalation_id: int, action: str, reason: str, actor: str,
           unit: str | None = None, until: datetime | None = None, approve: bool = True,
           leader: str | None = None) -> dict:
    """A supervisor resolves an escalation (CONTRACT 4). Reassign and close move the case (through its flow);
    extend and take-over are recorded at once. Returns {"signal_id"} when the case run must be woken."""
    escalation = session.get(Escalation, escalation_id)
    if escalation is None:
        raise NotFound(f"escalation {escalation_id} not found")
    case = lock_case(session, escalation.case_id)
    session.refresh(escalation)
    if escalation.status != "open":
        raise Conflict(f"escalation {escalation_id} is already {escalation.status}", current=escalation.status)
    if case.status == CaseStatus.closed and action in ("reassign", "extend"):
        raise Conflict("the case is closed", current=case.status)
    signal = None
    if action == "reassign":
        if not unit or session.get(Unit, unit) is None:
            raise Invalid("unit", f"unknown unit {unit!r}")
        signal = add_signal(session, case.id, "decision", action="reassign", unit=unit, reason=reason, actor=actor)
    elif action == "extend":
        signal = _decide_extension(session, case, escalation, reason=reason, actor=actor, until=until,
                                   approve=approve)
    elif action == "take_over":
        if not leader:
            raise Invalid("leader", "name the leader who takes the case over (包案)")
        _take_over(session, case, leader, reason=reason, actor=actor)
    elif action == "close":
        if case.status != CaseStatus.closed:
            signal = add_signal(session, case.id, "decision", action="close", reason=reason, actor=actor)
    else:
        raise Invalid("action", f"one of {DECISIONS}")
    escalation.status, escalation.decided_at, escalation.decided_by = "decided", now(), actor
    escalation.decision = (escalation.decision or {}) | {
        "action": action, "reason": reason, "unit": unit, "approve": approve if action == "extend" else None,
        "until": until.isoformat() if until else None, "leader": leader}
    session.add(escalation)
    record(session, case, "escalation.decided", f"{action}: {reason}", actor=actor, escalation_id=escalation.id,
           action=action)
    return {"escalation_id": str(escalation.id), "action": action, "signal_id": signal.id if signal else None}


def _take_over(session: Session, case: Case, leader: str, *, reason: str, actor: str = "system") -> None:
    """包案: a named leader takes the case over; the open lead order gets the ladder's 包案 allowed time (if the
    policy has that rung), so the deadline watch keeps timing it."""
    case.taken_over_by = leader
    session.add(case)
    rung = policies.escalation_policy().take_over
    current = _current_order_id(session, case)
    wo = session.get(WorkOrder, current) if current else None
    if rung is None or wo is None or wo.status not in OPEN_WORK_ORDER:
        record(session, case, "taken_over", f"包案: {leader}. {reason}", actor=actor, leader=leader)
        return
    at, calendar = now(), policies.calendar()
    if wo.responded_at is None:
        wo.respond_by, wo.respond_lapsed = rung.respond_within.after(at, calendar), False
    wo.due_at, wo.due_lapsed, wo.updated_at = rung.due_within.after(at, calendar), False, at
    session.add(wo)
    record(session, case, "taken_over", f"包案: {leader}. {reason}. 办结时限 {local(wo.due_at).isoformat()}",
           actor=actor, leader=leader, work_order_id=wo.id, due_at=local(wo.due_at).isoformat())


def _decide_extension(session: Session, case: Case, escalation: Escalation, *, reason: str, actor: str,
                      until: datetime | None, approve: bool) -> None:
    """延期: approval moves the order's due_at (to `until`, or to what the unit asked for); refusal is recorded."""
    wo = session.get(WorkOrder, escalation.work_order_id) if escalation.work_order_id else None
    if wo is None:
        current = _current_order_id(session, case)
        wo = session.get(WorkOrder, current) if current else None
    if wo is None or wo.status not in OPEN_WORK_ORDER:
        raise Conflict("there is no open work order to extend", current=wo.status if wo else case.status)
    if not approve:
        record(session, case, "extension.refused", reason, actor=actor, work_order_id=wo.id)
        return None
    requested = (escalation.decision or {}).get("requested_until")
    new_due = until or (datetime.fromisoformat(requested) if requested else None)
    if new_due is None:
        raise Invalid("until", "required: the new completion deadline")
    if new_due.tzinfo is None:
        raise Invalid("until", "must carry a UTC offset")
    if new_due <= wo.due_at:
        raise Invalid("until", f"must be later than the current due_at {local(wo.due_at).isoformat()}")
    old = wo.due_at
    wo.due_at, wo.due_lapsed, wo.updated_at = new_due, False, now()
    session.add(wo)
    record(session, case, "extension.approved", reason, actor=actor, work_order_id=wo.id,
           from_due=local(old).isoformat(), to_due=local(new_due).isoformat())
    return None


def request_dispatch(*, session: Session, case_id: int, unit: str, reason: str, actor: str) -> CaseSignal:
    """A dispatcher routes a case by hand (from the dispatch queue, after 退单)."""
    case = lock_case(session, case_id)
    if case.status in (CaseStatus.evaluating, CaseStatus.closed):
        raise Conflict(f"case is {case.status}", current=case.status)
    if session.get(Unit, unit) is None:
        raise Invalid("unit", f"unknown unit {unit!r}")
    return add_signal(session, case.id, "decision", action="reassign", unit=unit, reason=reason, actor=actor)


def dispatch_queue(session: Session) -> list[Case]:
    """Cases waiting for a dispatcher: dispatched, with no open lead order (after 退单 or when unroutable)."""
    open_lead = select(WorkOrder.case_id).where(
        WorkOrder.role == "lead", col(WorkOrder.status).in_([s.value for s in OPEN_WORK_ORDER]))
    return list(session.exec(select(Case).where(
        Case.status == CaseStatus.dispatched, col(Case.id).not_in(open_lead)).order_by(col(Case.id))).all())

"""The one service that writes deliberations (大家商量着办).

Like `services.cases`, every change happens inside the caller's transaction with the deliberation row locked, leaves
an entry on its append-only timeline and, when its flow run must move on, a signal in its inbox. Webhooks go
through the same delivery outbox as work orders (`services.cases.queue_delivery`).

Two kinds of callers:
- the API records what the organisers report (the topic, invitations, RSVPs, sessions and their decision,
  publicity, residents' evaluations) and leaves a signal;
- the deliberation flow applies signals (`settle`) and moves through the five steps; it carries decision items
  out as cases of their own (`item_intakes` → `services.intake.receive` → `link_item_case`), so their work orders,
  escalation and evaluation are the case machinery's; the deadline watch tells it when they are all closed.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, func, select

from hotline.clock import iso, local, now
from hotline.settings import get_settings
from models import (
    Case, DecisionItem, Deliberation, DeliberationCase, DeliberationEntry, DeliberationSession, DeliberationSignal,
    Participant, Publicity, ResidentEvaluation, Unit,
)
from models.deliberations import DeliberationStep as Step
from models.deliberations import SessionKind
from models.states import CaseStatus
from models.units import UnitLevel
from notifications.payloads import render
from services import cases, policies, registry
from services.cases import Conflict, Invalid, NotFound

SESSION_KINDS = {SessionKind.meeting: "会议协商", SessionKind.talk: "恳谈交流", SessionKind.one_on_one: "单独沟通",
                 SessionKind.online: "网络商量"}
STEP_LABELS = {Step.topic: "确定议题", Step.inviting: "邀请代表", Step.deliberating: "组织商量",
               Step.carrying_out: "办理事项", Step.feedback: "反馈结果"}
PUBLICITY_STAGES = ("topic", "decision", "result")  # 议题公示, 决议公开, 实施结果公开 (四议两公开)
SATISFACTION = ("satisfied", "basically_satisfied", "unsatisfied")
RSVP = ("accepted", "declined")


# ---------------------------------------------------------------- small writers

def lock(session: Session, deliberation_id: int, unit: Unit | None = None) -> Deliberation:
    """The deliberation, locked. With `unit` (a community or street token), only one in its own area."""
    found = session.exec(select(Deliberation).where(Deliberation.id == deliberation_id).with_for_update()).first()
    if found is None or (unit is not None and unit.code not in (found.community, found.street)):
        raise NotFound(f"deliberation {deliberation_id} not found")
    return found


def record(session: Session, deliberation: Deliberation, kind: str, note: str | None = None, actor: str = "system",
           **data: Any) -> None:
    """Append one entry to the deliberation's timeline."""
    session.add(DeliberationEntry(deliberation_id=deliberation.id, kind=kind, note=note, actor=actor, data=data))


def add_signal(session: Session, deliberation: Deliberation, kind: str, dedupe_key: str | None = None,
               **payload: Any) -> DeliberationSignal | None:
    """Leave a signal for the deliberation's flow run; one with the same dedupe_key is written once."""
    if dedupe_key and session.exec(select(DeliberationSignal.id)
                                   .where(DeliberationSignal.dedupe_key == dedupe_key)).first():
        return None
    signal = DeliberationSignal(deliberation_id=deliberation.id, kind=kind, payload=payload, dedupe_key=dedupe_key)
    session.add(signal)
    session.flush()
    return signal


def _move(session: Session, deliberation: Deliberation, to: Step) -> None:
    if deliberation.step == to:
        return
    record(session, deliberation, "step", f"{STEP_LABELS[deliberation.step]} → {STEP_LABELS[to]}",
           from_step=deliberation.step, to_step=to)
    deliberation.step, deliberation.updated_at = to, now()
    session.add(deliberation)


def _place_label(deliberation: Deliberation) -> str:
    location = deliberation.location or {}
    return location.get("address") or location.get("community") or deliberation.community or ""


# ---------------------------------------------------------------- 确定议题: the topic

def create(*, session: Session, topic_type: str, title: str, description: str | None, location: dict,
           case_ids: list[int], actor: str, unit: Unit | None = None, origin: str | None = None) -> Deliberation:
    """A topic proposed by a community or street (`unit`), or by a supervisor converting cases (`case_ids`):
    the cases are linked and their citizens told that the case continues as a deliberation. `origin` (default:
    `case` with cases, else `community`) says where the topic came from, e.g. `hot_spot` (services.topic_proposals)."""
    policy = policies.deliberation_policy()
    if topic_type not in policy.topic_types:
        raise Invalid("topic_type", f"one of {sorted(policy.topic_types)} ({'、'.join(policy.topic_types.values())})")
    linked = []
    for i, case_id in enumerate(case_ids):
        case = session.get(Case, case_id)
        if case is None:
            raise Invalid(f"case_ids.{i}", f"case {case_id} not found")
        linked.append(case)
    if not location and linked:
        location = dict(linked[0].location or {})
    if not location:
        raise Invalid("location", "required (a community, street or address), unless cases are linked")
    place = registry.resolve_place(session, location)
    if unit is not None and unit.code not in (place.community, place.street):
        raise Invalid("location", f"not in the area of {unit.name}")
    deliberation = Deliberation(
        topic_type=topic_type, title=title, description=description, location=location,
        district=place.district, street=place.street, community=place.community,
        origin=origin or ("case" if linked else "community"), created_by=actor)
    session.add(deliberation)
    session.flush()
    deliberation.number = f"SL{local(deliberation.created_at):%Y%m%d}{deliberation.id:04d}"
    session.add(deliberation)
    record(session, deliberation, "created", f"确定议题: {title} ({policy.topic_types[topic_type]})", actor=actor,
           topic_type=topic_type, origin=deliberation.origin)
    for case in linked:
        link_case(session, deliberation, case, actor=actor)
    return deliberation


def open_topic(*, session: Session, topic_type: str, title: str | None, description: str | None, location: dict,
               case_ids: list[int], actor: str, unit: Unit | None = None) -> tuple[Deliberation, bool]:
    """确定议题, as `POST /api/deliberations` and the console's form record it: converting one case without a
    location (`convert_case`: the same case again returns its deliberation, created False), else a new topic."""
    if len(case_ids) == 1 and not location:
        return convert_case(session=session, case_id=case_ids[0], topic_type=topic_type, title=title,
                            description=description, actor=actor)
    if not title:
        raise Invalid("title", "required (unless one case is converted)")
    return create(session=session, topic_type=topic_type, title=title, description=description, location=location,
                  case_ids=case_ids, actor=actor, unit=unit), True


def link_case(session: Session, deliberation: Deliberation, case: Case, *, actor: str) -> bool:
    """Link a case; its citizen is told (the message on the case's timeline) that it continues here. Once."""
    if session.exec(select(DeliberationCase.id).where(DeliberationCase.deliberation_id == deliberation.id,
                                                      DeliberationCase.case_id == case.id)).first():
        return False
    case = cases.lock_case(session, case.id)
    session.add(DeliberationCase(deliberation_id=deliberation.id, case_id=case.id))
    summary = case.title or case.description[:30]
    message = render("deliberation_linked.txt.j2", case_number=case.number, summary=summary,
                     number=deliberation.number, title=deliberation.title, place=_place_label(deliberation),
                     topic_label=policies.deliberation_policy().topic_types[deliberation.topic_type])
    cases.record(session, case, "deliberation.linked", f"转入大家商量着办: {deliberation.number}", actor=actor,
                 deliberation_id=deliberation.id, deliberation_number=deliberation.number, message=message)
    record(session, deliberation, "case.linked", f"关联诉求 {case.number}, 已告知诉求人", actor=actor,
           case_id=case.id, case_number=case.number)
    return True


def convert_case(*, session: Session, case_id: int, topic_type: str, title: str | None, description: str | None,
                 actor: str) -> tuple[Deliberation, bool]:
    """A supervisor turns a case into a deliberation. The same case again returns the deliberation it is in."""
    existing = session.exec(select(Deliberation).join(DeliberationCase, DeliberationCase.deliberation_id
                                                      == Deliberation.id)
                            .where(DeliberationCase.case_id == case_id)).first()
    if existing is not None:
        return existing, False
    case = session.get(Case, case_id)
    if case is None:
        raise NotFound(f"case {case_id} not found")
    deliberation = create(session=session, topic_type=topic_type, title=title or case.title or case.description[:60],
                          description=description or case.description, location=dict(case.location or {}),
                          case_ids=[case.id], actor=actor)
    return deliberation, True


# ---------------------------------------------------------------- 邀请代表: participants

def invite(*, session: Session, deliberation_id: int, participants: list[dict], actor: str,
           unit: Unit | None = None) -> list[Participant]:
    """Invite participants by type: a unit gets the webhook `deliberation.invited`, a person a message text.
    Inviting the same unit (or the same person) for the same type again changes nothing."""
    deliberation = lock(session, deliberation_id, unit)
    if deliberation.step in (Step.carrying_out, Step.feedback):
        raise Conflict(f"the deliberation is at {deliberation.step}; invitations are closed", current=deliberation.step)
    types = policies.deliberation_policy().participant_types
    checked = []
    for i, p in enumerate(participants):
        ptype = types.get(p["type"])
        if ptype is None:
            raise Invalid(f"participants.{i}.type", f"one of {sorted(types)}")
        invited_unit = session.get(Unit, p["unit"]) if p.get("unit") else None
        if p.get("unit") and invited_unit is None:
            raise Invalid(f"participants.{i}.unit", f"unknown unit {p['unit']!r}")
        if ptype.unit and invited_unit is None:
            raise Invalid(f"participants.{i}.unit", f"a {ptype.name} ({p['type']}) is invited as a registered unit")
        name = p.get("name") or (invited_unit.name if invited_unit else None)
        if not name:
            raise Invalid(f"participants.{i}.name", "required for a person")
        checked.append((p, ptype, invited_unit, name))
    out = []
    for p, ptype, invited_unit, name in checked:
        same = select(Participant).where(Participant.deliberation_id == deliberation.id, Participant.type == p["type"])
        same = same.where(Participant.unit == invited_unit.code) if invited_unit else same.where(
            Participant.name == name, col(Participant.unit).is_(None))
        participant = session.exec(same).first()
        if participant is None:
            participant = _invite_one(session, deliberation, p, ptype.name, invited_unit, name, actor)
        out.append(participant)
    add_signal(session, deliberation, "invited", dedupe_key=f"delib{deliberation.id}-invited")
    return out


def _invite_one(session: Session, deliberation: Deliberation, p: dict, type_label: str, invited_unit: Unit | None,
                name: str, actor: str) -> Participant:
    policy = policies.deliberation_policy()
    participant = Participant(deliberation_id=deliberation.id, type=p["type"], name=name,
                              unit=invited_unit.code if invited_unit else None, contact=p.get("contact"),
                              invited_at=now())
    session.add(participant)
    session.flush()
    if invited_unit is not None:
        cases.queue_delivery(session, invited_unit, "deliberation.invited", {
            "deliberation_number": deliberation.number, "title": deliberation.title,
            "topic_type": deliberation.topic_type, "topic_label": policy.topic_types[deliberation.topic_type],
            "participant_id": str(participant.id), "participant_type": p["type"], "type_label": type_label,
            "location": deliberation.location,
            "rsvp_url": f"{get_settings().base_url}/api/deliberations/{deliberation.id}/participants/"
                        f"{participant.id}/rsvp"}, key=f"delib{deliberation.id}-p{participant.id}-invited",
            deliberation_id=deliberation.id)
    else:
        participant.invitation_text = render(
            "deliberation_invitation.txt.j2", name=name, place=_place_label(deliberation), number=deliberation.number,
            title=deliberation.title, topic_label=policy.topic_types[deliberation.topic_type], type_label=type_label,
            description=deliberation.description, organiser=_organiser_name(session, deliberation))
        session.add(participant)
    record(session, deliberation, "participant.invited", f"邀请{type_label}: {name}", actor=actor,
           participant_id=participant.id, participant_type=p["type"], unit=participant.unit,
           channel="webhook" if invited_unit else "message")
    return participant


def _organiser_name(session: Session, deliberation: Deliberation) -> str:
    unit = session.get(Unit, deliberation.community or deliberation.street or "")
    return unit.name if unit else ""


def answer_invitation(*, session: Session, deliberation_id: int, participant_id: int, answer: str,
                      note: str | None, actor: str, unit: Unit | None = None) -> Participant:
    """RSVP: a unit answers its own invitation with its token; staff record a person's answer."""
    participant = session.get(Participant, participant_id)
    if participant is None or participant.deliberation_id != deliberation_id or (
            unit is not None and participant.unit != unit.code):
        raise NotFound(f"participant {participant_id} not found")
    deliberation = lock(session, deliberation_id)
    session.refresh(participant)
    if participant.rsvp == answer:
        return participant
    participant.rsvp, participant.rsvp_note, participant.rsvp_at = answer, note, now()
    session.add(participant)
    record(session, deliberation, "participant.rsvp", f"{participant.name}: {'参加' if answer == 'accepted' else '不参加'}"
           + (f" ({note})" if note else ""), actor=actor, participant_id=participant.id, rsvp=answer)
    return participant


def missing_types(session: Session, deliberation: Deliberation) -> list[str]:
    """The participant types the policy requires for this topic type that no invited, not declined, participant
    has."""
    required = policies.deliberation_policy().required_for(deliberation.topic_type)
    present = set(session.exec(select(Participant.type).where(
        Participant.deliberation_id == deliberation.id, Participant.rsvp != "declined")).all())
    return [t for t in required if t not in present]


# ---------------------------------------------------------------- 组织商量: sessions and the decision

def record_session(*, session: Session, deliberation_id: int, body: dict, actor: str,
                   unit: Unit | None = None) -> DeliberationSession:
    """One round of deliberation. Needs every required participant type invited (and not declined); the
    decision (a vote that carries, or consensus) closes the deliberating: each item becomes a case."""
    deliberation = lock(session, deliberation_id, unit)
    invited = {p.id: p for p in session.exec(select(Participant).where(
        Participant.deliberation_id == deliberation.id)).all()}
    if not invited:
        raise Conflict("invite the participants first (邀请代表)", current=deliberation.step)
    if _decided(session, deliberation) is not None:
        raise Conflict("the deliberation is already decided; record its publicity or its feedback",
                       current=deliberation.step)
    missing = missing_types(session, deliberation)
    if missing:
        types = policies.deliberation_policy().participant_types
        raise Conflict("required participants missing: " + ", ".join(f"{types[t].name} ({t})" for t in missing),
                       current=deliberation.step)
    for i, pid in enumerate(body.get("attendance") or []):
        if pid not in invited:
            raise Invalid(f"attendance.{i}", f"participant {pid} is not invited to this deliberation")
    decision = body.get("decision")
    items = _check_decision(session, decision) if decision else []
    seq = session.exec(select(func.count()).select_from(DeliberationSession).where(
        DeliberationSession.deliberation_id == deliberation.id)).one() + 1
    row = DeliberationSession(
        deliberation_id=deliberation.id, seq=seq, kind=body["kind"], held_at=body["held_at"], place=body.get("place"),
        attendance=list(dict.fromkeys(body.get("attendance") or [])), residents_present=body.get("residents_present", 0),
        minutes=body.get("minutes"), opinions=body.get("opinions") or [], options=body.get("options") or [],
        decision={k: v for k, v in decision.items() if k != "items"} if decision else None, recorded_by=actor)
    session.add(row)
    session.flush()
    record(session, deliberation, "session.held",
           f"第 {seq} 次商量 ({SESSION_KINDS[SessionKind(row.kind)]}): {len(row.attendance)} 位代表"
           + (f", {row.residents_present} 位居民" if row.residents_present else "") + f", {len(row.opinions)} 条意见",
           actor=actor, session_id=row.id, seq=seq, opinions=len(row.opinions), decided=bool(decision))
    for n, item in enumerate(items, start=1):
        session.add(DecisionItem(deliberation_id=deliberation.id, session_id=row.id, seq=n, unit=item["unit"],
                                 description=item["description"], urgency=item["urgency"], due_at=item["due_at"]))
    if decision:
        record(session, deliberation, "decided", _decision_note(decision, len(items)), actor=actor, session_id=row.id,
               method=decision["method"], items=len(items))
    add_signal(session, deliberation, "session", session_id=row.id, decided=bool(decision))
    return row


def _check_decision(session: Session, decision: dict) -> list[dict]:
    """The decision's items with their urgency; Invalid naming the field for what cannot be carried out."""
    if decision["method"] == "vote":
        votes = decision.get("votes")
        if not votes:
            raise Invalid("decision.votes", "a vote records its counts: for, against, abstain")
        if decision.get("items") and votes["for"] <= votes["against"]:
            raise Invalid("decision.votes", "the vote did not carry (for ≤ against): nothing to carry out")
    default_urgency = policies.deliberation_policy().items.urgency
    items = []
    for i, item in enumerate(decision.get("items") or []):
        if session.get(Unit, item["unit"]) is None:
            raise Invalid(f"decision.items.{i}.unit", f"unknown unit {item['unit']!r}")
        items.append({"unit": item["unit"], "description": item["description"],
                      "urgency": item.get("urgency") or default_urgency,
                      "due_at": item_due_at(item.get("due_at"), f"decision.items.{i}.due_at")})
    return items


def item_due_at(value: datetime | str | None, field: str) -> datetime | None:
    """An item's own due date (限期: "before 1 May"): optional; with an offset, in the future. Aware UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid(field, f"not a date and time: {value!r} (e.g. 2027-05-01T00:00:00+08:00)") from None
    if value.tzinfo is None:
        raise Invalid(field, "must carry a UTC offset, e.g. 2027-05-01T00:00:00+08:00")
    if value <= now():
        raise Invalid(field, f"must be in the future (it is {iso(value)})")
    return value.astimezone(timezone.utc)


def _decision_note(decision: dict, items: int) -> str:
    if decision["method"] == "vote":
        v = decision["votes"]
        how = f"表决: 赞成 {v['for']}, 反对 {v['against']}, 弃权 {v.get('abstain', 0)}"
    else:
        how = "协商一致"
    chosen = f", 采纳方案: {decision['option']}" if decision.get("option") else ""
    return f"形成决定 ({how}{chosen}), {items} 项办理事项" + (f". {decision['summary']}" if decision.get("summary") else "")


def _decided(session: Session, deliberation: Deliberation) -> DeliberationSession | None:
    rounds = session.exec(select(DeliberationSession).where(DeliberationSession.deliberation_id == deliberation.id)
                          .order_by(col(DeliberationSession.id))).all()
    return next((r for r in rounds if r.decision), None)  # a JSON column: no decision is stored as JSON null


# ---------------------------------------------------------------- 反馈结果: publicity and evaluation

def publish(*, session: Session, deliberation_id: int, stage: str, content: str, place: str,
            published_at: datetime | None, actor: str, unit: Unit | None = None) -> Publicity:
    """四议两公开: record what was made public, when and where. Publishing the result (实施结果公开) tells the
    participants (units by webhook `deliberation.result`) and the linked cases' citizens."""
    deliberation = lock(session, deliberation_id, unit)
    if stage == "decision" and _decided(session, deliberation) is None:
        raise Conflict("there is no decision to publish yet", current=deliberation.step)
    if stage == "result" and deliberation.step != Step.feedback:
        raise Conflict("results are published once every item is carried out (反馈结果)", current=deliberation.step)
    publicity = Publicity(deliberation_id=deliberation.id, stage=stage, content=content, place=place,
                          published_at=published_at or now(), recorded_by=actor)
    session.add(publicity)
    session.flush()
    record(session, deliberation, f"published.{stage}", f"公开 ({place}): {content}", actor=actor,
           publicity_id=publicity.id, stage=stage, published_at=iso(publicity.published_at))
    if stage == "result":
        _tell_result(session, deliberation, publicity, actor)
        add_signal(session, deliberation, "published", dedupe_key=f"delib{deliberation.id}-result-published",
                   publicity_id=publicity.id)
    return publicity


def _tell_result(session: Session, deliberation: Deliberation, publicity: Publicity, actor: str) -> None:
    text = render("deliberation_result.txt.j2", number=deliberation.number, title=deliberation.title,
                  content=publicity.content, place=publicity.place, items=item_outcomes(session, deliberation))
    participants = session.exec(select(Participant).where(Participant.deliberation_id == deliberation.id)
                                .order_by(col(Participant.id))).all()
    for participant in participants:
        if participant.unit:
            cases.queue_delivery(session, session.get(Unit, participant.unit), "deliberation.result", {
                "deliberation_number": deliberation.number, "title": deliberation.title, "text": text,
                "published_at": iso(publicity.published_at), "place": publicity.place},
                key=f"delib{deliberation.id}-pub{publicity.id}-p{participant.id}", deliberation_id=deliberation.id)
    for link in session.exec(select(DeliberationCase).where(DeliberationCase.deliberation_id == deliberation.id)):
        case = cases.lock_case(session, link.case_id)
        cases.record(session, case, "deliberation.result", f"商量结果已反馈: {deliberation.number}", actor=actor,
                     deliberation_id=deliberation.id, message=text)
    record(session, deliberation, "result.told", f"结果已告知 {len(participants)} 位代表和关联诉求人",
           actor=actor, publicity_id=publicity.id, text=text)


def item_outcomes(session: Session, deliberation: Deliberation) -> list[dict]:
    out = []
    for item in _items(session, deliberation):
        case = session.get(Case, item.case_id) if item.case_id else None
        unit = session.get(Unit, item.unit)
        outcome = "未办理" if case is None else ("已办结" + ("" if case.completed_in_time else " (曾超时)")
                                               if case.status == CaseStatus.closed else "办理中")
        out.append({"description": item.description, "unit_name": unit.name if unit else item.unit,
                    "outcome": outcome})
    return out


def evaluate(*, session: Session, deliberation_id: int, satisfaction: str, resident: str | None,
             comment: str | None, actor: str, unit: Unit | None = None) -> ResidentEvaluation:
    """群众公开评: a resident's verdict, once the result is published."""
    deliberation = lock(session, deliberation_id, unit)
    if not session.exec(select(Publicity.id).where(Publicity.deliberation_id == deliberation.id,
                                                   Publicity.stage == "result")).first():
        raise Conflict("residents evaluate the published result; publish it first", current=deliberation.step)
    evaluation = ResidentEvaluation(deliberation_id=deliberation.id, satisfaction=satisfaction, resident=resident,
                                    comment=comment, recorded_by=actor)
    session.add(evaluation)
    session.flush()
    record(session, deliberation, "evaluated", f"{resident or '居民'}: {satisfaction}" + (f" ({comment})" if comment else ""),
           actor=actor, evaluation_id=evaluation.id, satisfaction=satisfaction)
    return evaluation


# ---------------------------------------------------------------- the flow: applying signals, carrying out

def pending_signals(session: Session, deliberation_id: int) -> list[DeliberationSignal]:
    return list(session.exec(select(DeliberationSignal).where(
        DeliberationSignal.deliberation_id == deliberation_id, col(DeliberationSignal.processed_at).is_(None))
        .order_by(col(DeliberationSignal.id))).all())


def settle(session: Session, deliberation_id: int) -> Deliberation:
    """Apply every pending signal in arrival order, each once; the step follows what was recorded."""
    deliberation = lock(session, deliberation_id)
    for signal in pending_signals(session, deliberation_id):
        _HANDLERS[signal.kind](session, deliberation, signal.payload)
        signal.processed_at = now()
        session.add(signal)
    return deliberation


def _on_invited(session: Session, deliberation: Deliberation, _p: dict) -> None:
    if deliberation.step == Step.topic:
        _move(session, deliberation, Step.inviting)


def _on_session(session: Session, deliberation: Deliberation, p: dict) -> None:
    if deliberation.step in (Step.topic, Step.inviting):
        _move(session, deliberation, Step.deliberating)
    if p.get("decided") and deliberation.step == Step.deliberating:
        _move(session, deliberation, Step.carrying_out if _items(session, deliberation) else Step.feedback)


def _on_items_done(session: Session, deliberation: Deliberation, _p: dict) -> None:
    if deliberation.step == Step.carrying_out and _all_items_closed(session, deliberation):
        record(session, deliberation, "items.done", "办理事项均已办结")
        _move(session, deliberation, Step.feedback)


def _on_published(session: Session, deliberation: Deliberation, _p: dict) -> None:
    if deliberation.step == Step.feedback and deliberation.concluded_at is None:
        deliberation.concluded_at = now()
        session.add(deliberation)
        record(session, deliberation, "concluded", "结果已公开反馈, 商量完成")


_HANDLERS = {"invited": _on_invited, "session": _on_session, "items_done": _on_items_done,
             "published": _on_published}


def _items(session: Session, deliberation: Deliberation) -> list[DecisionItem]:
    return list(session.exec(select(DecisionItem).where(DecisionItem.deliberation_id == deliberation.id)
                             .order_by(col(DecisionItem.seq))).all())


def _all_items_closed(session: Session, deliberation: Deliberation) -> bool:
    items = _items(session, deliberation)
    if not items or any(i.case_id is None for i in items):
        return False
    closed = session.exec(select(func.count()).select_from(Case).where(
        col(Case.id).in_([i.case_id for i in items]), Case.status == CaseStatus.closed)).one()
    return closed == len(items)


def item_intakes(session: Session, deliberation_id: int) -> list[tuple[int, dict]]:
    """The decision items not yet carried out, each with the fields of its case for `services.intake.receive`:
    source `deliberation`, source_ref `<number>-item-<n>` (so intake records it once), directed to the item's unit."""
    deliberation = session.get(Deliberation, deliberation_id)
    if deliberation is None or deliberation.step != Step.carrying_out:
        return []
    category = policies.deliberation_policy().items.category
    return [(item.id, {
        "source": "deliberation", "source_ref": f"{deliberation.number}-item-{item.seq}", "category": category,
        "title": f"商量事项 {deliberation.number}-{item.seq}: {deliberation.title}", "description": item.description,
        "urgency": item.urgency, "location": dict(deliberation.location or {}), "anonymous": True,
        "reported_at": now(), "directed_unit": item.unit, "directed_due_at": item.due_at,
    }) for item in _items(session, deliberation) if item.case_id is None]


def link_item_case(session: Session, item_id: int, case_id: int) -> None:
    """The item's case is recorded: remember it (idempotent)."""
    item = session.get(DecisionItem, item_id)
    deliberation = lock(session, item.deliberation_id)
    session.refresh(item)
    if item.case_id is not None:
        return
    item.case_id = case_id
    session.add(item)
    case = session.get(Case, case_id)
    record(session, deliberation, "item.case", f"办理事项 {item.seq} 转为工单办理: {case.number} → {item.unit}",
           item_id=item.id, case_id=case_id, case_number=case.number, unit=item.unit)


def signal_items_done(session: Session, limit: int = 200) -> list[int]:
    """Deliberations carrying out whose item cases are all closed get an `items_done` signal (deadline watch)."""
    found = []
    for deliberation in session.exec(select(Deliberation).where(Deliberation.step == Step.carrying_out)
                                     .limit(limit)).all():
        if _all_items_closed(session, deliberation) and add_signal(
                session, deliberation, "items_done", dedupe_key=f"delib{deliberation.id}-items-done"):
            found.append(deliberation.id)
    return found


def next_wait(session: Session, deliberation_id: int) -> int | None:
    """Before a suspension: the number of the new wait, or None when signals are already pending (as for cases:
    services.cases.next_wait)."""
    deliberation = lock(session, deliberation_id)
    if pending_signals(session, deliberation_id):
        return None
    deliberation.wait_seq += 1
    session.add(deliberation)
    return deliberation.wait_seq


def waiting_runs(session: Session, *, written_since: datetime, older_than: datetime) -> list[tuple[str, int]]:
    """(flow run id, first pending signal id) of the deliberation runs the deadline watch wakes, chosen as
    `cases.waiting_runs` chooses case runs."""
    return cases.first_signal_per_run(session.exec(
        select(Deliberation.flow_run_id, DeliberationSignal.id)
        .join(DeliberationSignal, col(DeliberationSignal.deliberation_id) == Deliberation.id)
        .where(col(DeliberationSignal.processed_at).is_(None), col(Deliberation.flow_run_id).is_not(None),
               or_(DeliberationSignal.created_at >= written_since, DeliberationSignal.created_at <= older_than))
        .order_by(col(DeliberationSignal.id))).all())


def unstarted(session: Session, before: datetime, limit: int = 200) -> list[Deliberation]:
    return list(session.exec(select(Deliberation).where(
        col(Deliberation.flow_run_id).is_(None), col(Deliberation.concluded_at).is_(None),
        Deliberation.created_at <= before).limit(limit)).all())


STAGE_NAMES = {Step.topic: "Awaiting invitations", Step.inviting: "Awaiting session",
               Step.deliberating: "Awaiting decision", Step.carrying_out: "Carrying out",
               Step.feedback: "Awaiting feedback"}


def run_tags(deliberation: Deliberation) -> list[str]:
    """The run's tags for operators: no people, only codes."""
    tags = ["deliberation", f"topic:{deliberation.topic_type}", f"step:{deliberation.step}"]
    tags += [f"{k}:{v}" for k, v in (("district", deliberation.district), ("street", deliberation.street),
                                      ("community", deliberation.community)) if v]
    return tags


# ---------------------------------------------------------------- reading

def detail(session: Session, deliberation_id: int) -> dict | None:
    """Everything about one deliberation, for the API and the console. Persons' contacts are not shown."""
    d = session.get(Deliberation, deliberation_id)
    if d is None:
        return None
    policy = policies.deliberation_policy()
    by_id = lambda model: session.exec(select(model).where(model.deliberation_id == d.id)  # noqa: E731
                                       .order_by(col(model.id))).all()
    linked = session.exec(select(Case).join(DeliberationCase, DeliberationCase.case_id == Case.id)
                          .where(DeliberationCase.deliberation_id == d.id).order_by(col(Case.id))).all()
    evaluations = by_id(ResidentEvaluation)
    return {
        "deliberation_id": str(d.id), "number": d.number, "topic_type": d.topic_type,
        "topic_label": policy.topic_types.get(d.topic_type, d.topic_type), "title": d.title,
        "description": d.description, "location": d.location,
        "jurisdiction": {"district": d.district, "street": d.street, "community": d.community},
        "origin": d.origin, "step": d.step, "step_label": STEP_LABELS[d.step], "flow_run_id": d.flow_run_id,
        "created_at": iso(d.created_at), "concluded_at": iso(d.concluded_at),
        "required_types": policy.required_for(d.topic_type), "missing_types": missing_types(session, d),
        "linked_cases": [{"case_id": str(c.id), "number": c.number, "status": c.status} for c in linked],
        "participants": [{
            "participant_id": str(p.id), "type": p.type,
            "type_label": policy.participant_types[p.type].name if p.type in policy.participant_types else p.type,
            "name": p.name, "unit": p.unit, "invited_at": iso(p.invited_at), "invitation_text": p.invitation_text,
            "rsvp": p.rsvp, "rsvp_note": p.rsvp_note} for p in by_id(Participant)],
        "sessions": [{
            "session_id": str(s.id), "seq": s.seq, "kind": s.kind, "kind_label": SESSION_KINDS[SessionKind(s.kind)],
            "held_at": iso(s.held_at), "place": s.place, "attendance": [str(a) for a in s.attendance],
            "residents_present": s.residents_present, "minutes": s.minutes, "opinions": s.opinions,
            "options": s.options, "decision": s.decision} for s in by_id(DeliberationSession)],
        "items": [_item_view(session, i) for i in _items(session, d)],
        "publicity": [{"stage": p.stage, "content": p.content, "place": p.place,
                       "published_at": iso(p.published_at)} for p in by_id(Publicity)],
        "evaluations": {
            "count": len(evaluations),
            "by_satisfaction": {s: sum(1 for e in evaluations if e.satisfaction == s) for s in SATISFACTION},
            "entries": [{"satisfaction": e.satisfaction, "resident": e.resident, "comment": e.comment,
                         "at": iso(e.at)} for e in evaluations]},
        "timeline": [{"at": iso(t.at), "kind": t.kind, "actor": t.actor, "note": t.note, "data": t.data}
                     for t in by_id(DeliberationEntry)],
    }


def _item_view(session: Session, item: DecisionItem) -> dict:
    case = session.get(Case, item.case_id) if item.case_id else None
    return {"item_id": str(item.id), "seq": item.seq, "unit": item.unit, "description": item.description,
            "urgency": item.urgency, "due_at": iso(item.due_at), "case_id": str(case.id) if case else None,
            "case_number": case.number if case else None, "case_status": case.status if case else None,
            "lead_unit": case.lead_unit if case else None}


def listing(session: Session, step: Step | None = None, limit: int = 100) -> list[dict]:
    query = select(Deliberation).order_by(col(Deliberation.id).desc()).limit(limit)
    if step:
        query = query.where(Deliberation.step == step)
    topic_types = policies.deliberation_policy().topic_types
    return [{"deliberation_id": str(d.id), "number": d.number, "title": d.title, "topic_type": d.topic_type,
             "topic_label": topic_types.get(d.topic_type, d.topic_type), "step": d.step,
             "step_label": STEP_LABELS[d.step], "community": d.community, "street": d.street,
             "created_at": iso(d.created_at), "concluded_at": iso(d.concluded_at)}
            for d in session.exec(query)]


def organiser_may(unit: Unit) -> bool:
    """Communities and streets organise deliberations in their own area."""
    return unit.level in (UnitLevel.community, UnitLevel.street)

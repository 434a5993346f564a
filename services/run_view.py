"""What district operations staff see of a case in the Prefect UI (运行视图), built from our DB alone:

- the **stage in words**, used as the state name of the waiting run ("Awaiting unit", "Escalated", …), so filtering
  runs by state name answers "what is stuck where";
- the run's **tags** (district:, street:, community:, unit:, level:, category:, urgency:, stage:);
- a **markdown artifact** with the case's work orders, escalations and timeline, published at every wait.

The UI is seen by all staff: no citizen name or phone goes into any of it (notes are masked as well).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sqlmodel import Session, col, select

from hotline.clock import local
from models import Case, Escalation, TimelineEntry, Unit, WorkOrder
from models.states import OPEN_WORK_ORDER, STAGE_LABELS, CaseStatus
from notifications.payloads import URGENCY_LABELS, mask_name, render
from services import policies

ESCALATED = "Escalated"
AWAITING_DISPATCH = "Awaiting dispatch"
_DIGITS = re.compile(r"\d{7,}")


@dataclass(frozen=True)
class RunView:
    stage: str
    tags: list[str]
    artifact_key: str
    markdown: str


def run_tags(case: Case, *, unit_level: str | None = None, stage: str | None = None) -> list[str]:
    """Tags to filter case runs by; at creation only what intake knows, later the unit and the stage too."""
    tags = [f"category:{case.category}", f"urgency:{case.urgency}", f"source:{case.source}"]
    tags += [f"{level}:{code}" for level, code in
             (("district", case.district), ("street", case.street), ("community", case.community)) if code]
    if case.lead_unit:
        tags.append(f"unit:{case.lead_unit}")
    if unit_level:
        tags.append(f"level:{unit_level}")
    if stage:
        tags.append("stage:" + stage.lower().replace(" ", "-"))
    return tags


def stage_of(session: Session, case: Case) -> str:
    """The stage in words: an open escalation wins; a case no unit holds waits for a dispatcher."""
    if case.status in (CaseStatus.evaluating, CaseStatus.closed):
        return STAGE_LABELS[case.status]
    if session.exec(select(Escalation.id).where(Escalation.case_id == case.id,
                                                 Escalation.status == "open")).first():
        return ESCALATED
    if case.status == CaseStatus.dispatched and not session.exec(select(WorkOrder.id).where(
            WorkOrder.case_id == case.id, WorkOrder.role == "lead",
            col(WorkOrder.status).in_([s.value for s in OPEN_WORK_ORDER]))).first():
        return AWAITING_DISPATCH
    return STAGE_LABELS[case.status]


def _clean(text: str | None, case: Case) -> str:
    """A note fit for a table cell that all staff see: phone-like numbers and the citizen's name masked."""
    if not text:
        return ""
    text = _DIGITS.sub(lambda m: m.group()[:3] + "*" * (len(m.group()) - 3), text)
    if case.citizen_name:
        text = text.replace(case.citizen_name, mask_name(case.citizen_name))
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _at(value) -> str:
    return local(value).strftime("%Y-%m-%d %H:%M") if value else "—"


def run_view(session: Session, case_id: int) -> RunView:
    case = session.get(Case, case_id)
    stage = stage_of(session, case)
    unit = session.get(Unit, case.lead_unit) if case.lead_unit else None
    orders = session.exec(select(WorkOrder).where(WorkOrder.case_id == case_id).order_by(col(WorkOrder.id))).all()
    escalations = session.exec(select(Escalation).where(Escalation.case_id == case_id)
                               .order_by(col(Escalation.id))).all()
    timeline = session.exec(select(TimelineEntry).where(TimelineEntry.case_id == case_id)
                            .order_by(col(TimelineEntry.id))).all()
    markdown = render(
        "case_run.md.j2", case=case, stage=stage,
        category=policies.categories().get(case.category, case.category),
        urgency=URGENCY_LABELS.get(case.urgency, case.urgency),
        place=" / ".join(p for p in (case.district, case.street, case.community) if p) or "—",
        reported=_at(case.reported_at),
        orders=[{"id": o.id, "unit": o.unit, "role": o.role, "status": o.status, "respond_lapsed": o.respond_lapsed,
                 "due_lapsed": o.due_lapsed, "respond_by": _at(o.respond_by), "due_at": _at(o.due_at),
                 "reason": o.reason} for o in orders],
        escalations=[{"trigger": e.trigger, "from_unit": e.from_unit, "to_unit": e.to_unit, "status": e.status,
                      "opened_at": _at(e.opened_at)} for e in escalations],
        timeline=[{"at": _at(t.at), "kind": t.kind, "actor": t.actor, "note": _clean(t.note, case)}
                  for t in timeline],
    )
    return RunView(stage=stage, tags=run_tags(case, unit_level=str(unit.level) if unit else None, stage=stage),
                   artifact_key=re.sub(r"[^a-z0-9-]+", "-", f"case-{case.number}".lower()), markdown=markdown)

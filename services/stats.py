"""Per-unit statistics from the record: orders by state, bounces (退单), lapses, whistle reports and ratings."""
from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, select

from models import Escalation, Summons, WorkOrder


def unit_stats(session: Session, code: str) -> dict:
    by_status = dict(session.exec(select(WorkOrder.status, func.count()).where(WorkOrder.unit == code)
                                  .group_by(WorkOrder.status)).all())
    lapsed_response = session.exec(select(func.count()).where(WorkOrder.unit == code,
                                                              WorkOrder.respond_lapsed == True)).one()  # noqa: E712
    lapsed_completion = session.exec(select(func.count()).where(WorkOrder.unit == code,
                                                                WorkOrder.due_lapsed == True)).one()  # noqa: E712
    summonses = session.exec(select(Summons).where(Summons.unit == code)).all()
    scores = [s.score for s in summonses if s.score is not None]
    escalations = dict(session.exec(select(Escalation.trigger, func.count()).where(Escalation.from_unit == code)
                                    .group_by(Escalation.trigger)).all())
    return {
        "unit": code,
        "work_orders": {str(k): v for k, v in by_status.items()},
        "bounces": by_status.get("rejected", 0),
        "lapsed_response": lapsed_response,
        "lapsed_completion": lapsed_completion,
        "escalations_from": escalations,
        "whistles": {
            "summoned": len(summonses),
            "reported_on_time": sum(1 for s in summonses if s.reported_at and s.reported_at <= s.report_by),
            "reported_late": sum(1 for s in summonses if s.reported_at and s.reported_at > s.report_by),
            "not_reported": sum(1 for s in summonses if s.lapsed and s.reported_at is None),
            "ratings": len(scores),
            "average_score": round(sum(scores) / len(scores), 2) if scores else None,
        },
    }

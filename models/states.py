"""The two state machines, as data in one place (cf. Signalen's workflow.py).

Case: 受理 received → 派单 dispatched (awaiting the unit) → 办理 handling → 回访 awaiting_follow_up
→ 考评 evaluating → 办结 closed.
A lapse, a reject or a 重办 (reopen) sends the case back to `dispatched` with a new work order.

Work order: the unit's view. `UNIT_EVENTS` says which answer moves an order from which states to which state.
"""
from __future__ import annotations

from enum import StrEnum


class CaseStatus(StrEnum):
    received = "received"                      # 受理: recorded, not yet routed
    dispatched = "dispatched"                  # 派单: a work order waits for its unit
    handling = "handling"                      # 办理: the lead unit accepted
    awaiting_follow_up = "awaiting_follow_up"  # 回访: completed, waiting for the citizen's verdict
    evaluating = "evaluating"                  # 考评: follow-up done (or skipped), about to be evaluated
    closed = "closed"                          # 办结: evaluated and closed


CASE_TRANSITIONS: dict[CaseStatus, set[CaseStatus]] = {
    CaseStatus.received: {CaseStatus.dispatched, CaseStatus.evaluating},
    CaseStatus.dispatched: {CaseStatus.dispatched, CaseStatus.handling, CaseStatus.awaiting_follow_up,
                            CaseStatus.evaluating},
    CaseStatus.handling: {CaseStatus.dispatched, CaseStatus.awaiting_follow_up, CaseStatus.evaluating},
    CaseStatus.awaiting_follow_up: {CaseStatus.dispatched, CaseStatus.evaluating},
    CaseStatus.evaluating: {CaseStatus.closed},
    CaseStatus.closed: set(),
}

# What operators read in the Prefect UI while the case waits at a stage.
STAGE_LABELS: dict[CaseStatus, str] = {
    CaseStatus.received: "Received",
    CaseStatus.dispatched: "Awaiting unit",
    CaseStatus.handling: "Awaiting unit",
    CaseStatus.awaiting_follow_up: "Awaiting follow-up",
    CaseStatus.evaluating: "Evaluating",
    CaseStatus.closed: "Closed",
}


class WorkOrderStatus(StrEnum):
    assigned = "assigned"        # sent, not yet accepted
    accepted = "accepted"        # 签收
    in_progress = "in_progress"  # contacted the citizen / progress reported
    completed = "completed"      # 办结 reported by the unit
    rejected = "rejected"        # 退单
    lapsed = "lapsed"            # deadline passed; escalated to the next level
    withdrawn = "withdrawn"      # taken back (reassigned by a supervisor)


OPEN_WORK_ORDER = (WorkOrderStatus.assigned, WorkOrderStatus.accepted, WorkOrderStatus.in_progress)

# unit answer -> (states it is legal from, resulting state)
UNIT_EVENTS: dict[str, tuple[tuple[WorkOrderStatus, ...], WorkOrderStatus]] = {
    "accept": ((WorkOrderStatus.assigned,), WorkOrderStatus.accepted),
    "contacted": ((WorkOrderStatus.accepted, WorkOrderStatus.in_progress), WorkOrderStatus.in_progress),
    "progress": ((WorkOrderStatus.accepted, WorkOrderStatus.in_progress), WorkOrderStatus.in_progress),
    "complete": ((WorkOrderStatus.accepted, WorkOrderStatus.in_progress), WorkOrderStatus.completed),
    "reject": ((WorkOrderStatus.assigned,), WorkOrderStatus.rejected),  # 首接负责: no return once accepted
}

# A repeated answer is acknowledged (200, `duplicate: true`) without a second effect. What counts as a repeat:
# - any answer carrying the unit's `event_id` that was already received on the same work order (the same id with
#   another type is a 409: ids are the unit's, one per event);
# - without an id, by what the order already shows:
#   * accept, complete, reject once the order is already where they lead (IDEMPOTENT_EVENTS);
#   * contacted once the order was contacted (ONCE_PER_ORDER_EVENTS: the citizen is contacted once per order);
#   * extend while an extension request for the same `until` is still pending (`services.cases.request_extension`;
#     one for another `until` is a 409 until the supervisor decided);
# - progress without an id is never a repeat: two progress notes may well be two reports. A unit that retries a
#   progress note after a lost answer sends it with an `event_id`.
IDEMPOTENT_EVENTS = {"accept": WorkOrderStatus.accepted, "complete": WorkOrderStatus.completed,
                     "reject": WorkOrderStatus.rejected}
ONCE_PER_ORDER_EVENTS = frozenset({"contacted"})

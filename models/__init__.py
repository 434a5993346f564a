"""SQLModel tables: the record of truth. Importing this package registers every table."""
from models.alerts import OpsAlert
from models.cases import Case, TimelineEntry
from models.deliberations import (
    DecisionItem, Deliberation, DeliberationCase, DeliberationEntry, DeliberationSession, DeliberationSignal,
    Participant, Publicity, ResidentEvaluation,
)
from models.deliveries import Delivery, DeliveryAttempt
from models.escalations import Escalation
from models.executors import ExecutorBeat
from models.repeats import CaseLink
from models.signals import CaseSignal
from models.states import CaseStatus, WorkOrderStatus
from models.units import Staff, Unit
from models.whistles import Summons, Whistle
from models.work_orders import WorkOrder

__all__ = [
    "Case", "CaseLink", "TimelineEntry", "Delivery", "DeliveryAttempt", "OpsAlert", "Escalation", "ExecutorBeat", "CaseSignal",
    "CaseStatus", "WorkOrderStatus", "DecisionItem", "Deliberation", "DeliberationCase", "DeliberationEntry",
    "DeliberationSession", "DeliberationSignal", "Participant", "Publicity", "ResidentEvaluation", "Staff", "Summons", "Unit", "Whistle", "WorkOrder",
]

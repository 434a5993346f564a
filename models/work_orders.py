"""Work orders (工单): one per unit per dispatch, with its deadlines."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from hotline.clock import now
from models.states import WorkOrderStatus


class WorkOrder(SQLModel, table=True):
    __table_args__ = (
        # the deadline watch reads exactly these two ranges
        Index("ix_work_order_open_respond_by", "status", "respond_lapsed", "respond_by"),
        Index("ix_work_order_open_due_at", "status", "due_lapsed", "due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    unit: str = Field(foreign_key="unit.code", index=True, max_length=64)
    role: str = Field(default="lead", max_length=8)  # lead | co
    status: WorkOrderStatus = Field(default=WorkOrderStatus.assigned)
    reason: str | None = None  # why it was created: dispatch, direct, reject, escalation, reopen
    respond_by: datetime
    due_at: datetime
    responded_at: datetime | None = None
    completed_at: datetime | None = None
    resolved: bool | None = None
    respond_lapsed: bool = False
    due_lapsed: bool = False
    next_reminder_at: datetime | None = Field(default=None, index=True)  # work_order.reminder, by policy
    reminders_sent: int = 0
    paused_at: datetime | None = None  # SLA clock stopped while the unit waits on the citizen
    pause_reason: str | None = None
    note: str | None = None
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)

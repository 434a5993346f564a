"""Cases (诉求) and their append-only timeline."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from hotline.clock import now
from models.states import CaseStatus


class Case(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("source", "source_ref", name="uq_case_source_ref"),
        # the cases recorded without a flow run yet, for the starters and the watch (flows/control.unstarted_cases)
        Index("ix_case_unstarted", "id", postgresql_where=text("flow_run_id IS NULL"),
              sqlite_where=text("flow_run_id IS NULL")),
        # 热点: a new case's cluster (same community and category, reported within the window), counted at 受理
        Index("ix_case_hot_spot", "community", "category", "reported_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    number: str | None = Field(default=None, index=True, unique=True, max_length=32)
    source: str = Field(max_length=16)
    source_ref: str = Field(max_length=200)
    category: str = Field(default="uncategorised", max_length=64)
    title: str | None = None
    description: str
    urgency: str = Field(default="normal", max_length=16)
    location: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    citizen_name: str | None = None
    citizen_phone: str | None = None
    anonymous: bool = False
    citizen_key: str | None = Field(default=None, index=True, max_length=64)  # keyed hash of the phone
    reported_at: datetime
    # jurisdiction (unit codes), filled at collection
    district: str | None = Field(default=None, max_length=64)
    street: str | None = Field(default=None, max_length=64)
    community: str | None = Field(default=None, max_length=64)
    status: CaseStatus = Field(default=CaseStatus.received, index=True)
    flow_run_id: str | None = Field(default=None, max_length=64)
    # 指定承办: the unit a caller already decided at intake (a deliberation's decision item names its unit);
    # dispatch sends the first order there instead of asking the responsibility list
    directed_unit: str | None = Field(default=None, max_length=64)
    # 限期办结 set by whoever recorded the case (a decision item's own due date): lead orders are due then instead
    # of the sla.yaml time, while it is still ahead; None for ordinary cases
    directed_due_at: datetime | None = None
    lead_unit: str | None = Field(default=None, max_length=64)
    owner_unit: str | None = Field(default=None, max_length=64)  # 首接负责: the first lead unit that accepted
    taken_over_by: str | None = None  # 包案: the leader who took the case over
    reopen_count: int = 0
    wait_seq: int = 0  # bumped at every suspension: each wait has its own run-input key
    follow_up_due_at: datetime | None = Field(default=None, index=True)
    follow_up_attempts: int = 0  # calls that did not reach the citizen in this follow-up round
    # evaluation (考评), written at close
    responded_in_time: bool | None = None
    completed_in_time: bool | None = None
    resolved: bool | None = None
    satisfaction: str | None = None
    follow_up_outcome: str | None = None  # answered / not_reached / skipped_anonymous
    closed_at: datetime | None = None
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)


class TimelineEntry(SQLModel, table=True):
    """Append-only: every step of a case leaves one entry. Never updated, never deleted."""

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    at: datetime = Field(default_factory=now)
    kind: str = Field(max_length=64)
    actor: str = Field(default="system", max_length=100)
    note: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))

"""Escalation records (升级) that supervisors review."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from hotline.clock import now


class Escalation(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    work_order_id: int | None = Field(default=None, foreign_key="workorder.id")
    trigger: str = Field(max_length=40)  # see services.policies.TRIGGERS
    from_unit: str | None = None
    to_unit: str | None = None
    status: str = Field(default="open", index=True, max_length=16)  # open | decided
    opened_at: datetime = Field(default_factory=now)
    decided_at: datetime | None = None
    decided_by: str | None = None
    decision: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))

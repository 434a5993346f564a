"""The case inbox: every answer that should move a case (a unit's event, a lapsed deadline, a follow-up,
a supervisor's decision) is written here first, in the same transaction as what caused it. The case flow
applies them in order and marks them processed, so a resume that is lost or repeated changes nothing."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, text
from sqlmodel import Field, SQLModel

from hotline.clock import now


def pending_index(name: str, owner: str) -> Index:
    """The signals not applied yet, by their owner's id: a partial index. Every signal query asks for pending ones
    (a run's own, or all of them: the deadline watch, every few seconds), and applied signals accumulate by
    hundreds of thousands a day in a city; on a plain index the watch's query read the whole table every round."""
    pending = text("processed_at IS NULL")
    return Index(name, owner, postgresql_where=pending, sqlite_where=pending)


class CaseSignal(SQLModel, table=True):
    __table_args__ = (pending_index("ix_case_signal_unapplied", "case_id"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id")
    kind: str = Field(max_length=32)  # unit_event | deadline_lapsed | follow_up | follow_up_lapsed | decision
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    dedupe_key: str | None = Field(default=None, unique=True, max_length=200)
    created_at: datetime = Field(default_factory=now)
    processed_at: datetime | None = None

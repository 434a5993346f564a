"""Operations alerts: things a person has to look at (a unit's webhook endpoint is gone, deliveries that gave up).

Opened by `notifications.webhooks`, at most one open alert per kind and unit; listed at `GET /api/alerts`.
"""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from hotline.clock import now


class OpsAlert(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=40, index=True)  # webhook_gone | delivery_failed | delivery_dead_letter
    unit: str | None = Field(default=None, foreign_key="unit.code", index=True)
    delivery_id: int | None = Field(default=None, foreign_key="delivery.id")
    message: str
    created_at: datetime = Field(default_factory=now)
    resolved_at: datetime | None = Field(default=None, index=True)
    resolved_by: str | None = Field(default=None, max_length=80)

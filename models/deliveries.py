"""Webhook deliveries to units: written with the change that causes them, sent and retried until delivered."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from hotline.clock import now


class Delivery(SQLModel, table=True):
    __table_args__ = (Index("ix_delivery_due", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    msg_id: str = Field(unique=True, max_length=80)  # webhook-id, kept across redeliveries
    unit: str = Field(foreign_key="unit.code", index=True)
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    work_order_id: int | None = Field(default=None, foreign_key="workorder.id")
    # a deliberation's notice (deliberation.invited / deliberation.result): its run sends them (deliver_due)
    deliberation_id: int | None = Field(default=None, foreign_key="deliberation.id", index=True)
    event_type: str = Field(max_length=40)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    # pending (also while its unit's endpoint is disabled) | delivered | failed (a 4xx that is not retried)
    # | dead_letter (still failing after the dead-letter window) | no_endpoint (the unit had no webhook_url)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=now)
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime = Field(default_factory=now)
    delivered_at: datetime | None = None
    resent_at: datetime | None = None  # an operator put it back to pending; the dead-letter window restarts here


class DeliveryAttempt(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(foreign_key="delivery.id", index=True)
    at: datetime = Field(default_factory=now)
    status_code: int | None = None
    latency_ms: int | None = None
    error: str | None = None
    outcome: str | None = Field(default=None, max_length=16)  # delivered | retry | failed | gone | dead_letter

"""Handling units (承办单位) and staff. Tokens are stored as hashes only."""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from hotline.clock import now


class UnitLevel(StrEnum):
    community = "community"    # 社区/村
    street = "street"          # 街道/乡镇
    department = "department"  # 委办局
    utility = "utility"        # 公共服务企业
    district = "district"      # 区


class UnitBase(SQLModel):
    name: str = Field(min_length=1, max_length=200)
    level: UnitLevel
    parent: str | None = Field(default=None, max_length=64)
    webhook_url: str | None = Field(default=None, max_length=500)


class Unit(UnitBase, table=True):
    code: str = Field(primary_key=True, max_length=64)
    token_hash: str = Field(index=True)
    webhook_secret: str
    created_at: datetime = Field(default_factory=now)
    # set when the endpoint answered 410 Gone: nothing is sent until PUT /api/units/{code} gives a webhook_url
    webhook_disabled_at: datetime | None = None
    # the secret a rotation replaced: deliveries are signed with it too until `previous_secret_until` (policy
    # delivery.yaml `secret_rotation_grace`), so a receiver can switch to the new secret without a failed delivery
    previous_webhook_secret: str | None = None
    previous_secret_until: datetime | None = None


class StaffRole(StrEnum):
    dispatcher = "dispatcher"
    supervisor = "supervisor"
    follow_up = "follow_up"


class Staff(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    role: StaffRole
    unit: str | None = Field(default=None, foreign_key="unit.code")
    token_hash: str = Field(index=True, unique=True)
    created_at: datetime = Field(default_factory=now)

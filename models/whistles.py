"""吹哨报到: a street or community summons several units to one case; each must report (报到) in time and is
rated afterwards by the whistle-blower (一哨一考核)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from hotline.clock import now


class Whistle(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    blower: str = Field(foreign_key="unit.code", max_length=64)  # the street or community that blew it
    kind: str = Field(max_length=16)  # daily 日常哨 | tough 攻坚哨 | emergency 应急哨
    note: str | None = None
    created_at: datetime = Field(default_factory=now)


class Summons(SQLModel, table=True):
    __table_args__ = (Index("ix_summons_due", "reported_at", "lapsed", "report_by"),)

    id: int | None = Field(default=None, primary_key=True)
    whistle_id: int = Field(foreign_key="whistle.id", index=True)
    unit: str = Field(foreign_key="unit.code", index=True, max_length=64)
    report_by: datetime
    reported_at: datetime | None = None
    report_note: str | None = None
    lapsed: bool = False  # not reported in time: escalated to the district and marked
    score: int | None = None  # 1..5 from the whistle-blower
    rating_note: str | None = None

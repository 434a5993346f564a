"""Links between cases (重复诉求 / 同人诉求 and hot spots 热点), shown on both cases."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from hotline.clock import now


class CaseLink(SQLModel, table=True):
    """`case_id` is the later case, `related_case_id` the earlier one it repeats or clusters with."""

    __table_args__ = (UniqueConstraint("case_id", "related_case_id", "kind", name="uq_case_link"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    related_case_id: int = Field(foreign_key="case.id", index=True)
    kind: str = Field(max_length=16)  # same_citizen | hot_spot
    created_at: datetime = Field(default_factory=now)

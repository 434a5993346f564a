"""Deliberations (大家商量着办): a shared problem decided together by residents, the community, the property
company and departments, then carried out and reported back.

The five steps (DeliberationStep): 确定议题 topic → 邀请代表 inviting → 组织商量 deliberating → 办理事项 carrying_out
→ 反馈结果 feedback. Each decision item is carried out as a case of its own (source `deliberation`), so its work
order, deadlines, escalation and evaluation are the case machinery's. Like a case, a deliberation has an
append-only timeline and an inbox of signals its flow run applies once each.
"""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from hotline.clock import now
from models.signals import pending_index


class DeliberationStep(StrEnum):
    topic = "topic"                # 确定议题
    inviting = "inviting"          # 邀请代表
    deliberating = "deliberating"  # 组织商量
    carrying_out = "carrying_out"  # 办理事项
    feedback = "feedback"          # 反馈结果


STEP_ORDER = list(DeliberationStep)


class SessionKind(StrEnum):
    """The published forms of a session (商量形式)."""

    meeting = "meeting"        # 会议协商
    talk = "talk"              # 恳谈交流
    one_on_one = "one_on_one"  # 单独沟通
    online = "online"          # 网络商量


class Deliberation(SQLModel, table=True):
    """议题: one topic from its proposal to its feedback."""

    id: int | None = Field(default=None, primary_key=True)
    number: str | None = Field(default=None, index=True, unique=True, max_length=32)
    topic_type: str = Field(max_length=32)  # policy deliberation.yaml topic_types (公共事务, 物业管理, …)
    title: str = Field(max_length=200)
    description: str | None = None
    location: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # as a case's location
    district: str | None = Field(default=None, max_length=64)
    street: str | None = Field(default=None, max_length=64)
    community: str | None = Field(default=None, max_length=64)
    origin: str = Field(default="community", max_length=16)  # community | case (converted) | hot_spot
    step: DeliberationStep = Field(default=DeliberationStep.topic, index=True)
    created_by: str = Field(max_length=100)
    flow_run_id: str | None = Field(default=None, max_length=64)
    wait_seq: int = 0  # bumped at every suspension of its flow run
    concluded_at: datetime | None = None  # results published: the flow run has finished
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)


class DeliberationCase(SQLModel, table=True):
    """A case linked to the topic (its citizen is told the case continues as a deliberation)."""

    __table_args__ = (UniqueConstraint("deliberation_id", "case_id", name="uq_deliberation_case"),)

    id: int | None = Field(default=None, primary_key=True)
    deliberation_id: int = Field(foreign_key="deliberation.id", index=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    linked_at: datetime = Field(default_factory=now)


class Participant(SQLModel, table=True):
    """商量代表: a unit (invited by webhook) or a person (invited with a message text)."""

    id: int | None = Field(default=None, primary_key=True)
    deliberation_id: int = Field(foreign_key="deliberation.id", index=True)
    type: str = Field(max_length=32)  # policy deliberation.yaml participant_types
    name: str = Field(max_length=100)
    unit: str | None = Field(default=None, foreign_key="unit.code", max_length=64)
    contact: str | None = Field(default=None, max_length=100)  # a person's phone or address; never shown in Prefect
    invited_at: datetime | None = None
    invitation_text: str | None = None  # the message a person receives (jinja2); units get a webhook
    rsvp: str = Field(default="pending", max_length=16)  # pending | accepted | declined
    rsvp_note: str | None = None
    rsvp_at: datetime | None = None


class DeliberationSession(SQLModel, table=True):
    """One round of 组织商量: attendance, minutes, opinions one by one, options, and maybe the decision."""

    id: int | None = Field(default=None, primary_key=True)
    deliberation_id: int = Field(foreign_key="deliberation.id", index=True)
    seq: int  # 1, 2, … within the deliberation
    kind: SessionKind
    held_at: datetime
    place: str | None = None
    attendance: list[int] = Field(default_factory=list, sa_column=Column(JSON))  # participant ids present
    residents_present: int = 0  # residents who came without being invited by name
    minutes: str | None = None
    opinions: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))  # [{by, text}]
    options: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    # {"method": "vote", "votes": {"for", "against", "abstain"}, "option", "summary"} | {"method": "consensus", …}
    decision: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    recorded_by: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=now)


class DecisionItem(SQLModel, table=True):
    """办理事项: one thing the decision says a unit will do; carried out as a case of its own."""

    __table_args__ = (UniqueConstraint("deliberation_id", "seq", name="uq_decision_item_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    deliberation_id: int = Field(foreign_key="deliberation.id", index=True)
    session_id: int = Field(foreign_key="deliberationsession.id")
    seq: int  # n in the item case's source_ref `<number>-item-<n>`
    unit: str = Field(foreign_key="unit.code", max_length=64)
    description: str
    urgency: str = Field(default="normal", max_length=16)
    # the decision's own deadline for this item (e.g. "before 1 May"); None: sla.yaml's time for the item category
    due_at: datetime | None = None
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)


class Publicity(SQLModel, table=True):
    """四议两公开: what was made public, when and where (决议公开, 实施结果公开, …)."""

    id: int | None = Field(default=None, primary_key=True)
    deliberation_id: int = Field(foreign_key="deliberation.id", index=True)
    stage: str = Field(max_length=16)  # topic | decision | result
    content: str
    place: str = Field(max_length=200)  # where: e.g. 社区公告栏, 居民微信群
    published_at: datetime
    recorded_by: str = Field(max_length=100)


class ResidentEvaluation(SQLModel, table=True):
    """群众公开评: a resident's verdict on the outcome."""

    id: int | None = Field(default=None, primary_key=True)
    deliberation_id: int = Field(foreign_key="deliberation.id", index=True)
    satisfaction: str = Field(max_length=24)  # satisfied | basically_satisfied | unsatisfied
    resident: str | None = Field(default=None, max_length=100)  # e.g. "3号楼居民"; optional
    comment: str | None = None
    recorded_by: str = Field(max_length=100)
    at: datetime = Field(default_factory=now)


class DeliberationEntry(SQLModel, table=True):
    """Append-only timeline of a deliberation, like a case's. Never updated, never deleted."""

    id: int | None = Field(default=None, primary_key=True)
    deliberation_id: int = Field(foreign_key="deliberation.id", index=True)
    at: datetime = Field(default_factory=now)
    kind: str = Field(max_length=64)
    actor: str = Field(default="system", max_length=100)
    note: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class DeliberationSignal(SQLModel, table=True):
    """The deliberation's inbox: written with what caused it, applied once by its flow run (as CaseSignal)."""

    __table_args__ = (pending_index("ix_deliberation_signal_unapplied", "deliberation_id"),)

    id: int | None = Field(default=None, primary_key=True)
    deliberation_id: int = Field(foreign_key="deliberation.id")
    kind: str = Field(max_length=32)  # invited | session | items_done | published
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    dedupe_key: str | None = Field(default=None, unique=True, max_length=200)
    created_at: datetime = Field(default_factory=now)
    processed_at: datetime | None = None

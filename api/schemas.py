"""Request and response shapes of the outside interface (CONTRACT.md)."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from models.units import StaffRole, UnitLevel


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Location(Strict):
    district: str | None = Field(default=None, max_length=100)
    street: str | None = Field(default=None, max_length=100)
    community: str | None = Field(default=None, max_length=100)
    address: str | None = Field(default=None, max_length=500)
    lat: float | None = Field(default=None, ge=-90, le=90)
    long: float | None = Field(default=None, ge=-180, le=180)


class Citizen(Strict):
    name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=40, pattern=r"^[0-9+\-\s()]{3,40}$")
    anonymous: bool = False


class CaseCreate(Strict):
    source: Literal["hotline", "web", "grid", "app", "open311"]
    source_ref: str = Field(min_length=1, max_length=200)
    category: str | None = Field(default=None, max_length=64)
    title: str | None = Field(default=None, max_length=200)
    description: str = Field(min_length=1, max_length=10000)
    urgency: Literal["normal", "urgent", "emergency"] = "normal"
    location: Location = Field(default_factory=Location)
    citizen: Citizen = Field(default_factory=Citizen)
    reported_at: datetime | None = None

    @field_validator("reported_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must carry a UTC offset, e.g. 2026-11-23T09:30:00+08:00")
        return v


class CaseCreated(BaseModel):
    case_id: str
    number: str
    status: str
    flow_run_id: str | None


class UnitEvent(Strict):
    type: Literal["accept", "reject", "contacted", "progress", "complete", "extend"]
    note: str | None = Field(default=None, max_length=5000)
    reason: str | None = Field(default=None, max_length=2000, validate_default=True)
    resolved: bool | None = Field(default=None, validate_default=True)
    until: datetime | None = Field(default=None, validate_default=True)
    pause_reason: str | None = Field(default=None, max_length=64,
                                     description="with progress: stop the SLA clock (reasons allowed by policy)")
    event_id: str | None = Field(
        default=None, min_length=1, max_length=100,
        description="optional, the unit's own id for this event (e.g. a UUID), unique per work order: the same "
                    "event_id sent again (a retry after a lost answer) is acknowledged with 200 "
                    "`duplicate: true` and has no second effect; the same id with another type is a 409. "
                    "Without an id, a repeated accept, reject, complete, a contacted on an order already "
                    "contacted and an extend while the same request is pending are acknowledged the same way; "
                    "progress notes without an id may repeat (each is a new report).")

    @field_validator("pause_reason")
    @classmethod
    def _pause_only_with_progress(cls, v, info: ValidationInfo):
        if v is not None and info.data.get("type") != "progress":
            raise ValueError("only with a progress event")
        return v

    @field_validator("reason")
    @classmethod
    def _reason(cls, v, info: ValidationInfo):
        if info.data.get("type") in ("reject", "extend") and not v:
            raise ValueError(f"required for {info.data['type']}")
        return v

    @field_validator("resolved")
    @classmethod
    def _resolved(cls, v, info: ValidationInfo):
        if info.data.get("type") == "complete" and v is None:
            raise ValueError("required for complete (true or false)")
        return v

    @field_validator("until")
    @classmethod
    def _until(cls, v, info: ValidationInfo):
        if info.data.get("type") == "extend":
            if v is None:
                raise ValueError("required for extend")
            if v.tzinfo is None:
                raise ValueError("must carry a UTC offset")
        return v


class FollowUpAnswer(Strict):
    reached: bool
    resolved: bool | None = Field(default=None, validate_default=True)
    satisfaction: Literal["satisfied", "basically_satisfied", "unsatisfied"] | None = Field(
        default=None, validate_default=True)
    note: str | None = Field(default=None, max_length=5000)

    @field_validator("resolved", "satisfaction")
    @classmethod
    def _answer_when_reached(cls, v, info: ValidationInfo):
        if info.data.get("reached") and v is None:
            raise ValueError("required when the citizen was reached")
        return v


class UnitPut(Strict):
    name: str = Field(min_length=1, max_length=200)
    level: UnitLevel
    parent: str | None = Field(default=None, max_length=64)
    webhook_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://")


class StaffCreate(Strict):
    name: str = Field(min_length=1, max_length=100)
    role: StaffRole
    unit: str | None = Field(default=None, max_length=64)


class Decision(Strict):
    action: Literal["reassign", "extend", "take_over", "close"]
    reason: str = Field(min_length=1, max_length=2000)
    unit: str | None = Field(default=None, max_length=64, description="reassign: the new lead unit")
    until: datetime | None = Field(default=None, description="extend: the new completion deadline")
    approve: bool = Field(default=True, description="extend: approve (true) or refuse (false) the request")
    leader: str | None = Field(default=None, max_length=100, description="take_over: who takes the case over (包案)")

    @field_validator("until")
    @classmethod
    def _aware(cls, v):
        if v is not None and v.tzinfo is None:
            raise ValueError("must carry a UTC offset")
        return v


class ManualDispatch(Strict):
    unit: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)


class WhistleCreate(Strict):
    units: list[str] = Field(min_length=1, max_length=20)
    kind: Literal["daily", "tough", "emergency"]
    note: str | None = Field(default=None, max_length=2000)


class WhistleReport(Strict):
    note: str | None = Field(default=None, max_length=2000)


class Rating(Strict):
    unit: str = Field(min_length=1, max_length=64)
    score: int = Field(ge=1, le=5)
    note: str | None = Field(default=None, max_length=2000)


class WhistleRatings(Strict):
    ratings: list[Rating] = Field(min_length=1)


# ---------------------------------------------------------------- deliberations (大家商量着办, docs/deliberations.md)

def _aware(v: datetime | None) -> datetime | None:
    if v is not None and v.tzinfo is None:
        raise ValueError("must carry a UTC offset, e.g. 2026-11-23T19:00:00+08:00")
    return v


class DeliberationCreate(Strict):
    """A topic (确定议题): from scratch, or by converting cases (`case_ids`, supervisors only)."""

    topic_type: str = Field(min_length=1, max_length=32)
    title: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10000)
    location: Location = Field(default_factory=Location)
    case_ids: list[int] = Field(default_factory=list, max_length=100)


class ProposalAdopt(Strict):
    """Create a proposed topic (GET /api/deliberations/proposals) with its cases; topic type and title as proposed
    unless given."""

    key: str = Field(min_length=3, max_length=200, description="the proposal's key: <place>/<category>")
    topic_type: str | None = Field(default=None, min_length=1, max_length=32)
    title: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10000)


class ParticipantIn(Strict):
    type: str = Field(min_length=1, max_length=32)
    unit: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, min_length=1, max_length=100)
    contact: str | None = Field(default=None, max_length=100)


class Invitations(Strict):
    participants: list[ParticipantIn] = Field(min_length=1, max_length=200)


class Rsvp(Strict):
    answer: Literal["accepted", "declined"]
    note: str | None = Field(default=None, max_length=2000)


class Opinion(Strict):
    by: str | None = Field(default=None, max_length=100)  # e.g. "3号楼居民", a participant's name
    text: str = Field(min_length=1, max_length=5000)


class Votes(Strict):
    for_: int = Field(ge=0, alias="for")
    against: int = Field(ge=0)
    abstain: int = Field(default=0, ge=0)


class DecisionItemIn(Strict):
    unit: str = Field(min_length=1, max_length=64)
    description: str = Field(min_length=1, max_length=5000)
    urgency: Literal["normal", "urgent", "emergency"] | None = None
    due_at: datetime | None = Field(default=None, description="the item's own deadline (with offset, in the future); "
                                    "default: sla.yaml's time for decision items")

    _due_at = field_validator("due_at")(lambda cls, v: _aware(v))


class SessionDecision(Strict):
    method: Literal["vote", "consensus"]
    votes: Votes | None = None
    option: str | None = Field(default=None, max_length=500)
    summary: str | None = Field(default=None, max_length=5000)
    items: list[DecisionItemIn] = Field(default_factory=list, max_length=50)

    def as_record(self) -> dict:
        out = self.model_dump(exclude={"votes"})
        if self.votes is not None:
            out["votes"] = {"for": self.votes.for_, "against": self.votes.against, "abstain": self.votes.abstain}
        return out


class SessionIn(Strict):
    kind: Literal["meeting", "talk", "one_on_one", "online"]
    held_at: datetime
    place: str | None = Field(default=None, max_length=200)
    attendance: list[int] = Field(default_factory=list, max_length=500)  # participant ids present
    residents_present: int = Field(default=0, ge=0)
    minutes: str | None = Field(default=None, max_length=50000)
    opinions: list[Opinion] = Field(default_factory=list, max_length=1000)
    options: list[str] = Field(default_factory=list, max_length=50)
    decision: SessionDecision | None = None

    _held_at = field_validator("held_at")(lambda cls, v: _aware(v))


class PublicityIn(Strict):
    stage: Literal["topic", "decision", "result"]
    content: str = Field(min_length=1, max_length=10000)
    place: str = Field(min_length=1, max_length=200)
    published_at: datetime | None = None

    _published_at = field_validator("published_at")(lambda cls, v: _aware(v))


class ResidentEvaluationIn(Strict):
    satisfaction: Literal["satisfied", "basically_satisfied", "unsatisfied"]
    resident: str | None = Field(default=None, max_length=100)
    comment: str | None = Field(default=None, max_length=5000)

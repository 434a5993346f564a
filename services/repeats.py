"""重复诉求 / 同人诉求 (repeat requests) and 热点 (hot spots), linked at collection (受理) and shown on both cases.

- The citizen is recognised by a **keyed hash of the phone** (`citizen_key`, HMAC-SHA256 with a secret that never
  leaves the server); the phone itself is never used for matching or analytics.
- A new case **repeats** earlier cases of the same citizen about the same category and place that are still open
  or were reported within the policy window; a repeat raises the new case's urgency by policy.
- Cases of different citizens about the same community and category within a window form a **hot spot** once
  they reach the policy's thresholds; each new case in it is linked to the others.
The rules are in policies/repeat.yaml and written down in docs/evaluation.md.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import or_
from sqlmodel import Session, col, select

from hotline.settings import get_settings
from models import Case, CaseLink, CaseStatus
from services.policies import URGENCIES, _load

SAME_CITIZEN, HOT_SPOT = "same_citizen", "hot_spot"


# ---------------------------------------------------------------- policy

class SameCitizen(BaseModel):
    window_days: int = Field(30, ge=0, le=3650)
    raise_urgency_to: str | None = "urgent"

    @field_validator("raise_urgency_to")
    @classmethod
    def _known(cls, v):
        if v is not None and v not in URGENCIES:
            raise ValueError(f"must be one of {list(URGENCIES)} or null, not {v!r}")
        return v


class HotSpotRule(BaseModel):
    window_days: int = Field(7, ge=1, le=365)
    min_cases: int = Field(3, ge=2)
    min_citizens: int = Field(2, ge=1)
    max_links: int = Field(20, ge=1, le=500)  # a new case links to at most this many (the latest) cases of its spot
    # a new case counts at most this many (the latest) cases of its spot: intake reads a bounded slice of the
    # window however big the spot grows (a burst of calls about one outage), and says "N 件以上" past it
    count_up_to: int = Field(200, ge=2, le=10_000)

    @model_validator(mode="after")
    def _counts_enough(self):
        if self.count_up_to < max(self.min_cases, self.min_citizens, self.max_links):
            raise ValueError(f"count_up_to ({self.count_up_to}) must be at least min_cases, min_citizens "
                             f"and max_links")
        return self


class RepeatPolicy(BaseModel):
    same_citizen: SameCitizen = Field(default_factory=SameCitizen)
    hot_spot: HotSpotRule = Field(default_factory=HotSpotRule)


def repeat_policy(policy_dir: Path | None = None) -> RepeatPolicy:
    return _load("repeat.yaml", RepeatPolicy, policy_dir, optional=True)


# ---------------------------------------------------------------- the citizen's key

@lru_cache
def _secret() -> bytes:
    settings = get_settings()
    if settings.citizen_key:
        return settings.citizen_key.encode()
    path = settings.home / "citizen_key"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: the API and the flows may start at once; the first writer wins, the others read it
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        except FileExistsError:
            pass
    return path.read_text().strip().encode()


def citizen_key(phone: str | None) -> str | None:
    """The keyed hash of a phone number (digits only, without the +86 country code); None without a phone."""
    digits = re.sub(r"\D", "", phone or "")
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if not digits:
        return None
    return hmac.new(_secret(), digits.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- linking (at collection)

def _same_place(case: Case):
    return (Case.community == case.community) if case.community else (Case.street == case.street)


def link_repeats(session: Session, case: Case) -> None:
    """Link `case` (just collected: category and jurisdiction known) to its repeats and its hot spot.
    Runs inside collection's transaction, which happens once per case."""
    from services.cases import record  # the one writer of timeline entries

    policy = repeat_policy()
    if not (case.community or case.street):
        return
    if case.citizen_key and not case.anonymous:
        since = case.reported_at - timedelta(days=policy.same_citizen.window_days)
        earlier = session.exec(select(Case).where(
            Case.citizen_key == case.citizen_key, Case.id != case.id, Case.category == case.category,
            _same_place(case), col(Case.reported_at) <= case.reported_at,
            or_(Case.status != CaseStatus.closed, col(Case.reported_at) >= since),
        ).order_by(col(Case.id))).all()
        linked = _linked(session, case)
        for other in earlier:
            _link(session, case, other.id, SAME_CITIZEN, linked)
            record(session, case, "repeat.linked", f"重复诉求: 同一诉求人此前反映 {other.number}",
                   related=other.number, link=SAME_CITIZEN)
            record(session, other, "repeat.linked", f"重复诉求: 同一诉求人再次反映 {case.number}",
                   related=case.number, link=SAME_CITIZEN)
        target = policy.same_citizen.raise_urgency_to
        if earlier and target and URGENCIES.index(target) > URGENCIES.index(case.urgency):
            record(session, case, "urgency.raised", f"重复诉求, 紧急程度 {case.urgency} → {target}",
                   before=case.urgency, after=target)
            case.urgency = target
            session.add(case)

    if case.community:
        _link_hot_spot(session, case, policy.hot_spot)


def _link_hot_spot(session: Session, case: Case, rule: HotSpotRule) -> None:
    """The latest `count_up_to` cases of C's community and category in the window, newest first, in one query on
    ix_case_hot_spot: enough to judge both thresholds and to pick the `max_links` to link, at a cost bounded by
    the policy, not by the spot's size."""
    from services.cases import record
    since = case.reported_at - timedelta(days=rule.window_days)
    rows = session.exec(select(Case.id, Case.number, Case.citizen_key).where(
        Case.community == case.community, Case.category == case.category, Case.id != case.id,
        col(Case.reported_at) >= since, col(Case.reported_at) <= case.reported_at,
    ).order_by(col(Case.reported_at).desc()).limit(rule.count_up_to + 1)).all()
    more = "以上" if len(rows) > rule.count_up_to else ""
    rows = rows[:rule.count_up_to]
    # distinct citizens: the others' keys, each keyless case as one, and this case unless its key is among them
    keys = {key for _, _, key in rows if key is not None}
    citizens = len(keys) + sum(1 for _, _, key in rows if key is None) + (case.citizen_key not in keys)
    cases_counted = len(rows) + 1
    if cases_counted < rule.min_cases or citizens < rule.min_citizens:
        return
    latest = rows[:rule.max_links]  # a big hot spot links only its latest cases
    linked = _linked(session, case)
    for other_id, _, _ in latest:
        _link(session, case, other_id, HOT_SPOT, linked)
    record(session, case, "hot_spot", f"热点: {rule.window_days} 天内同社区同类诉求 {cases_counted} 件{more}",
           cases=cases_counted, citizens=citizens, counted_up_to=bool(more), related=[n for _, n, _ in latest])


def _linked(session: Session, case: Case) -> set[tuple[int, str]]:
    """(related case id, kind) of the links `case` already has: one query, not one per candidate."""
    return set(session.exec(select(CaseLink.related_case_id, CaseLink.kind).where(CaseLink.case_id == case.id)).all())


def _link(session: Session, case: Case, other_id: int, kind: str, linked: set[tuple[int, str]]) -> None:
    if (other_id, kind) not in linked:
        session.add(CaseLink(case_id=case.id, related_case_id=other_id, kind=kind))
        linked.add((other_id, kind))


def related(session: Session, case_id: int) -> list[dict]:
    """Both directions: the earlier cases this one repeats or clusters with, and the later ones that do."""
    out = []
    for link in session.exec(select(CaseLink).where(
            or_(CaseLink.case_id == case_id, CaseLink.related_case_id == case_id)).order_by(col(CaseLink.id))):
        other = session.get(Case, link.related_case_id if link.case_id == case_id else link.case_id)
        out.append({"case_id": str(other.id), "number": other.number, "kind": link.kind, "status": other.status,
                    "direction": "earlier" if link.case_id == case_id else "later"})
    return out


# ---------------------------------------------------------------- hot spots of a period (report)

@dataclass(frozen=True)
class HotSpot:
    street: str | None
    community: str
    category: str
    cases: int
    citizens: int
    case_numbers: list[str]
    first_at: datetime
    last_at: datetime


def hot_spots(session: Session, start: datetime, end: datetime, policy: RepeatPolicy | None = None) -> list[HotSpot]:
    """The community × category groups of cases reported in [start, end) of which at least one case was linked
    as a hot spot: all the group's cases of the period, their distinct citizens, biggest first. `policy` is
    accepted for symmetry with the other evaluations; linking already applied it."""
    cases = session.exec(select(Case).where(col(Case.reported_at) >= start, col(Case.reported_at) < end,
                                            col(Case.community).is_not(None))).all()
    hot_ids = set(session.exec(select(CaseLink.case_id).where(
        CaseLink.kind == HOT_SPOT, col(CaseLink.case_id).in_([c.id for c in cases])))) if cases else set()
    groups: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        groups.setdefault((c.community, c.category), []).append(c)
    rows = []
    for (community, category), members in groups.items():
        if not any(c.id in hot_ids for c in members):
            continue
        members.sort(key=lambda c: c.reported_at)
        rows.append(HotSpot(
            street=members[0].street, community=community, category=category, cases=len(members),
            citizens=len({c.citizen_key or f"case-{c.id}" for c in members}),
            case_numbers=[c.number for c in members], first_at=members[0].reported_at,
            last_at=members[-1].reported_at))
    return sorted(rows, key=lambda r: (-r.cases, r.community, r.category))

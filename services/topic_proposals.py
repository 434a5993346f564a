"""议题建议: deliberation topics proposed from hot spots (热点) and repeated requests (重复诉求).

A shared problem shows in the requests before anyone proposes a topic: many citizens calling about the street
lamps of one community, or one citizen calling again and again about the tap water. This module reads the cases
of the last `proposals.window_days` (policies/deliberation.yaml, so a district tunes it without code), groups them
by place (the community; the street when the community is unknown) and category, and proposes a topic for each
group that is

- a **hot spot**: at least `hot_spot_min_cases` cases from at least `hot_spot_min_citizens` citizens (citizens
  told apart by the keyed phone hash of services/repeats.py; an anonymous caller counts as one citizen), or
- **repeated requests**: one citizen made at least `repeat_min_cases` of them (the same key repeats.py links
  its `same_citizen` repeats by).

Places with an open deliberation (not concluded) are left out, and so are cases already linked to a deliberation
and the categories in `exclude_categories` (enquiries, decision items). Adopting a proposal (`adopt`) creates the
topic through `services.deliberations.create` with the group's cases, whose citizens are told on their case's
timeline, exactly as converting cases does. Nothing here names a citizen: a proposal carries counts and case
numbers only.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from hotline.clock import iso, now
from models import Case, Deliberation, DeliberationCase, Unit
from services import deliberations, policies
from services.cases import Conflict, Invalid

HOT_SPOT, REPEATED = "hot_spot", "repeated"
REASON_LABELS = {HOT_SPOT: "热点", REPEATED: "重复诉求"}
MAX_LINKED = 100  # the latest cases of a proposal linked to the topic (as POST /api/deliberations allows)


def proposals(session: Session, at: datetime | None = None) -> list[dict]:
    """The proposed topics, biggest first (cases, then citizens, then place and category). Counted in SQL (a busy
    district has many cases in a window); only the groups that qualify are read case by case."""
    at = at or now()
    policy = policies.deliberation_policy()
    rule = policy.proposals
    place = func.coalesce(Case.community, Case.street)
    where = (col(Case.reported_at) >= at - timedelta(days=rule.window_days), col(Case.reported_at) <= at,
             Case.source != "deliberation", col(Case.category).not_in(rule.exclude_categories),
             col(Case.id).not_in(select(DeliberationCase.case_id)), place.is_not(None))
    keyless = func.sum(case((col(Case.citizen_key).is_(None), 1), else_=0))
    counted = session.exec(select(place, Case.category, func.count(), func.count(func.distinct(Case.citizen_key)),
                                  keyless).where(*where).group_by(place, Case.category)
                           .having(func.count() >= min(rule.hot_spot_min_cases, rule.repeat_min_cases))).all()
    repeats = Counter()
    for group_place, category, n in session.exec(
            select(place, Case.category, func.count()).where(*where, col(Case.citizen_key).is_not(None))
            .group_by(place, Case.category, Case.citizen_key).having(func.count() >= rule.repeat_min_cases)):
        repeats[(group_place, category)] = max(repeats[(group_place, category)], n)
    busy = _places_deliberating(session)
    names = {u.code: u.name for u in session.exec(select(Unit))}
    labels = policies.categories()
    out = []
    for group_place, category, cases, keyed, unkeyed in counted:
        if group_place in busy:
            continue
        citizens, top_repeat = keyed + (unkeyed or 0), repeats[(group_place, category)]
        reasons = ([HOT_SPOT] if cases >= rule.hot_spot_min_cases and citizens >= rule.hot_spot_min_citizens
                   else []) + ([REPEATED] if top_repeat else [])
        if not reasons:
            continue
        members = session.exec(select(Case).where(*where, place == group_place, Case.category == category)
                               .order_by(col(Case.reported_at), col(Case.id))).all()
        first = members[0]
        topic_type = rule.topic_type_for(category)
        place_name = names.get(group_place, group_place)
        label = labels.get(category, category)
        out.append({
            "key": f"{group_place}/{category}", "reasons": reasons,
            "reason_label": _reason_label(reasons, rule.window_days, cases, citizens, top_repeat),
            "community": first.community, "street": first.street, "district": first.district,
            "place": group_place, "place_name": place_name, "category": category, "category_label": label,
            "cases": cases, "citizens": citizens, "most_by_one_citizen": top_repeat,
            "case_ids": [str(c.id) for c in members], "case_numbers": [c.number for c in members],
            "first_reported_at": iso(first.reported_at), "last_reported_at": iso(members[-1].reported_at),
            "topic_type": topic_type, "topic_label": policy.topic_types.get(topic_type, topic_type),
            "title": f"{place_name}{label}问题",
        })
    return sorted(out, key=lambda p: (-p["cases"], -p["citizens"], p["place"], p["category"]))


def _reason_label(reasons: list[str], days: int, cases: int, citizens: int, top_repeat: int) -> str:
    parts = []
    if HOT_SPOT in reasons:
        parts.append(f"热点: {days} 天内 {cases} 件, {citizens} 位诉求人")
    if REPEATED in reasons:
        parts.append(f"重复诉求: 同一诉求人反映 {top_repeat} 次")
    return "; ".join(parts)


def _places_deliberating(session: Session) -> set[str]:
    """Communities and streets with a deliberation not yet concluded (a street counts only for a deliberation
    without a community)."""
    busy = set()
    for community, street in session.exec(select(Deliberation.community, Deliberation.street).where(
            col(Deliberation.concluded_at).is_(None))).all():
        busy.add(community or street)
    return busy


def adopt(*, session: Session, key: str, actor: str, topic_type: str | None = None, title: str | None = None,
          description: str | None = None, at: datetime | None = None) -> Deliberation:
    """Create the topic a proposal suggests, with its cases (their citizens are told, as when converting cases).
    The proposal is computed again, so a place that got a deliberation meanwhile is refused (Conflict)."""
    if not key or "/" not in key:
        raise Invalid("key", "a proposal's key, as GET /api/deliberations/proposals lists it (place/category)")
    found = next((p for p in proposals(session, at) if p["key"] == key), None)
    if found is None:
        raise Conflict(f"no topic is proposed for {key} (any more): its place may already have an open "
                       "deliberation, or its cases are too few or too old", current=None)
    location = {k: found[k] for k in ("district", "street", "community") if found[k]}
    case_ids = [int(i) for i in found["case_ids"][-MAX_LINKED:]]
    note = f"{found['reason_label']} ({found['category_label']})"
    return deliberations.create(
        session=session, topic_type=topic_type or found["topic_type"], title=title or found["title"],
        description=description or f"由{note}提出的议题。", location=location, case_ids=case_ids, actor=actor,
        origin=HOT_SPOT if HOT_SPOT in found["reasons"] else REPEATED)

"""Routing (派单): the responsibility list decides the lead unit (and co-handling units, 双派单);
with no rule, direct dispatch (直派) to the street of the place."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time

from services.policies import RoutingPolicy, RoutingRule


@dataclass(frozen=True)
class Place:
    district: str | None
    street: str | None
    community: str | None


@dataclass(frozen=True)
class Route:
    unit: str | None
    rule: str  # the rule's name, or "直派" for direct dispatch to the street
    co_units: tuple[str, ...] = field(default=())


def _in_window(at: time, window: tuple[time, time]) -> bool:
    start, end = window
    return start <= at < end if start <= end else at >= start or at < end  # a window may wrap midnight


def matches(rule: RoutingRule, category: str, place: Place, urgency: str, at: time) -> bool:
    return ((rule.categories is None or category in rule.categories)
            and (rule.districts is None or place.district in rule.districts)
            and (rule.streets is None or place.street in rule.streets)
            and (rule.communities is None or place.community in rule.communities)
            and (rule.urgencies is None or urgency in rule.urgencies)
            and (rule.hour_window() is None or _in_window(at, rule.hour_window())))


def route(policy: RoutingPolicy, category: str, place: Place, urgency: str = "normal",
          at: time = time(12, 0), exclude: frozenset[str] = frozenset()) -> Route:
    """First matching rule wins (skipping rules whose unit is in `exclude`, e.g. units that returned the case).
    '{community}', '{street}' or '{district}' in a rule mean the case's own unit."""
    def fill(unit: str) -> str | None:
        return unit.format(community=place.community, street=place.street, district=place.district) \
            if "{" in unit else unit

    for rule in policy.rules:
        if not matches(rule, category, place, urgency, at):
            continue
        unit = fill(rule.unit)
        if unit in (None, "None") or unit in exclude:
            continue
        co = tuple(u for u in (fill(c) for c in rule.co_units) if u not in (None, "None", unit))
        return Route(unit=unit, rule=rule.name, co_units=co)
    fallback = place.street or place.district
    return Route(unit=None if fallback in exclude else fallback, rule="直派")

"""Policy files: parsed, validated with clear errors; routing rules as ordered data."""
from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from hotline.settings import REPO_ROOT
from services import policies
from datetime import time

from services.policies import PolicyError, RoutingPolicy, RoutingRule, Span, parse_duration, routing_overlaps
from services.routing import Place, Route, route


@pytest.fixture(autouse=True)
def _data_folder(tmp_path, monkeypatch):
    """The last good version of each policy file is kept in the data folder: a temporary one here."""
    from tests.conftest import clear_caches
    monkeypatch.setenv("HOTLINE_HOME", str(tmp_path / "home"))
    clear_caches()
    yield
    clear_caches()


@pytest.mark.parametrize("text, expected", [
    ("30s", timedelta(seconds=30)), ("15m", timedelta(minutes=15)), ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)), ("1.5h", timedelta(minutes=90)), (45, timedelta(seconds=45)),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "7", "7 days", "h", "-3h"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


def test_shipped_policies_load():
    sla = policies.sla_policy(REPO_ROOT / "policies")
    assert sla.urgency["normal"].due_within == Span(7, "wd")
    assert sla.urgency["emergency"].respond_within == Span(30, "m")
    assert sla.for_case("normal", "heating").due_within == Span(24, "h")  # category × urgency override
    assert sla.for_case("urgent", "heating") == sla.urgency["urgent"]
    assert policies.escalation_policy(REPO_ROOT / "policies").max_bounces >= 1
    assert policies.whistle_policy(REPO_ROOT / "policies").report_within["emergency"] == Span(30, "m")
    cats = policies.categories(REPO_ROOT / "policies")
    assert len(cats) >= 25 and cats["noise"] == "噪声扰民" and "uncategorised" in cats
    assert policies.routing_policy(REPO_ROOT / "policies").rules


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(REPO_ROOT / "policies", target)
    return target


def test_invalid_sla_names_file_and_field(tmp_path):
    d = _copy(tmp_path)
    (d / "sla.yaml").write_text("urgency:\n  normal: {respond_within: soon, due_within: 7d}\n", encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        policies.sla_policy(d)
    assert "sla.yaml" in str(err.value) and "urgency.normal.respond_within" in str(err.value)


def test_missing_urgency_level_is_reported(tmp_path):
    d = _copy(tmp_path)
    (d / "sla.yaml").write_text("urgency:\n  normal: {respond_within: 1h, due_within: 7d}\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="missing urgency levels"):
        policies.sla_policy(d)


def test_routing_rule_with_unknown_category_is_reported(tmp_path):
    d = _copy(tmp_path)
    (d / "routing.yaml").write_text("rules:\n  - {name: x, categories: [no_such_thing], unit: a}\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="unknown categories"):
        policies.routing_policy(d)


def test_broken_yaml_is_reported(tmp_path):
    d = _copy(tmp_path)
    (d / "routing.yaml").write_text("rules: [\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="not valid YAML"):
        policies.routing_policy(d)


PLACE = Place(district="haidian", street="haidian_st", community="xiaonanzhuang")
POLICY = RoutingPolicy(rules=[
    RoutingRule(name="water", categories=["water_quality"], unit="water_co"),
    RoutingRule(name="pm here", categories=["property_management"], communities=["xiaonanzhuang"], unit="property_co"),
    RoutingRule(name="disputes to the community", categories=["neighbour_dispute"], unit="{community}"),
    RoutingRule(name="catch-all qinghe", streets=["qinghe_st"], unit="qinghe_st"),
])


@pytest.mark.parametrize("category, place, unit, rule", [
    ("water_quality", PLACE, "water_co", "water"),                                # category rule
    ("property_management", PLACE, "property_co", "pm here"),                    # category × place
    ("property_management", Place("haidian", "haidian_st", "wanquanzhuang"), "haidian_st", "直派"),  # other place
    ("neighbour_dispute", PLACE, "xiaonanzhuang", "disputes to the community"),  # the case's own community
    ("noise", Place("haidian", "qinghe_st", None), "qinghe_st", "catch-all qinghe"),
    ("noise", PLACE, "haidian_st", "直派"),                                       # no rule: the street
    ("noise", Place("haidian", None, None), "haidian", "直派"),                   # no street known: the district
])
def test_first_matching_rule_wins(category, place, unit, rule):
    assert route(POLICY, category, place) == Route(unit=unit, rule=rule)


NIGHT = RoutingPolicy(rules=[
    RoutingRule(name="night works", categories=["construction_noise"], hours="22:00-06:00", unit="chengguan",
                co_units=["{street}"]),
    RoutingRule(name="emergencies", urgencies=["emergency"], unit="haidian"),
])


@pytest.mark.parametrize("category, urgency, at, expected", [
    ("construction_noise", "normal", time(23, 30), Route("chengguan", "night works", ("haidian_st",))),
    ("construction_noise", "normal", time(5, 59), Route("chengguan", "night works", ("haidian_st",))),
    ("construction_noise", "normal", time(6, 0), Route("haidian_st", "直派")),  # the window is over
    ("noise", "emergency", time(12, 0), Route("haidian", "emergencies")),
    ("noise", "urgent", time(12, 0), Route("haidian_st", "直派")),
])
def test_urgency_time_of_day_and_co_units(category, urgency, at, expected):
    assert route(NIGHT, category, PLACE, urgency, at) == expected


def test_excluded_units_fall_through_to_the_next_rule():
    assert route(POLICY, "water_quality", PLACE, exclude=frozenset({"water_co"})) == Route("haidian_st", "直派")
    assert route(POLICY, "noise", PLACE, exclude=frozenset({"haidian_st"})).unit is None


def test_unknown_units_and_overlaps_are_reported(tmp_path):
    d = _copy(tmp_path)
    with pytest.raises(PolicyError, match=r"unknown units \['water_co'\]"):
        policies.routing_policy(d, units={"chengguan", "water_bureau", "police_station", "property_co"})
    overlaps = routing_overlaps(RoutingPolicy(rules=[
        RoutingRule(name="all water", categories=["water_quality"], unit="water_co"),
        RoutingRule(name="water here", categories=["water_quality"], streets=["qinghe_st"], unit="qinghe_st"),
        RoutingRule(name="noise", categories=["noise"], unit="qinghe_st"),
    ]))
    assert overlaps == ["rules.0 (all water) overlaps rules.1 (water here); the first match wins"]


def test_bad_hours_are_refused():
    with pytest.raises(ValueError, match="07:00-22:00"):
        RoutingRule(name="x", unit="u", hours="7am to 10pm")


def test_a_file_is_parsed_once_per_text_and_an_edit_applies_at_once(tmp_path, monkeypatch):
    d = _copy(tmp_path)
    monkeypatch.setenv("HOTLINE_HOME", str(tmp_path / "home"))
    from hotline.settings import get_settings
    get_settings.cache_clear()
    policies._parse.cache_clear()
    first = policies.sla_policy(d)
    parsed = policies._parse.cache_info().misses
    assert policies.sla_policy(d) == first
    assert policies._parse.cache_info().misses == parsed  # the same texts: nothing parsed again
    text = (d / "sla.yaml").read_text(encoding="utf-8")
    (d / "sla.yaml").write_text(text.replace("follow_up:", "# edited\nfollow_up:", 1), encoding="utf-8")
    assert policies._parse.cache_info().misses == parsed
    policies.sla_policy(d)
    assert policies._parse.cache_info().misses == parsed + 1  # the edited file, read and parsed at its next use
    get_settings.cache_clear()

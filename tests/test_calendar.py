"""Deadlines on the statutory calendar, table-driven, each row said in words."""
from __future__ import annotations

import logging
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from services.calendar import Calendar
from services.policies import PolicyError, Span, parse_span

BJ = ZoneInfo("Asia/Shanghai")
CAL = Calendar()


def at(y, m, d, hh=10, mm=0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=BJ)


@pytest.mark.parametrize("day, workday, why", [
    (date(2025, 10, 1), False, "National Day 2025"),
    (date(2025, 10, 8), False, "National Day week 2025 runs to the 8th (with Mid-Autumn)"),
    (date(2025, 9, 28), True, "a make-up Sunday before National Day 2025"),
    (date(2025, 10, 11), True, "a make-up Saturday after National Day 2025"),
    (date(2026, 2, 17), False, "Spring Festival 2026"),
    (date(2026, 2, 14), True, "make-up Saturday before Spring Festival 2026"),
    (date(2026, 2, 28), True, "make-up Saturday after Spring Festival 2026"),
    (date(2026, 2, 24), True, "first workday after Spring Festival 2026"),
    (date(2026, 11, 21), False, "an ordinary Saturday"),
    (date(2026, 11, 23), True, "an ordinary Monday"),
    (date(2027, 1, 1), False, "New Year 2027: beyond chinesecalendar, from the holidays package"),
    (date(2027, 1, 4), True, "an ordinary Monday in 2027 (fallback)"),
    (date(2027, 1, 9), False, "a Saturday in 2027 (fallback)"),
])
def test_workdays(day, workday, why):
    assert CAL.is_workday(day) is workday, why


@pytest.mark.parametrize("start, span, expected, why", [
    (at(2026, 11, 20, 15), "1wd", at(2026, 11, 23, 15), "Friday 15:00 + 1 working day -> Monday 15:00"),
    (at(2026, 11, 23, 10), "7wd", at(2026, 12, 2, 10), "Monday + 7 working days -> the Wednesday after next"),
    (at(2026, 9, 30, 10), "1wd", at(2026, 10, 8, 10), "the eve of National Day 2026 + 1 -> 8 Oct"),
    (at(2026, 9, 30, 10), "3wd", at(2026, 10, 10, 10), "…and + 3 lands on the make-up Saturday 10 Oct"),
    (at(2026, 2, 13, 10), "1wd", at(2026, 2, 14, 10), "Friday before Spring Festival + 1 -> make-up Saturday"),
    (at(2026, 2, 14, 10), "1wd", at(2026, 2, 24, 10), "make-up Saturday + 1 -> after the Spring Festival week"),
    (at(2026, 10, 3, 20), "1wd", at(2026, 10, 9, 9), "reported on a holiday: counts from the next workday's opening"),
    (at(2026, 12, 30, 10), "3wd", at(2027, 1, 5, 10), "across the 2026 -> 2027 boundary (New Year 2027 is off)"),
    (at(2026, 11, 23, 16), "2wh", at(2026, 11, 24, 10), "Monday 16:00 + 2 working hours -> Tuesday 10:00"),
    (at(2026, 11, 21, 12), "8wh", at(2026, 11, 23, 17), "Saturday + 8 working hours -> Monday closing time"),
    (at(2026, 11, 23, 10), "30m", at(2026, 11, 23, 10, 30), "calendar minutes ignore the calendar"),
    (at(2026, 11, 21, 10), "24h", at(2026, 11, 22, 10), "calendar hours run over a weekend"),
])
def test_deadlines(start, span, expected, why):
    assert parse_span(span).after(start, CAL) == expected, why


def test_override_file_wins_over_every_source():
    cal = Calendar(holidays=frozenset({date(2026, 11, 23)}), workdays=frozenset({date(2026, 11, 22)}))
    assert not cal.is_workday(date(2026, 11, 23)) and cal.is_workday(date(2026, 11, 22))
    assert cal.source(date(2026, 11, 23)) == "override" and cal.source(date(2026, 11, 24)) == "chinesecalendar"
    assert Span(1, "wd").after(at(2026, 11, 20, 10), cal) == at(2026, 11, 22, 10)


def test_a_year_without_data_warns_once_and_never_crashes(caplog):
    cal = Calendar()
    with caplog.at_level(logging.WARNING, logger="services.calendar"):
        for month in range(1, 13):
            Span(20, "wd").after(at(2028, month, 15), cal)
    warnings = [r for r in caplog.records if "no data for 2028" in r.getMessage()]
    assert len(warnings) == 1
    assert cal.source(date(2028, 3, 1)) == "holidays"


def test_calendar_policy_rejects_a_date_in_both_lists(tmp_path):
    import shutil

    from hotline.settings import REPO_ROOT
    from services import policies
    d = tmp_path / "p"
    shutil.copytree(REPO_ROOT / "policies", d)
    (d / "calendar.yaml").write_text("holidays: [2027-02-14]\nworkdays: [2027-02-14]\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="both holiday and workday"):
        policies.calendar(d)

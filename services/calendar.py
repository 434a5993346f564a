"""The statutory calendar (法定节假日 and 调休 make-up workdays) and deadline arithmetic on it.

Sources, in order: the district's override file (policies/calendar.yaml: extra holidays and workdays per date),
then `chinesecalendar` (official data, holidays and make-up workdays), then for a year it lacks (2027 onwards
today) the `holidays` package's China holidays with plain weekends — with a warning once per year, never a crash.

Durations: calendar time (`timedelta`), working days (a deadline on the same clock time N workdays later) and
working hours (office hours of workdays only, from the policy).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import chinese_calendar
import holidays as holidays_lib

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calendar:
    """Which days are workdays. `holidays` and `workdays` override every other source."""

    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()
    office_start: time = time(9, 0)
    office_end: time = time(17, 0)
    tz: str = "Asia/Shanghai"
    _warned: set[int] = field(default_factory=set, compare=False, hash=False, repr=False)

    def is_workday(self, day: date) -> bool:
        if day in self.holidays:
            return False
        if day in self.workdays:
            return True
        try:
            return chinese_calendar.is_workday(day)
        except NotImplementedError:
            if day.year not in self._warned:
                self._warned.add(day.year)
                log.warning("chinesecalendar has no data for %s: using the `holidays` package and weekends; "
                            "add the official 调休 days to policies/calendar.yaml", day.year)
            return day.weekday() < 5 and day not in _fallback_holidays(day.year)

    def source(self, day: date) -> str:
        if day in self.holidays or day in self.workdays:
            return "override"
        try:
            chinese_calendar.is_workday(day)
            return "chinesecalendar"
        except NotImplementedError:
            return "holidays"

    # ---- deadline arithmetic (all inputs/outputs aware datetimes)

    def add_workdays(self, start: datetime, days: float) -> datetime:
        """N working days later at the same clock time; a start on a non-workday counts from the next workday's
        office start. Fractions of a day are office-hours fractions."""
        local = start.astimezone(ZoneInfo(self.tz))
        whole, frac = int(days), days - int(days)
        if not self.is_workday(local.date()):
            local = datetime.combine(self._next_workday(local.date()), self.office_start, local.tzinfo)
        day = local.date()
        for _ in range(whole):
            day = self._next_workday(day)
        result = datetime.combine(day, local.timetz())
        if frac:
            result = self.add_working_hours(result, frac * self._office_hours())
        return result.astimezone(start.tzinfo)

    def add_working_hours(self, start: datetime, hours: float) -> datetime:
        """Count only office hours on workdays."""
        tz = ZoneInfo(self.tz)
        cur = start.astimezone(tz)
        remaining = timedelta(hours=hours)
        while True:
            day = cur.date()
            opens = datetime.combine(day, self.office_start, tz)
            closes = datetime.combine(day, self.office_end, tz)
            if not self.is_workday(day) or cur >= closes:
                cur = datetime.combine(self._next_workday(day), self.office_start, tz)
                continue
            cur = max(cur, opens)
            if cur + remaining <= closes:
                return (cur + remaining).astimezone(start.tzinfo)
            remaining -= closes - cur
            cur = datetime.combine(self._next_workday(day), self.office_start, tz)

    def _next_workday(self, day: date) -> date:
        day += timedelta(days=1)
        for _ in range(60):  # no holiday stretch is this long; guards a broken override file
            if self.is_workday(day):
                return day
            day += timedelta(days=1)
        raise ValueError(f"no workday within 60 days after {day}")

    def _office_hours(self) -> float:
        return (datetime.combine(date.min, self.office_end) - datetime.combine(date.min, self.office_start)
                ).total_seconds() / 3600


@lru_cache
def _fallback_holidays(year: int) -> frozenset[date]:
    return frozenset(holidays_lib.country_holidays("CN", years=year).keys())

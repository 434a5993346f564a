"""Time in one convention: aware UTC inside (sqlmodel stores and returns it so on SQLite and Postgres);
people and APIs see Asia/Shanghai with its offset."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

import pendulum

from hotline.settings import get_settings


def now() -> datetime:
    return datetime.now(timezone.utc)


def to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime: a UTC offset is required")
    return value.astimezone(timezone.utc)


def stored_utc(value: datetime) -> datetime:
    """A datetime read from our DB, aware and in UTC (SQLite gives it back naive; it was stored in UTC)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def local(value: datetime | None) -> pendulum.DateTime | None:
    if value is None:
        return None
    return pendulum.instance(stored_utc(value)).in_timezone(_zone(get_settings().timezone))


@lru_cache(maxsize=8)
def _zone(name: str) -> pendulum.Timezone:
    """pendulum builds a zone anew for every name given (5 % of an intake's CPU in a profile): once per name."""
    return pendulum.timezone(name)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with the local offset, e.g. 2026-11-23T18:00:00+08:00."""
    loc = local(value)
    return loc.isoformat() if loc is not None else None

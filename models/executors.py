"""In-process executors (flows/executor.py) and their heartbeats: how a dead executor's runs are found."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_
from sqlmodel import Field, SQLModel, col

from hotline.clock import now


class ExecutorBeat(SQLModel, table=True):
    """One row per executor process; `seen_at` moves on every heartbeat. An executor whose heartbeat is older than
    the policy's bound is dead: the first live executor to claim the row (`reaped_by`) reschedules its runs. An
    executor that starts the runs of recorded cases (HOTLINE_RUN_STARTER=executor) names its share of them
    (`starter_shard`), so the deadline watch starts only the cases of shares no live executor starts."""

    id: str = Field(primary_key=True, max_length=64)  # also written as the flow runs' infrastructure_pid
    host: str = Field(max_length=120)
    pid: int
    started_at: datetime = Field(default_factory=now)
    seen_at: datetime = Field(default_factory=now, index=True)
    reaped_by: str | None = Field(default=None, max_length=64)
    starter_shard: str | None = Field(default=None, max_length=24)  # "i/n": it starts the recorded cases id % n == i

    @classmethod
    def live(cls, dead_after: timedelta) -> ColumnElement[bool]:
        """Beating within `dead_after` and neither stopped nor reaped: the one rule of a live executor."""
        return and_(cls.seen_at >= now() - dead_after, col(cls.reaped_by).is_(None))

    @classmethod
    def silent(cls, dead_after: timedelta) -> ColumnElement[bool]:
        """Dead and not yet taken over: silent past `dead_after`, neither stopped cleanly nor reaped."""
        return and_(cls.seen_at < now() - dead_after, col(cls.reaped_by).is_(None))

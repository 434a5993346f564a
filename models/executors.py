"""In-process executors (flows/executor.py) and their heartbeats: how a dead executor's runs are found."""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

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

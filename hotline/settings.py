"""One place for configuration, read from HOTLINE_* environment variables."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOTLINE_", extra="ignore")

    home: Path = Field(default=REPO_ROOT / ".hotline", description="project data folder")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in home")
    admin_token: str | None = None
    citizen_key: str | None = Field(default=None, description="secret for hashing phones (default: a key file)")
    policy_dir: Path = REPO_ROOT / "policies"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_url: str | None = Field(default=None, description="base URL units call back to")
    prefect_port: int = 4200
    timezone: str = "Asia/Shanghai"
    watch_interval_seconds: int = 10
    executor: str = Field(default="serve", description="serve (a process per flow run) or inprocess (flows/executor.py)")
    executor_limit: int = Field(default=100, description="in-process executor: flow runs at once")
    executor_heartbeat_seconds: float = 5
    executor_dead_after_seconds: float = Field(default=30, description="an executor silent this long is dead")
    webhook_timeout_seconds: float = 5.0
    intake_wait_seconds: float = Field(
        default=15, description="intake waits this long for Prefect to create the case's run, to answer with its "
        "flow_run_id; 0 answers as soon as the case is recorded (a burst is then taken at our API's rate and the "
        "runs start in the background)")
    run_starter: str = Field(
        default="api", pattern="^(api|executor)$",
        description="who starts a recorded case's flow run: api (intake starts it, waiting up to "
        "intake_wait_seconds) or executor (intake only records the case; the in-process executors start the runs "
        "of recorded cases from our DB as they have room: a burst waits in our DB, not in Prefect)")
    starter_hold_rate: float = Field(
        default=20, ge=0,
        description="callers first: while intake records more than this many cases per second (a burst, far above "
        "a district's peak), the executors' starters start no runs, for at most starter_max_hold_seconds at a "
        "time; 0: never hold")
    starter_max_hold_seconds: float = Field(default=60, gt=0)
    executor_shard: str = Field(
        default="0/1", pattern=r"^\d+/[1-9]\d*$",
        description="in-process executor i/n: with run_starter=executor it starts the cases whose id % n == i")

    @property
    def shard(self) -> tuple[int, int]:
        return parse_shard(self.executor_shard, "HOTLINE_EXECUTOR_SHARD")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'hotline.db'}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")


def parse_shard(text: str, source: str = "shard") -> tuple[int, int]:
    """"i/n" (the cases whose id % n == i) as (i, n); a share outside its count is an error naming `source`."""
    index, count = (int(x) for x in text.split("/"))
    if index >= count:
        raise ValueError(f"{source} {text}: the index must be below the count")
    return index, count


def format_shard(shard: tuple[int, int]) -> str:
    return "{}/{}".format(*shard)


@lru_cache
def get_settings() -> Settings:
    return Settings()

"""The scaled shape, run locally on loopback: what a district's production looks like, in miniature.

- Prefect on Postgres: two API servers (`prefect server start --no-services`) and one process for its background
  services (`prefect server services start`: scheduler, pause expiry, late runs, event persister, …);
- Redis carries Prefect's events and coordinates its services (`prefect-redis`: messaging broker and cache, causal
  ordering, concurrency lease storage, the docket);
- several in-process executors (flows/executor.py), half of them talking to each Prefect API server;
- our API as several uvicorn worker processes; our DB on Postgres.

`./run scaled` starts it (Ctrl-C stops it); `./run bench --topology scaled` measures it. Kubernetes shape:
docs/deployment.md.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from hotline.autovacuum import AutovacuumStandIn
from hotline.runtime import Stack, free_port

POSTGRES = os.environ.get("HOTLINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
# the scaled shape owns this Redis database and empties it at start (see ScaledStack.start)
REDIS_URL = os.environ.get("HOTLINE_SCALED_REDIS", "redis://127.0.0.1:6379/15")


def redis_settings(url: str) -> dict[str, str]:
    """Prefect's settings for Redis messaging (prefect-redis), as its self-hosting guide gives them."""
    host_port, _, db = url.removeprefix("redis://").partition("/")
    host, _, port = host_port.partition(":")
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_SERVER_DOCKET_URL": url,
        "PREFECT_REDIS_MESSAGING_HOST": host,
        "PREFECT_REDIS_MESSAGING_PORT": port or "6379",
        "PREFECT_REDIS_MESSAGING_DB": db or "0",
    }


@dataclass
class Databases:
    """A Prefect database and a schema for our DB on the machine's Postgres, made for one run and dropped after
    (the scaled shape's, and the benchmark's with --postgres). Where the server runs with autovacuum off, they are
    kept vacuumed by autovacuum's rule (hotline/autovacuum.py) until dropped."""
    admin_url: str = POSTGRES
    prefix: str = "scaled"

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.prefect_db, self.schema = f"prefect_{self.prefix}_{tag}", f"hotline_{self.prefix}_{tag}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.prefect_db}"')
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        base = self.admin_url.split("://", 1)[1]
        self.ours = f"postgresql+psycopg://{base}?options=-csearch_path%3D{self.schema}"
        self.prefect = f"postgresql+asyncpg://{base.rsplit('/', 1)[0]}/{self.prefect_db}"
        prefect_conninfo = f"{self.admin_url.rsplit('/', 1)[0]}/{self.prefect_db}"
        self.vacuum = AutovacuumStandIn([(prefect_conninfo, "public"), (self.admin_url, self.schema)]).start()

    def drop(self) -> None:
        self.vacuum.stop()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.prefect_db}" WITH (FORCE)')
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@dataclass
class ScaledStack(Stack):
    """The Stack's processes in the scaled shape (see the module docstring)."""
    redis_url: str = REDIS_URL
    prefect_servers: int = 2
    executors: int = 2
    api_workers: int = 2
    # city scale: intake answers once the case is recorded; the executors start the runs (flow_run_id comes later)
    intake_wait_seconds: float | None = 0
    # callers first: on one machine, Prefect and the executors run at this lower CPU priority than our API and the
    # DB, so a burst of calls is taken at the API's rate and its backlog is worked off after (on Kubernetes, the
    # same split is CPU requests per deployment: docs/deployment.md). 0: all at one priority
    background_nice: int = 10

    def __post_init__(self) -> None:
        if not (self.database_url and self.prefect_database_url):
            raise ValueError("the scaled shape needs our DB and Prefect's on Postgres")
        self.executor = "inprocess"
        self.prefect_ports = [self.prefect_port] + [free_port() for _ in range(self.prefect_servers - 1)]

    def env(self, prefect_port: int | None = None) -> dict[str, str]:
        # intake only records; each executor starts the runs of its shard of recorded cases (flows/executor.py)
        env = super().env() | redis_settings(self.redis_url) | {"HOTLINE_RUN_STARTER": "executor"}
        if prefect_port is not None:
            env["PREFECT_API_URL"] = f"http://127.0.0.1:{prefect_port}/api"
        return env

    def start(self) -> "ScaledStack":
        self.home.mkdir(parents=True, exist_ok=True)
        # Prefect's database is new, so its Redis state must be too: the event streams and consumer groups of an
        # earlier run would be replayed against it (task runs of flow runs it never had, retried forever)
        redis.Redis.from_url(self.redis_url).flushdb()
        py = sys.executable
        for i, port in enumerate(self.prefect_ports):  # the first migrates the database, the others wait for it
            env = self.env(port) | ({} if i == 0 else {"PREFECT_API_DATABASE_MIGRATE_ON_START": "false"})
            self._spawn(f"prefect-server-{i + 1}", [*self._niced, py, "-m", "prefect", "server", "start",
                                                    "--no-services", "--host", "127.0.0.1", "--port", str(port),
                                                    "--no-ui"], env)
            self._wait_http(f"prefect-server-{i + 1}", f"http://127.0.0.1:{port}/api/health", 180)
        self._spawn("prefect-services", [*self._niced, py, "-m", "prefect", "server", "services", "start"], self.env())
        # our schema once, before several API workers start (concurrent CREATE TABLEs collide on Postgres)
        subprocess.run([py, "-c", "from hotline.db import init_db; init_db()"], env=self.env(), check=True)
        self._spawn("api", [py, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                                 "--port", str(self.api_port), "--workers", str(self.api_workers),
                                 "--log-level", "warning"], self.env())
        self._wait_http("api", f"{self.api_url}/api/health", 120)
        for i in range(self.executors):
            port = self.prefect_ports[i % len(self.prefect_ports)]
            self._spawn(f"executor-{i + 1}", [*self._niced, py, "-m", "flows.executor"],
                        self.env(port) | {"HOTLINE_EXECUTOR_SHARD": f"{i}/{self.executors}"})
        self._wait_deployments(120)
        return self

    @property
    def _niced(self) -> list[str]:
        """`nice` execs the command: the process keeps the pid that is watched and measured."""
        return ["nice", "-n", str(self.background_nice)] if self.background_nice else []

    @property
    def runner(self) -> str:
        return "executor-1"

    def stop(self) -> None:
        for name in [n for n in self.procs if n.startswith(("api", "executor"))] + [
                n for n in self.procs if n.startswith("prefect")]:
            self.stop_process(name, timeout=30)


def scaled(home: Path, *, executors: int = 2, api_workers: int = 2, prefect_servers: int = 2,
           redis_url: str = REDIS_URL, policy_dir: Path | None = None,
           watch_interval_seconds: int = 10, api_port: int = 8000, prefect_port: int = 4200,
           ) -> tuple[ScaledStack, Databases]:
    """A ScaledStack on fresh Postgres databases (drop them with `Databases.drop` after `stop`)."""
    dbs = Databases()
    stack = ScaledStack(home=home, api_port=api_port, prefect_port=prefect_port, database_url=dbs.ours,
                        prefect_database_url=dbs.prefect, policy_dir=policy_dir,
                        watch_interval_seconds=watch_interval_seconds, quiet=True, redis_url=redis_url,
                        prefect_servers=prefect_servers, executors=executors, api_workers=api_workers)
    return stack, dbs

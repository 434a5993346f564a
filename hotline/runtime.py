"""The embedded default: a real local Prefect server (SQLite under the project data folder), the process that
serves our deployments, and our HTTP API — three child processes started and stopped together.

Production runs the same pieces separately (Postgres, `prefect server`, workers from prefect.yaml); tests start
one Stack per database backend.
"""
from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hotline.settings import REPO_ROOT


# Prefect's services read the event stream one message at a time by default, and the task run recorder writes one
# task run state per transaction: on Postgres with Redis its backlog grew a minute behind 0.75 lifecycles/s, its
# CPU spent after the work it recorded (docs/performance.md). Read and write in batches; flush at least every second.
PREFECT_SERVICES_BATCHING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_TRIGGERS_READ_BATCH_SIZE": "100",
}


# Linux's prctl, looked up once here: a forked child, between fork and exec, should not have to load anything
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def dies_with_this_process():
    """A `preexec_fn` for the stack's children: the kernel sends the child SIGTERM when the thread that started it
    ends, however it ends. A bench, a test session or `./run up` killed with SIGKILL would otherwise leave its
    Prefect servers, executors and API running, holding ports and databases. (Start stacks from the main thread:
    a child dies with the thread that spawned it.) No effect where there is no prctl."""
    parent = os.getpid()

    def arrange() -> None:
        if _prctl is None:
            return
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the child asked: nothing will signal it now
            os._exit(1)
    return arrange


def stop_on_sigterm() -> None:
    """Make SIGTERM stop this process as Ctrl-C does (KeyboardInterrupt in the main thread), so that its
    `finally` blocks stop the stack and drop its databases; by default SIGTERM ends Python without them."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_token(home: Path) -> str:
    """HOTLINE_ADMIN_TOKEN if set; else one generated on first start and kept in the data folder."""
    if os.environ.get("HOTLINE_ADMIN_TOKEN"):
        return os.environ["HOTLINE_ADMIN_TOKEN"]
    path = home / "admin_token"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(f"admin_{secrets.token_urlsafe(24)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class Stack:
    home: Path
    api_port: int = 8000
    prefect_port: int = 4200
    database_url: str | None = None
    prefect_database_url: str | None = None  # default: SQLite under home (e.g. postgresql+asyncpg://… instead)
    policy_dir: Path | None = None
    watch_interval_seconds: int = 10
    executor: str = "serve"  # "serve": a process per flow run; "inprocess": flows/executor.py, one event loop
    quiet: bool = False
    intake_wait_seconds: float | None = None  # HOTLINE_INTAKE_WAIT_SECONDS for the API (None: the setting's own)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def runner(self) -> str:
        """The name of the process that runs our flows (and of its log file)."""
        return "executor" if self.executor == "inprocess" else "serve"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}"

    def env(self) -> dict[str, str]:
        prefect_home = self.home / "prefect"
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_API_URL": f"{self.prefect_url}/api",
            "PREFECT_API_DATABASE_CONNECTION_URL": (self.prefect_database_url
                                                    or f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
            "PREFECT_SERVER_DATABASE_TIMEOUT": "30",  # SQLite: wait for the write lock instead of failing
            # the deadline watch runs one at a time; if its process dies before the round starts, its slot frees
            # after this many seconds (a started round keeps its lease at 60 s, flows/deadline_watch.py)
            "PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION": "30",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            # fewer Prefect API calls per lifecycle (docs/performance.md): the server runs without CSRF protection,
            # so clients need not fetch a token per connection; task runs' own "Finished in state Completed" lines
            # are not shipped (their states are in the UI; flow-level logs and task failures still are)
            "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
            "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING",
            **PREFECT_SERVICES_BATCHING,
            "HOTLINE_HOME": str(self.home),
            "HOTLINE_API_PORT": str(self.api_port),
            "HOTLINE_ADMIN_TOKEN": admin_token(self.home),
            "HOTLINE_WATCH_INTERVAL_SECONDS": str(self.watch_interval_seconds),
            "HOTLINE_EXECUTOR": self.executor,
        })
        if self.database_url:
            env["HOTLINE_DATABASE_URL"] = self.database_url
        if self.policy_dir:
            env["HOTLINE_POLICY_DIR"] = str(self.policy_dir)
        if self.intake_wait_seconds is not None:
            env["HOTLINE_INTAKE_WAIT_SECONDS"] = str(self.intake_wait_seconds)
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            args, env=env or self.env(), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=dies_with_this_process())

    def _wait_http(self, name: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.home / 'logs' / (name + '.log')}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{name} did not answer at {url} within {timeout:.0f} s")

    def _wait_deployments(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[self.runner].poll() is not None:
                raise RuntimeError(f"{self.runner} exited; see {self.home / 'logs' / (self.runner + '.log')}")
            try:
                r = httpx.post(f"{self.prefect_url}/api/deployments/filter", json={}, timeout=5)
                if r.status_code == 200 and len(r.json()) >= 2:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the case deployments were not registered in time")

    def start(self) -> "Stack":
        self.home.mkdir(parents=True, exist_ok=True)
        py = sys.executable
        self._spawn("prefect-server", [py, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                       "--port", str(self.prefect_port), "--no-ui" if self.quiet else "--ui"])
        self._wait_http("prefect-server", f"{self.prefect_url}/api/health", 180)
        if self.executor not in ("serve", "inprocess"):
            raise ValueError(f"executor: 'serve' or 'inprocess', not {self.executor!r}")
        self._spawn("api", [py, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                            "--port", str(self.api_port), "--log-level", "warning"])
        self._wait_http("api", f"{self.api_url}/api/health", 120)  # the API creates our schema
        self._spawn(self.runner, [py, "-m", f"flows.{self.runner}"])
        self._wait_deployments(120)
        return self

    def stop(self) -> None:
        for name in ("api", "serve", "executor", "prefect-server"):
            self.stop_process(name)

    def stop_process(self, name: str, timeout: float = 20) -> None:
        """SIGTERM the process group, SIGKILL it if it has not ended within `timeout` seconds."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

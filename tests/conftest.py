"""Test harness: the real stack (Prefect server, serve, API as separate processes) per database backend,
a real webhook receiver on loopback playing the units, and the demo district registered through the API.

Every test that takes `env` runs twice: on SQLite and on Postgres (127.0.0.1:5432/test, a fresh schema).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from hotline.demo import District, register_district
from hotline.receiver import Receiver
from hotline.runtime import Stack, admin_token, free_port, stop_on_sigterm
from hotline.settings import REPO_ROOT

FAST_ADMIN_TOKEN = "test-admin-token"  # the admin token of the fast tests' `db` fixture
POSTGRES_ADMIN = os.environ.get("HOTLINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

# How long a test waits for the stack to move a case on. Generous: Prefect's own SQLite on 2 busy cores can stall
# every writer for a minute at times (its requests wait for the write lock up to PREFECT_SERVER_DATABASE_TIMEOUT,
# and its client retries a 503 with backoff), which a busy minute of a real district must survive too.
STACK_TIMEOUT = 240


def eventually(read: Callable[[], object], what: str, until: Callable[[object], object] = bool,
               timeout: float = STACK_TIMEOUT, interval: float = 0.5, describe: Callable[[object], str] = repr):
    """Poll `read()` until `until(value)` holds and return that value; past `timeout`, fail naming `what` and
    the last value (through `describe`). The one way the tests wait on the stack."""
    deadline = time.monotonic() + timeout
    while not until(value := read()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {describe(value)}")
        time.sleep(interval)
    return value

# Service levels for tests: `emergency` lapses in seconds, the rest never does during a test.
TEST_SLA = {
    "urgency": {
        "normal": {"respond_within": "1h", "due_within": "2h"},
        "urgent": {"respond_within": "1h", "due_within": "2h"},
        "emergency": {"respond_within": "3s", "due_within": "1h"},
    },
    "follow_up": {"window": "1h"},
    "pause_reasons": ["citizen_unreachable"],
}
# The ladder for tests: each level up also has seconds to respond, so a test can watch the whole ladder.
TEST_ESCALATION = {
    "levels": {"street": {"respond_within": "3s", "due_within": "1h"},
               "district": {"respond_within": "3s", "due_within": "1h"}},
    "max_bounces": 2,
    "triggers": {"overdue_response": {"escalate_up": True, "notify": ["district"]},
                 "overdue_completion": {"escalate_up": True, "notify": ["district"]},
                 "bounced": {"notify": ["district"]}, "whistle_not_reported": {"notify": ["district"]}},
}


def pytest_configure(config) -> None:
    """A test session stopped by SIGTERM (a CI timeout, `kill`) tears down as on Ctrl-C: its stacks stop and their
    schemas are dropped. (If it is killed outright, the stacks' processes still end with it: see
    `hotline.runtime.dies_with_this_process`.)"""
    stop_on_sigterm()


@dataclass
class Env:
    backend: str
    stack: Stack
    api: httpx.Client
    prefect: httpx.Client
    receiver: Receiver
    district: District
    admin: dict[str, str]
    policy_dir: Path

    def unit(self, code: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.district.unit_tokens[code]}"}

    def staff(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.district.staff_tokens[role]}"}

    def submit(self, **fields) -> dict:
        body = {"source": "hotline", "source_ref": f"t-{uuid.uuid4().hex[:12]}", "description": "路灯太亮",
                "location": {"community": "小南庄社区"}, "citizen": {"name": "陈阿姨", "phone": "13912345678"}}
        body.update(fields)
        r = self.api.post("/api/cases", json=body)
        assert r.status_code == 201, r.text
        created = r.json()
        if created["flow_run_id"] is None:  # Prefect was too busy to answer within intake's bound: the watch
            created["flow_run_id"] = self.wait(  # starts the run, and the case detail shows it
                created["case_id"], lambda d: d["flow_run_id"], "the case's flow run")["flow_run_id"]
        return created

    def case(self, case_id: str) -> dict:
        r = self.api.get(f"/api/cases/{case_id}", headers=self.admin)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, case_id: str, until: Callable[[dict], bool], what: str, timeout: float = STACK_TIMEOUT) -> dict:
        return eventually(lambda: self.case(case_id), what, until, timeout,
                          describe=lambda d: f"case is {d['status']}: {[t['kind'] for t in d['timeline']]}")

    def wait_orders(self, case_id: str, n: int, timeout: float = STACK_TIMEOUT) -> dict:
        return self.wait(case_id, lambda d: len(d["work_orders"]) >= n, f"{n} work order(s)", timeout)

    def act(self, work_order_id: str, unit: str, **event) -> httpx.Response:
        return self.api.post(f"/api/work-orders/{work_order_id}/events", json=event, headers=self.unit(unit))

    def resolve(self, work_order_id: str, unit: str) -> None:
        for event in ({"type": "accept"}, {"type": "contacted"}, {"type": "complete", "resolved": True}):
            r = self.act(work_order_id, unit, **event)
            assert r.status_code == 200, r.text

    def follow_up(self, case_id: str, **answer) -> httpx.Response:
        return self.api.post(f"/api/cases/{case_id}/follow-up", json=answer, headers=self.staff("follow_up"))

    def flow_run(self, flow_run_id: str) -> dict:
        r = self.prefect.get(f"/api/flow_runs/{flow_run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_paused(self, flow_run_id: str, timeout: float = STACK_TIMEOUT) -> dict:
        return self.wait_run(flow_run_id, "PAUSED", timeout)

    def wait_run(self, flow_run_id: str, state_type: str, timeout: float = STACK_TIMEOUT) -> dict:
        return eventually(lambda: self.flow_run(flow_run_id), f"flow run {flow_run_id} {state_type}",
                          lambda run: run["state_type"] == state_type, timeout,
                          describe=lambda run: f"{run['state_type']} {run['state_name']}")

    def kill_serve(self) -> None:
        """Kill `serve` and every flow run it runs (one process group), as a crash would."""
        serve = self.stack.procs["serve"]
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait(timeout=30)

    def restart_serve(self, timeout: float = STACK_TIMEOUT) -> None:
        """Start `serve` again if it is down, and wait until a deadline-watch round started after that completed."""
        if self.stack.procs["serve"].poll() is None:
            return
        restarted = datetime.now(timezone.utc)
        self.stack._spawn("serve", [sys.executable, "-m", "flows.serve"])
        eventually(lambda: self.watch_rounds(["COMPLETED"], started_after=restarted),
                   "serve to run the deadline watch again", timeout=timeout)

    def watch_rounds(self, state_types: list[str], started_after: datetime | None = None) -> list[dict]:
        """The deadline watch's runs in those states (newest first), started after `started_after` if given."""
        runs: dict = {"state": {"type": {"any_": state_types}}}
        if started_after is not None:
            runs["start_time"] = {"after_": started_after.isoformat()}
        r = self.prefect.post("/api/flow_runs/filter", json={
            "flows": {"name": {"any_": ["deadline-watch"]}}, "flow_runs": runs, "sort": "ID_DESC", "limit": 20})
        assert r.status_code == 200, r.text
        return r.json()

    def prefect_post(self, path: str, body: dict) -> httpx.Response:
        """POST to Prefect's REST API (the client retries as Prefect's own does, see `RetryLikePrefect`)."""
        return self.prefect.post(path, json=body)

    def resume(self, flow_run_id: str, run_input: dict) -> dict:
        r = self.prefect_post(f"/api/flow_runs/{flow_run_id}/resume", {"run_input": run_input})
        assert r.status_code in (200, 201), r.text
        return r.json()

    def write_sla(self, sla: dict) -> None:
        (self.policy_dir / "sla.yaml").write_text(yaml.safe_dump(sla, allow_unicode=True), encoding="utf-8")

    @contextmanager
    def policies(self, **files: dict) -> Iterator[None]:
        """Edit policy files (name without .yaml -> content) for the duration of a block, then restore them."""
        saved = {name: (self.policy_dir / f"{name}.yaml").read_text(encoding="utf-8") for name in files}
        try:
            for name, content in files.items():
                (self.policy_dir / f"{name}.yaml").write_text(yaml.safe_dump(content, allow_unicode=True),
                                                             encoding="utf-8")
            yield
        finally:
            for name, text in saved.items():
                (self.policy_dir / f"{name}.yaml").write_text(text, encoding="utf-8")

    def routing_with(self, *rules: dict, on_reject: str = "street") -> dict:
        """The shipped responsibility list with extra rules in front."""
        shipped = yaml.safe_load((REPO_ROOT / "policies" / "routing.yaml").read_text(encoding="utf-8"))
        return {"on_reject": on_reject, "rules": [*rules, *shipped["rules"]]}


class RetryLikePrefect(httpx.HTTPTransport):
    """Retry what Prefect's own client retries (prefect.client.base): its 503 "database is locked" answers and a
    request that timed out or lost its connection (Prefect on SQLite, 2 busy cores: a request can wait for the write
    lock longer than the client's timeout). Every other answer is returned as it is; the last failure is raised."""

    TRANSIENT = (httpx.ReadTimeout, httpx.PoolTimeout, httpx.ConnectTimeout, httpx.RemoteProtocolError)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(10):
            try:
                response = super().handle_request(request)
            except self.TRANSIENT:
                if attempt >= 2:  # failing on the third attempt or later: the stack is stuck, not busy
                    raise
                continue
            if response.status_code != 503:
                return response
            response.read()
            response.close()
            time.sleep(0.5 * (attempt + 1))
        return response


def _postgres_schema() -> tuple[str, Callable[[], None]]:
    """A fresh schema for our DB, dropped afterwards."""
    schema = f"hotline_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    base = POSTGRES_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", drop


@contextmanager
def stack_env(request, backend: str, **stack_options) -> Iterator[Env]:
    """A whole stack (Prefect server, the flow runner, the API) with the demo district, on our DB `backend`."""
    # Not tmp_path_factory: pytest prunes old basetemp folders, which would delete a stack's files under a
    # concurrently running session. Kept after a failure for the logs.
    home = Path(tempfile.mkdtemp(prefix=f"hotline-stack-{backend}-"))
    policy_dir = home / "policies"
    shutil.copytree(REPO_ROOT / "policies", policy_dir)
    (policy_dir / "sla.yaml").write_text(yaml.safe_dump(TEST_SLA), encoding="utf-8")
    (policy_dir / "escalation.yaml").write_text(yaml.safe_dump(TEST_ESCALATION), encoding="utf-8")
    # our DB on SQLite or Postgres; Prefect's own DB on SQLite for both (the embedded default). Prefect on Postgres
    # (Stack.prefect_database_url, used by `./run bench --postgres`) did not free the deadline watch's concurrency
    # slot after serve was killed (test_deliveries' crash test) — see the notes of issue 7. (The same was later seen
    # with Prefect on SQLite: the engine leased the slot for 300 s to a round killed with serve; a round now keeps
    # its lease at 60 s, test_deadline_watch's kill test.)
    database_url, cleanup = (None, lambda: None) if backend == "sqlite" else _postgres_schema()
    stack = Stack(home=home, api_port=free_port(), prefect_port=free_port(), database_url=database_url,
                  policy_dir=policy_dir, watch_interval_seconds=4, quiet=True, **stack_options)
    receiver = Receiver(port=free_port()).start()
    failed_before = request.session.testsfailed
    try:
        stack.start()
        # generous timeouts: on 2 busy cores Prefect's SQLite may hold a request up to its 30 s lock timeout
        api = httpx.Client(base_url=stack.api_url, timeout=60)
        admin = {"Authorization": f"Bearer {admin_token(home)}"}
        district = register_district(api, admin_token(home), receiver)
        prefect = httpx.Client(base_url=stack.prefect_url, timeout=90, transport=RetryLikePrefect())
        yield Env(backend, stack, api, prefect, receiver, district, admin, policy_dir)
    finally:
        stack.stop()
        receiver.stop()
        cleanup()
        if request.session.testsfailed == failed_before:
            shutil.rmtree(home, ignore_errors=True)
        else:  # show the stack's logs in the CI output (pytest would swallow a session teardown's prints)
            logs = home / "logs"
            capture = request.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled():
                for log in sorted(logs.glob("*.log")) if logs.exists() else []:
                    tail = log.read_text(errors="replace").splitlines()[-60:]
                    print(f"\n----- {backend}: {log.name} (last 60 lines) -----\n" + "\n".join(tail))


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def env(request) -> Iterator[Env]:
    """The stack as the embedded default runs it (`serve`: a process per flow run)."""
    with stack_env(request, request.param) as built:
        yield built


# ---------------------------------------------------------------- fast tests: a temporary DB, no stack

def receive_and_dispatch(**fields) -> int:
    """Drive a case's first steps as its flow does, without a stack: 受理 (record), 采集 (collect), 派单 (dispatch).
    `fields` are Case columns over a hotline case in community c1; returns the case id."""
    from hotline.clock import now
    from hotline.db import session_scope
    from services import cases
    fields = {"source": "hotline", "source_ref": f"t-{uuid.uuid4().hex[:12]}", "category": "street_lights",
              "description": "d", "urgency": "normal", "location": {"community": "c1"}, "anonymous": False,
              "citizen_name": "陈阿姨", "citizen_phone": "13912345678", "reported_at": now()} | fields
    if fields["anonymous"]:
        fields.pop("citizen_name"), fields.pop("citizen_phone")
    with session_scope() as s:
        case, _ = cases.create_case(session=s, fields=fields)
        case_id = case.id
    for step in (cases.collect, cases.dispatch):
        with session_scope() as s:
            step(s, case_id)
    return case_id


def clear_caches() -> None:
    """Forget cached settings, engine and secrets (after the environment changed)."""
    from hotline.db import get_engine
    from hotline.settings import get_settings
    from services.repeats import _secret
    get_settings.cache_clear()
    get_engine.cache_clear()
    _secret.cache_clear()


@pytest.fixture
def db(tmp_path, monkeypatch) -> Iterator[Path]:
    """A temporary data folder with its own SQLite DB, a copy of the policy files (yielded, to edit) and fixed
    secrets; the services read them as in production."""
    policy_dir = tmp_path / "policies"
    shutil.copytree(REPO_ROOT / "policies", policy_dir)
    monkeypatch.setenv("HOTLINE_DATABASE_URL", f"sqlite:///{tmp_path / 'hotline.db'}")  # whatever --home says
    monkeypatch.setenv("HOTLINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOTLINE_POLICY_DIR", str(policy_dir))
    monkeypatch.setenv("HOTLINE_ADMIN_TOKEN", FAST_ADMIN_TOKEN)
    monkeypatch.setenv("HOTLINE_CITIZEN_KEY", "test-citizen-key")
    monkeypatch.setenv("HOTLINE_TIMEZONE", "Asia/Shanghai")
    clear_caches()
    from hotline.db import get_engine, init_db
    init_db()
    try:
        yield policy_dir
    finally:
        get_engine().dispose()
        clear_caches()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path, monkeypatch) -> Iterator:
    """Our DB, empty, on SQLite and on Postgres (a fresh schema): the engine the services use."""
    url, cleanup = ((f"sqlite:///{tmp_path / 'hotline.db'}", lambda: None) if request.param == "sqlite"
                    else _postgres_schema())
    monkeypatch.setenv("HOTLINE_DATABASE_URL", url)
    monkeypatch.setenv("HOTLINE_HOME", str(tmp_path / "home"))
    clear_caches()
    from hotline.db import get_engine, init_db
    init_db()
    try:
        yield get_engine()
    finally:
        get_engine().dispose()
        clear_caches()
        cleanup()

"""`./run bench [--smoke] [--lifecycles N] [--burst N] [--open-cases N] [--postgres]`

In one run, against one stack it starts itself (the embedded default: Prefect server on SQLite, `serve`, the API;
`--postgres` puts our DB and Prefect's on the machine's Postgres), measures:
1. baseline: empty flow runs/s through `serve`;
2. full lifecycles/s (intake over HTTP → routed → webhook → unit answers accept, contacted, complete → follow-up
   answered → closed), with the ratio to (1): until the cases closed, and until Prefect had also recorded what was
   done (its services write task runs and events behind the flows; the target is judged on that sustainable rate);
3. an intake burst: accepts/s, cases lost (counted in our DB), and how fast the backlog is dispatched;
4. intake → first webhook latency p50/p95 at half the measured lifecycle rate;
5. escalation latency (response deadline lapses → escalation webhook) p50/p99 with N extra open cases in the DB;
6. CPU seconds per lifecycle per process group (Postgres and Redis with all their processes, and the whole
   machine), Prefect's rows per lifecycle (states, task runs, run inputs, artifacts, logs, events), and RSS at start
   and end (with --lifecycle-waves, after every wave); and the machine's speed at start and end (a fixed loop), since
   on a shared virtual machine the same work takes up to half as long again at another hour.
Prints a table and adds it to docs/performance.md (or --out) as a new run, before the earlier ones, which it keeps.
Never asserts targets: it reports them.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata
from pathlib import Path

import httpx
import yaml

from bench.load import post_json_many
from bench.stats import (
    RUN_HEADING, Figure, above_rest, add_run, capacity, cpu_seconds, fmt, lost, machine_cpu_seconds, percentile, rate,
    ratio, slope, speed_probe, table, tree_rss_mb,
)
from hotline.demo import register_district
from hotline.receiver import Receiver, Received
from hotline.runtime import Stack, admin_token, free_port, stop_on_sigterm
from hotline.settings import REPO_ROOT

SLA = {"urgency": {"normal": {"respond_within": "1h", "due_within": "2h"},
                   "urgent": {"respond_within": "1h", "due_within": "2h"},
                   "emergency": {"respond_within": "5s", "due_within": "1h"}},
       "follow_up": {"window": "1h"}, "pause_reasons": ["citizen_unreachable"]}


MACHINE = "the whole machine"  # in Bench.cpu: all CPU of the machine, the benchmark's own client and receiver too

# Prefect's tables that grow with each lifecycle (rows written = the work of its API servers and services)
PREFECT_TABLES = ("flow_run_state", "task_run", "task_run_state", "flow_run_input", "artifact", "log", "events")


@dataclass
class Waves:
    """Lifecycles run in waves: how many closed, the seconds until they had, and the seconds Prefect then took to
    record what was done (its services run behind the flows: their CPU and time belong to the lifecycles)."""
    closed: int = 0
    elapsed: float = 0.0
    catch_up: float = 0.0
    rates: list[float] = field(default_factory=list)  # each wave's lifecycles/s, Prefect caught up


class Units:
    """Plays the units: answers the bench's lifecycle cases at once (accept, contacted, complete), records when
    each case's first webhook and each escalation webhook arrived."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens, self.answer = tokens, set()
        self.first_webhook: dict[str, float] = {}
        self.escalated: dict[str, float] = {}
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.lock = threading.Lock()

    def on_event(self, item: Received) -> None:
        number, at = item.data.get("case_number"), time.time()
        with self.lock:
            if item.type == "work_order.assigned":
                self.first_webhook.setdefault(number, at)
            if item.type in ("work_order.escalated", "escalation.opened"):
                self.escalated.setdefault(number, at)
        if item.type == "work_order.assigned" and number in self.answer:
            self.pool.submit(self._resolve, item)

    def _resolve(self, item: Received) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[item.unit]}"}
        with httpx.Client(timeout=60) as client:
            for event in ({"type": "accept"}, {"type": "contacted"}, {"type": "complete", "resolved": True}):
                client.post(item.data["callback_url"], json=event, headers=headers)


def body(ref: str, **over) -> dict:
    return {"source": "hotline", "source_ref": ref, "description": "路灯太亮", "category": "street_lights",
            "location": {"community": "小南庄社区"}, "citizen": {"name": "测试", "phone": f"139{uuid.uuid4().int % 10**8:08d}"}
            } | over


class Bench:
    def __init__(self, args):
        self.args = args
        self.home = Path(tempfile.mkdtemp(prefix="hotline-bench-"))
        policy_dir = self.home / "policies"
        shutil.copytree(REPO_ROOT / "policies", policy_dir)
        (policy_dir / "sla.yaml").write_text(yaml.safe_dump(SLA), encoding="utf-8")
        esc = yaml.safe_load((policy_dir / "escalation.yaml").read_text(encoding="utf-8"))
        (policy_dir / "escalation.yaml").write_text(yaml.safe_dump(esc, allow_unicode=True), encoding="utf-8")
        self.cleanup = lambda: None
        self.dbs = db_url = prefect_url = None
        if args.topology == "scaled":
            from hotline.topology import scaled
            args.postgres, args.executor = True, "inprocess"
            self.stack, dbs = scaled(self.home, policy_dir=policy_dir, watch_interval_seconds=args.watch_seconds,
                                     api_port=free_port(), prefect_port=free_port())
            self.cleanup, self.db_url, self.dbs = dbs.drop, dbs.ours, dbs
        elif args.postgres:
            from hotline.topology import Databases
            dbs = Databases(prefix="bench")
            db_url, prefect_url, self.cleanup, self.dbs = dbs.ours, dbs.prefect, dbs.drop, dbs
        if args.topology != "scaled":
            self.db_url = db_url or f"sqlite:///{self.home / 'hotline.db'}"
            self.stack = Stack(home=self.home, api_port=free_port(), prefect_port=free_port(), database_url=db_url,
                               prefect_database_url=prefect_url, policy_dir=policy_dir, watch_interval_seconds=args.watch_seconds,
                               executor=args.executor, quiet=True)
        self.receiver = Receiver(port=free_port())
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self._engines: dict = {}

    # ------------------------------------------------------------ plumbing

    def post(self, client: httpx.Client, path: str, body: dict) -> dict:
        """POST to Prefect, retrying its 503s (SQLite busy) as Prefect's own client does, and an answer that does
        not come within the client's timeout (Prefect on SQLite has stalled for a minute on two busy cores): the
        bodies posted here are safe to send again (filters, and run creations with an idempotency key)."""
        for attempt in range(20):
            try:
                r = client.post(path, json=body)
            except httpx.TimeoutException:
                if attempt == 19:
                    raise  # Prefect has not answered for twenty timeouts: the measurement cannot go on
                self.notes.append(f"Prefect did not answer {path} within {client.timeout.read:.0f} s; asked again")
                continue
            if r.status_code != 503:
                r.raise_for_status()
                return r.json()
            time.sleep(min(5.0, 0.5 * (attempt + 1)))
        r.raise_for_status()
        return r.json()

    def db(self):
        """Our DB, one engine (and pool) for the whole run: an engine per count opened a Postgres connection per
        poll, whose backend's start the bench then counted as the stack's Postgres CPU."""
        return self._engine("ours", self.db_url.replace("postgresql://", "postgresql+psycopg://", 1))

    def prefect_db(self):
        """Prefect's DB, read directly (row counts) with a synchronous driver, one engine for the whole run."""
        url = self.stack.prefect_database_url or f"sqlite:///{self.home / 'prefect' / 'prefect.db'}"
        return self._engine("prefect", url.replace("+asyncpg", "+psycopg").replace("+aiosqlite", ""))

    def _engine(self, name: str, url: str):
        if name not in self._engines:
            from sqlalchemy import create_engine
            self._engines[name] = create_engine(url, pool_size=2)
        return self._engines[name]

    def close(self) -> None:
        """Return the bench's own connections before the stack's databases are dropped."""
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    def count(self, sql: str, **params) -> int:
        from sqlalchemy import text
        with self.db().connect() as conn:
            return conn.execute(text(sql), params).scalar_one()

    def prefect_rows(self) -> dict[str, int]:
        """Rows in Prefect's own DB per table of the work a lifecycle makes it do (states, task runs, run inputs,
        artifacts, logs, events): per lifecycle, where its server and services spend their time."""
        from sqlalchemy import text
        with self.prefect_db().connect() as conn:
            rows = {name: conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one() for name in PREFECT_TABLES}
            rows["running"] = conn.execute(text("SELECT count(*) FROM flow_run_state WHERE type = 'RUNNING'")
                                           ).scalar_one()
            for state in ("COMPLETED", "CANCELLED"):  # the deadline watch's rounds: run, or cancelled by the server
                rows[f"watch_{state.lower()}"] = conn.execute(text(
                    "SELECT count(*) FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
                    "WHERE flow.name = 'deadline-watch' AND flow_run.state_type = :state"), {"state": state}
                ).scalar_one()
            return rows

    def procs(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.stack.procs.items() if not name.startswith("bench-")}

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each of the stack's processes (with their children), of the machine's shared
        servers it uses (Postgres: the postmaster with every backend, Redis), and of the whole machine."""
        out = {name: cpu_seconds(pid) for name, pid in self.procs().items()}
        shared = ["postgres"] if self.args.postgres else []
        shared += ["redis-server"] if self.args.topology == "scaled" else []
        for name in shared:  # the server with its children: a backend's CPU stays counted when it exits
            pids = {int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _comm(pid) == name}
            out[name.removesuffix("-server")] = sum(cpu_seconds(pid) for pid in pids if _parent(pid) not in pids)
        out[MACHINE] = machine_cpu_seconds()
        return out

    def rss(self) -> dict[str, float | None]:
        return {name: tree_rss_mb(pid) for name, pid in self.procs().items()}

    # ------------------------------------------------------------ the measurements

    def baseline(self, n: int, inprocess: bool = False) -> float | None:
        """Empty flow runs/s through `serve` (each run is a fresh subprocess), or through the in-process executor."""
        self.stack._spawn("bench-serve", [sys.executable, "-m", "bench.empty_flow",
                                          *(["--inprocess"] if inprocess else [])])
        prefect = httpx.Client(base_url=self.stack.prefect_url, timeout=60)
        deadline = time.monotonic() + 120
        while (r := prefect.get("/api/deployments/name/bench-empty/bench")).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the baseline deployment did not register")
            time.sleep(0.5)
        dep = r.json()["id"]
        start = time.monotonic()
        ids = [self.post(prefect, f"/api/deployments/{dep}/create_flow_run",
                         {"idempotency_key": f"baseline-{uuid.uuid4().hex}"})["id"] for _ in range(n)]
        while True:
            runs = self.post(prefect, "/api/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
            done = sum(1 for run in runs if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED"))
            if done == n:
                break
            if time.monotonic() - start > 60 + 10 * n:
                self.notes.append(f"baseline: only {done} of {n} empty runs finished")
                break
            time.sleep(0.25)
        elapsed = time.monotonic() - start
        proc = self.stack.procs["bench-serve"]
        self.stack.stop_process("bench-serve", timeout=60)  # SIGTERM; SIGKILL if it is not gone within a minute
        if proc.wait(timeout=30) == -signal.SIGKILL:  # a runner that does not stop must not end the measurement
            self.notes.append(f"baseline ({'in-process' if inprocess else 'serve'}): its runner did not stop "
                              "within 60 s of SIGTERM and was killed")
        return rate(done, elapsed)

    def lifecycles(self, api: httpx.Client, units: Units, follow_up: dict, n: int) -> tuple[int, float]:
        """`n` cases submitted at once and carried to closed: (how many closed, seconds taken)."""
        refs = [f"life-{uuid.uuid4().hex[:12]}" for _ in range(n)]
        start = time.monotonic()
        ids = []
        for ref in refs:
            created = api.post("/api/cases", json=body(ref)).json()
            units.answer.add(created["number"])
            ids.append(created["case_id"])
        open_ids, answered = set(ids), set()
        deadline = start + 120 + 20 * n
        while open_ids and time.monotonic() < deadline:
            for item in api.get("/api/follow-ups?status=open", headers=follow_up).json():
                if item["case_id"] in open_ids and item["case_id"] not in answered:
                    r = api.post(f"/api/cases/{item['case_id']}/follow-up", headers=follow_up,
                                 json={"reached": True, "resolved": True, "satisfaction": "satisfied"})
                    if r.status_code == 200:
                        answered.add(item["case_id"])
            closed = self.count(f"SELECT count(*) FROM \"case\" WHERE status = 'closed' AND id IN ({','.join(ids)})")
            if closed == len(ids):
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - start
        closed = self.count(f"SELECT count(*) FROM \"case\" WHERE status = 'closed' AND id IN ({','.join(ids)})")
        if closed < n:
            self.notes.append(f"lifecycles: only {closed} of {n} closed within the time limit")
        return closed, elapsed

    def burst(self, n: int) -> tuple[float | None, int, float | None, int]:
        """(accepts/s, lost, dispatch rate during drain, dispatched within the drain limit)."""
        refs = [f"burst-{uuid.uuid4().hex[:12]}" for _ in range(n)]
        bodies = [body(ref) for ref in refs]
        start = time.monotonic()  # 64 callers at once, each on a kept-alive connection (bench/load.py)
        answers = asyncio.run(post_json_many(self.stack.api_url, "/api/cases", bodies, 64))
        accepted = [ref for ref, (status, _) in zip(refs, answers) if status in (200, 201)]
        accept_rate = rate(len(accepted), time.monotonic() - start)
        stored = [row for row in self._refs("burst-%")]
        missing = lost(accepted, stored)
        if len(accepted) < n:
            refused = next(answer for answer in answers if answer[0] not in (200, 201))
            self.notes.append(f"burst: {n - len(accepted)} of {n} posts were not accepted (first: {refused[0]} "
                              f"{refused[1][:200].decode(errors='replace')})")
        drain_start = time.monotonic()
        limit = self.args.drain_seconds
        dispatched = 0
        while time.monotonic() - drain_start < limit:
            dispatched = self.count("SELECT count(*) FROM \"case\" WHERE source_ref LIKE 'burst-%' "
                                    "AND status <> 'received'")
            if dispatched >= len(accepted):
                break
            time.sleep(1)
        drain = time.monotonic() - drain_start
        return accept_rate, len(missing), rate(dispatched, drain), dispatched

    def _refs(self, pattern: str) -> list[str]:
        from sqlalchemy import text
        with self.db().connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT source_ref FROM \"case\" WHERE source_ref LIKE :p"),
                                               {"p": pattern})]

    def latency(self, api: httpx.Client, units: Units, n: int, per_second: float) -> list[float]:
        """Intake → first work_order.assigned webhook received, submitting at `per_second`."""
        sent: dict[str, float] = {}
        for i in range(n):
            t0 = time.time()
            created = api.post("/api/cases", json=body(f"lat-{uuid.uuid4().hex[:12]}")).json()
            sent[created["number"]] = t0
            time.sleep(max(0.0, 1 / per_second - (time.time() - t0)))
        deadline = time.monotonic() + 120 + 5 * n
        while time.monotonic() < deadline and not all(num in units.first_webhook for num in sent):
            time.sleep(0.5)
        return [units.first_webhook[num] - t0 for num, t0 in sent.items() if num in units.first_webhook]

    def seed_open_cases(self, n: int) -> float:
        """Insert `n` open cases with accepted orders whose deadlines are far away (no flow runs)."""
        from sqlalchemy import text
        from hotline.clock import now
        far = now() + timedelta(days=365)
        t0 = time.monotonic()
        engine = self.db()
        with engine.begin() as conn:
            base = conn.execute(text('SELECT coalesce(max(id), 0) FROM "case"')).scalar_one()
            batch = 5000
            for lo in range(0, n, batch):
                # a flow_run_id, as cases with a waiting run have: the watch must not start runs for them
                rows = [{"id": base + i + 1, "number": f"SEED{base + i + 1:010d}", "ref": f"seed-{base + i + 1}",
                         "run": str(uuid.uuid4())} for i in range(lo, min(n, lo + batch))]
                conn.execute(text(
                    'INSERT INTO "case" (id, number, source, source_ref, category, description, urgency, location, '
                    "anonymous, reported_at, district, street, community, status, lead_unit, reopen_count, wait_seq, "
                    "follow_up_attempts, flow_run_id, created_at, updated_at) VALUES (:id, :number, 'hotline', :ref, "
                    "'street_lights', 'seed', 'normal', '{}', false, :at, 'haidian', 'haidian_st', 'xiaonanzhuang', "
                    "'handling', 'haidian_st', 0, 0, 0, :run, :at, :at)"), [r | {"at": now()} for r in rows])
                conn.execute(text(
                    "INSERT INTO workorder (case_id, unit, role, status, reason, respond_by, due_at, respond_lapsed, "
                    "due_lapsed, reminders_sent, created_at, updated_at) VALUES (:id, 'haidian_st', 'lead', "
                    "'accepted', 'seed', :far, :far, false, false, 0, :at, :at)"),
                    [{"id": r["id"], "far": far, "at": now()} for r in rows])
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT setval(pg_get_serial_sequence('\"case\"', 'id'), "
                                  '(SELECT max(id) FROM "case"))'))
        return time.monotonic() - t0

    def escalations(self, api: httpx.Client, units: Units, n: int) -> list[float]:
        """Response deadline (5 s after intake) lapses → escalation webhook received."""
        due: dict[str, float] = {}
        for _ in range(n):
            created = api.post("/api/cases", json=body(f"esc-{uuid.uuid4().hex[:12]}", urgency="emergency")).json()
            detail = api.get(f"/api/cases/{created['case_id']}", headers=self.admin).json()
            due[created["number"]] = (created["case_id"], detail)
        # the respond_by of each first order, from the case detail once the order exists
        deadlines: dict[str, float] = {}
        limit = time.monotonic() + 300
        while time.monotonic() < limit and len(deadlines) < n:
            for number, (case_id, _) in due.items():
                if number in deadlines:
                    continue
                d = api.get(f"/api/cases/{case_id}", headers=self.admin).json()
                if d["work_orders"]:
                    from datetime import datetime
                    deadlines[number] = datetime.fromisoformat(d["work_orders"][0]["respond_by"]).timestamp()
            time.sleep(1)
        limit = time.monotonic() + 300
        while time.monotonic() < limit and not all(num in units.escalated for num in deadlines):
            time.sleep(0.5)
        return [units.escalated[num] - at for num, at in deadlines.items() if num in units.escalated]

    # ------------------------------------------------------------ the run

    def run(self) -> str:
        a = self.args
        self.stack.start()
        self.admin = {"Authorization": f"Bearer {admin_token(self.home)}"}
        api = httpx.Client(base_url=self.stack.api_url, timeout=120)
        district = register_district(api, admin_token(self.home), self.receiver)
        units = Units(district.unit_tokens)
        self.receiver.on_event = units.on_event
        self.receiver.start()
        follow_up = {"Authorization": f"Bearer {district.staff_tokens['follow_up']}"}
        rss_start, speed_start = self.rss(), speed_probe()
        print(f"stack up in {self.home}; measuring …", flush=True)

        base = self.baseline(a.baseline_runs)
        self.figures.append(Figure("empty flow runs/s through serve (baseline)", base, "runs/s"))
        inproc = self.baseline(a.baseline_runs, inprocess=True)
        self.figures.append(Figure("empty flow runs/s through the in-process executor", inproc, "runs/s",
                                   ratio(inproc, base)))

        self.prefect_caught_up()  # the baselines' own events first
        rest = self.at_rest(a.rest_seconds)
        cpu0, rows0 = self.cpu(), self.prefect_rows()
        waves, samples = self.lifecycle_waves(api, units, follow_up, a.lifecycles, a.lifecycle_waves)
        cpu1, rows1 = self.cpu(), self.prefect_rows()
        if len(waves.rates) > 1:
            self.notes.append("lifecycles/s by wave (Prefect caught up): "
                              + ", ".join(f"{r:.2f}" for r in waves.rates))
        closing = rate(waves.closed, waves.elapsed)
        life = rate(waves.closed, waves.elapsed + waves.catch_up)
        self.figures.append(Figure("lifecycles/s until the cases closed (intake → webhook → answers → follow-up → "
                                   "closed)", closing, "cases/s", ratio(closing, base)))
        self.figures.append(Figure("then until Prefect had recorded them (task runs, events)", waves.catch_up, "s"))
        self.figures.append(Figure("full lifecycles/s, Prefect caught up (sustainable)", life, "cases/s",
                                   ratio(life, base), ">= 1.5"))
        per_lifecycle = {name: (cpu1[name] - cpu0.get(name, 0)) / a.lifecycles if a.lifecycles else None
                         for name in cpu1}  # until Prefect caught up
        for name, per in per_lifecycle.items():
            if name != MACHINE:
                self.figures.append(Figure(f"CPU per lifecycle: {name}", per, "s"))
        if a.lifecycles:
            stack = sum(per for name, per in per_lifecycle.items() if name != MACHINE)
            self.figures.append(Figure("CPU per lifecycle: all of the above", stack, "s"))
            self.figures.append(Figure(f"CPU per lifecycle: {MACHINE} (the benchmark's client and receiver, the "
                                       "kernel and the rest too)", per_lifecycle[MACHINE], "s"))
            self.figures.append(Figure(f"CPU at rest (nothing submitted, {a.rest_seconds} s: polls, heartbeats, the "
                                       "deadline watch): the stack's processes",
                                       sum(v for name, v in rest.items() if name != MACHINE), "CPU-s/s"))
            self.figures.append(Figure(f"CPU at rest: {MACHINE}", rest[MACHINE], "CPU-s/s"))
            marginal = above_rest(cpu1[MACHINE] - cpu0[MACHINE], rest[MACHINE], waves.elapsed + waves.catch_up,
                                  a.lifecycles)
            self.figures.append(Figure(f"CPU per lifecycle above rest: {MACHINE}", marginal, "s"))
            cores = os.cpu_count() or 1
            self.figures.append(Figure(f"lifecycles/s that {cores} cores carry at that cost (cores − rest) / "
                                       "(CPU per lifecycle above rest)", capacity(cores, rest[MACHINE], marginal),
                                       "cases/s"))
        executions = (rows1["running"] - rows0["running"]) / a.lifecycles if a.lifecycles else None
        self.figures.append(Figure("flow executions per lifecycle (Running states, the deadline watch's too)",
                                   executions, "runs"))
        watch = {state: rows1[f"watch_{state}"] - rows0[f"watch_{state}"] for state in ("completed", "cancelled")}
        self.figures.append(Figure("deadline-watch rounds while the lifecycles ran: left cancelled (a round that "
                                   "found the last still running; Prefect's cleanup re-reads each for a day)",
                                   watch["cancelled"], "runs", note=f"({watch['completed']} completed)"))
        for name in PREFECT_TABLES:  # the deadline watch's own runs in the meantime are counted too
            per = (rows1[name] - rows0[name]) / a.lifecycles if a.lifecycles else None
            self.figures.append(Figure(f"Prefect rows per lifecycle: {name}", per, "rows"))

        per_second = max(0.1, (life or 0.2) / 2)  # half the measured sustainable rate
        lat = self.latency(api, units, a.latency_cases, per_second)
        self.figures.append(Figure(f"intake → first webhook p50 (at {per_second:.2f}/s)", percentile(lat, 50), "s"))
        self.figures.append(Figure("intake → first webhook p95", percentile(lat, 95), "s", target="<= 5"))

        seeded = self.seed_open_cases(a.open_cases)
        esc = self.escalations(api, units, a.escalation_cases)
        self.figures.append(Figure(f"escalation latency p50 with {a.open_cases:,} extra open cases",
                                   percentile(esc, 50), "s", note=f"(seeded in {seeded:.1f} s)"))
        self.figures.append(Figure("escalation latency p99", percentile(esc, 99), "s", target="<= 60"))

        # last: the burst's backlog keeps the stack busy long after the measurement
        accept, missing, drain_rate, dispatched = self.burst(a.burst)
        self.figures.append(Figure(f"intake burst of {a.burst}: durable accepts/s", accept, "cases/s",
                                   target=">= 300"))
        self.figures.append(Figure("cases lost (accepted, not in DB)", missing, "cases", target="<= 0"))
        self.figures.append(Figure("backlog dispatch rate (flow runs started and routed)", drain_rate, "cases/s",
                                   note=f"{dispatched} of {a.burst} dispatched within {a.drain_seconds} s"))

        rss_end = self.rss()
        self.figures.append(Figure("machine speed: a fixed Python loop (bench/stats.speed_probe), at the start → "
                                   f"at the end (lower is faster; {fmt(speed_start * 1000, 0)} ms at the start)",
                                   speed_probe() * 1000, "ms"))
        for name in rss_end:
            growth = ratio(rss_end[name], rss_start.get(name))
            self.figures.append(Figure(f"RSS {name}: start {fmt(rss_start.get(name), 0)} MB → end", rss_end[name],
                                       "MB", growth))
        self.memory_over_lifecycles(samples)
        return self.report()

    def at_rest(self, seconds: float) -> dict[str, float]:
        """CPU seconds per second of each process (and the whole machine) with nothing submitted: what the stack
        spends whatever the load (executors' polls, heartbeats, Prefect's services loops, the deadline watch)."""
        before, t0 = self.cpu(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = self.cpu(), time.monotonic() - t0
        return {name: (after[name] - before.get(name, 0)) / elapsed for name in after}

    def lifecycle_waves(self, api: httpx.Client, units: Units, follow_up: dict, n: int,
                        waves: int) -> tuple[Waves, list[tuple[int, dict[str, float | None]]]]:
        """The lifecycles in `waves` equal parts; after each, Prefect is let catch up and the processes' RSS is
        taken: (the waves' totals, [(lifecycles done, {process: MB})])."""
        sizes = [n // waves + (1 if i < n % waves else 0) for i in range(waves)]
        total, done, samples = Waves(), 0, []
        for size in sizes:
            cpu_before = self.cpu()
            closed, elapsed = self.lifecycles(api, units, follow_up, size)
            catch_up = self.prefect_caught_up()
            cpu_after = self.cpu()
            total.closed += closed
            total.elapsed += elapsed
            total.catch_up += catch_up
            total.rates.append(rate(closed, elapsed + catch_up) or 0.0)
            done += size
            samples.append((done, self.rss()))
            # progress as it goes: a long run stopped early still leaves its figures so far in the output
            print(f"wave {len(samples)}/{waves}: {done:,} lifecycles, {closed} of {size} closed, "
                  f"{fmt(total.rates[-1], 2)}/s with Prefect caught up; RSS MB "
                  + ", ".join(f"{name} {fmt(mb, 0)}" for name, mb in samples[-1][1].items())
                  # and its CPU per lifecycle and the machine's speed: a rate that changes across waves can then
                  # be told apart from a machine whose speed changed
                  + "; CPU-s per lifecycle " + ", ".join(
                      f"{name} {fmt((cpu_after[name] - cpu_before.get(name, 0.0)) / max(closed, 1), 2)}"
                      for name in cpu_after)
                  + f"; machine speed {speed_probe() * 1000:.0f} ms", flush=True)
        return total, samples

    def prefect_caught_up(self, limit: float = 900, every: float = 2.0, trickle: int = 10) -> float:
        """Seconds until Prefect has recorded the work already done: its services write task runs and events from
        the event stream, and may run behind the flows. Caught up when, twice in a row, task run states and
        events grew by no more than `trickle` rows in `every` seconds (the deadline watch's own runs go on)."""
        start, quiet_since, quiet = time.monotonic(), None, 0
        last = self.prefect_rows()
        while time.monotonic() - start < limit:
            time.sleep(every)
            rows = self.prefect_rows()
            grew = rows["task_run_state"] - last["task_run_state"] + rows["events"] - last["events"]
            last = rows
            if grew > trickle:
                quiet, quiet_since = 0, None
                continue
            quiet += 1
            quiet_since = quiet_since or time.monotonic() - every
            if quiet >= 2:
                return quiet_since - start
        self.notes.append(f"Prefect still recording task runs and events {limit:.0f} s after the lifecycles")
        return time.monotonic() - start

    def memory_over_lifecycles(self, samples: list[tuple[int, dict[str, float | None]]]) -> None:
        """With several waves: each process's RSS after the first wave (warmed up) against after the last, and
        the slope over the waves after the first, projected to 10,000 lifecycles (a linear projection, labelled)."""
        if len(samples) < 2:
            return
        first_done, first = samples[0]
        last_done, last = samples[-1]
        for name in last:
            if first.get(name) is None or last[name] is None:
                continue
            self.figures.append(Figure(
                f"RSS growth {name}: after {first_done:,} lifecycles {fmt(first[name], 0)} MB → after "
                f"{last_done:,} {fmt(last[name], 0)} MB", ratio(last[name], first[name]), "×", target="<= 1.1"))
            points = [(done, mb[name]) for done, mb in samples if mb.get(name) is not None]
            per = slope(points)
            if per is not None:
                projected = first[name] + per * 10_000
                self.notes.append(
                    f"RSS {name} by wave: " + ", ".join(f"{fmt(mb[name], 0)}" for _, mb in samples)
                    + f" MB; slope {per * 1000:+.1f} MB per 1,000 lifecycles; projected linearly to 10,000: "
                    f"{projected:.0f} MB ({projected / first[name]:.2f}× the first wave's figure)")

    def report(self) -> str:
        a = self.args
        versions = {p: metadata.version(p) for p in ("prefect", "sqlalchemy", "fastapi", "httpx")}
        mem = next((int(line.split()[1]) // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   platform.processor())
        command = "./run bench " + " ".join(sys.argv[1:])
        return "\n".join([
            f"{RUN_HEADING} of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (written by the benchmark)",
            "",
            f"Measured by `{command}`.",
            "",
            f"- Machine: {os.cpu_count()} cores ({cpu}), {mem:,} MB RAM; Python {platform.python_version()}; "
            + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
            ("- Topology: **scaled** (hotline/topology.py) — two Prefect API servers and a separate services "
             "process on Postgres with Redis messaging, two in-process executors (one per Prefect server), our API "
             "as two uvicorn workers, our DB on Postgres; intake only records the case (group commit) and the "
             "executors start the runs; "
             + (f"Prefect and the executors at nice {self.stack.background_nice}; "
                if getattr(self.stack, "background_nice", 0) else "every process at one priority; ")
             + f"deadline watch every {a.watch_seconds} s; webhooks to a local receiver that answers the bench's "
             "cases at once. RSS figures are per process tree (uvicorn's master with its workers)."
             if a.topology == "scaled" else
            f"- Topology: Prefect server ({'Postgres' if a.postgres else 'SQLite'}), "
            + ("the in-process executor (one event loop, flows/executor.py)" if a.executor == "inprocess"
               else "`serve` (a subprocess per flow run)")
            + ", one API process (uvicorn); our DB on "
            f"{'Postgres' if a.postgres else 'SQLite'}; deadline watch every {a.watch_seconds} s; webhooks to a local "
            f"receiver that answers the bench's cases at once."),
            f"- Sizes: {a.baseline_runs} baseline runs, {a.lifecycles} lifecycles"
            + (f" in {a.lifecycle_waves} waves" if a.lifecycle_waves > 1 else "") + f", burst {a.burst}, "
            f"{a.latency_cases} latency cases, {a.open_cases:,} extra open cases, {a.escalation_cases} escalations.",
            *([self._vacuum_line()] if self.dbs else []),
            "",
            table(self.figures),
            "",
            *(f"- {n}" for n in self.notes),
        ])

    def _vacuum_line(self) -> str:
        v = self.dbs.vacuum
        if not v.active:
            return "- Postgres: autovacuum on (the server's own)."
        return ("- Postgres: autovacuum **off** on this machine (its configuration file); our databases were kept by "
                f"autovacuum's rule instead (hotline/autovacuum.py): {v.vacuums} vacuums and {v.analyzes} analyzes "
                "of tables, in Postgres's CPU.")


def _comm(pid: str | int) -> str:
    """The process's program name (a Postgres backend keeps "postgres", whatever title it shows)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="./run bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI): a few minutes, no targets judged")
    p.add_argument("--postgres", action="store_true", help="our DB and Prefect's on Postgres")
    p.add_argument("--executor", choices=("serve", "inprocess"), default="serve",
                   help="what runs the case flows: serve (a process per run) or the in-process executor")
    p.add_argument("--topology", choices=("embedded", "scaled"), default="embedded",
                   help="embedded: the default stack; scaled: hotline/topology.py (Prefect on Postgres with "
                        "separate services and Redis, two executors, two API workers)")
    p.add_argument("--baseline-runs", type=int, default=30)
    p.add_argument("--lifecycles", type=int, default=10_000)
    p.add_argument("--lifecycle-waves", type=int, default=1,
                   help="run the lifecycles in this many equal waves and take every process's RSS after each: "
                   "memory growth after warm-up, with its slope")
    p.add_argument("--burst", type=int, default=10_000)
    p.add_argument("--drain-seconds", type=int, default=600)
    p.add_argument("--latency-cases", type=int, default=30)
    p.add_argument("--open-cases", type=int, default=100_000)
    p.add_argument("--escalation-cases", type=int, default=20)
    p.add_argument("--rest-seconds", type=int, default=60,
                   help="how long the stack's CPU at rest is measured (before the lifecycles)")
    p.add_argument("--watch-seconds", type=int, default=10,
                   help="the deadline watch's interval (the embedded default's; escalation latency follows it)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "performance.md")
    a = p.parse_args(argv)
    if not 1 <= a.lifecycle_waves <= max(1, a.lifecycles):
        p.error(f"--lifecycle-waves {a.lifecycle_waves}: must be between 1 and --lifecycles ({a.lifecycles})")
    if a.smoke:
        a.baseline_runs, a.lifecycles, a.burst, a.drain_seconds = 3, 3, 30, 60
        a.latency_cases, a.open_cases, a.escalation_cases = 3, 500, 2
        a.lifecycle_waves, a.rest_seconds = 2, 5
    stop_on_sigterm()  # a killed bench stops its stack and drops its databases
    bench = Bench(a)
    try:
        text = bench.run()
    finally:
        bench.close()
        bench.stack.stop()
        bench.receiver.stop()
        bench.cleanup()
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(add_run(a.out.read_text(encoding="utf-8") if a.out.exists() else None, text),
                     encoding="utf-8")
    print(f"\nadded to {a.out} (before its earlier runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The in-process executor: runs our deployments' flow runs in one event loop instead of a process per run.

`serve` starts a fresh Python process for every flow run (~1 s of CPU each), and a case runs three or more times
(intake, the unit's answers, the follow-up). Our flows are async, so one process can run many of them at once.
The executor keeps Prefect's guarantees by going through the server's orchestration exactly as `serve` does:

- **One executor per run**: a scheduled run is claimed by proposing `Pending`; the server accepts that once, so
  two executors never run the same run (and deployment concurrency limits, e.g. the deadline watch's, hold).
  The run then goes through Prefect's own engine (`run_flow_async`): states, task runs, logs, pauses, as in a
  subprocess.
- **Cancellation**: a run an operator cancels (state `Cancelling`) is stopped and marked `Cancelled`.
- **Crash detection**: every executor writes a heartbeat to our DB (`models.executors.ExecutorBeat`) and marks
  the runs it claims with its id (the run's `infrastructure_pid`). When an executor stops beating, the oldest
  live executor (one reaper at a time) reschedules the dead one's running runs; they replay from the top, which
  the case flow makes safe (every step is idempotent against our DB). A run left `Pending` past the same bound
  by an executor that stopped beating (it died between the claim and the start) is rescheduled too; a live
  executor's claimed run only after ten times that bound (it is likely slow, not gone: rescheduling a run about to
  start would run it twice).
- **Shares** (`HOTLINE_EXECUTOR_SHARD` i/n): each executor claims first the due runs whose id % n == i, and the
  others' once they have waited a moment, so executors rarely race for the same run.
- **Starting runs** (`HOTLINE_RUN_STARTER=executor`, the scaled shape): intake only records a case, and each
  executor starts the runs of recorded cases in its share (ids with id % n == i)
  while Prefect's queue of due runs is short, so a burst waits in our DB and Prefect is fed as fast as runs are
  taken; while intake takes a burst (`HOTLINE_STARTER_HOLD_RATE` cases/s), it starts none for up to
  `HOTLINE_STARTER_MAX_HOLD_SECONDS`, so callers are answered first. Its heartbeat names its share; the cases of
  a share no live executor starts are started by the deadline watch after their grace.
- **Stopping**: on SIGTERM/SIGINT it stops claiming, lets running runs finish for a grace period, and
  reschedules whatever is still running, so nothing waits for the crash bound. Prefect's per-run SIGTERM bridge
  is turned off for its runs (it would end the whole executor at once), and a stop that hangs ends the process
  25 s after the grace.

`serve` (flows/serve.py) and Prefect workers (prefect.yaml) keep working for anyone who prefers them; use one way
per installation. `python -m flows.executor` runs it; `HOTLINE_EXECUTOR=inprocess` makes `./run up` use it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections import deque
from contextlib import contextmanager
from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import Abort, ObjectNotFound, Pause
from prefect.flow_engine import run_flow_async
from prefect.flows import Flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Cancelled, Pending
from sqlalchemy import update
from sqlmodel import select

from flows.control import newest_case_id, runs_in_states, share_tls_context, start_cases, unstarted_cases
from flows.lost_runs import hand_back
from flows.serve import deployment_options
from hotline.clock import now
from hotline.db import read_scope, session_scope
from hotline.settings import format_shard, get_settings
from models import ExecutorBeat

log = logging.getLogger("hotline.executor")

CLAIM_TIMEOUT = 20  # seconds for one claim
POLL_TIMEOUT = 60  # seconds for one polling round: nothing may hold the claiming of every other run
REAP_BATCH = 200  # runs looked at per reaper round (executing runs are few: waiting ones are Paused)
OTHERS_AFTER = 2.0  # seconds a due run of another executor's share waits before this one claims it
STOP_MARGIN_SECONDS = 25  # a stop ends the process this long after the grace for running runs
START_BATCH = 16  # recorded cases one executor's starter starts per round, and the due runs it lets queue in Prefect
LIVE_CLAIM_FACTOR = 10  # a live executor's claimed run is handed back after this many dead bounds in Pending
HOLD_WINDOW = 2.0  # seconds over which intake's rate is judged (Executor.intake_busy)


class Executor:
    """Claims and runs the scheduled runs of our deployments in this process's event loop."""

    def __init__(self, *, limit: int = 100, poll_seconds: float = 0.5, heartbeat_seconds: float = 5,
                 dead_after_seconds: float = 30, grace_seconds: float = 20, executor_id: str | None = None,
                 deploy: list[tuple[Flow, dict]] | None = None, shard: tuple[int, int] = (0, 1),
                 starts_recorded: bool = False, hold_rate: float = 0, max_hold_seconds: float = 60):
        """`deploy`: the flows to serve with their deployment options (default: ours, flows/serve.py).
        `shard` (i, n): this executor claims first the due runs whose id % n == i, and with `starts_recorded` starts
        the runs of recorded cases whose id % n == i (otherwise intake starts them)."""
        self.id = executor_id or f"executor:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.deploy = deploy if deploy is not None else deployment_options()
        self.limit, self.poll_seconds = limit, poll_seconds
        self.heartbeat_seconds, self.dead_after = heartbeat_seconds, timedelta(seconds=dead_after_seconds)
        self.grace_seconds = grace_seconds
        self.shard, self.starts_recorded = shard, starts_recorded
        self.due_waiting = 0  # due runs the last poll listed but did not take: the starter holds back meanwhile
        self.hold_rate, self.max_hold = hold_rate, max_hold_seconds  # callers first (intake_busy)
        self.intake_seen: deque[tuple[float, int]] = deque()  # (monotonic time, newest case id)
        self.clock = time.monotonic
        self.holding_since: float | None = None
        self.hold_ended_at: float | None = None
        self.flows: dict[UUID, Flow] = {}        # deployment id -> flow
        self.running: dict[UUID, asyncio.Task] = {}
        self.stopping = asyncio.Event()
        self.counts = {"claimed": 0, "finished": 0, "paused": 0, "failed": 0, "cancelled": 0, "rescheduled": 0}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Register the deployments (as `serve` does) and this executor's first heartbeat. The API creates our
        schema; until it has, the heartbeat fails and is tried again on the next beat."""
        for flow, options in self.deploy:
            deployment = await flow.ato_deployment(**options)
            self.flows[await deployment.aapply()] = flow
        try:
            await asyncio.to_thread(self._beat)
        except Exception as exc:
            log.warning("first heartbeat failed (is our schema created?): %s", exc)
        log.info("executor %s serves %s", self.id, ", ".join(sorted(f.name for f in self.flows.values())))

    async def run(self) -> None:
        _without_suspension_observer()
        _without_sigterm_bridge()
        share_tls_context()
        with _without_flow_run_heartbeats():
            await self.start()
            async with get_client() as client:
                loops = [asyncio.create_task(self._poll_loop(client)), asyncio.create_task(self._watch_loop(client))]
                if self.starts_recorded:
                    loops.append(asyncio.create_task(self._start_loop()))
                await self.stopping.wait()
                for loop in loops:
                    loop.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                await self._drain(client)
        await asyncio.to_thread(self._retire)
        log.info("executor %s stopped: %s", self.id, self.counts)

    def stop(self) -> None:
        self.stopping.set()

    # ------------------------------------------------------------------ claiming and running

    # The loops end when `stopping` is set, not only when cancelled: Python 3.11's asyncio.wait_for can swallow a
    # cancellation that arrives just as its inner call completes. An executor in a test run kept polling for two
    # hours after SIGTERM that way, its stop waiting on the loop. Timeouts use asyncio.timeout, which does not.

    async def _poll_loop(self, client: PrefectClient) -> None:
        while not self.stopping.is_set():
            try:
                async with asyncio.timeout(POLL_TIMEOUT):
                    await self.poll_once(client)
            except Exception as exc:  # Prefect unreachable or stuck for a moment: try again on the next tick
                log.warning("polling for scheduled runs failed: %s", exc or "timed out")
            await asyncio.sleep(self.poll_seconds)

    async def poll_once(self, client: PrefectClient) -> int:
        """Claim and start as many due runs as there are free slots. Returns how many were started."""
        free = self.limit - len(self.running)
        if free <= 0 or self.stopping.is_set():
            self.due_waiting = START_BATCH
            return 0
        due = await client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=list(self.flows), scheduled_before=now(), limit=free)
        self.due_waiting = len(due)
        due = [run for run in due if self._claims_now(run)]
        due.sort(key=lambda r: (r.next_scheduled_start_time is None, r.next_scheduled_start_time))
        started = 0
        for listed in due:
            if listed.id in self.running:
                continue
            if (flow_run := await self._claim(client, listed)) is None:
                continue
            task = asyncio.create_task(self._execute(flow_run), name=f"flow-run-{flow_run.id}")
            self.running[flow_run.id] = task
            task.add_done_callback(lambda _t, run_id=flow_run.id: self.running.pop(run_id, None))
            started += 1
        self.due_waiting = len(due) - started
        return started

    def _claims_now(self, flow_run: FlowRun) -> bool:
        """Every executor lists the same due runs, and a claim that loses still costs the server a state
        orchestration. So each claims its own share (run id % n == i) at once, and the others' only once they have
        waited OTHERS_AFTER seconds (their executor may be busy or gone)."""
        index, count = self.shard
        if count == 1 or flow_run.id.int % count == index:
            return True
        due_at = _due_at(flow_run)
        return due_at is None or (now() - due_at).total_seconds() > OTHERS_AFTER

    async def _start_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.start_recorded()
            except Exception as exc:  # our DB or Prefect unreachable for a moment: the cases wait in our DB
                log.warning("starting recorded cases failed: %s", exc)
            await asyncio.sleep(self.poll_seconds)

    async def start_recorded(self) -> int:
        """Start the runs of recorded cases in this executor's shard, oldest first, as many as there is room for:
        no more than START_BATCH due runs left waiting in Prefect, nor more than free slots, and none while intake
        takes a burst (`intake_busy`). Returns how many."""
        if self.stopping.is_set() or not self.starts_recorded:
            return 0
        holding = self.hold_rate > 0 and self.intake_busy(await asyncio.to_thread(newest_case_id), self.clock())
        room = min(START_BATCH - self.due_waiting, self.limit - len(self.running))
        if room <= 0 or holding:
            return 0
        recorded = await asyncio.to_thread(unstarted_cases, limit=room, shard=self.shard)
        started = await start_cases(recorded)
        self.due_waiting += started
        return started

    def intake_busy(self, newest_id: int, at: float) -> bool:
        """Callers first. Starting a run costs Prefect, the executors and the DB far more than recording a case,
        and on shared machines (or a shared DB) it takes their CPU from intake. So while intake records more than
        `hold_rate` cases per second (over the last HOLD_WINDOW seconds: a burst, far above a district's peak),
        the starters start nothing and the burst is answered at intake's own rate; its cases wait in our DB. A hold
        lasts at most `max_hold` seconds, then the starters start as usual for as long again before they may hold
        again, so orders still go out within minutes of a long surge."""
        self.intake_seen.append((at, newest_id))
        while len(self.intake_seen) > 2 and at - self.intake_seen[1][0] >= HOLD_WINDOW:
            self.intake_seen.popleft()  # keep the newest sample at least HOLD_WINDOW old as the base
        first_at, first_id = self.intake_seen[0]
        busy = self.hold_rate > 0 and at - first_at > 0 and (newest_id - first_id) / (at - first_at) > self.hold_rate
        if not busy:
            self.holding_since = None
            return False
        if self.holding_since is None:
            if self.hold_ended_at is not None and at - self.hold_ended_at < self.max_hold:
                return False  # a long surge: start as usual between two holds
            self.holding_since = at
            log.info("intake is taking a burst: holding run starts (at most %.0f s)", self.max_hold)
        if at - self.holding_since > self.max_hold:
            self.holding_since, self.hold_ended_at = None, at
            return False
        return True

    async def _claim(self, client: PrefectClient, flow_run: FlowRun) -> FlowRun | None:
        """Propose Pending: the server accepts it for one claimant only. Then read the run again and mark it as ours
        (unless it already is: a run comes back to the executor of its share at every wake).

        The run as listed may be stale by the time it is claimed (claims go one by one): another executor may have
        run it, paused it and had it resumed meanwhile. Prefect's engine writes the run's `empirical_policy` back
        from the object it is given, so a stale one would erase the pause keys that make a replayed wait return
        its answer, and the run would wait again for an answer it already had."""
        try:  # one proposal, never a wait: a run the server asks us to wait for is left for a later poll
            async with asyncio.timeout(CLAIM_TIMEOUT):
                response = await client.set_flow_run_state(flow_run.id, Pending())
        except ObjectNotFound:  # deleted since it was listed: a watch round the watch deleted as skipped
            return None
        except Exception as exc:
            log.warning("could not claim flow run %s: %s %s", flow_run.id, type(exc).__name__, exc)
            return None
        if response.status != SetStateStatus.ACCEPT or not response.state or not response.state.is_pending():
            return None  # another executor claimed it, a concurrency limit refused it, or not yet (WAIT)
        self.counts["claimed"] += 1
        claimed = await client.read_flow_run(flow_run.id)
        if claimed.infrastructure_pid != self.id:  # read after the claim: nobody else can change it meanwhile
            await client.update_flow_run(flow_run.id, infrastructure_pid=self.id)
            claimed.infrastructure_pid = self.id
        return claimed

    async def _execute(self, flow_run: FlowRun) -> None:
        """Run one claimed run through Prefect's engine; a pause (suspension) simply ends this execution."""
        flow = self.flows[flow_run.deployment_id]
        try:
            state = await run_flow_async(flow, flow_run=flow_run, parameters=flow_run.parameters or None,
                                         return_type="state")
            self.counts["failed" if state.is_failed() or state.is_crashed() else "finished"] += 1
        except Pause:
            self.counts["paused"] += 1
        except Abort as exc:
            log.info("flow run %s aborted by the server: %s", flow_run.id, exc)
        except asyncio.CancelledError:
            self.counts["cancelled"] += 1
            raise
        except Exception as exc:  # the engine has recorded the failure on the run
            self.counts["failed"] += 1
            log.warning("flow run %s ended with %s", flow_run.id, exc)

    # ------------------------------------------------------------------ heartbeats, cancellation, crashes

    async def _watch_loop(self, client: PrefectClient) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(self.heartbeat_seconds)
            for step in (self._heartbeat, self._cancel_requested, self.reap):
                try:
                    await step(client)
                except Exception as exc:
                    log.warning("executor %s: %s failed: %s", self.id, step.__name__, exc)

    async def _heartbeat(self, _client: PrefectClient) -> None:
        await asyncio.to_thread(self._beat)

    def _beat(self) -> None:
        with session_scope() as session:
            beat = session.get(ExecutorBeat, self.id)
            if beat is None:
                beat = ExecutorBeat(id=self.id, host=socket.gethostname(), pid=os.getpid())
            beat.seen_at = now()
            beat.starter_shard = format_shard(self.shard) if self.starts_recorded else None
            session.add(beat)

    def _retire(self) -> None:
        """A clean stop: nothing of ours is left running, so nobody needs to reap us."""
        with session_scope() as session:
            beat = session.get(ExecutorBeat, self.id)
            if beat is not None:
                beat.reaped_by = self.id
                session.add(beat)

    async def _cancel_requested(self, client: PrefectClient) -> None:
        """Stop the runs an operator cancelled while they ran here, and mark them Cancelled."""
        if not self.running:
            return
        cancelling = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=list(self.running)),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING]))),
            sort=FlowRunSort.ID_DESC, limit=len(self.running))
        for flow_run in cancelling:
            task = self.running.get(flow_run.id)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await client.set_flow_run_state(flow_run.id, Cancelled(message=f"cancelled on {self.id}"), force=True)

    def _live_executors(self) -> list[str]:
        """The live executors, longest-running first: the first is the reaper (one at a time)."""
        with read_scope() as session:
            return list(session.exec(select(ExecutorBeat.id).where(ExecutorBeat.live(self.dead_after))
                                     .order_by(ExecutorBeat.started_at, ExecutorBeat.id)).all())

    def _claim_dead(self) -> list[str]:
        """Take over the executors that stopped beating; each is taken by one reaper only."""
        taken = []
        with session_scope() as session:
            dead = session.exec(select(ExecutorBeat.id).where(ExecutorBeat.silent(self.dead_after))).all()
            for executor_id in dead:
                result = session.execute(update(ExecutorBeat)
                                         .where(ExecutorBeat.id == executor_id, ExecutorBeat.reaped_by.is_(None))
                                         .values(reaped_by=self.id))
                if result.rowcount:
                    taken.append(executor_id)
        return taken

    async def reap(self, client: PrefectClient) -> int:
        """Reschedule the runs of dead executors (and runs stuck in Pending). Returns how many."""
        live = await asyncio.to_thread(self._live_executors)
        if live[:1] != [self.id]:
            return 0
        dead = set(await asyncio.to_thread(self._claim_dead))
        active = await runs_in_states(client, list(self.flows), [StateType.RUNNING, StateType.PENDING],
                                      limit=REAP_BATCH)
        reaped = 0
        for flow_run in active:
            if flow_run.id in self.running:
                continue
            if flow_run.state.is_running() and flow_run.infrastructure_pid in dead:
                why = f"its executor {flow_run.infrastructure_pid} stopped"
            elif flow_run.state.is_pending() and (bound := self._pending_bound(flow_run, live)) is not None:
                why = f"claimed by {flow_run.infrastructure_pid or 'an executor'} and not started within " \
                      f"{bound.total_seconds():.0f} s"
            else:
                continue
            await self._hand_back(client, flow_run, why)
            reaped += 1
        if dead or reaped:
            log.warning("executor %s took over %s; rescheduled %d run(s)", self.id, sorted(dead) or "-", reaped)
        return reaped

    def _pending_bound(self, flow_run: FlowRun, live: list[str]) -> timedelta | None:
        """The bound a claimed run has been left Pending past, or None while it is within it. A run whose
        claimant no longer beats gets the dead bound (it died between the claim and the start). A live claimant
        may just be slow to start it under load, and handing back a run about to start would run it twice, so its
        claims get LIVE_CLAIM_FACTOR times the dead bound (it may have lost the run: an error before the start)."""
        bound = self.dead_after * (LIVE_CLAIM_FACTOR if flow_run.infrastructure_pid in live else 1)
        return bound if flow_run.state.timestamp < now() - bound else None

    async def _hand_back(self, client: PrefectClient, flow_run: FlowRun, why: str) -> None:
        """A run whose execution was lost: flows/lost_runs.py says what becomes of it."""
        flow = self.flows.get(flow_run.deployment_id)
        if await hand_back(client, flow_run.id, flow.name if flow else None, why):
            self.counts["rescheduled"] += 1

    async def _drain(self, client: PrefectClient) -> None:
        """Stopping: let running runs finish for the grace period, then hand the rest back."""
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=self.grace_seconds)
        for run_id, task in list(self.running.items()):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            flow_run = await client.read_flow_run(run_id)
            state = flow_run.state
            # the engine marks a run Crashed when its task is cancelled: that was us, so it is handed back too
            if not state.is_paused() and (not state.is_final() or state.is_crashed()):
                await self._hand_back(client, flow_run, f"executor {self.id} stopped")


def _due_at(flow_run: FlowRun):
    return flow_run.next_scheduled_start_time or flow_run.expected_start_time


def _without_suspension_observer() -> None:
    """Prefect 3.8's engine starts, for every execution of a deployment's run, a thread with its own event loop,
    client and events subscription, only to notice a suspension requested from outside the run. Our runs suspend
    themselves (flows/waiting.py) and an operator stops one by cancelling it (handled above), so the executor's
    runs go without that observer: it cost about an eighth of the executor's CPU and a websocket subscription on
    the server per execution (docs/performance.md). A suspension requested from outside takes effect at the run's
    next state change instead."""
    import prefect.flow_engine as engine
    if not hasattr(engine, "observe_flow_run_suspension"):
        log.warning("prefect.flow_engine has no observe_flow_run_suspension: nothing to turn off")
        return

    @contextmanager
    def unobserved(*_args, **_kwargs):
        yield

    engine.observe_flow_run_suspension = unobserved


def _without_sigterm_bridge() -> None:
    """While a flow run executes, Prefect 3.8's engine replaces the process's SIGTERM handler with one that raises
    TerminationSignal in the main thread: right for a process per run, wrong for an executor running many runs in
    one event loop. The exception surfaced in the loop's `select`, ended the executor at once and marked the run
    Crashed, which no one recovers: a rolling update would have crashed every case run in flight. The executor
    handles SIGTERM itself (stop, let running runs finish for the grace, hand the rest back), so its runs go
    without the bridge."""
    import prefect.flow_engine as engine
    if not hasattr(engine, "capture_sigterm"):
        log.warning("prefect.flow_engine has no capture_sigterm: nothing to turn off")
        return

    @contextmanager
    def uncaptured():
        yield

    engine.capture_sigterm = uncaptured


def _without_flow_run_heartbeats():
    """Prefect's engine starts, for every execution, a thread that emits a `prefect.flow-run.heartbeat` event at
    once and every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds, for an automation that marks silent runs crashed.
    The executor detects a dead executor with its own beats and hands its runs back (the reaper, above), so its
    runs go without: one thread and one event (persisted, ordered, evaluated by Prefect's services) fewer per
    execution, about 3 of the 41 events a lifecycle cost (docs/performance.md). `serve` and workers keep them."""
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


async def main(deploy: list[tuple[Flow, dict]] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Importing Prefect has configured logging already (its root logger at WARNING), so basicConfig did nothing and
    # the executor's own INFO lines (what it serves, its counts at a stop) would be lost
    logging.getLogger("hotline").setLevel(logging.INFO)
    settings = get_settings()
    executor = Executor(limit=settings.executor_limit, heartbeat_seconds=settings.executor_heartbeat_seconds,
                        dead_after_seconds=settings.executor_dead_after_seconds, deploy=deploy,
                        shard=settings.shard, starts_recorded=settings.run_starter == "executor",
                        hold_rate=settings.starter_hold_rate, max_hold_seconds=settings.starter_max_hold_seconds)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_within, executor, executor.grace_seconds + STOP_MARGIN_SECONDS)
    await executor.run()


def _stop_within(executor: Executor, seconds: float) -> None:
    """Stop cleanly, but never take longer than `seconds` (a pod's termination grace is finite): a stop that
    hangs (a Prefect call or a DB lock that does not return) ends the process. Nothing is lost: a run it still
    held is rescheduled by the other executors once this one's heartbeat is stale."""
    if executor.stopping.is_set():
        return
    executor.stop()

    def force() -> None:
        log.error("executor %s still stopping %.0f s after the signal: exiting now", executor.id, seconds)
        logging.shutdown()
        os._exit(1)

    watchdog = threading.Timer(seconds, force)
    watchdog.daemon = True
    watchdog.start()


if __name__ == "__main__":
    asyncio.run(main())

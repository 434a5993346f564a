"""How the rest of the product talks to case runs: start one per case, wake one when a signal is waiting."""
from __future__ import annotations

import asyncio
import logging
import ssl
from datetime import timedelta
from functools import lru_cache
from uuid import UUID

from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from sqlalchemy import func, not_, or_
from sqlmodel import col, select

from hotline.clock import now
from hotline.db import read_scope, session_scope
from hotline.settings import get_settings, parse_shard
from models import Case, Deliberation, ExecutorBeat
from models.states import CaseStatus
from services.run_view import RunView, run_tags

log = logging.getLogger(__name__)

CASE_DEPLOYMENT = "case/hotline"
WATCH_DEPLOYMENT = "deadline-watch/hotline"
DELIBERATION_DEPLOYMENT = "deliberation/hotline"


async def start_case_flow(case: Case) -> str:
    """Create the case's flow run (one per case, by idempotency key) and remember its id."""
    return await _start_run(CASE_DEPLOYMENT, Case, case.id, "case", case.number, run_tags(case))


async def start_deliberation_flow(deliberation: Deliberation, tags: list[str]) -> str:
    """Create the deliberation's flow run (one per deliberation, by idempotency key), named by its number."""
    return await _start_run(DELIBERATION_DEPLOYMENT, Deliberation, deliberation.id, "deliberation",
                            deliberation.number, tags)


def unstarted_cases(*, limit: int, older_than_seconds: float = 0, shard: tuple[int, int] = (0, 1),
                    except_shards: list[tuple[int, int]] = ()) -> list[Case]:
    """Open cases recorded without a flow run yet, oldest first (the partial index ix_case_unstarted holds only
    these). `shard` (i, n): only those whose id % n == i, so that several starters never start the same case;
    `except_shards`: none of those shares."""
    index, count = shard
    query = select(Case).where(col(Case.flow_run_id).is_(None), Case.status != CaseStatus.closed)
    if older_than_seconds:
        query = query.where(Case.created_at <= now() - timedelta(seconds=older_than_seconds))
    if count > 1:
        query = query.where(col(Case.id) % count == index)
    if except_shards:
        query = query.where(not_(or_(*(col(Case.id) % n == i for i, n in except_shards))))
    with read_scope() as session:
        return list(session.exec(query.order_by(col(Case.id)).limit(limit)).all())


def live_starter_shards() -> list[tuple[int, int]]:
    """The shares of recorded cases that live executors start (HOTLINE_RUN_STARTER=executor), from their
    heartbeats: an executor silent past the dead bound, or stopped, starts nothing."""
    dead_after = timedelta(seconds=get_settings().executor_dead_after_seconds)
    with read_scope() as session:
        shards = session.exec(select(ExecutorBeat.starter_shard).where(
            col(ExecutorBeat.starter_shard).is_not(None), ExecutorBeat.live(dead_after))).all()
    return sorted({parse_shard(shard, "executor_beat.starter_shard") for shard in shards})


def newest_case_id() -> int:
    """The id of the newest recorded case (0 for none): its growth is intake's rate. One index lookup."""
    with read_scope() as session:
        return session.exec(select(func.max(Case.id))).one() or 0


async def start_cases(recorded: list[Case], concurrency: int = 8) -> int:
    """Start the runs of recorded cases, `concurrency` creations at once. A case whose start fails stays unstarted
    (the next round, or the deadline watch, tries again). Returns how many were started."""
    slots = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> bool:
        async with slots:
            try:
                await start_case_flow(case)
                return True
            except Exception as exc:
                log.warning("case %s: flow run not started (tried again later): %s", case.number, exc)
                return False
    return sum(await asyncio.gather(*(one(case) for case in recorded)))


_deployment_ids: dict[str, UUID] = {}


async def _deployment_id(client, name: str) -> UUID:
    """A deployment's id by its name, looked up once per process (a start is then one API call, not two)."""
    if name not in _deployment_ids:
        _deployment_ids[name] = (await client.read_deployment_by_name(name)).id
    return _deployment_ids[name]


async def runs_in_states(client: PrefectClient, deployment_ids: list[UUID], states: list[StateType],
                         limit: int) -> list[FlowRun]:
    """The runs of these deployments in these states, newest first, at most `limit`."""
    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))),
        sort=FlowRunSort.ID_DESC, limit=limit)


async def _start_run(deployment: str, model: type, record_id: int, kind: str, name: str, tags: list[str]) -> str:
    """One top-level run of `deployment` per record (`<kind>_id` its only parameter, named `name`; never a subflow);
    the record remembers the run's id."""
    options = dict(parameters={f"{kind}_id": record_id}, name=name, tags=tags, idempotency_key=f"{kind}-{record_id}")
    async with get_client() as client:
        try:
            flow_run = await client.create_flow_run_from_deployment(await _deployment_id(client, deployment), **options)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
            _deployment_ids.pop(deployment, None)  # re-created under a new id: look it up again
            flow_run = await client.create_flow_run_from_deployment(await _deployment_id(client, deployment), **options)

    def remember() -> None:
        with session_scope() as session:
            stored = session.get(model, record_id)
            if stored.flow_run_id is None:
                stored.flow_run_id = str(flow_run.id)
                session.add(stored)
    await asyncio.to_thread(remember)  # off the event loop: intake starts runs while it answers others
    return str(flow_run.id)


async def wake(flow_run_id: str | None, kind: str, signal_id: int | None = None) -> bool:
    """Resume a waiting case (or deliberation) run with a typed input. False when it is not waiting (it will see
    the signal anyway).

    Prefect's `resume_flow_run` helper reads the run first to refuse one that is not paused; the server refuses
    that itself (ABORT), so the client's own `resume_flow_run` is called directly: one request per wake, not two."""
    if not flow_run_id:
        return False
    try:
        async with get_client() as client:
            result = await client.resume_flow_run(UUID(flow_run_id), run_input={"kind": kind, "signal_id": signal_id})
    except ObjectNotFound:
        return False
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code in (404, 409):  # gone, or resumed by another waker at the same moment
            return False
        log.warning("could not wake flow run %s: %s", flow_run_id, exc)
        return False
    except Exception as exc:  # Prefect unreachable: the deadline watch wakes it later
        log.warning("could not wake flow run %s: %s", flow_run_id, exc)
        return False
    if result.status == SetStateStatus.ACCEPT:
        return True
    if result.status != SetStateStatus.ABORT:  # ABORT: not paused (running, or already resumed)
        log.warning("flow run %s not woken: %s %s", flow_run_id, result.status.value, result.details)
    return False


WAKE_TIMEOUT_SECONDS = 20
background_tasks: set[asyncio.Task] = set()


def in_background(coro) -> asyncio.Task:
    """Run `coro` as a task of the running loop, keeping a reference until it is done (the loop holds tasks only
    weakly). For Prefect calls an API answer must not wait on: waking a run, starting one."""
    task = asyncio.get_running_loop().create_task(coro)
    background_tasks.add(task)
    task.add_done_callback(background_tasks.discard)
    return task


# run id -> [the loop whose wake is in flight, the wake asked for meanwhile (kind, signal id) or None]
_waking: dict[str, list] = {}


def wake_soon(flow_run_id: str | None, kind: str, signal_id: int | None = None) -> None:
    """Wake a case run in the background, so an API answer never waits on Prefect.

    The signal is already committed to our DB; a busy Prefect server (its client retries 503s for up to a minute)
    only delays the wake, and whatever this misses the deadline watch wakes on its next pass. Wakes of one run
    are coalesced in this process: while one is in flight, later ones become a single wake after it (two resumes
    of one pause at once cost Prefect a refused insert and a logged traceback each, and wake nothing more)."""
    if not flow_run_id:
        return
    in_flight = _waking.get(flow_run_id)
    if in_flight is not None and not in_flight[0].is_closed():
        in_flight[1] = (kind, signal_id)
        return
    entry = _waking[flow_run_id] = [asyncio.get_running_loop(), None]

    async def bounded() -> None:
        answer: tuple[str, int | None] | None = (kind, signal_id)
        try:
            while answer is not None:
                try:
                    async with asyncio.timeout(WAKE_TIMEOUT_SECONDS):
                        await wake(flow_run_id, *answer)
                except TimeoutError:
                    log.warning("waking flow run %s timed out; the deadline watch will wake it", flow_run_id)
                answer, entry[1] = entry[1], None
        finally:
            if _waking.get(flow_run_id) is entry:
                del _waking[flow_run_id]

    in_background(bounded())


async def show_stage(flow_run_id: str, view: RunView) -> None:
    """Operators' view of a case run: its tags and its timeline artifact (one new version per stage). The tags are
    written only when they changed (the running run knows its own)."""
    await acreate_markdown_artifact(markdown=view.markdown, key=view.artifact_key,
                                    description=f"{view.stage}: the case's work orders, escalations and timeline")
    context = FlowRunContext.get()
    own = context.flow_run if context and context.flow_run and str(context.flow_run.id) == str(flow_run_id) else None
    if own and sorted(own.tags) == sorted(view.tags):
        return
    async with get_client() as client:  # tags last: a run tagged with a stage has that stage's artifact
        await client.update_flow_run(UUID(str(flow_run_id)), tags=view.tags)
    if own:
        own.tags = list(view.tags)


class _SharedTLS:
    """The `ssl` module as Prefect's client module sees it, but create_default_context made once per arguments."""
    create_default_context = staticmethod(lru_cache(maxsize=8)(ssl.create_default_context))

    def __getattr__(self, name):
        return getattr(ssl, name)


def share_tls_context() -> None:
    """Every Prefect client builds a new TLS context, loading the whole CA bundle (even for an http:// API), and
    Prefect makes a client per flow execution (two, with the synchronous one) and per call from our API: over a
    third of the executor's CPU in a profile (docs/performance.md). A TLS context is made to be shared, so the
    process builds one per CA file and reuses it. Called once at start by the executor and the API.
    (Sharing one client instead left an executor's connection pool stuck under load.)"""
    import prefect.client.orchestration as orchestration
    if isinstance(orchestration.__dict__.get("ssl"), _SharedTLS):
        return
    if orchestration.__dict__.get("ssl") is not ssl:
        log.warning("prefect.client.orchestration builds its TLS context differently: left as it is")
        return
    orchestration.ssl = _SharedTLS()

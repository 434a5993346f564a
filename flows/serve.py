"""Serve our deployments from this process (the embedded default; production uses workers, see prefect.yaml).

`serve` starts a fresh Python process for every flow run. `flows/executor.py` runs the same deployments in one
event loop instead (`HOTLINE_EXECUTOR=inprocess`)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from prefect import Flow, serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy, StateType
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron

from flows.case_flow import case_lifecycle
from flows.control import runs_in_states
from flows.deadline_watch import deadline_watch
from flows.deliberation_flow import deliberation_process
from flows.lost_runs import hand_back
from flows.monthly_report import monthly_report
from hotline.settings import get_settings

log = logging.getLogger("hotline.serve")


def deployment_options() -> list[tuple[Flow, dict[str, Any]]]:
    """The case flow, the deliberation flow, the deadline watch and the monthly report, with the options the embedded default deploys
    them with (`Flow.to_deployment` here, `Flow.ato_deployment` in the in-process executor)."""
    settings = get_settings()
    return [
        (case_lifecycle, dict(
            name="hotline", tags=["hotline", "case"],
            description="One run per citizen request; started by the API with the case id only.",
        )),
        (deliberation_process, dict(
            name="hotline", tags=["hotline", "deliberation"],
            description="One run per deliberation (大家商量着办); started by the API with the deliberation id only.",
        )),
        (deadline_watch, dict(
            name="hotline", tags=["hotline", "watch"], interval=settings.watch_interval_seconds,
            # one watch at a time: a run that finds one still busy is cancelled (and deleted by the next round,
            # flows/deadline_watch.py), so a slow round never piles up
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            description="Finds lapsed deadlines and follow-up windows, escalates, retries deliveries.",
        )),
        (monthly_report, dict(
            name="hotline", tags=["hotline", "report"],
            # 02:00 local time on the 1st: the report of the month that just ended
            schedules=[Cron("0 2 1 * *", timezone=settings.timezone)],
            description="The monthly report of the previous month: report.html and CSV files under "
                        "<home>/reports/<month>/, and the rates table as the artifact rates-<month>.",
        )),
    ]


async def hand_back_lost_runs() -> int:
    """The runs a previous `serve` left Running or Pending when it was killed: their processes died with it (one
    process group), and nothing would ever run or end them (a case would wait forever, shown Running). The
    embedded default has one `serve`, so at its start every such run of our deployments is lost: each is handed
    back (flows/lost_runs.py: a case replays from the top). Executors find lost runs by heartbeat instead; with
    workers, Prefect's zombie-run automation does (docs/deployment.md). Returns how many."""
    handed_back: set = set()
    async with get_client() as client:
        for flow, options in deployment_options():
            try:
                deployment = await client.read_deployment_by_name(f"{flow.name}/{options['name']}")
            except ObjectNotFound:
                continue  # a first start: nothing served before
            while lost := [run for run in await runs_in_states(
                    client, [deployment.id], [StateType.RUNNING, StateType.PENDING], limit=200)
                    if run.id not in handed_back]:  # (a run handed back and still listed is not tried again)
                for flow_run in lost:
                    await hand_back(client, flow_run.id, flow.name, "its serve process stopped")
                    handed_back.add(flow_run.id)
    return len(handed_back)


def main() -> None:
    try:
        if count := asyncio.run(hand_back_lost_runs()):
            log.warning("handed back %d run(s) that the previous serve process left unfinished", count)
    except Exception:  # serving matters more: the runs stay as they were, for an operator
        log.exception("could not hand back the runs a previous serve process left unfinished")
    serve(*(flow.to_deployment(**options) for flow, options in deployment_options()), limit=None)


if __name__ == "__main__":
    main()

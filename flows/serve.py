"""Serve our deployments from this process (the embedded default; production uses workers, see prefect.yaml).

`serve` starts a fresh Python process for every flow run. `flows/executor.py` runs the same deployments in one
event loop instead (`HOTLINE_EXECUTOR=inprocess`)."""
from __future__ import annotations

from typing import Any

from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from flows.case_flow import case_lifecycle
from flows.deadline_watch import deadline_watch
from flows.deliberation_flow import deliberation_process
from flows.monthly_report import monthly_report
from hotline.settings import get_settings


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


def main() -> None:
    serve(*(flow.to_deployment(**options) for flow, options in deployment_options()), limit=None)


if __name__ == "__main__":
    main()

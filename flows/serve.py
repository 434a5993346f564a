"""Serve our deployments from this process (the embedded default; production uses workers, see prefect.yaml)."""
from __future__ import annotations

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from flows.case_flow import case_lifecycle
from flows.deadline_watch import deadline_watch
from flows.monthly_report import monthly_report
from hotline.settings import get_settings


def main() -> None:
    settings = get_settings()
    serve(
        case_lifecycle.to_deployment(
            name="hotline", tags=["hotline", "case"],
            description="One run per citizen request; started by the API with the case id only.",
        ),
        deadline_watch.to_deployment(
            name="hotline", tags=["hotline", "watch"], interval=settings.watch_interval_seconds,
            # one watch at a time: a run that finds one still busy is cancelled, so a slow round never piles up
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            description="Finds lapsed deadlines and follow-up windows, escalates, retries deliveries.",
        ),
        monthly_report.to_deployment(
            name="hotline", tags=["hotline", "report"],
            # 02:00 local time on the 1st: the report of the month that just ended
            schedules=[Cron("0 2 1 * *", timezone=settings.timezone)],
            description="The monthly report of the previous month: report.html and CSV files under "
                        "<home>/reports/<month>/, and the rates table as the artifact rates-<month>.",
        ),
        limit=None,
    )


if __name__ == "__main__":
    main()

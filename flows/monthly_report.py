"""The monthly report (月度报告): on the 1st of every month, the report of the month before.

Builds the numbers from our DB (services.reports), writes report.html and the CSV files under
<home>/reports/<month>/, and publishes the rates tables (units and numbers only, no citizen data) as a Prefect
Markdown artifact keyed `rates-<month>`. The run is named `report-<month>`.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows import NO_RESULTS
from hotline.clock import now
from hotline.db import read_scope
from services import reports
from services.evaluation import month_bounds
from services.trends import previous_month


def report_month(month: str | None = None) -> str:
    """`month` checked (ValueError if not YYYY-MM), or the previous month in the local time zone."""
    month = month or previous_month(now())
    month_bounds(month, "UTC")
    return month


def artifact_key(month: str) -> str:
    """Artifact keys are lowercase letters, digits and dashes: rates-2026-11."""
    return f"rates-{month}".lower()


def _run_name() -> str:
    return f"report-{report_month(flow_run.parameters.get('month'))}"


def _build(month: str) -> reports.MonthlyReport:
    with read_scope() as session:
        return reports.build_report(session, month)


@task(name="build-report", cache_policy=NO_CACHE)
async def build(month: str) -> reports.MonthlyReport:
    return await asyncio.to_thread(_build, month)


@task(name="write-report-files", cache_policy=NO_CACHE)
async def write_files(report: reports.MonthlyReport, out_dir: Path) -> list[str]:
    return [str(p) for p in await asyncio.to_thread(reports.write_report, report, out_dir)]


@task(name="publish-rates-artifact", cache_policy=NO_CACHE)
async def publish_rates(report: reports.MonthlyReport) -> str:
    key = artifact_key(report.month)
    await acreate_markdown_artifact(markdown=reports.rates_markdown(report), key=key,
                                    description=f"考评三率 {report.month}: every level, units and numbers only")
    return key


@flow(name="monthly-report", **NO_RESULTS, flow_run_name=_run_name,
      description="The monthly report (三率, trends, hot spots, 零诉求社区, 每月一题) as HTML and CSV.")
async def monthly_report(month: str | None = None) -> dict:
    """`month` as YYYY-MM; default: the month before the current local month (the run on Dec 1 reports November)."""
    month = report_month(month)
    report = await build(month)
    files = await write_files(report, reports.default_out_dir(month))
    key = await publish_rates(report)
    summary = {"month": month, "files": files, "artifact": key, "cases_closed": report.district["cases"],
               "cases_reported": report.reported}
    get_run_logger().info("monthly report %s: %d files in %s", month, len(files), Path(files[0]).parent)
    return summary

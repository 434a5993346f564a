"""Monthly evaluation (考评): the three rates (三率), the composite score and the ranking (CONTRACT 4); the
zero/low-request communities (零诉求/低诉求社区) and the 每月一题 candidates."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from api.deps import AnyStaff
from hotline.db import read_scope
from hotline.settings import get_settings
from services import evaluation, trends

router = APIRouter(prefix="/api/metrics", tags=["metrics"])


@router.get("/rates")
async def rates(_actor: AnyStaff,
                month: str = Query(..., pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM, local calendar"),
                level: Literal["street", "department", "community", "utility"] = Query("street")):
    """Per unit of `level`: response_rate, resolution_rate, satisfaction_rate (0..1), score (0..100), rank and
    cases for the cases closed in `month`; units without a case are listed last with null rates and no rank.
    Definitions: docs/evaluation.md; weights: policies/evaluation.yaml."""
    def read():
        policy = evaluation.evaluation_policy()
        with read_scope() as session:
            units = evaluation.rates_for_month(session, month, level, policy)
        return {"month": month, "level": level, "timezone": get_settings().timezone,
                "weights": policy.model_dump(), "units": units}
    return await run_in_threadpool(read)


def valid_month(month: str = Query(..., description="YYYY-MM, local calendar", examples=["2026-11"])) -> str:
    """The month query parameter, checked with the same rule as the reports: 422 (field `month`) otherwise."""
    try:
        evaluation.month_bounds(month, "UTC")
    except ValueError:
        raise RequestValidationError([{"loc": ("query", "month"), "type": "value_error", "input": month,
                                       "msg": f"month must be a calendar month as YYYY-MM (e.g. 2026-11), "
                                              f"not {month!r}"}])
    return month


Month = Annotated[str, Depends(valid_month)]


@router.get("/communities")
async def communities(_actor: AnyStaff, month: Month):
    """零诉求/低诉求社区: every community with its number of cases reported in `month` and its status (zero, low,
    normal; low = 1..low_request_threshold of policies/evaluation.yaml), fewest first. Definitions:
    docs/evaluation.md."""
    return await _month_trend(trends.communities_for_month, month)


@router.get("/topics")
async def topics(_actor: AnyStaff, month: Month):
    """每月一题 candidates per street for `month`: the categories that grew most since the previous month and
    those that recur most over the last three months (top `topic_candidates` of each). Definitions:
    docs/evaluation.md."""
    return await _month_trend(trends.topics_for_month, month)


async def _month_trend(compute, month: str):
    """`compute(session, month, evaluation policy)` in a worker thread, on a read-only session."""
    def read():
        policy = evaluation.evaluation_policy()
        with read_scope() as session:
            return compute(session, month, policy)
    return await run_in_threadpool(read)

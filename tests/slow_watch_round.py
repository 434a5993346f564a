"""One round of the deadline watch whose first step hangs, run in this process through Prefect's engine: the round
that tests/test_deadline_watch.py kills mid-way. `python -m tests.slow_watch_round <flow-run-id>` (a run of the
watch's deployment that the test has claimed: Pending, holding the watch's slot)."""
from __future__ import annotations

import asyncio
import sys
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow_async

from flows import deadline_watch as watch


async def hang() -> dict:
    await asyncio.sleep(3600)
    return {}


async def main(flow_run_id: UUID) -> None:
    watch.find_lapsed = hang
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
    await run_flow_async(watch.deadline_watch, flow_run=flow_run, return_type="state")


if __name__ == "__main__":
    asyncio.run(main(UUID(sys.argv[1])))

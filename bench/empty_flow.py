"""The baselines: an empty async flow, run exactly like the case flow — by `serve` (one subprocess per run), or with
`--inprocess` by the in-process executor (flows/executor.py, one event loop)."""
from __future__ import annotations

import asyncio
import sys

from prefect import flow, serve


@flow(name="bench-empty")
async def empty() -> None:
    return None


if __name__ == "__main__":
    options = dict(name="bench", tags=["bench"])
    if "--inprocess" in sys.argv:
        from flows.executor import main
        asyncio.run(main(deploy=[(empty, options)]))
    else:
        serve(empty.to_deployment(**options), limit=None)

"""A flow that runs for a while, served by a second in-process executor, for the cancellation test: our own
flows spend their time suspended, not running. `python -m tests.slow_flow <marker-dir>`."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from prefect import flow

MARKERS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")


@flow(name="test-slow")
async def slow(seconds: float, tag: str) -> None:
    (MARKERS / f"{tag}.started").touch()
    await asyncio.sleep(seconds)
    (MARKERS / f"{tag}.finished").touch()


if __name__ == "__main__":
    from flows.executor import main
    asyncio.run(main(deploy=[(slow, dict(name="slow"))]))

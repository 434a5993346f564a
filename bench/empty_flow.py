"""The baseline: an empty async flow served by `serve` exactly like the case flow (one subprocess per run)."""
from __future__ import annotations

from prefect import flow, serve


@flow(name="bench-empty")
async def empty() -> None:
    return None


if __name__ == "__main__":
    serve(empty.to_deployment(name="bench", tags=["bench"]), limit=None)

"""Prefect flows: one durable run per case, and the scheduled deadline watch."""

import tempfile
from pathlib import Path

# Our DB is the record of truth, so no flow result is ever persisted or read back. Naming a result storage (unused)
# spares each execution a blocking read of the server's default result storage by Prefect's engine.
NO_RESULTS = {"persist_result": False, "result_storage": Path(tempfile.gettempdir()) / "hotline-flow-results"}

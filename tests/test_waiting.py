"""How a case run reads the server's answer to its proposed pause (flows/waiting.py)."""
from __future__ import annotations

import pytest
from prefect.states import Cancelled, Failed, Paused, Pending, Running, Scheduled

from flows.waiting import after_proposal


def test_the_servers_answer_to_a_proposed_pause():
    assert after_proposal(Paused(name="Awaiting unit", reschedule=True, pause_key="case-1-wait-0")) == "paused"
    assert after_proposal(Running()) == "replay"  # the same pause key fired before: this is the resumed replay
    # accepted, then resumed while our request was held up (e.g. Prefect's SQLite write lock): end this execution
    assert after_proposal(Scheduled(name="Resuming")) == "resumed"
    assert after_proposal(Pending()) == "resumed"
    for final in (Cancelled(), Failed()):
        with pytest.raises(RuntimeError, match="cannot be suspended"):
            after_proposal(final)

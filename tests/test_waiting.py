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


def test_wakes_of_one_run_are_coalesced_while_one_is_in_flight(monkeypatch):
    """Three answers for one case in quick succession: the first wakes the run; the two that come while it is in
    flight make one more wake after it, with the latest answer. Another run's wake is not held up."""
    import asyncio

    import flows.control as control
    calls: list[tuple[str, str, int | None]] = []
    release = {}

    async def wake(run_id, kind, signal_id=None):
        calls.append((run_id, kind, signal_id))
        gate = release.setdefault(run_id, asyncio.Event())
        await gate.wait()
        return True
    monkeypatch.setattr(control, "wake", wake)

    async def scenario():
        control.wake_soon("run-a", "unit_event", 1)
        control.wake_soon("run-a", "unit_event", 2)
        control.wake_soon("run-a", "unit_event", 3)
        control.wake_soon("run-b", "follow_up", 9)
        await asyncio.sleep(0.01)
        assert calls == [("run-a", "unit_event", 1), ("run-b", "follow_up", 9)]
        release["run-a"].set()
        release["run-b"].set()
        await asyncio.sleep(0.01)
        assert calls[2:] == [("run-a", "unit_event", 3)]  # one more, with the latest answer
        await asyncio.sleep(0.01)
        assert len(calls) == 3 and control._waking == {}
        control.wake_soon("run-a", "decision", 4)  # later: a wake of its own again
        await asyncio.sleep(0.01)
        assert calls[3:] == [("run-a", "decision", 4)]
    asyncio.run(scenario())

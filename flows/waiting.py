"""Suspending a case run under a state name that says what it waits for ("Awaiting unit", "Escalated", …).

Prefect's `suspend_flow_run` always names the state "Suspended"; operators filter runs by state name to see what is
stuck where, so we propose the same state (a PAUSED state with `pause_reschedule`, our pause key and a run-input
keyset) under the stage's name. The server treats it exactly like "Suspended" (its rules look at the state type
and `pause_reschedule`, the name only changes their messages), and `resume_flow_run` resumes it the same way.

This mirrors `prefect.flow_runs.asuspend_flow_run` for the current run (Prefect 3.8.8, pinned in pyproject.toml);
the test suite suspends and resumes through it on every case.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar
from uuid import UUID

import httpx

from prefect._flow_run_suspension import mark_flow_run_suspension_requested
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import Abort, Pause
from prefect.logging import get_run_logger
from prefect.input.run_input import keyset_from_base_key, run_input_subclass_from_type
from prefect.states import Paused
from prefect.utilities.engine import propose_state

T = TypeVar("T")


def after_proposal(state) -> str:
    """What the server's answer to our proposed pause means:
    - "paused": accepted, the run now waits;
    - "replay": refused because this pause already fired (same key): the run was resumed before at this key;
    - "resumed": the pause was accepted and a resume came before we heard back (e.g. Prefect's SQLite held our
      request for a minute while a unit answered): the run is Scheduled (Resuming) or already Pending again.
    Anything else (a cancelled or failed run) cannot be suspended."""
    if state.is_paused():
        return "paused"
    if state.is_running():
        return "replay"
    if state.is_scheduled() or state.is_pending():
        return "resumed"
    raise RuntimeError(f"flow run cannot be suspended; the server answered {state}")


async def suspend_as(state_name: str, *, key: str, wait_for_input: type[T],
                     on_suspended: Callable[[UUID], Awaitable[None]] | None = None) -> T:
    """Suspend the current flow run (freeing its process) until it is resumed with an input of `wait_for_input`.
    `on_suspended(flow_run_id)` runs once the server has accepted the suspension (not on a replay); its failure
    is logged and does not keep the run from suspending.

    Our flows take a new `key` for every wait (the answer itself is a signal in our DB, applied when the resumed run
    starts again from the top), so a pause is normally never proposed twice. If it is (a key that fired before,
    e.g. after our DB was restored from a backup), the server refuses it as already answered and the saved input
    is returned at once: the caller goes on and waits again under its next key."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("only a running flow can suspend itself")
    flow_run_id = context.flow_run.id
    proposed = Paused(name=state_name, reschedule=True, pause_key=key)
    input_type = run_input_subclass_from_type(wait_for_input)
    keyset = keyset_from_base_key(f"suspended-{key}")  # as Prefect names it: run-input keys allow no spaces
    proposed.state_details.run_input_keyset = keyset

    try:  # the input schema before the state: a resume arriving the moment the run is paused can validate
        await input_type.asave(keyset, flow_run_id=flow_run_id)
    except httpx.HTTPStatusError as exc:  # 409: saved by an earlier pass of this same wait (a replay)
        if exc.response.status_code != 409:
            raise
    async with get_client() as client:
        try:
            state = await propose_state(client=client, state=proposed, flow_run_id=flow_run_id)
        except Abort as exc:
            raise RuntimeError(f"flow run cannot be suspended: {exc}") from exc
        outcome = after_proposal(state)
        if outcome == "replay":  # this wait was answered before: the run was resumed and replays
            return await input_type.aload(keyset)
        if outcome == "resumed":  # suspended and already resumed while our proposal was in flight: end this
            raise Pause(state=state)  # execution; the resumed run starts again from the top in a new one

    if on_suspended is not None:
        try:
            await on_suspended(flow_run_id)
        except Exception as exc:  # cosmetic for operators; the case itself is safely waiting
            get_run_logger().warning("could not publish the stage of the waiting run: %s", exc)
    mark_flow_run_suspension_requested(flow_run_id, state)
    raise Pause(state=state)  # the engine ends this process; a resume reschedules the run

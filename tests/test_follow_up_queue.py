"""The follow-up staff's queue (GET /api/follow-ups, 回访): oldest due first, at most `limit`, each case with the
unit that completed it and the call script; a fixed number of queries however long the queue (every follow-up
desk polls it). A temporary SQLite DB built by hand, the route through TestClient."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event

from tests.conftest import FAST_ADMIN_TOKEN as ADMIN


def _queue(db, n: int) -> list[int]:
    """`n` cases awaiting their follow-up, due one minute apart in reverse order of their ids: each with a rejected
    and a completed lead order, the newest from unit u1 (u0 before it) and a co-handling order. Returns the ids."""
    from hotline.clock import now
    from hotline.db import session_scope
    from models import Case, CaseStatus, Unit, WorkOrder
    from models.states import WorkOrderStatus
    ids = []
    with session_scope() as session:
        for code in ("u0", "u1", "co"):
            if session.get(Unit, code) is None:
                session.add(Unit(code=code, name=f"单位{code}", level="street", token_hash=f"h-{code}",
                                 webhook_secret="s"))
        session.flush()
        base = now()
        for k in range(n):
            case = Case(source="hotline", source_ref=f"fu-{base.timestamp()}-{k}", description="路灯不亮",
                        category="street_lights", reported_at=base, status=CaseStatus.awaiting_follow_up,
                        follow_up_due_at=base + timedelta(minutes=n - k))
            session.add(case)
            session.flush()
            case.number = f"C{case.id:06d}"
            for unit, role, status in (("u0", "lead", WorkOrderStatus.completed), ("co", "co", WorkOrderStatus.completed),
                                       ("u1", "lead", WorkOrderStatus.completed), ("u0", "lead", WorkOrderStatus.rejected)):
                session.add(WorkOrder(case_id=case.id, unit=unit, role=role, status=status, respond_by=base,
                                      due_at=base, resolved=True, note=f"{unit} done"))
            ids.append(case.id)
    return ids


@pytest.fixture
def client(db):
    from fastapi.testclient import TestClient

    from api.main import create_app
    with TestClient(create_app()) as test_client:
        r = test_client.post("/api/staff", json={"name": "回访员", "role": "follow_up"},
                             headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 201, r.text
        test_client.headers["Authorization"] = f"Bearer {r.json()['token']}"
        yield test_client


def _queries_for(client, **params) -> tuple[list[dict], int]:
    from hotline.db import get_engine
    statements = []

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)
    event.listen(get_engine(), "before_cursor_execute", count)
    try:
        r = client.get("/api/follow-ups", params={"status": "open", **params})
    finally:
        event.remove(get_engine(), "before_cursor_execute", count)
    assert r.status_code == 200, r.text
    return r.json(), len(statements)


def test_oldest_due_first_with_the_completing_unit_and_at_most_limit(db, client):
    ids = _queue(db, 5)
    queue, _ = _queries_for(client)
    assert [int(item["case_id"]) for item in queue] == list(reversed(ids))  # the last recorded is due first
    first = queue[0]
    assert first["unit"] == "u1" and "单位u1" in first["script"]  # the newest completed lead order, not the co's
    assert [int(item["case_id"]) for item in _queries_for(client, limit=2)[0]] == list(reversed(ids))[:2]
    assert client.get("/api/follow-ups", params={"limit": 0}).status_code == 422
    assert client.get("/api/follow-ups", params={"limit": 501}).status_code == 422


def test_the_queue_costs_the_same_queries_however_long_it_is(db, client):
    _queue(db, 3)
    short, few = _queries_for(client)
    _queue(db, 30)
    long, many = _queries_for(client)
    assert (len(short), len(long)) == (3, 33)
    assert many == few, f"{few} queries for 3 cases, {many} for 33"

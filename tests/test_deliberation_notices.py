"""大家商量着办, fast: the deliberation run sends its own notices (the `send_notices` task of its flow), once each,
to a real webhook receiver on loopback that verifies every signature; temporary SQLite DB, no Prefect."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from hotline.demo import District, register_district
from hotline.receiver import Receiver
from hotline.runtime import free_port
from tests.conftest import FAST_ADMIN_TOKEN as ADMIN
from tests.test_deliberations import SESSION_1, flow_settle, write


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(port=free_port()).start()
    yield started
    started.stop()


@pytest.fixture
def district(db, receiver, monkeypatch) -> District:
    from api.main import create_app
    from api.routes import deliberations as route
    from notifications import webhooks
    from services import intake

    async def unreachable(*_args, **_kwargs):
        raise ConnectionError("no Prefect in the fast tests")
    monkeypatch.setattr(route, "start_deliberation_flow", unreachable)
    monkeypatch.setattr(intake, "start_case_flow", unreachable)
    webhooks.reset_limits()  # per-unit rate limits are per process: start each test with full buckets
    with TestClient(create_app()) as api:
        return register_district(api, ADMIN, receiver)


def send(deliberation_id: int) -> dict[str, int]:
    """What the deliberation flow does after each step (the task's function, without Prefect)."""
    from tasks.deliberation_tasks import send_notices
    return asyncio.run(send_notices.fn(deliberation_id))


def statuses(event_type: str) -> list[tuple[str, str]]:
    from hotline.db import read_scope
    from models import Delivery
    with read_scope() as s:
        return sorted((d.unit, d.status) for d in s.exec(select(Delivery).where(Delivery.event_type == event_type)))


def test_the_run_sends_its_invitations_and_result_once_and_only_its_own(district, receiver):
    from services import deliberations
    from tests.test_routing_ladder import new_case
    d = write(deliberations.create, topic_type="property", title="快递站堵门", description=None,
              location={"community": "小南庄社区"}, case_ids=[], actor="xiaonanzhuang")
    other = write(deliberations.create, topic_type="property", title="另一议题", description=None,
                  location={"community": "小南庄社区"}, case_ids=[], actor="xiaonanzhuang")
    write(deliberations.invite, deliberation_id=d.id, actor="admin", participants=[
        {"type": "residents_committee", "unit": "xiaonanzhuang"}, {"type": "property_company", "unit": "property_co"},
        {"type": "resident_rep", "name": "王大爷", "contact": "13800001111"}])
    write(deliberations.invite, deliberation_id=other.id, actor="admin",
          participants=[{"type": "property_company", "unit": "property_co"}])
    new_case("street_lights")  # a case's work order is pending too: the case's run sends that, not this one

    assert flow_settle(d.id) == "inviting"
    assert send(d.id)["delivered"] == 2
    invited = receiver.of(type="deliberation.invited")
    assert sorted(r.unit for r in invited) == ["property_co", "xiaonanzhuang"]
    assert {r.data["deliberation_number"] for r in invited} == {d.number}
    assert "王大爷" not in str([r.data for r in invited]) and "13800001111" not in str([r.data for r in invited])
    assert statuses("work_order.assigned")[0][1] == "pending"  # not this run's
    assert ("property_co", "pending") in statuses("deliberation.invited")  # the other deliberation's invitation

    attempts = len(receiver.attempts)
    assert send(d.id) == {"delivered": 0, "retry": 0, "failed": 0}  # a replay from the top sends nothing again
    assert len(receiver.attempts) == attempts

    # a unit that did not answer is retried by the deadline watch (the safety net), not re-sent by the run
    receiver.fail_next["property_co"] = [503]
    write(deliberations.invite, deliberation_id=other.id, actor="admin",
          participants=[{"type": "residents_committee", "unit": "xiaonanzhuang"}])
    assert send(other.id) == {"delivered": 1, "retry": 1, "failed": 0}
    assert send(other.id)["retry"] == 0  # backing off: the run does not hammer the unit

    # the decision without items goes to 反馈结果; the published result reaches the unit participants once
    write(deliberations.record_session, deliberation_id=d.id, actor="admin",
          body=SESSION_1 | {"decision": {"method": "consensus", "summary": "快递站移至地下车库入口"}})
    assert flow_settle(d.id) == "feedback"
    write(deliberations.publish, deliberation_id=d.id, stage="result", content="快递站已搬走", place="社区公告栏",
          published_at=None, actor="admin")
    flow_settle(d.id)
    assert send(d.id)["delivered"] == 2 and send(d.id)["delivered"] == 0
    results = receiver.of(type="deliberation.result")
    assert sorted(r.unit for r in results) == ["property_co", "xiaonanzhuang"]
    assert all("快递站已搬走" in r.data["text"] for r in results)
    assert receiver.rejected == []  # every delivery verified with standardwebhooks

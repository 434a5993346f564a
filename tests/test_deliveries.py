"""Webhook delivery to units: outcome classification, retries with backoff and Retry-After, 410 Gone, dead letter,
re-send, per-unit concurrency and rate — first against a real receiver on loopback and a temporary SQLite DB
(notifications.webhooks called directly, time passed in explicitly), then on the real stack (operator endpoints,
a crash between the state change and the send)."""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
import yaml
from sqlmodel import col, select

from hotline import db as hotline_db
from hotline import settings as hotline_settings
from hotline.clock import now
from hotline.receiver import Receiver
from hotline.runtime import free_port
from models import Delivery, DeliveryAttempt, OpsAlert, Unit
from models.units import UnitBase
from notifications import webhooks
from notifications.webhooks import TokenBucket, backoff, classify, deliver_due, parse_retry_after
from services import registry
from services.delivery_policy import DeliveryPolicy, PolicyError, delivery_policy
from services.policies import strict
from services.tokens import hash_token, new_token, new_webhook_secret
from tests.conftest import Env, eventually

S = timedelta(seconds=1)


# ================================================================ pure pieces

@pytest.mark.parametrize("code, expected", [
    (200, "delivered"), (204, "delivered"), (None, "retry"), (408, "retry"), (429, "retry"), (500, "retry"),
    (502, "retry"), (503, "retry"), (400, "failed"), (401, "failed"), (404, "failed"), (409, "failed"),
    (422, "failed"), (301, "failed"), (410, "gone"),
])
def test_outcome_of_an_answer(code, expected):
    assert classify(code, DeliveryPolicy()).kind == expected


def test_listed_4xx_codes_are_retried_and_unfixable_errors_are_not():
    assert classify(409, DeliveryPolicy(retry_4xx=[409])).kind == "retry"
    assert classify(404, DeliveryPolicy(retry_4xx=[409])).kind == "failed"
    assert classify(None, DeliveryPolicy(), permanent=True).kind == "failed"  # e.g. an invalid URL


def test_retry_after_in_seconds_or_as_an_http_date():
    at = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
    assert parse_retry_after("120", at) == timedelta(seconds=120)
    assert parse_retry_after(format_datetime(at + timedelta(minutes=5), usegmt=True), at) == timedelta(minutes=5)
    assert parse_retry_after(format_datetime(at - timedelta(minutes=5), usegmt=True), at) == timedelta(0)
    assert parse_retry_after("soon", at) is None and parse_retry_after(None, at) is None
    outcome = classify(429, DeliveryPolicy(), retry_after="Mon, 23 Nov 2026 10:00:30 GMT", at=at)
    assert outcome.kind == "retry" and outcome.retry_after == timedelta(seconds=30)


def test_backoff_is_exponential_capped_and_jittered_within_the_fraction():
    policy = DeliveryPolicy.model_validate({"backoff": {"base": "1s", "max": "10s", "jitter": 0.25}})
    assert [backoff(n, policy).total_seconds() for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    jittered = [backoff(3, policy, jitter=True).total_seconds() for _ in range(200)]
    assert all(3 <= j <= 5 for j in jittered) and len(set(jittered)) > 1
    assert all(backoff(9, policy, jitter=True) <= 10 * S for _ in range(50))  # never beyond max


def test_delivery_policy_file(tmp_path: Path):
    assert delivery_policy(tmp_path) == DeliveryPolicy()  # no file: the defaults
    shipped = delivery_policy(hotline_settings.REPO_ROOT / "policies")
    assert shipped.dead_letter_after == timedelta(hours=24) and shipped.retry_4xx == []
    assert shipped.backoff.base == 2 * S and shipped.per_unit.max_concurrency >= 1
    assert shipped.secret_rotation_grace == timedelta(hours=24)
    (tmp_path / "delivery.yaml").write_text("secret_rotation_grace: 0s\n")
    assert delivery_policy(tmp_path).secret_rotation_grace == timedelta(0)  # the old secret stops at once
    for text, problem in [("secret_rotation_grace: -1h\n", "secret_rotation_grace"),
                          ("backoff: {base: soon}\n", r"delivery.yaml: backoff.base"),
                          ("retry_4xx: [404, 503]\n", r"retry_4xx: .*\[503\]"),
                          ("dead_leter_after: 1h\n", "dead_leter_after")]:  # a typo is not silently ignored
        (tmp_path / "delivery.yaml").write_text(text)
        with strict(), pytest.raises(PolicyError, match=problem):  # as the policy check sees it
            delivery_policy(tmp_path)
        # the sender keeps the last good version in force
        assert delivery_policy(tmp_path).secret_rotation_grace == timedelta(0)


def test_token_bucket_spaces_requests_at_the_rate():
    t = [0.0]
    bucket = TokenBucket(rate=2, size=2, clock=lambda: t[0])
    assert [bucket.reserve() for _ in range(4)] == [0, 0, 0.5, 1.0]  # a burst of 2, then one every 0.5 s
    t[0] = 10.0
    assert bucket.reserve() == 0  # refilled (up to the bucket size)


# ================================================================ against a receiver and a temporary DB

@dataclass
class Db:
    policy_dir: Path
    receivers: list[Receiver] = field(default_factory=list)

    def policy(self, **values) -> None:
        (self.policy_dir / "delivery.yaml").write_text(yaml.safe_dump(values), encoding="utf-8")

    def receiver(self, port: int | None = None, start: bool = True) -> Receiver:
        receiver = Receiver(port=port or free_port())
        self.receivers.append(receiver)
        return receiver.start() if start else receiver

    def unit(self, receiver: Receiver, code: str) -> None:
        secret = new_webhook_secret()
        receiver.secrets[code] = secret
        with hotline_db.session_scope() as session:
            session.add(Unit(code=code, name=code, level="department", webhook_url=receiver.hook_url(code),
                             token_hash=hash_token(new_token("unit")), webhook_secret=secret))

    def delivery(self, unit: str, **values) -> int:
        key = f"{unit}-{uuid.uuid4().hex[:8]}"
        with hotline_db.session_scope() as session:
            delivery = Delivery(msg_id=f"msg_{key}", unit=unit, event_type="work_order.assigned",
                                payload={"type": "work_order.assigned", "timestamp": "2026-11-23T10:00:00+08:00",
                                         "data": {"work_order_id": key, "title": "路灯不亮"}}, **values)
            session.add(delivery)
            session.flush()
            return delivery.id

    def get(self, delivery_id: int) -> Delivery:
        with hotline_db.session_scope() as session:
            return session.get(Delivery, delivery_id)

    def attempts(self, delivery_id: int) -> list[DeliveryAttempt]:
        with hotline_db.session_scope() as session:
            return list(session.exec(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id)
                                     .order_by(col(DeliveryAttempt.id))).all())

    def alerts(self, unit: str) -> list[OpsAlert]:
        with hotline_db.session_scope() as session:
            return list(session.exec(select(OpsAlert).where(OpsAlert.unit == unit)).all())

    def unit_row(self, code: str) -> Unit:
        with hotline_db.session_scope() as session:
            return session.get(Unit, code)


def _clear_caches() -> None:
    hotline_settings.get_settings.cache_clear()
    hotline_db.get_engine.cache_clear()


@pytest.fixture
def db(tmp_path: Path, monkeypatch) -> Iterator[Db]:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    monkeypatch.setenv("HOTLINE_HOME", str(tmp_path))
    monkeypatch.setenv("HOTLINE_DATABASE_URL", f"sqlite:///{tmp_path / 'hotline.db'}")
    monkeypatch.setenv("HOTLINE_POLICY_DIR", str(policy_dir))
    _clear_caches()
    hotline_db.init_db()
    webhooks.reset_limits()
    fixture = Db(policy_dir)
    fixture.policy(backoff={"base": "2s", "max": "1h", "jitter": 0.2}, request_timeout="3s",
                   per_unit={"max_concurrency": 2, "rate_per_second": 50})
    try:
        yield fixture
    finally:
        for receiver in fixture.receivers:
            receiver.stop()
        hotline_db.get_engine().dispose()
        monkeypatch.undo()
        _clear_caches()


def statuses(receiver: Receiver, webhook_id: str) -> list[int]:
    return [status for _unit, wid, status in receiver.attempts if wid == webhook_id]


async def test_down_then_500_then_429_then_delivered_exactly_once(db: Db):
    port = free_port()
    receiver = db.receiver(port, start=False)  # nothing listening on the port yet
    db.unit(receiver, "unit_a")
    d = db.delivery("unit_a")
    msg_id = db.get(d).msg_id
    t0 = now()

    assert await deliver_due(at=t0) == {"delivered": 0, "retry": 1, "failed": 0}
    row = db.get(d)
    assert row.status == "pending" and row.attempts == 1 and row.last_status_code is None
    assert 1.6 * S <= row.next_attempt_at - t0 <= 2.4 * S  # 2 s ± 20 % jitter
    assert await deliver_due(at=t0 + 1 * S) == {"delivered": 0, "retry": 0, "failed": 0}  # not due yet

    receiver.start()
    receiver.fail_next["unit_a"] = [500, {"status": 429, "headers": {"Retry-After": "30"}}]
    t1 = t0 + 10 * S
    assert (await deliver_due(at=t1))["retry"] == 1
    assert 3.2 * S <= db.get(d).next_attempt_at - t1 <= 4.8 * S  # second retry: 4 s ± 20 %
    t2 = t0 + 20 * S
    assert (await deliver_due(at=t2))["retry"] == 1
    assert db.get(d).next_attempt_at == t2 + 30 * S  # Retry-After honoured, not the 8 s backoff
    assert (await deliver_due(at=t2 + 29 * S))["retry"] == 0 and len(receiver.started) == 2
    assert await deliver_due(at=t2 + 30 * S) == {"delivered": 1, "retry": 0, "failed": 0}
    assert await deliver_due(at=t2 + 1000 * S) == {"delivered": 0, "retry": 0, "failed": 0}

    [received] = receiver.of(unit="unit_a")
    assert received.webhook_id == msg_id and received.data["title"] == "路灯不亮"
    assert statuses(receiver, msg_id) == [500, 429, 204]  # same webhook-id on every attempt
    row = db.get(d)
    assert row.status == "delivered" and row.attempts == 4 and row.delivered_at == t2 + 30 * S
    log = db.attempts(d)
    assert [a.status_code for a in log] == [None, 500, 429, 204]
    assert [a.outcome for a in log] == ["retry", "retry", "retry", "delivered"]
    assert "ConnectError" in log[0].error and log[1].error.startswith("HTTP 500")
    assert "Retry-After: 30" in log[2].error and log[3].error is None
    assert all(a.latency_ms is not None and a.latency_ms >= 0 for a in log)


async def test_a_refused_delivery_fails_without_retry_and_can_be_resent(db: Db):
    receiver = db.receiver()
    db.unit(receiver, "unit_b")
    d = db.delivery("unit_b")
    receiver.fail_next["unit_b"] = [400]
    assert (await deliver_due())["failed"] == 1
    row = db.get(d)
    assert row.status == "failed" and row.last_status_code == 400 and row.attempts == 1
    assert (await deliver_due(at=now() + timedelta(days=1)))["failed"] == 0 and len(receiver.started) == 1
    [alert] = db.alerts("unit_b")
    assert alert.kind == "delivery_failed" and alert.resolved_at is None and row.msg_id in alert.message

    with hotline_db.session_scope() as session:
        with pytest.raises(LookupError):
            webhooks.resend(session, 999_999)
        webhooks.resend(session, d)
    with hotline_db.session_scope() as session, pytest.raises(webhooks.NotResendable) as refused:
        webhooks.resend(session, d)  # already pending again
    assert refused.value.current == "pending"
    assert (await deliver_due())["delivered"] == 1
    assert statuses(receiver, row.msg_id) == [400, 204] and len(receiver.of(unit="unit_b")) == 1


async def test_410_gone_disables_the_endpoint_until_it_is_given_again(db: Db):
    db.policy(per_unit={"max_concurrency": 1, "rate_per_second": 50})
    receiver = db.receiver()
    db.unit(receiver, "unit_g")
    db.unit(receiver, "unit_h")
    g1, g2, h1 = db.delivery("unit_g"), db.delivery("unit_g"), db.delivery("unit_h")
    receiver.fail_next["unit_g"] = [410]

    counts = await deliver_due()
    assert counts["gone"] == 1 and counts["delivered"] == 1  # unit_h is not affected
    assert [u for u, _w, _t in receiver.started].count("unit_g") == 1  # nothing more sent to unit_g
    assert db.unit_row("unit_g").webhook_disabled_at is not None
    [alert] = db.alerts("unit_g")
    assert alert.kind == "webhook_gone" and alert.resolved_at is None and "410" in alert.message
    assert db.get(g1).status == db.get(g2).status == "pending"  # they wait for the endpoint
    assert g1 not in webhooks.due_deliveries() and g2 not in webhooks.due_deliveries()
    await deliver_due(at=now() + timedelta(hours=2))
    assert [u for u, _w, _t in receiver.started].count("unit_g") == 1

    with hotline_db.session_scope() as session:  # PUT /api/units/unit_g with a webhook_url
        registry.upsert_unit(session=session, code="unit_g", unit_in=UnitBase(
            name="unit_g", level="department", webhook_url=receiver.hook_url("unit_g")))
    assert db.unit_row("unit_g").webhook_disabled_at is None
    assert (await deliver_due())["delivered"] == 2
    assert {r.webhook_id for r in receiver.of(unit="unit_g")} == {db.get(g1).msg_id, db.get(g2).msg_id}
    assert statuses(receiver, db.get(g1).msg_id) == [410, 204]  # the same webhook-id after re-enabling
    [alert] = db.alerts("unit_g")
    assert alert.resolved_at is not None  # resolved by the first delivery that got through again
    assert db.get(h1).status == "delivered"


async def test_dead_letter_after_the_window_then_resend_keeps_the_webhook_id(db: Db):
    db.policy(dead_letter_after="1m", backoff={"base": "2s", "max": "1h", "jitter": 0})
    receiver = db.receiver()
    db.unit(receiver, "unit_d")
    d = db.delivery("unit_d")
    created, msg_id = db.get(d).created_at, db.get(d).msg_id
    receiver.fail_next["unit_d"] = [503, 500, 502]

    assert (await deliver_due(at=created + 10 * S))["retry"] == 1  # inside the window: retried
    assert db.get(d).next_attempt_at == created + 12 * S
    assert (await deliver_due(at=created + 61 * S))["dead_letter"] == 1  # failing after the window
    row = db.get(d)
    assert row.status == "dead_letter" and row.attempts == 2
    assert (await deliver_due(at=created + timedelta(days=2)))["retry"] == 0 and len(receiver.started) == 2
    [alert] = db.alerts("unit_d")
    assert alert.kind == "delivery_dead_letter" and alert.resolved_at is None

    resent_at = created + 70 * S
    with hotline_db.session_scope() as session:
        webhooks.resend(session, d, at=resent_at)
    row = db.get(d)
    assert row.status == "pending" and row.next_attempt_at == resent_at and row.msg_id == msg_id
    # the window starts again at the resend: a failure now is retried, with the backoff starting over
    assert (await deliver_due(at=resent_at + 1 * S))["retry"] == 1
    assert db.get(d).next_attempt_at == resent_at + 3 * S
    assert (await deliver_due(at=resent_at + 3 * S))["delivered"] == 1
    [received] = receiver.of(unit="unit_d")
    assert received.webhook_id == msg_id
    assert statuses(receiver, msg_id) == [503, 500, 502, 204]
    assert [a.outcome for a in db.attempts(d)] == ["retry", "dead_letter", "retry", "delivered"]


async def test_after_a_rotation_the_old_secret_verifies_during_the_grace_window_only(db: Db):
    db.policy(backoff={"base": "2s", "max": "1h", "jitter": 0.2}, request_timeout="3s", secret_rotation_grace="1h")
    receiver = db.receiver()
    db.unit(receiver, "unit_r")
    old_secret = receiver.secrets["unit_r"]  # the receiver has not switched yet
    rotated_at = now()
    with hotline_db.session_scope() as session:
        creds = registry.rotate_unit(session=session, unit=session.get(Unit, "unit_r"), at=rotated_at)
    assert creds.previous_secret_until == rotated_at + timedelta(hours=1)  # the policy's grace window
    row = db.unit_row("unit_r")
    assert row.webhook_secret == creds.webhook_secret != old_secret and row.previous_webhook_secret == old_secret

    inside = db.delivery("unit_r")
    assert (await deliver_due(at=rotated_at + timedelta(minutes=59)))["delivered"] == 1
    [received] = receiver.of(unit="unit_r")
    assert received.webhook_id == db.get(inside).msg_id and receiver.rejected == []

    after = db.delivery("unit_r")
    assert (await deliver_due(at=rotated_at + timedelta(hours=1)))["failed"] == 1  # the window is over
    assert receiver.rejected == [db.get(after).msg_id]
    receiver.secrets["unit_r"] = creds.webhook_secret  # the unit updates its receiver; an operator re-sends
    with hotline_db.session_scope() as session:
        webhooks.resend(session, after)
    assert (await deliver_due(at=rotated_at + timedelta(hours=2)))["delivered"] == 1
    assert statuses(receiver, db.get(after).msg_id) == [400, 204]

    with hotline_db.session_scope() as session:  # no grace: the replaced secret stops at once
        registry.rotate_unit(session=session, unit=session.get(Unit, "unit_r"), grace=timedelta(0))
    row = db.unit_row("unit_r")
    assert row.previous_webhook_secret is None and webhooks.previous_secret(row, now()) is None


async def test_a_slow_unit_does_not_hold_up_another(db: Db):
    receiver = db.receiver()
    db.unit(receiver, "slow_dept")
    db.unit(receiver, "fast_dept")
    receiver.delay["slow_dept"] = 1.5
    slow = db.delivery("slow_dept")  # first in line
    fast = db.delivery("fast_dept")
    started = time.time()
    assert (await deliver_due())["delivered"] == 2
    [r_slow], [r_fast] = receiver.of(unit="slow_dept"), receiver.of(unit="fast_dept")
    assert r_fast.at - started < 1.0 <= 1.5 <= r_slow.at - started
    assert db.get(fast).delivered_at < db.get(slow).delivered_at
    assert time.time() - started < 2.9  # concurrently: not one after the other


async def test_per_unit_concurrency_and_rate(db: Db):
    receiver = db.receiver()
    db.unit(receiver, "unit_c")
    db.unit(receiver, "unit_r")
    receiver.delay["unit_c"] = 0.3
    db.policy(per_unit={"max_concurrency": 1, "rate_per_second": 100})
    for _ in range(3):
        db.delivery("unit_c")
    assert (await deliver_due())["delivered"] == 3
    assert receiver.max_in_flight["unit_c"] == 1

    db.policy(per_unit={"max_concurrency": 3, "rate_per_second": 100})
    for _ in range(3):
        db.delivery("unit_c")
    assert (await deliver_due())["delivered"] == 3
    assert receiver.max_in_flight["unit_c"] == 3

    db.policy(per_unit={"max_concurrency": 5, "rate_per_second": 5, "burst": 1})
    for _ in range(5):
        db.delivery("unit_r")
    assert (await deliver_due())["delivered"] == 5
    arrivals = sorted(t for u, _w, t in receiver.started if u == "unit_r")
    assert arrivals[-1] - arrivals[0] >= 0.7  # 5 requests at 5/s: 4 gaps of 0.2 s


async def test_two_senders_never_post_the_same_delivery(db: Db):
    receiver = db.receiver()
    db.unit(receiver, "unit_l")
    receiver.delay["unit_l"] = 0.3
    ids = [db.delivery("unit_l") for _ in range(4)]
    first, second = await asyncio.gather(deliver_due(), deliver_due())
    assert first["delivered"] + second["delivered"] == 4
    arrivals = [w for u, w, _t in receiver.started if u == "unit_l"]
    assert sorted(arrivals) == sorted(db.get(i).msg_id for i in ids)  # each posted once


async def test_a_broken_policy_file_keeps_the_last_good_one(db: Db):
    db.policy(dead_letter_after="2h")
    assert webhooks.current_policy().dead_letter_after == timedelta(hours=2)
    (db.policy_dir / "delivery.yaml").write_text("dead_letter_after: [\n")
    assert webhooks.current_policy().dead_letter_after == timedelta(hours=2)


# ================================================================ on the real stack

def _register_unit(env: Env, code: str) -> str:
    r = env.api.put(f"/api/units/{code}", headers=env.admin, json={
        "name": f"测试单位 {code}", "level": "department", "parent": "haidian",
        "webhook_url": env.receiver.hook_url(code)})
    assert r.status_code == 201, r.text
    env.receiver.secrets[code] = r.json()["webhook_secret"]
    return r.json()["token"]


@contextmanager
def _routed(env: Env, category: str, unit: str) -> Iterator[None]:
    """Route a category to a unit in the running stack's responsibility list, for the cases submitted inside."""
    path = env.policy_dir / "routing.yaml"
    original = path.read_text(encoding="utf-8")
    rule = f"rules:\n  - {{name: 测试 {category} → {unit}, categories: [{category}], unit: {unit}}}\n"
    path.write_text(re.sub(r"^rules:\n", lambda _m: rule, original, count=1, flags=re.M), encoding="utf-8")
    try:
        yield
    finally:
        path.write_text(original, encoding="utf-8")


@contextmanager
def _delivery_policy(env: Env, **values) -> Iterator[None]:
    path = env.policy_dir / "delivery.yaml"
    original = path.read_text(encoding="utf-8")
    path.write_text(yaml.safe_dump(yaml.safe_load(original) | values), encoding="utf-8")
    try:
        yield
    finally:
        path.write_text(original, encoding="utf-8")


def _unit_deliveries(env: Env, code: str, headers: dict | None = None) -> dict:
    r = env.api.get(f"/api/units/{code}/deliveries", headers=headers or env.admin)
    assert r.status_code == 200, r.text
    return r.json()


def test_refused_delivery_is_listed_resent_and_arrives_once(env: Env):
    code = f"dl_refuse_{uuid.uuid4().hex[:6]}"
    token = _register_unit(env, code)
    unit_auth = {"Authorization": f"Bearer {token}"}
    env.receiver.fail_next[code] = [400]
    with _routed(env, "courier_disturbance", code):
        created = env.submit(category="courier_disturbance")
        detail = env.wait_orders(created["case_id"], 1, timeout=240)
    assert detail["work_orders"][0]["unit"] == code

    def failed():
        r = env.api.get("/api/deliveries", params={"status": "failed", "unit": code}, headers=env.admin)
        assert r.status_code == 200, r.text
        return r.json()
    [delivery] = eventually(failed, "the refused delivery to be listed as failed", timeout=180)
    assert delivery["case_id"] == created["case_id"] and delivery["type"] == "work_order.assigned"
    assert delivery["attempts"] == 1 and delivery["last_status_code"] == 400
    assert env.api.get("/api/deliveries", headers=unit_auth).status_code == 403
    assert env.api.get("/api/deliveries").status_code == 401
    alerts = env.api.get("/api/alerts", params={"status": "open"}, headers=env.admin).json()
    assert any(a["kind"] == "delivery_failed" and a["unit"] == code for a in alerts)

    resend = f"/api/deliveries/{delivery['id']}/resend"
    assert env.api.post(resend, headers=unit_auth).status_code == 403
    r = env.api.post(resend, headers=env.admin)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending" and r.json()["webhook_id"] == delivery["webhook_id"]
    again = env.api.post(resend, headers=env.admin)
    assert again.status_code == 409 and again.json()["current"] in ("pending", "delivered")
    assert env.api.post("/api/deliveries/99999999/resend", headers=env.admin).status_code == 404

    # the unit sees its own deliveries with the attempt log; another unit does not
    mine = eventually(lambda: _unit_deliveries(env, code, unit_auth), "the re-sent delivery to arrive",
                      lambda d: d["deliveries"][0]["status"] == "delivered", timeout=180)
    [entry] = mine["deliveries"]
    assert entry["webhook_id"] == delivery["webhook_id"] and entry["resent_at"]
    assert [a["status_code"] for a in entry["attempt_log"]] == [400, 204]
    assert [a["outcome"] for a in entry["attempt_log"]] == ["failed", "delivered"]
    assert all(isinstance(a["latency_ms"], int) for a in entry["attempt_log"])
    assert entry["attempt_log"][0]["error"].startswith("HTTP 400")
    assert env.api.get(f"/api/units/{code}/deliveries", headers=env.unit("haidian_st")).status_code == 403
    assert env.api.get("/api/units/no_such_unit/deliveries", headers=env.admin).status_code == 404

    [received] = env.receiver.of(unit=code)
    assert received.webhook_id == delivery["webhook_id"]
    assert statuses(env.receiver, delivery["webhook_id"]) == [400, 204]
    assert env.case(created["case_id"])["deliveries"][0]["status"] == "delivered"


def test_a_crash_between_the_order_and_its_send_still_delivers_once(env: Env):
    """serve is killed while the work order's webhook is in flight (the unit's endpoint hangs): the order and its
    delivery were committed together, so after a restart the deadline watch sends it — exactly once. The restarted
    serve hands back the case's run that the killed one left Running: it replays and waits for the unit again."""
    code = f"dl_crash_{uuid.uuid4().hex[:6]}"
    _register_unit(env, code)
    env.receiver.fail_next[code] = [{"status": 503, "delay": 90}]  # the first request hangs
    killed_at = None
    try:
        # a request timeout long enough that the kill surely comes first, even on a busy machine
        with _routed(env, "courier_disturbance", code), _delivery_policy(env, request_timeout="20s"):
            created = env.submit(category="courier_disturbance")
            eventually(lambda: any(u == code for u, _w, _t in env.receiver.started),
                       "the work order's webhook to be in flight", interval=0.02)
            env.kill_serve()
        killed_at = datetime.now(timezone.utc)
        [(_u, webhook_id, _t)] = [s for s in env.receiver.started if s[0] == code]

        detail = env.case(created["case_id"])
        assert [o["unit"] for o in detail["work_orders"]] == [code]
        assert env.flow_run(created["flow_run_id"])["state_type"] == "RUNNING"  # killed with serve: nothing ended it
        [pending] = _unit_deliveries(env, code)["deliveries"]
        assert pending["webhook_id"] == webhook_id and pending["status"] == "pending"
        assert pending["attempts"] == 0  # the attempt in flight died with the process: nothing recorded
        listed = env.api.get("/api/deliveries", params={"status": "pending", "unit": code}, headers=env.admin)
        assert [d["webhook_id"] for d in listed.json()] == [webhook_id]
    finally:
        env.restart_serve()  # keep the stack healthy for the tests after this one
    assert killed_at is not None

    delivered = eventually(lambda: _unit_deliveries(env, code)["deliveries"][0], "the delivery after the restart",
                           lambda d: d["status"] == "delivered")  # once the lease (timeout + 15 s) has lapsed
    [received] = env.receiver.of(unit=code)
    assert received.webhook_id == webhook_id == delivered["webhook_id"]
    assert received.data["case_number"] == created["number"]
    assert delivered["attempts"] == 1 and [a["status_code"] for a in delivered["attempt_log"]] == [204]
    # the run replayed from the top (its order and delivery were there already) and waits for the unit again,
    # instead of showing Running forever
    env.wait_paused(created["flow_run_id"])
    r = env.prefect.get("/api/flow_run_states/", params={"flow_run_id": created["flow_run_id"]})
    assert r.status_code == 200, r.text
    assert any(st["name"] == "Rescheduled" and "its serve process stopped" in st["message"] for st in r.json())
    assert [o["unit"] for o in env.case(created["case_id"])["work_orders"]] == [code]  # still one order

"""Pure pieces: the state tables, webhook signing (verified by the standardwebhooks library), payload masking."""
from __future__ import annotations

import json
from types import SimpleNamespace

from standardwebhooks.webhooks import Webhook

from models.states import CASE_TRANSITIONS, IDEMPOTENT_EVENTS, UNIT_EVENTS, CaseStatus, WorkOrderStatus
from notifications.payloads import citizen_view, mask_name, mask_phone
from notifications.webhooks import backoff, signed_request
from services.tokens import hash_token, new_token, new_webhook_secret


def test_every_case_status_has_a_transition_row_and_closed_is_final():
    assert set(CASE_TRANSITIONS) == set(CaseStatus)
    assert CASE_TRANSITIONS[CaseStatus.closed] == set()
    assert CaseStatus.closed in CASE_TRANSITIONS[CaseStatus.evaluating]


def test_unit_events_lead_only_from_open_states():
    open_states = {WorkOrderStatus.assigned, WorkOrderStatus.accepted, WorkOrderStatus.in_progress}
    for event, (sources, _target) in UNIT_EVENTS.items():
        assert set(sources) <= open_states, event
    for event, target in IDEMPOTENT_EVENTS.items():
        assert UNIT_EVENTS[event][1] == target


def test_signed_request_verifies_with_standardwebhooks():
    secret = new_webhook_secret()
    payload = {"type": "work_order.assigned", "timestamp": "2026-11-23T10:00:00+08:00", "data": {"title": "路灯"}}
    body, headers = signed_request(secret, "msg_wo1-assigned", payload)
    assert Webhook(secret).verify(body, headers) == payload
    assert "路灯".encode() in body  # Chinese as text, not \\u escapes
    assert headers["webhook-id"] == "msg_wo1-assigned"


def test_during_a_rotation_either_secret_verifies_and_no_other():
    new, old, other = new_webhook_secret(), new_webhook_secret(), new_webhook_secret()
    payload = {"type": "work_order.assigned", "data": {"n": 1}}
    body, headers = signed_request(new, "msg_rot", payload, previous_secret=old)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(body, headers) == Webhook(old).verify(body, headers) == payload
    try:
        Webhook(other).verify(body, headers)
    except Exception as exc:
        assert "signature" in str(exc).lower()
    else:
        raise AssertionError("a third secret verified")
    _body, alone = signed_request(new, "msg_rot", payload)
    assert len(alone["webhook-signature"].split(" ")) == 1


def test_a_tampered_body_fails_verification():
    secret = new_webhook_secret()
    body, headers = signed_request(secret, "msg_x", {"type": "t", "data": {"n": 1}})
    tampered = json.dumps({"type": "t", "data": {"n": 2}}).encode()
    try:
        Webhook(secret).verify(tampered, headers)
    except Exception as exc:
        assert "signature" in str(exc).lower()
    else:
        raise AssertionError("a tampered body verified")


def test_backoff_grows_and_is_capped():
    assert [backoff(n).total_seconds() for n in (1, 2, 3)] == [2, 4, 8]
    assert backoff(40).total_seconds() == 3600


def test_tokens_are_random_and_hashed():
    a, b = new_token("unit"), new_token("unit")
    assert a != b and a.startswith("unit_")
    assert hash_token(a) != a and len(hash_token(a)) == 64


def test_masking():
    assert mask_phone("13912345678") == "139****5678"
    assert mask_name("陈阿姨") == "陈**"
    case = SimpleNamespace(anonymous=False, citizen_name="陈阿姨", citizen_phone="13912345678")
    assert citizen_view(case, full=False) == {"name": "陈**", "phone": "139****5678", "anonymous": False}
    assert citizen_view(SimpleNamespace(anonymous=True), full=True) == {"anonymous": True}

"""Signed webhook delivery (Standard Webhooks) with a recorded attempt log, backoff retries and a dead letter.

A delivery row is written by `services.cases` in the same transaction as the change that causes it (an outbox).
Anyone may call `deliver_due`: the case flow right after a change, the deadline watch for everything still
pending. A delivery is leased before it is sent, so two senders never post it at once; a redelivery keeps its
`webhook-id`.

What an answer means (policy: `policies/delivery.yaml`, `services.delivery_policy`):
- 2xx: delivered.
- timeout, connection error, 408, 429, 5xx (and the 4xx codes the policy lists): retried with exponential
  backoff and jitter; a `Retry-After` (seconds or HTTP-date) is honoured. Still failing once the dead-letter
  window has passed since the delivery was created (or re-sent): `dead_letter`, and an ops alert.
- 410 Gone: the unit's endpoint is disabled (`Unit.webhook_disabled_at`), an ops alert opens, and the unit's
  deliveries stay pending until `PUT /api/units/{code}` gives a webhook_url again.
- any other answer (other 4xx, 3xx): `failed` at once, no retry, an ops alert; an operator can re-send it.

Units are served concurrently: one slow or unreachable unit does not hold up the others. Per unit, a semaphore
bounds the requests in flight and a token bucket the request rate (both within one sending process).
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache

import httpx
from sqlalchemy import func, update
from sqlmodel import Session, col, select
from standardwebhooks.webhooks import Webhook

from hotline.clock import now
from hotline.db import session_scope
from models import Delivery, DeliveryAttempt, OpsAlert, Unit
from services.delivery_policy import DeliveryPolicy, PolicyError, delivery_policy

log = logging.getLogger(__name__)

LEASE_MARGIN = timedelta(seconds=15)   # beyond the request timeout: time to record the outcome
LEASE = timedelta(seconds=5) + LEASE_MARGIN  # how long a claim holds a delivery (request timeout + margin)
MAX_BACKOFF = timedelta(hours=1)
PER_UNIT_BATCH = 50                    # at most this many deliveries per unit in one round (fairness)
RESENDABLE = ("failed", "dead_letter")

DELIVERED, RETRY, FAILED, GONE, DEAD_LETTER = "delivered", "retry", "failed", "gone", "dead_letter"


# ---------------------------------------------------------------- policy, backoff, classification

def current_policy() -> DeliveryPolicy:
    """The delivery policy in force (a broken file leaves its last good version in force, `services.policies`);
    with no good version yet, the error is logged and the defaults apply — deliveries never stop for a typo."""
    try:
        return delivery_policy()
    except PolicyError as exc:
        log.error("delivery policy not applied, using the defaults: %s", exc)
        return DeliveryPolicy()


def backoff(attempts: int, policy: DeliveryPolicy | None = None, *, jitter: bool = False) -> timedelta:
    """base, 2·base, 4·base … capped (2 s, 4 s, 8 s … 1 h by default); with `jitter`, varied by ±policy.jitter."""
    base, cap = (policy.backoff.base, policy.backoff.max) if policy else (timedelta(seconds=2), MAX_BACKOFF)
    exponent = min(max(attempts, 1) - 1, 40)
    delay = min(base * (2 ** exponent), cap)
    if jitter and policy and policy.backoff.jitter:
        delay = min(delay * (1 + random.uniform(-policy.backoff.jitter, policy.backoff.jitter)), cap)
    return delay


def parse_retry_after(value: str | None, at: datetime) -> timedelta | None:
    """`Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT` → the wait from `at`; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(when - at, timedelta(0))


@dataclass(frozen=True)
class Outcome:
    kind: str                              # delivered | retry | failed | gone
    retry_after: timedelta | None = None   # from the receiver's Retry-After


def classify(status_code: int | None, policy: DeliveryPolicy, *, retry_after: str | None = None,
             at: datetime | None = None, permanent: bool = False) -> Outcome:
    """What an attempt's result means. `status_code` None: no HTTP answer (timeout, connection error);
    `permanent`: an error no retry can fix (an invalid URL)."""
    if status_code is None:
        return Outcome(FAILED if permanent else RETRY)
    if 200 <= status_code < 300:
        return Outcome(DELIVERED)
    if status_code == 410:
        return Outcome(GONE)
    if status_code < 600 and policy.retries(status_code):
        return Outcome(RETRY, parse_retry_after(retry_after, at or now()))
    return Outcome(FAILED)


def signed_request(secret: str, msg_id: str, payload: dict, *,
                   previous_secret: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and Standard Webhooks headers; with `previous_secret` (a rotation's grace window) the
    `webhook-signature` header carries both signatures, space-separated, and either secret verifies."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    ts = datetime.now(timezone.utc)
    signatures = [Webhook(s).sign(msg_id, ts, body) for s in (secret, previous_secret) if s]
    headers = {
        "content-type": "application/json; charset=utf-8",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(ts.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
    return body.encode(), headers


def previous_secret(unit: Unit, at: datetime) -> str | None:
    """The secret a rotation replaced, while its grace window lasts (`Unit.previous_secret_until`)."""
    until = unit.previous_secret_until
    if unit.previous_webhook_secret and until is not None and at < _aware(until):
        return unit.previous_webhook_secret
    return None


# ---------------------------------------------------------------- per-unit limits (within this process)

class TokenBucket:
    """`rate` requests per second with bursts of up to `size`. `reserve` takes a token now and says how long to
    wait before using it, so waiters are served in order. Thread-safe; the clock can be injected for tests."""

    def __init__(self, rate: float, size: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.size, self.clock = rate, size, clock
        self.tokens, self.updated = float(size), clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        with self._lock:
            t = self.clock()
            self.tokens = min(self.size, self.tokens + (t - self.updated) * self.rate)
            self.updated = t
            self.tokens -= 1
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)


_buckets: dict[str, TokenBucket] = {}
_buckets_lock = threading.Lock()
# asyncio semaphores belong to one event loop: one set per loop
_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = \
    weakref.WeakKeyDictionary()


def _bucket(unit: str, policy: DeliveryPolicy) -> TokenBucket:
    rate, size = policy.per_unit.rate_per_second, policy.per_unit.bucket_size
    with _buckets_lock:
        bucket = _buckets.get(unit)
        if bucket is None or (bucket.rate, bucket.size) != (rate, size):  # new unit, or the policy changed
            bucket = _buckets[unit] = TokenBucket(rate, size)
        return bucket


def _semaphore(unit: str, policy: DeliveryPolicy) -> asyncio.Semaphore:
    per_loop = _semaphores.setdefault(asyncio.get_running_loop(), {})
    key = (unit, policy.per_unit.max_concurrency)
    if key not in per_loop:
        per_loop[key] = asyncio.Semaphore(policy.per_unit.max_concurrency)
    return per_loop[key]


def reset_limits() -> None:
    """Forget the per-unit rate state (tests)."""
    with _buckets_lock:
        _buckets.clear()


# ---------------------------------------------------------------- database steps (run in a thread)

def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _sendable_units():
    """Units that can take a delivery now: with a webhook URL and not disabled by a 410."""
    return select(Unit.code).where(col(Unit.webhook_url).is_not(None), col(Unit.webhook_disabled_at).is_(None))


def lease_for(policy: DeliveryPolicy) -> timedelta:
    """Longer than any attempt can take (the timeout bounds the whole attempt), so no two posts overlap."""
    return policy.timeout + LEASE_MARGIN


def _claim(delivery_id: int, at: datetime | None = None, lease: timedelta = LEASE) -> tuple[Delivery, Unit] | None:
    """Lease a due delivery for this sender; None if someone else has it, it is done, or its unit cannot take
    deliveries now (endpoint disabled or missing)."""
    with session_scope() as session:
        at = at or now()
        claimed = session.exec(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.status == "pending", Delivery.next_attempt_at <= at,
                   col(Delivery.unit).in_(_sendable_units()))
            .values(next_attempt_at=at + lease)
        )
        if claimed.rowcount != 1:
            return None
        delivery = session.get(Delivery, delivery_id)
        return delivery, session.get(Unit, delivery.unit)


def _open_alert(session: Session, kind: str, unit: str, message: str, delivery_id: int | None = None,
                at: datetime | None = None) -> None:
    """Open an ops alert, unless one of the same kind is already open for the unit."""
    exists = session.exec(select(OpsAlert.id).where(OpsAlert.kind == kind, OpsAlert.unit == unit,
                                                    col(OpsAlert.resolved_at).is_(None))).first()
    if exists is None:
        session.add(OpsAlert(kind=kind, unit=unit, message=message, delivery_id=delivery_id,
                             created_at=at or now()))
        log.error("ops alert %s for %s: %s", kind, unit, message)


def _resolve_alerts(session: Session, kind: str, unit: str, by: str, at: datetime) -> None:
    for alert in session.exec(select(OpsAlert).where(OpsAlert.kind == kind, OpsAlert.unit == unit,
                                                     col(OpsAlert.resolved_at).is_(None))).all():
        alert.resolved_at, alert.resolved_by = at, by
        session.add(alert)


def _attempts_in_window(session: Session, delivery: Delivery) -> int:
    """Attempts since the window began (creation, or the last resend), this one included: the backoff exponent."""
    if delivery.resent_at is None:
        return delivery.attempts
    return session.exec(select(func.count()).select_from(DeliveryAttempt).where(
        DeliveryAttempt.delivery_id == delivery.id, DeliveryAttempt.at >= delivery.resent_at)).one() + 1


def _record(delivery_id: int, outcome: Outcome, code: int | None, error: str | None, latency_ms: int,
            policy: DeliveryPolicy, at: datetime) -> str:
    """Write the attempt and what follows from it; returns the resulting outcome (retry may become dead_letter)."""
    with session_scope() as session:
        delivery = session.get(Delivery, delivery_id)
        unit = session.get(Unit, delivery.unit)
        delivery.attempts += 1
        delivery.last_status_code, delivery.last_error = code, error
        kind = outcome.kind
        if kind == DELIVERED:
            delivery.status, delivery.delivered_at = "delivered", at
            _resolve_alerts(session, "webhook_gone", unit.code, "delivered again", at)
        elif kind == FAILED:
            delivery.status = "failed"
            _open_alert(session, "delivery_failed", unit.code,
                        f"{delivery.event_type} {delivery.msg_id} to {unit.code} refused, not retried: {error}",
                        delivery.id, at)
        elif kind == GONE:  # the delivery waits, due at once, for the endpoint to be given again
            delivery.next_attempt_at = at
            unit.webhook_disabled_at = at
            session.add(unit)
            _open_alert(session, "webhook_gone", unit.code,
                        f"{unit.webhook_url} answered 410 Gone: endpoint disabled, deliveries to {unit.code} wait "
                        f"until PUT /api/units/{unit.code} gives a webhook_url", delivery.id, at)
        else:
            started = _aware(delivery.resent_at or delivery.created_at)
            if at - started >= policy.dead_letter_after:
                kind = DEAD_LETTER
                delivery.status = "dead_letter"
                _open_alert(session, "delivery_dead_letter", unit.code,
                            f"{delivery.event_type} {delivery.msg_id} to {unit.code} still failing after "
                            f"{policy.dead_letter_after} ({delivery.attempts} attempts): {error}", delivery.id, at)
            else:
                wait = outcome.retry_after
                if wait is not None:
                    wait = min(wait, policy.dead_letter_after)  # honoured, but never a wait beyond the window
                else:
                    wait = backoff(_attempts_in_window(session, delivery), policy, jitter=True)
                delivery.next_attempt_at = at + wait
        session.add(delivery)
        session.add(DeliveryAttempt(delivery_id=delivery_id, at=at, status_code=code, latency_ms=latency_ms,
                                    error=error, outcome=kind))
    if kind != DELIVERED:
        log.warning("delivery %s to %s: %s (attempt %s): %s", delivery.msg_id, unit.code, kind,
                    delivery.attempts, error)
    return kind


# ---------------------------------------------------------------- sending

@dataclass(frozen=True)
class Sent:
    outcome: str                # delivered | retry | failed | gone | dead_letter
    status_code: int | None     # None: no HTTP answer (timeout, connection error)


async def send(client: httpx.AsyncClient, delivery_id: int, *, policy: DeliveryPolicy | None = None,
               at: datetime | None = None) -> Sent | None:
    """Send one delivery if it is due and record the attempt. None: not ours to send now (not due, leased by
    another sender, done, or its unit's endpoint is disabled). `at` fixes "now" (tests)."""
    policy = policy or current_policy()
    claimed = await asyncio.to_thread(_claim, delivery_id, at or now(), lease_for(policy))
    if claimed is None:
        return None
    delivery, unit = claimed
    timeout = policy.timeout.total_seconds()
    started = time.perf_counter()
    code = error = retry_after = None
    permanent = False
    try:
        body, headers = signed_request(unit.webhook_secret, delivery.msg_id, delivery.payload,
                                       previous_secret=previous_secret(unit, at or now()))
        async with asyncio.timeout(timeout):  # the whole attempt, not each read
            response = await client.post(unit.webhook_url, content=body, headers=headers)
        code = response.status_code
        retry_after = response.headers.get("retry-after")
        if not 200 <= code < 300:
            error = f"HTTP {code}" + (f" (Retry-After: {retry_after})" if retry_after else "") + \
                    (f": {response.text[:200]}" if response.text else "")
    except (TimeoutError, httpx.TimeoutException):
        error = f"timeout after {timeout:g} s"
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        error, permanent = f"{type(exc).__name__}: {exc}"[:300], True
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
    except Exception as exc:  # a bad signing secret, …: a configuration error no retry fixes
        error, permanent = f"{type(exc).__name__}: {exc}"[:300], True
    latency = int((time.perf_counter() - started) * 1000)
    record_at = at or now()
    outcome = classify(code, policy, retry_after=retry_after, at=record_at, permanent=permanent)
    kind = await asyncio.to_thread(_record, delivery_id, outcome, code, error, latency, policy, record_at)
    return Sent(kind, code)


def _due_by_unit(case_id: int | None, at: datetime, limit: int, per_unit: int,
                 deliberation_id: int | None = None) -> dict[str, list[int]]:
    with session_scope() as session:
        rank = func.row_number().over(partition_by=Delivery.unit, order_by=Delivery.id).label("rn")
        query = select(Delivery.id, Delivery.unit, rank).where(
            Delivery.status == "pending", Delivery.next_attempt_at <= at,
            col(Delivery.unit).in_(_sendable_units()))
        if case_id is not None:
            query = query.where(Delivery.case_id == case_id)
        if deliberation_id is not None:
            query = query.where(Delivery.deliberation_id == deliberation_id)
        ranked = query.subquery()
        rows = session.exec(select(ranked.c.id, ranked.c.unit).where(ranked.c.rn <= per_unit)
                            .order_by(ranked.c.id).limit(limit)).all()
    by_unit: dict[str, list[int]] = defaultdict(list)
    for delivery_id, unit in rows:
        by_unit[unit].append(delivery_id)
    return dict(by_unit)


def due_deliveries(case_id: int | None = None, limit: int = 500, *, at: datetime | None = None) -> list[int]:
    """Ids of the deliveries due now (units whose endpoint is disabled or missing are left out)."""
    return sorted(i for ids in _due_by_unit(case_id, at or now(), limit, PER_UNIT_BATCH).values() for i in ids)


async def _unit_round(client: httpx.AsyncClient, unit: str, ids: list[int], policy: DeliveryPolicy,
                      at: datetime | None) -> list[str | None]:
    """One unit's share of a round: at most max_concurrency in flight, at most rate_per_second. If the unit
    cannot be reached (timeout, connection error) or is gone, the rest of its share waits for the next round."""
    semaphore, bucket = _semaphore(unit, policy), _bucket(unit, policy)
    stop = False

    async def one(delivery_id: int) -> str | None:
        nonlocal stop
        async with semaphore:
            if stop:
                return "skipped"
            await bucket.acquire()
            if stop:
                return "skipped"
            sent = await send(client, delivery_id, policy=policy, at=at)
            if sent is not None and (sent.outcome == GONE or (sent.outcome in (RETRY, DEAD_LETTER)
                                                               and sent.status_code is None)):
                stop = True
            return sent.outcome if sent else None

    results = await asyncio.gather(*(one(i) for i in ids), return_exceptions=True)
    for delivery_id, result in zip(ids, results):
        if isinstance(result, BaseException):  # e.g. the DB was briefly unavailable: the lease expires, retried
            log.error("delivery %s to %s not recorded: %r", delivery_id, unit, result)
    return [r if isinstance(r, str) or r is None else "error" for r in results]


@lru_cache(maxsize=1)
def _tls_context():
    """One TLS context per process for sending webhooks, as httpx would build it: building one loads the whole CA
    bundle, which was a tenth of an executor's CPU when every send round made its own (docs/performance.md)."""
    return httpx.create_ssl_context()


async def deliver_due(case_id: int | None = None, *, at: datetime | None = None,
                      policy: DeliveryPolicy | None = None, deliberation_id: int | None = None) -> dict[str, int]:
    """Send what is due (for one case, one deliberation, or all), units concurrently. Returns counts per outcome:
    delivered, retry, failed, gone, dead_letter, skipped (left for the next round)."""
    policy = policy or current_policy()
    by_unit = await asyncio.to_thread(_due_by_unit, case_id, at or now(), 500, PER_UNIT_BATCH, deliberation_id)
    counts: Counter[str] = Counter({DELIVERED: 0, RETRY: 0, FAILED: 0})
    if not by_unit:
        return dict(counts)
    timeout = policy.timeout.total_seconds()
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), verify=_tls_context()) as client:
        rounds = await asyncio.gather(*(_unit_round(client, unit, ids, policy, at) for unit, ids in by_unit.items()))
    for outcomes in rounds:
        counts.update(o for o in outcomes if o is not None)
    return dict(counts)


# ---------------------------------------------------------------- operators

class NotResendable(ValueError):
    def __init__(self, current: str):
        super().__init__(f"only a failed or dead-letter delivery can be re-sent; this one is {current}")
        self.current = current


def resend(session: Session, delivery_id: int, at: datetime | None = None) -> Delivery:
    """Put a failed or dead-letter delivery back to pending, due now, with the same webhook-id; its dead-letter
    window starts again. LookupError if there is no such delivery."""
    at = at or now()
    delivery = session.exec(select(Delivery).where(Delivery.id == delivery_id).with_for_update()).first()
    if delivery is None:
        raise LookupError(f"delivery {delivery_id} not found")
    if delivery.status not in RESENDABLE:
        raise NotResendable(delivery.status)
    delivery.status, delivery.next_attempt_at, delivery.resent_at = "pending", at, at
    session.add(delivery)
    return delivery

"""The webhook delivery policy (policies/delivery.yaml): backoff, dead letter, timeout, per-unit limits, and how long
a rotated-out signing secret still signs.

Loaded like the other policy files (`services.policies`): a mistake is reported with the file and the field, and
after a good load the last good version stays in force. A missing file means the defaults below.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hotline.settings import get_settings
from services.policies import PolicyError, _load, parse_duration

__all__ = ["Backoff", "DeliveryPolicy", "PolicyError", "UnitLimits", "delivery_policy"]

ALWAYS_RETRIED_4XX = frozenset({408, 429})


def _duration(v):
    return parse_duration(v)


class Backoff(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: timedelta = timedelta(seconds=2)
    max: timedelta = timedelta(hours=1)
    jitter: float = Field(default=0.2, ge=0, le=1)  # fraction: each wait is varied by up to ±jitter

    _durations = field_validator("base", "max", mode="before")(lambda cls, v: _duration(v))

    @model_validator(mode="after")
    def _ordered(self):
        if self.base <= timedelta(0):
            raise ValueError("base must be positive")
        if self.max < self.base:
            raise ValueError("max must not be shorter than base")
        return self


class UnitLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrency: int = Field(default=2, ge=1, le=100)
    rate_per_second: float = Field(default=5.0, gt=0)
    burst: int | None = Field(default=None, ge=1)  # default: one second's worth (at least 1)

    @property
    def bucket_size(self) -> int:
        return self.burst or max(1, int(self.rate_per_second))


class DeliveryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backoff: Backoff = Backoff()
    dead_letter_after: timedelta = timedelta(hours=24)
    request_timeout: timedelta | None = None  # default: HOTLINE_WEBHOOK_TIMEOUT_SECONDS
    per_unit: UnitLimits = UnitLimits()
    retry_4xx: list[int] = Field(default_factory=list)
    secret_rotation_grace: timedelta = timedelta(hours=24)  # the replaced secret still signs this long; 0: not at all

    _durations = field_validator("dead_letter_after", "request_timeout", "secret_rotation_grace", mode="before")(
        lambda cls, v: None if v is None else _duration(v))

    @field_validator("dead_letter_after", "request_timeout")
    @classmethod
    def _positive(cls, v):
        if v is not None and v <= timedelta(0):
            raise ValueError("must be positive")
        return v

    @field_validator("secret_rotation_grace")
    @classmethod
    def _not_negative(cls, v):
        if v < timedelta(0):
            raise ValueError("must not be negative")
        return v

    @field_validator("retry_4xx")
    @classmethod
    def _client_errors(cls, v):
        bad = [c for c in v if not 400 <= c <= 499]
        if bad:
            raise ValueError(f"only 4xx codes can be listed, not {bad}")
        if 410 in v:
            raise ValueError("410 Gone disables the endpoint; it cannot be retried")
        return v

    @property
    def timeout(self) -> timedelta:
        return self.request_timeout or timedelta(seconds=get_settings().webhook_timeout_seconds)

    def retries(self, status_code: int) -> bool:
        """Whether an HTTP answer with this code is worth another attempt."""
        return status_code >= 500 or status_code in ALWAYS_RETRIED_4XX or status_code in self.retry_4xx


def delivery_policy(policy_dir: Path | None = None) -> DeliveryPolicy:
    path = (policy_dir or get_settings().policy_dir) / "delivery.yaml"
    if not path.exists():
        return DeliveryPolicy()
    return _load("delivery.yaml", DeliveryPolicy, policy_dir, last_good=True)

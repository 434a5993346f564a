"""Policy files (YAML in HOTLINE_POLICY_DIR) loaded into typed, validated models.

A district edits the files; a mistake is reported with the file and the field, never half-applied. Files are read
when used, so an edit applies to the next case without a restart. A broken edit after a good version was loaded
is logged and the last good version stays in force (`GET /api/policies/check` reports the broken file); with no
good version yet, PolicyError.

  categories.yaml  诉求分类                 routing.yaml     权责清单 (who handles what, where, when)
  sla.yaml         限时办结 by urgency × category, reminders, SLA-pause reasons, follow-up window
  calendar.yaml    office hours, holiday / make-up workday overrides
  escalation.yaml  the ladder: allowed time per level, triggers, bounce limit, who is notified
  whistle.yaml     吹哨报到: report deadline per whistle kind
  deliberation.yaml 大家商量着办: topic types, participant types, who must take part, how items are carried out
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from hotline.settings import get_settings
from services.calendar import Calendar

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|wd|wh)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class PolicyError(ValueError):
    """A policy file is missing or invalid."""


@dataclass(frozen=True)
class Span:
    """An allowed time: calendar (s, m, h, d), working days (wd) or working hours (wh)."""

    amount: float
    unit: str

    def after(self, start: datetime, calendar: Calendar) -> datetime:
        if self.unit == "wd":
            return calendar.add_workdays(start, self.amount)
        if self.unit == "wh":
            return calendar.add_working_hours(start, self.amount)
        return start + timedelta(**{_UNITS[self.unit]: self.amount})

    def __str__(self) -> str:
        return f"{self.amount:g}{self.unit}"


def parse_span(text: str | int | float) -> Span:
    if isinstance(text, (int, float)):
        return Span(float(text), "s")
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 24h, 7d, 3wd working days, 8wh working hours)")
    return Span(float(m.group(1)), m.group(2))


def parse_duration(text: str | int | float) -> timedelta:
    """A plain calendar duration: '30m' -> 30 minutes; a bare number means seconds."""
    span = parse_span(text)
    if span.unit in ("wd", "wh"):
        raise ValueError(f"not a duration: {text!r} (calendar time only here: s, m, h or d)")
    return timedelta(**{_UNITS[span.unit]: span.amount})


def _require(value: dict, keys: tuple[str, ...], what: str) -> dict:
    missing = set(keys) - set(value)
    if missing:
        raise ValueError(f"missing {what}: {sorted(missing)}")
    return value


def _span(v):
    return v if isinstance(v, Span) else parse_span(v)


class Sla(BaseModel):
    respond_within: Span
    due_within: Span

    _respond = field_validator("respond_within", "due_within", mode="before")(lambda cls, v: _span(v))


class FollowUpPolicy(BaseModel):
    window: timedelta = timedelta(hours=48)
    max_attempts: int = Field(3, ge=1, le=20)  # call attempts before the citizen counts as not reached
    # the first unsatisfied / unresolved answer: 重办 with the same lead unit (reopen), or an escalation to the
    # supervisors at once (escalate; the case closes with the answer). The second failure always escalates.
    first_failure: Literal["reopen", "escalate"] = "reopen"

    _window = field_validator("window", mode="before")(lambda cls, v: parse_duration(v))


URGENCIES = ("normal", "urgent", "emergency")


class SlaPolicy(BaseModel):
    urgency: dict[str, Sla]
    categories: dict[str, dict[str, Sla]] = Field(default_factory=dict)
    reminders: list[float] = Field(default_factory=lambda: [0.5, 0.8])
    pause_reasons: list[str] = Field(default_factory=list)
    follow_up: FollowUpPolicy = FollowUpPolicy()

    _all_urgencies = field_validator("urgency")(lambda cls, v: _require(v, URGENCIES, "urgency levels"))

    @field_validator("reminders")
    @classmethod
    def _fractions(cls, v):
        if any(not 0 < f < 1 for f in v):
            raise ValueError("reminders are fractions of the allowed time, between 0 and 1 (e.g. 0.5, 0.8)")
        return sorted(v)

    def for_case(self, urgency: str, category: str) -> Sla:
        return self.categories.get(category, {}).get(urgency) or self.urgency[urgency]


class RoutingRule(BaseModel):
    name: str
    unit: str
    co_units: list[str] = Field(default_factory=list)
    categories: list[str] | None = None
    districts: list[str] | None = None
    streets: list[str] | None = None
    communities: list[str] | None = None
    urgencies: list[Literal["normal", "urgent", "emergency"]] | None = None
    hours: str | None = Field(default=None, description="local time window, e.g. 07:00-22:00 (may wrap midnight)")

    @field_validator("hours")
    @classmethod
    def _hours(cls, v):
        if v is not None:
            parse_hours(v)
        return v

    def hour_window(self) -> tuple[time, time] | None:
        return parse_hours(self.hours) if self.hours else None


def parse_hours(text: str) -> tuple[time, time]:
    m = re.match(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$", text)
    if not m:
        raise ValueError(f"hours must look like 07:00-22:00, not {text!r}")
    a, b = time(int(m.group(1)), int(m.group(2))), time(int(m.group(3)) % 24, int(m.group(4)))
    return a, b


class RoutingPolicy(BaseModel):
    on_reject: Literal["street", "next_rule", "dispatcher"] = "street"
    rules: list[RoutingRule] = Field(default_factory=list)


class CategoryPolicy(BaseModel):
    categories: dict[str, str]


class CalendarPolicy(BaseModel):
    office_hours: dict[str, str] = Field(default_factory=lambda: {"start": "09:00", "end": "17:00"})
    holidays: list[date] = Field(default_factory=list)
    workdays: list[date] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self):
        both = set(self.holidays) & set(self.workdays)
        if both:
            raise ValueError(f"dates listed as both holiday and workday: {sorted(map(str, both))}")
        parse_hours(f"{self.office_hours.get('start', '')}-{self.office_hours.get('end', '')}")
        return self

    def calendar(self, tz: str) -> Calendar:
        start, end = parse_hours(f"{self.office_hours['start']}-{self.office_hours['end']}")
        return Calendar(holidays=frozenset(self.holidays), workdays=frozenset(self.workdays),
                        office_start=start, office_end=end, tz=tz)


class LadderLevel(BaseModel):
    respond_within: Span
    due_within: Span

    _spans = field_validator("respond_within", "due_within", mode="before")(lambda cls, v: _span(v))


class TakeOverRung(LadderLevel):
    """包案, the rung above the district: when the district's own order runs out of time, `leader` takes the case
    over and the open order gets this rung's allowed time (a supervisor's take-over gets the same time)."""

    leader: str = Field(min_length=1, max_length=100)


class Trigger(BaseModel):
    escalate_up: bool = False  # also send a new order one level up (lapses); otherwise a record for supervisors
    notify: list[Literal["district", "street", "lead_unit"]] = Field(default_factory=list)


TRIGGERS = ("overdue_response", "overdue_completion", "bounced", "whistle_not_reported", "unsatisfied",
            "unsatisfied_twice", "extension_request", "unroutable")


class EscalationPolicy(BaseModel):
    levels: dict[Literal["community", "street", "department", "utility", "district"], LadderLevel] = Field(
        default_factory=dict)
    take_over: TakeOverRung | None = None  # 包案; none: above the district, supervisors alone decide
    max_bounces: int = Field(default=2, ge=0)
    triggers: dict[str, Trigger] = Field(default_factory=dict)

    @field_validator("triggers")
    @classmethod
    def _known(cls, v):
        unknown = set(v) - set(TRIGGERS)
        if unknown:
            raise ValueError(f"unknown triggers {sorted(unknown)}; known: {list(TRIGGERS)}")
        return v

    def trigger(self, name: str) -> Trigger:
        return self.triggers.get(name) or Trigger(escalate_up=name in ("overdue_response", "overdue_completion"))


class WhistlePolicy(BaseModel):
    report_within: dict[Literal["daily", "tough", "emergency"], Span]

    _spans = field_validator("report_within", mode="before")(
        lambda cls, v: {k: _span(x) for k, x in v.items()} if isinstance(v, dict) else v)

    _all = field_validator("report_within")(lambda cls, v: _require(v, ("daily", "tough", "emergency"), "whistle kinds"))


class ParticipantType(BaseModel):
    name: str = Field(min_length=1, max_length=50)
    unit: bool = False  # a registered unit (invited by webhook, answers with its token); otherwise a person


class DeliberationItems(BaseModel):
    """How a decision item is carried out: as a case of this category and urgency, whose deadlines are the
    sla.yaml entries for them (the same 限时办结 table as every work order)."""

    category: str = Field(min_length=1)
    urgency: Literal["normal", "urgent", "emergency"] = "normal"


class DeliberationProposals(BaseModel):
    """议题建议: when a place's requests are proposed as a deliberation topic (services.topic_proposals). Cases
    reported in the last `window_days` at one community (its street when the community is unknown) about one
    category form a hot spot with at least `hot_spot_min_cases` cases from `hot_spot_min_citizens` citizens, or
    repeated requests when one citizen (the keyed phone hash of repeats.py) made `repeat_min_cases` of them."""

    window_days: int = Field(30, ge=1, le=365)
    hot_spot_min_cases: int = Field(5, ge=2)
    hot_spot_min_citizens: int = Field(3, ge=1)
    repeat_min_cases: int = Field(3, ge=2)
    exclude_categories: list[str] = Field(default_factory=lambda: ["enquiry", "deliberation_item"])
    topic_types: dict[str, str] = Field(default_factory=dict)  # category (or `default`) -> suggested topic type

    def topic_type_for(self, category: str) -> str:
        return self.topic_types.get(category) or self.topic_types.get("default") or "public_affairs"


class DeliberationPolicy(BaseModel):
    topic_types: dict[str, str]
    participant_types: dict[str, ParticipantType]
    required: dict[str, list[str]] = Field(default_factory=dict)  # topic type (or `default`) -> participant types
    items: DeliberationItems
    proposals: DeliberationProposals = Field(default_factory=DeliberationProposals)

    @model_validator(mode="after")
    def _known(self):
        for topic, types in self.required.items():
            if topic != "default" and topic not in self.topic_types:
                raise ValueError(f"required.{topic}: not a topic type; known: {sorted(self.topic_types)}")
            unknown = [t for t in types if t not in self.participant_types]
            if unknown:
                raise ValueError(f"required.{topic}: unknown participant types {unknown}; "
                                 f"known: {sorted(self.participant_types)}")
        for category, topic in self.proposals.topic_types.items():
            if topic not in self.topic_types:
                raise ValueError(f"proposals.topic_types.{category}: {topic!r} is not a topic type; "
                                 f"known: {sorted(self.topic_types)}")
        if "public_affairs" not in self.topic_types and "default" not in self.proposals.topic_types:
            raise ValueError("proposals.topic_types.default: required when there is no public_affairs topic type")
        return self

    def required_for(self, topic_type: str) -> list[str]:
        return self.required.get(topic_type, self.required.get("default", []))


def _item_category(policy: DeliberationPolicy, policy_dir: Path) -> list[str]:
    known = categories(policy_dir)
    problems = [] if policy.items.category in known else [
        f"items.category: unknown category {policy.items.category!r} (categories.yaml)"]
    proposals = policy.proposals
    problems += [f"proposals.exclude_categories: unknown category {c!r} (categories.yaml)"
                 for c in proposals.exclude_categories if c not in known]
    problems += [f"proposals.topic_types.{c}: unknown category (categories.yaml)"
                 for c in proposals.topic_types if c != "default" and c not in known]
    return problems


# The last good version of each policy file is kept under <home>/policies-last-good/ (per policy folder): a
# district's typo must not stop the cases or the deadline watch, and every process (the API, serve, each flow run's
# own process) falls back to the same version.
_strict: ContextVar[bool] = ContextVar("policies_strict", default=False)
_seen: dict[Path, str] = {}  # last-good path -> the text this process last kept there, or "broken:<error>"


def _read(path: Path, model: type[BaseModel], optional: bool) -> tuple[BaseModel, str]:
    """The file parsed and validated, with its text ("" for an absent optional file); PolicyError naming file
    and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        if optional:
            return model(), ""
        raise PolicyError(f"{path}: file not found") from exc
    try:
        raw = _parse(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return model.model_validate(raw), text
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{path}: {errors}") from exc


@lru_cache(maxsize=64)
def _parse(text: str) -> Any:
    """The YAML of a policy file, parsed once per text: the files are read at every use (an edit applies at
    once) but parsing them each time was a quarter of an executor's CPU (docs/performance.md). Callers validate
    the result into new models and never change it."""
    return yaml.safe_load(text) or {}


def _last_good_path(policy_dir: Path, name: str) -> Path:
    return _last_good_folder(policy_dir, get_settings().home) / name


@lru_cache(maxsize=16)
def _last_good_folder(policy_dir: Path, home: Path) -> Path:
    return home / "policies-last-good" / hashlib.sha256(str(policy_dir.resolve()).encode()).hexdigest()[:16]


def _keep(policy_dir: Path, name: str, text: str) -> None:
    """Remember `text` as the last good version of the file (written only when it changed)."""
    path = _last_good_path(policy_dir, name)
    if _seen.get(path) == text:
        return
    try:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)  # atomic: another process never reads half a file
    except OSError as exc:  # warned once; the file itself still applies
        log.warning("could not keep the last good version of %s at %s: %s", name, path, exc)
    _seen[path] = text


def _last_good(policy_dir: Path, name: str, model: type[BaseModel]) -> BaseModel | None:
    path = _last_good_path(policy_dir, name)
    try:
        return _read(path, model, optional=False)[0] if path.exists() else None
    except PolicyError as exc:  # e.g. kept by an older version of the code
        log.error("the last good version of %s no longer loads: %s", name, exc)
        return None


def _load(name: str, model: type[BaseModel], policy_dir: Path | None = None, optional: bool = False,
          check: Callable[[BaseModel, Path], list[str]] | None = None, last_good: bool = False):
    """The policy file `name` validated (`check`: cross-file checks, each problem naming its field); a broken
    file raises PolicyError naming the file and the field.

    With `last_good` (the files cases and the deadline watch run on), a broken file after a good version was
    loaded is logged with the file and the field instead, and the last good version stays in force; with no good
    version yet, or inside `strict()` (as `check_all`), PolicyError."""
    directory = policy_dir or get_settings().policy_dir
    try:
        value, text = _read(directory / name, model, optional)
        problems = check(value, directory) if check else []
        if problems:
            raise PolicyError(f"{directory / name}: " + "; ".join(problems))
    except PolicyError as exc:
        if not last_good:
            raise
        good = _last_good(directory, name, model)
        if _strict.get():
            note = "the last good version stays in force" if good else "no good version loaded yet"
            raise PolicyError(f"{exc} ({note})") from exc
        if good is None:
            raise
        kept, broken = _last_good_path(directory, name), f"broken:{exc}"
        if _seen.get(kept) != broken:  # logged once per broken version, not at every read
            log.error("policy file not applied, keeping its last good version: %s", exc)
            _seen[kept] = broken
        return good
    if last_good:
        _keep(directory, name, text)
    return value


@contextmanager
def strict() -> Iterator[None]:
    """Inside this block a broken policy file raises PolicyError even when a last good version exists."""
    token = _strict.set(True)
    try:
        yield
    finally:
        _strict.reset(token)


def categories(policy_dir: Path | None = None) -> dict[str, str]:
    return _load("categories.yaml", CategoryPolicy, policy_dir, last_good=True).categories


def _sla_categories(policy: SlaPolicy, policy_dir: Path) -> list[str]:
    unknown = set(policy.categories) - set(categories(policy_dir))
    return [f"categories: unknown categories {sorted(unknown)}"] if unknown else []


def sla_policy(policy_dir: Path | None = None) -> SlaPolicy:
    return _load("sla.yaml", SlaPolicy, policy_dir, check=_sla_categories, last_good=True)


def calendar(policy_dir: Path | None = None) -> Calendar:
    policy = _load("calendar.yaml", CalendarPolicy, policy_dir, optional=True, last_good=True)
    return policy.calendar(get_settings().timezone)


def escalation_policy(policy_dir: Path | None = None) -> EscalationPolicy:
    return _load("escalation.yaml", EscalationPolicy, policy_dir, optional=True, last_good=True)


def whistle_policy(policy_dir: Path | None = None) -> WhistlePolicy:
    return _load("whistle.yaml", WhistlePolicy, policy_dir, last_good=True)


def deliberation_policy(policy_dir: Path | None = None) -> DeliberationPolicy:
    return _load("deliberation.yaml", DeliberationPolicy, policy_dir, check=_item_category, last_good=True)


def routing_policy(policy_dir: Path | None = None, units: set[str] | None = None) -> RoutingPolicy:
    """Load and validate the responsibility list; with `units`, every named unit must exist."""
    return _load("routing.yaml", RoutingPolicy, policy_dir, last_good=True,
                 check=lambda policy, d: routing_problems(policy, set(categories(d)), units))


def routing_problems(policy: RoutingPolicy, known_categories: set[str], units: set[str] | None) -> list[str]:
    problems = []
    for i, rule in enumerate(policy.rules):
        unknown = set(rule.categories or ()) - known_categories
        if unknown:
            problems.append(f"rules.{i} ({rule.name}): unknown categories {sorted(unknown)}")
        if units is not None:
            named = [u for u in [rule.unit, *rule.co_units] if not (u.startswith("{") and u.endswith("}"))]
            missing = [u for u in named if u not in units]
            if missing:
                problems.append(f"rules.{i} ({rule.name}): unknown units {missing}")
    return problems


def routing_overlaps(policy: RoutingPolicy) -> list[str]:
    """Pairs of rules that can match the same case but send it to different units: the later one is (partly)
    shadowed by the earlier. Reported as warnings — an earlier, more specific rule is often intended."""
    def meets(a: list | None, b: list | None) -> bool:
        return a is None or b is None or bool(set(a) & set(b))

    found = []
    for i, a in enumerate(policy.rules):
        for j in range(i + 1, len(policy.rules)):
            b = policy.rules[j]
            if a.unit == b.unit or a.hours or b.hours:
                continue
            if all(meets(getattr(a, f), getattr(b, f))
                   for f in ("categories", "districts", "streets", "communities", "urgencies")):
                found.append(f"rules.{i} ({a.name}) overlaps rules.{j} ({b.name}); the first match wins")
    return found


def check_all(units: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Every policy file, validated (and unit names checked against `units`): (problems, warnings)."""
    problems: list[str] = []
    warnings: list[str] = []
    from services.evaluation import evaluation_policy  # these build on this module
    from services.repeats import repeat_policy

    with strict():  # report a broken file even while its last good version is in force
        for load in (categories, sla_policy, calendar, escalation_policy, whistle_policy, evaluation_policy,
                     repeat_policy, deliberation_policy, lambda: routing_policy(units=units)):
            try:
                load()
            except PolicyError as exc:
                problems.append(str(exc))
        try:
            warnings += [f"routing.yaml: {w}" for w in routing_overlaps(_load("routing.yaml", RoutingPolicy))]
        except PolicyError:
            pass  # reported above
    return problems, warnings

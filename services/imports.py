"""Import of historic cases (历史工单导入) from a CSV export of the old system.

Each row becomes a **closed** case (`source = import`, `source_ref` from the row; no flow run) with an `imported`
timeline entry, carrying what the monthly evaluation reads (lead unit, closed_at, responded_in_time, resolved,
satisfaction, follow-up outcome), so imported months are evaluated exactly like flow-closed ones. Every row is
checked on its own: a bad row is reported (row number, field, reason) and never stops the others; a row whose
`source_ref` was imported before is skipped as a duplicate, so an import can be run again safely.

Columns (UTF-8, a header row; extra columns are ignored):
  source_ref*, reported_at*, closed_at*, category*, lead_unit*, community | street (one at least, code or
  Chinese name), urgency (normal|urgent|emergency), responded_in_time, resolved (true/false, 1/0, 是/否),
  satisfaction (satisfied|basically_satisfied|unsatisfied), follow_up (answered|not_reached|skipped_anonymous;
  default: answered with a satisfaction, else not_reached), title, description.
Times are ISO 8601; without a UTC offset they are read in the configured time zone (Asia/Shanghai).
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlmodel import Session

from hotline.settings import get_settings
from models import Case, CaseStatus, Unit
from services import policies, registry
from services.cases import find_by_source, record
from services.evaluation import evaluation_record

SOURCE = "import"
REQUIRED = ("source_ref", "reported_at", "closed_at", "category", "lead_unit")
SATISFACTION = ("satisfied", "basically_satisfied", "unsatisfied")
FOLLOW_UP = ("answered", "not_reached", "skipped_anonymous")
_TRUE, _FALSE = {"true", "1", "yes", "y", "是"}, {"false", "0", "no", "n", "否"}


@dataclass
class Rejected:
    row: int  # line number in the file (the header is line 1)
    field: str
    reason: str
    source_ref: str | None = None


@dataclass
class ImportResult:
    imported: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)


class RowError(ValueError):
    def __init__(self, field_name: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field_name, reason


def _time(row: dict, name: str, zone: ZoneInfo) -> datetime:
    raw = (row.get(name) or "").strip()
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise RowError(name, f"not an ISO 8601 time: {raw!r}") from None
    return (value if value.tzinfo else value.replace(tzinfo=zone)).astimezone(ZoneInfo("UTC"))


def _bool(row: dict, name: str) -> bool | None:
    raw = (row.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    raise RowError(name, f"not a yes/no value: {raw!r}")


def _choice(row: dict, name: str, allowed: Iterable[str], default: str | None) -> str | None:
    raw = (row.get(name) or "").strip()
    if not raw:
        return default
    if raw not in allowed:
        raise RowError(name, f"must be one of {list(allowed)}, not {raw!r}")
    return raw


def parse_row(session: Session, row: dict, zone: ZoneInfo, categories: dict[str, str]) -> dict:
    """The Case fields of one row, or RowError naming the first bad field."""
    for name in REQUIRED:
        if not (row.get(name) or "").strip():
            raise RowError(name, "required")
    reported_at, closed_at = _time(row, "reported_at", zone), _time(row, "closed_at", zone)
    if closed_at < reported_at:
        raise RowError("closed_at", "before reported_at")
    category = row["category"].strip()
    if category not in categories:
        by_name = {name: code for code, name in categories.items()}
        if category not in by_name:
            raise RowError("category", f"unknown category {category!r}")
        category = by_name[category]
    lead = row["lead_unit"].strip()
    if session.get(Unit, lead) is None:
        raise RowError("lead_unit", f"unknown unit {lead!r}")
    location = {k: row[k].strip() for k in ("community", "street") if (row.get(k) or "").strip()}
    if not location:
        raise RowError("community", "community or street required")
    place = registry.resolve_place(session, location)
    if (location.get("community") and not place.community) or (location.get("street") and not place.street):
        raise RowError("community" if location.get("community") else "street",
                       f"unknown place {location.get('community') or location.get('street')!r}")
    satisfaction = _choice(row, "satisfaction", SATISFACTION, None)
    follow_up = _choice(row, "follow_up", FOLLOW_UP, "answered" if satisfaction else "not_reached")
    if follow_up == "answered" and not satisfaction:
        raise RowError("satisfaction", "required when follow_up is answered")
    return {
        "source": SOURCE, "source_ref": row["source_ref"].strip(), "category": category,
        "title": (row.get("title") or "").strip() or None, "description": (row.get("description") or "").strip(),
        "urgency": _choice(row, "urgency", ("normal", "urgent", "emergency"), "normal"),
        "location": location, "reported_at": reported_at, "closed_at": closed_at,
        "district": place.district, "street": place.street, "community": place.community,
        "lead_unit": lead, "owner_unit": lead, "status": CaseStatus.closed,
        "responded_in_time": _bool(row, "responded_in_time"), "resolved": _bool(row, "resolved"),
        "completed_in_time": None, "satisfaction": satisfaction if follow_up == "answered" else None,
        "follow_up_outcome": follow_up, "anonymous": follow_up == "skipped_anonymous",
    }


def import_rows(rows: Iterable[tuple[int, dict]], session_factory: Callable, *,
                progress: Callable[[], None] | None = None) -> ImportResult:
    """Import (line number, row) pairs, one transaction per row: a bad row loses nothing else."""
    result = ImportResult()
    zone = ZoneInfo(get_settings().timezone)
    categories = policies.categories()
    for line, row in rows:
        ref = (row.get("source_ref") or "").strip() or None
        try:
            with session_factory() as session:
                if ref and find_by_source(session, SOURCE, ref) is not None:
                    result.duplicates += 1
                    continue
                fields = parse_row(session, row, zone, categories)
                case = Case(**fields)
                session.add(case)
                session.flush()
                case.number = f"IMP{case.id:09d}"
                session.add(case)
                record(session, case, "imported", "历史工单导入", actor="import", source_ref=ref,
                       **evaluation_record(case, str(session.get(Unit, case.lead_unit).level)))
            result.imported += 1
        except RowError as exc:
            result.rejected.append(Rejected(line, exc.field, exc.reason, ref))
        finally:
            if progress:
                progress()
    return result


def read_csv(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) pairs; a missing required column is a clear error for the whole file."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        return [(reader.line_num, row) for row in reader]


def write_rejects(path: Path, rejected: list[Rejected]) -> None:
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "source_ref", "field", "reason"])
        writer.writerows([r.row, r.source_ref or "", r.field, r.reason] for r in rejected)

"""Open311 GeoReport v2 (CONTRACT 1b): the mapping between Open311 fields and our cases, and the two renderings
(XML exactly as the spec shows it, JSON). Pure: no database, no network; the routes read and write.

Mapping onto a case (intake is `services.intake.receive`, as for every channel):
- service_code = our category code; service_request_id = the case number.
- description (optional in the spec, required by us) falls back to the service name.
- location: lat/long and address_string; attribute[community|street|district] may name the jurisdiction, else the
  most specific community or street whose name appears in address_string fixes it (e.g. "…小南庄社区3号楼").
- citizen: first_name + last_name (family name first, no space, when either is written in CJK), phone.
  email is accepted and not stored (a case has no field for it), so it can never reach Prefect.
  A request with neither name nor phone is anonymous: there is nobody to call back, follow-up is skipped.
- media_url is kept with the location (it travels to the unit with the work order).
- the idempotency key (source_ref, with source "open311") is attribute[source_ref]; else device_id plus the
  client's own id (attribute[request_id] or attribute[client_request_id]); else a fresh id (not idempotent).
- attribute[urgency] = normal | urgent | emergency (default normal).
"""
from __future__ import annotations

import math
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hotline.clock import iso, to_utc

FORMATS = ("xml", "json")
GROUP = "12345接诉即办"
MAX_RESULTS = 1000
DEFAULT_WINDOW = timedelta(days=90)
URGENCIES = ("normal", "urgent", "emergency")
PLACE_ATTRIBUTES = ("community", "street", "district")
CLIENT_ID_ATTRIBUTES = ("request_id", "client_request_id")

# characters XML 1.0 cannot carry (and Postgres text cannot hold \x00); removed from everything we store or render
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_PHONE = re.compile(r"^[0-9+\-\s()]{3,40}$")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_ATTRIBUTE = re.compile(r"^attribute\[([^\[\]]+)\](\[\])?$")
# the list element inside each XML container, as the spec shows them
_ITEM = {"services": "service", "service_requests": "request", "errors": "error", "attributes": "attribute",
         "values": "value"}


class Open311Error(Exception):
    """A spec-shaped error answer: HTTP status and one description per problem."""

    def __init__(self, status: int, *descriptions: str):
        super().__init__("; ".join(descriptions))
        self.status = status
        self.descriptions = list(descriptions)

    def payload(self) -> list[dict]:
        return [{"code": self.status, "description": d} for d in self.descriptions]


# ---------------------------------------------------------------- services

def services(categories: Mapping[str, str]) -> list[dict]:
    return [{"service_code": code, "service_name": name, "description": name, "metadata": False,
             "type": "realtime", "keywords": f"{name}, {code.replace('_', ' ')}", "group": GROUP}
            for code, name in categories.items()]


def service_definition(code: str, categories: Mapping[str, str]) -> dict:
    if code not in categories:
        raise Open311Error(404, f"service_code: unknown service {code!r}")
    return {"service_code": code, "attributes": []}


# ---------------------------------------------------------------- posting a request

def collect(pairs: Iterable[tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Form pairs or JSON items -> (fields, attributes). Accepts `attribute[x]`, `attribute[x][]` (a list) and,
    in JSON, `"attribute": {...}`. A repeated field keeps its last value."""
    fields: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for key, value in pairs:
        if key == "attribute" and isinstance(value, dict):
            attributes.update(value)
        elif m := _ATTRIBUTE.match(key):
            if m.group(2):
                attributes.setdefault(m.group(1), [])
                if isinstance(attributes[m.group(1)], list):
                    attributes[m.group(1)].append(value)
            else:
                attributes[m.group(1)] = value
        else:
            fields[key] = value
    return fields, attributes


def parse_request(fields: Mapping[str, Any], attributes: Mapping[str, Any], *, categories: Mapping[str, str],
                  places: Iterable[tuple[str, str]], at: datetime) -> dict[str, Any]:
    """Open311 POST fields -> the Case fields `services.intake.receive` takes. Raises Open311Error(400) listing
    every problem found. `places` are (level, name) of the registered communities and streets."""
    errors: list[str] = []

    def text(name: str, value: Any = None, *, max_length: int = 200, source: Mapping[str, Any] = fields) -> str | None:
        value = source.get(name) if value is None else value
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            errors.append(f"{name}: must be text")
            return None
        value = clean(str(value)).strip()
        if len(value) > max_length:
            errors.append(f"{name}: at most {max_length} characters")
            return None
        return value or None

    def attr(name: str, max_length: int = 200) -> str | None:
        return text(f"attribute[{name}]", attributes.get(name), max_length=max_length, source={})

    code = text("service_code", max_length=64)
    if code is None and "service_code" not in [e.split(":")[0] for e in errors]:
        errors.append("service_code: required")
    elif code is not None and code not in categories:
        errors.append(f"service_code: unknown service {code!r} (see GET services)")

    lat = _coordinate(fields, "lat", 90, errors)
    long = _coordinate(fields, "long", 180, errors)
    if (lat is None) != (long is None) and not any(e.startswith(("lat:", "long:")) for e in errors):
        errors.append("lat/long: both are required together")
    address = text("address_string", max_length=500)
    if not address and (lat is None or long is None) and not any(e.startswith(("lat", "long")) for e in errors):
        errors.append("lat/long or address_string: a location is required")

    description = text("description", max_length=10000)
    first, last = text("first_name", max_length=100), text("last_name", max_length=100)
    phone = text("phone", max_length=40)
    if phone and not _PHONE.match(phone):
        errors.append("phone: digits, spaces, + - ( ) only")
    text("email", max_length=254)  # validated for shape only: never stored
    media_url = text("media_url", max_length=500)
    if media_url and not re.match(r"^https?://\S+$", media_url):
        errors.append("media_url: must be an http(s) URL")

    urgency = attr("urgency") or "normal"
    if urgency not in URGENCIES:
        errors.append(f"attribute[urgency]: one of {', '.join(URGENCIES)}")
    place = {k: v for k in PLACE_ATTRIBUTES if (v := attr(k, 100))}
    source_ref = attr("source_ref")
    if source_ref is None:
        device = text("device_id", max_length=100)
        client_id = next((v for k in CLIENT_ID_ATTRIBUTES if (v := attr(k, 99))), None)
        source_ref = f"{device}:{client_id}" if device and client_id else f"open311-{uuid.uuid4().hex}"
    for unused in ("jurisdiction_id", "api_key", "account_id"):  # accepted (one jurisdiction, no keys), not used
        text(unused, max_length=500)
    if errors:
        raise Open311Error(400, *errors)

    location: dict[str, Any] = dict(place)
    if address:
        location["address"] = address
        if not place and (found := match_place(address, places)):
            location[found[0]] = found[1]
    if lat is not None and long is not None:
        location["lat"], location["long"] = lat, long
    if media_url:
        location["media_url"] = media_url
    name = citizen_name(first, last)
    return {
        "source": "open311", "source_ref": source_ref, "category": code, "title": None,
        "description": description or categories[code], "urgency": urgency, "location": location,
        "citizen_name": name, "citizen_phone": phone, "anonymous": not (name or phone), "reported_at": at,
    }


def _coordinate(fields: Mapping[str, Any], name: str, bound: float, errors: list[str]) -> float | None:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        errors.append(f"{name}: not a number: {str(value)[:40]!r}")
        return None
    if not math.isfinite(number) or not -bound <= number <= bound:
        errors.append(f"{name}: must be between -{bound} and {bound}")
        return None
    return number


def citizen_name(first: str | None, last: str | None) -> str | None:
    if not (first or last):
        return None
    if _CJK.search((first or "") + (last or "")):
        return f"{last or ''}{first or ''}"  # 陈 + 阿姨: family name first, no space
    return " ".join(p for p in (first, last) if p)


def match_place(address: str, places: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The community, else the street, whose name appears in the address (the longest name wins)."""
    found = [(level, name) for level, name in places if name and name in address]
    for level in ("community", "street"):
        names = [p for p in found if p[0] == level]
        if names:
            return max(names, key=lambda p: len(p[1]))
    return None


def created(number: str, is_new: bool) -> list[dict]:
    notice = (f"已受理, 诉求编号 {number}, 可凭编号查询办理进度" if is_new
              else f"此前已受理, 诉求编号 {number}")
    return [{"service_request_id": number, "service_notice": notice, "account_id": None}]


# ---------------------------------------------------------------- reading requests

@dataclass
class Filters:
    numbers: list[str] | None = None  # service_request_id: overrides every other filter (spec)
    codes: list[str] | None = None
    statuses: set[str] | None = None
    start: datetime | None = None  # UTC
    end: datetime | None = None    # UTC
    limit: int = MAX_RESULTS


def parse_filters(params: Mapping[str, str], *, categories: Mapping[str, str], at: datetime) -> Filters:
    errors: list[str] = []
    numbers = _csv(params.get("service_request_id"))
    if numbers:
        if len(numbers) > MAX_RESULTS:
            raise Open311Error(400, f"service_request_id: at most {MAX_RESULTS} ids")
        return Filters(numbers=numbers)
    codes = _csv(params.get("service_code"))
    for code in codes or ():
        if code not in categories:
            errors.append(f"service_code: unknown service {code!r}")
    statuses = set(_csv(params.get("status")) or ()) or None
    if statuses and not statuses <= {"open", "closed"}:
        errors.append("status: open or closed")
    start = _datetime(params, "start_date", errors)
    end = _datetime(params, "end_date", errors)
    if not errors:
        end = end or (start + DEFAULT_WINDOW if start else to_utc(at))  # start alone: the 90 days from it
        start = start or end - DEFAULT_WINDOW
        if start > end:
            errors.append("start_date: must not be after end_date")
        elif end - start > DEFAULT_WINDOW:
            errors.append("start_date/end_date: may not span more than 90 days")
    if errors:
        raise Open311Error(400, *errors)
    return Filters(codes=codes, statuses=statuses, start=start, end=end)


def _csv(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def _datetime(params: Mapping[str, str], name: str, errors: list[str]) -> datetime | None:
    value = (params.get(name) or "").strip()
    if not value:
        return None
    value = re.sub(r" (\d{2}:?\d{2})$", r"+\1", value)  # an unencoded '+' in a query string arrives as a space
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        errors.append(f"{name}: not an ISO 8601 date-time, e.g. 2026-11-23T09:30:00+08:00")
        return None
    if parsed.tzinfo is None:
        errors.append(f"{name}: must carry a UTC offset, e.g. 2026-11-23T09:30:00+08:00")
        return None
    return to_utc(parsed)


def request_view(case: Any, *, service_name: str | None, agency: str | None, status_notes: str | None,
                 expected_at: datetime | None) -> dict:
    location = case.location or {}
    return {
        "service_request_id": case.number,
        "status": "closed" if case.status == "closed" else "open",
        "status_notes": status_notes,
        "service_name": service_name,
        "service_code": case.category,
        "description": case.description,
        "agency_responsible": agency,
        "requested_datetime": iso(case.reported_at),
        "updated_datetime": iso(case.updated_at),
        "expected_datetime": iso(expected_at),
        "address": location.get("address"),
        "lat": location.get("lat"),
        "long": location.get("long"),
        "media_url": location.get("media_url"),
    }


# ---------------------------------------------------------------- rendering

def clean(value: str) -> str:
    return _NOT_XML.sub("", value)


def to_json_ready(payload: Any) -> Any:
    """Strings cleaned the same way as in XML (lone surrogates cannot be encoded as UTF-8)."""
    if isinstance(payload, dict):
        return {k: to_json_ready(v) for k, v in payload.items()}
    if isinstance(payload, list):
        return [to_json_ready(v) for v in payload]
    return clean(payload) if isinstance(payload, str) else payload


def to_xml(root: str, payload: Any) -> bytes:
    """`<services><service>…`, `<service_requests><request>…`, `<errors><error>…`, `<service_definition>…`;
    UTF-8 with a declaration; None is an empty element, booleans are true/false."""
    element = ET.Element(root)
    _fill(element, payload)
    return ET.tostring(element, encoding="utf-8", xml_declaration=True)


def _fill(element: ET.Element, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _fill(ET.SubElement(element, key), item)
    elif isinstance(value, list):
        for item in value:
            _fill(ET.SubElement(element, _ITEM.get(element.tag, "item")), item)
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:
        element.text = clean(str(value))

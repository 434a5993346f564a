"""Webhook payloads (CONTRACT 2a). The citizen's contact goes only to the lead unit, which must contact them."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from hotline.clock import iso
from hotline.settings import get_settings
from services import policies

URGENCY_LABELS = {"normal": "普通", "urgent": "紧急", "emergency": "特急"}


@lru_cache
def templates() -> Environment:
    return Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html", "html.j2"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def mask_phone(phone: str | None) -> str | None:
    if not phone:
        return phone
    return phone[:3] + "*" * max(len(phone) - 7, 0) + phone[-4:] if len(phone) > 7 else "*" * len(phone)


def mask_name(name: str | None) -> str | None:
    return (name[0] + "*" * (len(name) - 1)) if name else name


def citizen_view(case, *, full: bool) -> dict:
    if case.anonymous:
        return {"anonymous": True}
    if full:
        return {"name": case.citizen_name, "phone": case.citizen_phone, "anonymous": False}
    return {"name": mask_name(case.citizen_name), "phone": mask_phone(case.citizen_phone), "anonymous": False}


def work_order_payload(case, wo, unit) -> dict:
    contact_allowed = wo.role == "lead"
    citizen = citizen_view(case, full=contact_allowed)
    location = case.location or {}
    data = {
        "work_order_id": str(wo.id),
        "case_number": case.number,
        "category": case.category,
        "title": case.title,
        "description": case.description,
        "location": location,
        "urgency": case.urgency,
        "role": wo.role,
        "respond_by": iso(wo.respond_by),
        "due_at": iso(wo.due_at),
        "callback_url": f"{get_settings().base_url}/api/work-orders/{wo.id}/events",
        "citizen": citizen,
    }
    context = {
        "urgency": case.urgency, "urgency_label": URGENCY_LABELS.get(case.urgency, case.urgency),
        "case_number": case.number, "category_label": policies.categories().get(case.category, case.category),
        "address": location.get("address") or "", "title": case.title, "description": case.description,
        "contact": contact_line(citizen), "respond_by": data["respond_by"], "due_at": data["due_at"],
    }
    data["text"] = render("work_order.txt.j2", **context)
    data["html"] = render("work_order.html.j2", **context)
    return data


def contact_line(citizen: dict) -> str | None:
    if citizen.get("anonymous"):
        return None
    return f"{citizen.get('name') or ''} {citizen.get('phone') or ''}".strip() or None


def render(template: str, **context) -> str:
    """Render a message template; HTML templates are autoescaped, text templates are not."""
    return templates().get_template(template).render(**context)


def reminder_text(case, wo, share: float) -> str:
    return render("reminder.txt.j2", case_number=case.number, elapsed=share, due_at=iso(wo.due_at))


def follow_up_script(case, order, unit) -> str:
    """The SMS/IM-style brief and call script for the follow-up staff, who must call the citizen."""
    summary = case.title or (case.description[:30] + ("…" if len(case.description) > 30 else ""))
    return render("follow_up.txt.j2", case_number=case.number,
                  category_label=policies.categories().get(case.category, case.category),
                  contact=contact_line(citizen_view(case, full=True)), unit_name=unit.name if unit else "",
                  resolved=bool(order and order.resolved), unit_note=order.note if order else None,
                  summary=summary, due_at=iso(case.follow_up_due_at))

"""Unit and staff registry (CONTRACT 2d) and jurisdiction lookup."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, or_, select

from hotline.clock import now
from models import Staff, Unit
from models.units import StaffRole, UnitBase, UnitLevel
from notifications.webhooks import current_policy
from services.routing import Place
from services.tokens import hash_token, new_token, new_webhook_secret


class RegistryError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class Credentials:
    code: str
    token: str | None
    webhook_secret: str | None
    created: bool
    previous_secret_until: datetime | None = None  # after a rotation: the replaced secret signs until then


def upsert_unit(*, session: Session, code: str, unit_in: UnitBase) -> Credentials:
    if unit_in.parent is not None:
        if unit_in.parent == code:
            raise RegistryError("parent", "a unit cannot be its own parent")
        if session.get(Unit, unit_in.parent) is None:
            raise RegistryError("parent", f"unknown unit {unit_in.parent!r}")
    unit = session.get(Unit, code)
    if unit is not None:
        for field, value in unit_in.model_dump().items():
            setattr(unit, field, value)
        if unit_in.webhook_url:  # an endpoint given again re-enables one disabled by a 410 Gone
            unit.webhook_disabled_at = None
        session.add(unit)
        return Credentials(code=code, token=None, webhook_secret=None, created=False)
    token, secret = new_token("unit"), new_webhook_secret()
    session.add(Unit(code=code, token_hash=hash_token(token), webhook_secret=secret, **unit_in.model_dump()))
    return Credentials(code=code, token=token, webhook_secret=secret, created=True)


def rotate_unit(*, session: Session, unit: Unit, at: datetime | None = None,
                grace: timedelta | None = None) -> Credentials:
    """A new token (the old one stops at once) and a new webhook secret. The replaced secret still signs
    deliveries for `grace` (default: policy delivery.yaml `secret_rotation_grace`), next to the new one, so
    the unit's receiver keeps verifying while it switches; rotating again within the window drops the older one."""
    at = at or now()
    grace = current_policy().secret_rotation_grace if grace is None else grace
    token, secret = new_token("unit"), new_webhook_secret()
    keep = grace > timedelta(0)
    unit.previous_webhook_secret = unit.webhook_secret if keep else None
    unit.previous_secret_until = at + grace if keep else None
    unit.token_hash, unit.webhook_secret = hash_token(token), secret
    session.add(unit)
    return Credentials(code=unit.code, token=token, webhook_secret=secret, created=False,
                       previous_secret_until=unit.previous_secret_until)


def create_staff(*, session: Session, name: str, role: StaffRole, unit: str | None) -> str:
    if unit is not None and session.get(Unit, unit) is None:
        raise RegistryError("unit", f"unknown unit {unit!r}")
    token = new_token("staff")
    session.add(Staff(name=name, role=role, unit=unit, token_hash=hash_token(token)))
    return token


def unit_by_token(session: Session, token: str) -> Unit | None:
    return session.exec(select(Unit).where(Unit.token_hash == hash_token(token))).first()


def staff_by_token(session: Session, token: str) -> Staff | None:
    return session.exec(select(Staff).where(Staff.token_hash == hash_token(token))).first()


def _find(session: Session, level: UnitLevel, value: str | None) -> Unit | None:
    """A location field may hold a unit's code or its name."""
    if not value:
        return None
    value = value.strip()
    return session.exec(
        select(Unit).where(Unit.level == level, or_(Unit.code == value, Unit.name == value))
    ).first()


def resolve_place(session: Session, location: dict) -> Place:
    """Jurisdiction from the location fields: the most specific unit found fixes its parents."""
    community = _find(session, UnitLevel.community, location.get("community"))
    street = session.get(Unit, community.parent) if community and community.parent else None
    street = street or _find(session, UnitLevel.street, location.get("street"))
    district = session.get(Unit, street.parent) if street and street.parent else None
    district = district or _find(session, UnitLevel.district, location.get("district"))
    if district is None:  # a single-district installation: the district is the only one there is
        only = session.exec(select(Unit).where(Unit.level == UnitLevel.district)).all()
        district = only[0] if len(only) == 1 else None
    return Place(
        district=district.code if district else None,
        street=street.code if street else None,
        community=community.code if community else None,
    )

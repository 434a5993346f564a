"""Authentication dependencies: admin token (environment), unit tokens and staff tokens (stored hashed)."""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from hotline.db import read_scope
from hotline.settings import get_settings
from models import Staff, Unit
from models.units import StaffRole
from services import registry


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


Token = Annotated[str, Depends(bearer)]


def is_admin(token: str) -> bool:
    admin = get_settings().admin_token
    return bool(admin) and hmac.compare_digest(token.encode(), admin.encode())


def require_admin(token: Token) -> None:
    if not is_admin(token):
        raise HTTPException(403, "admin token required")


async def current_unit(token: Token) -> Unit:
    def lookup():
        with read_scope() as session:
            return registry.unit_by_token(session, token)
    unit = await run_in_threadpool(lookup)
    if unit is None:
        raise HTTPException(401, "unknown unit token")
    return unit


async def admin_or_unit(token: Token) -> Unit | None:
    """The admin (None) or the unit the token belongs to."""
    if is_admin(token):
        return None
    return await current_unit(token)


def staff_with(*roles: StaffRole):
    """Admin, or staff holding one of `roles`. Returns the actor's name for the timeline."""
    async def dependency(token: Token) -> str:
        if is_admin(token):
            return "admin"

        def lookup() -> Staff | None:
            with read_scope() as session:
                return registry.staff_by_token(session, token)
        staff = await run_in_threadpool(lookup)
        if staff is None:
            raise HTTPException(401, "unknown token")
        if roles and staff.role not in roles:
            raise HTTPException(403, f"role {staff.role} may not do this")
        return f"staff:{staff.id}:{staff.role}"
    return dependency


Admin = Annotated[None, Depends(require_admin)]
CurrentUnit = Annotated[Unit, Depends(current_unit)]
AdminOrUnit = Annotated[Unit | None, Depends(admin_or_unit)]
AnyStaff = Annotated[str, Depends(staff_with())]
FollowUpStaff = Annotated[str, Depends(staff_with(StaffRole.follow_up, StaffRole.supervisor))]
Supervisor = Annotated[str, Depends(staff_with(StaffRole.supervisor))]
Dispatcher = Annotated[str, Depends(staff_with(StaffRole.supervisor, StaffRole.dispatcher))]


@dataclass(frozen=True)
class Actor:
    """Who acts: `name` for the timeline (admin, staff:<id>:<role>, or a unit code) and the unit of a unit token."""

    name: str
    unit: Unit | None = None


def staff_or_unit(*roles: StaffRole):
    """Admin, staff holding one of `roles`, or any unit by its token (the route decides what a unit may do)."""
    async def dependency(token: Token) -> Actor:
        if is_admin(token):
            return Actor("admin")

        def lookup() -> tuple[Staff | None, Unit | None]:
            with read_scope() as session:
                staff = registry.staff_by_token(session, token)
                return staff, (None if staff else registry.unit_by_token(session, token))
        staff, unit = await run_in_threadpool(lookup)
        if staff is not None:
            if roles and staff.role not in roles:
                raise HTTPException(403, f"role {staff.role} may not do this")
            return Actor(f"staff:{staff.id}:{staff.role}")
        if unit is not None:
            return Actor(unit.code, unit)
        raise HTTPException(401, "unknown token")
    return dependency


SupervisorOrUnit = Annotated[Actor, Depends(staff_or_unit(StaffRole.supervisor))]
StaffOrUnit = Annotated[Actor, Depends(staff_or_unit())]

"""The FastAPI application: routers joined in one place, errors mapped to clear client answers."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.console import deliberations as console_deliberations
from api.console import routes as console_routes
from api.routes import (
    cases, deliberations, deliveries, escalations, follow_ups, metrics, open311, units, whistles, work_orders,
)
from sqlmodel import select

from flows.control import share_tls_context
from hotline.db import init_db, read_scope
from models import Unit
from services import policies
from services.cases import Conflict, Invalid, NotFound
from services.policies import PolicyError
from services.registry import RegistryError

log = logging.getLogger("hotline.api")


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def create_app() -> FastAPI:
    app = FastAPI(title="12345 hotline (接诉即办)", version="0.1.0",
                  description="Cases from intake to close, each a durable Prefect flow run.")
    routers = (cases, work_orders, units, escalations, whistles, follow_ups, open311, deliveries, metrics,
               deliberations)
    for module in routers:
        app.include_router(module.router)
    app.include_router(console_routes.router)  # the supervisor console (server-rendered pages)
    app.include_router(console_deliberations.router)

    @app.on_event("startup")
    def _startup() -> None:
        share_tls_context()  # our calls to Prefect (start a run, resume one) each build a client
        init_db()
        with read_scope() as session:
            units = set(session.exec(select(Unit.code)).all())
        problems, warnings = policies.check_all(units or None)  # no units yet: names cannot be checked
        for line in problems:
            log.error("policy problem: %s", line)
        for line in warnings:
            log.warning("policy warning: %s", line)

    @app.get("/api/health", tags=["operations"])
    async def health():
        return {"status": "ok"}

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        errors = [{"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg"), "type": e.get("type")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_request: Request, exc: Conflict):
        return JSONResponse({"detail": str(exc), "current": exc.current}, status_code=409)

    @app.exception_handler(Invalid)
    async def _invalid_reference(_request: Request, exc: Invalid):
        return JSONResponse({"detail": [{"field": exc.field, "message": str(exc)}]}, status_code=422)

    @app.exception_handler(RegistryError)
    async def _registry(_request: Request, exc: RegistryError):
        return JSONResponse({"detail": [{"field": exc.field, "message": str(exc)}]}, status_code=422)

    @app.exception_handler(PolicyError)
    async def _policy(_request: Request, exc: PolicyError):
        return JSONResponse({"detail": f"policy files are invalid: {exc}"}, status_code=503)

    return app


app = create_app()

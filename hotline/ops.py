"""`hotline cases|escalations|units …`: the operators' CLI. A client of our HTTP API (the API applies the rules,
writes the record and wakes the case runs), so the CLI and the console can never disagree.

The API address is `--api` (default HOTLINE_PUBLIC_URL or http://127.0.0.1:HOTLINE_API_PORT) and the token is
`--token`, else HOTLINE_ADMIN_TOKEN, else the admin token file in the data folder (`--home`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from hotline.settings import get_settings


def console() -> Console:
    """Made when printing, so it takes the terminal's current width (COLUMNS)."""
    return Console()


cases_app = typer.Typer(help="Cases (诉求): list and show.", no_args_is_help=True)
escalations_app = typer.Typer(help="Escalations (升级): list and decide.", no_args_is_help=True)
units_app = typer.Typer(help="Handling units (承办单位): list and add.", no_args_is_help=True)

ApiOpt = typer.Option(None, "--api", help="API base URL")
TokenOpt = typer.Option(None, "--token", help="admin or staff token")
HomeOpt = typer.Option(None, "--home", help="data folder holding admin_token (default ./.hotline)")


class Api:
    def __init__(self, api: str | None, token: str | None, home: Path | None):
        settings = get_settings()
        self.base = (api or settings.base_url).rstrip("/")
        if not token:
            token = settings.admin_token
        if not token:
            path = (home or settings.home) / "admin_token"
            if not path.exists():
                _fail(f"no token: pass --token, set HOTLINE_ADMIN_TOKEN, or point --home at a data folder "
                      f"with admin_token ({path} not found)")
            token = path.read_text().strip()
        self.client = httpx.Client(base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, **kwargs) -> Any:
        try:
            r = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the API at {self.base}: {exc}")
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            if isinstance(detail, list):  # a 422: field and reason for each problem
                detail = "; ".join(
                    f"{d.get('field') or '.'.join(str(p) for p in d.get('loc', [])[1:])}: "
                    f"{d.get('message') or d.get('msg')}" if isinstance(d, dict) else str(d) for d in detail)
            _fail(f"{r.status_code}: {detail}")
        return r.json()


def _fail(message: str) -> None:
    console().print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    console().print(table)


# ---------------------------------------------------------------- cases

@cases_app.command("list")
def cases_list(status: str = typer.Option(None, help="received|dispatched|handling|awaiting_follow_up|closed …"),
               street: str = typer.Option(None, help="street unit code"),
               unit: str = typer.Option(None, help="lead unit code"), limit: int = 50,
               api: str = ApiOpt, token: str = TokenOpt, home: Path = HomeOpt) -> None:
    """Newest cases first."""
    params = {k: v for k, v in {"status": status, "street": street, "unit": unit, "limit": limit}.items() if v}
    rows = Api(api, token, home).call("GET", "/api/cases", params=params)
    _table(f"cases ({len(rows)})", ["id", "number", "status", "category", "urgency", "street", "unit", "reported"],
           [[c["case_id"], c["number"], c["status"], c["category"], c["urgency"], c["street"], c["lead_unit"],
             c["reported_at"]] for c in rows])


@cases_app.command("show")
def cases_show(case_id: int, api: str = ApiOpt, token: str = TokenOpt, home: Path = HomeOpt) -> None:
    """A case with its work orders, escalations and timeline (citizen details masked)."""
    d = Api(api, token, home).call("GET", f"/api/cases/{case_id}")
    console().print(f"[bold]{d['number']}[/bold]  {d['status']}  {d['category']}  {d['urgency']}  "
                  f"lead: {d['lead_unit'] or '—'}  place: {json.dumps(d['jurisdiction'], ensure_ascii=False)}")
    _table("work orders", ["id", "unit", "role", "status", "respond by", "due"],
           [[o["work_order_id"], o["unit"], o["role"], o["status"], o["respond_by"], o["due_at"]]
            for o in d["work_orders"]])
    if d["escalations"]:
        _table("escalations", ["id", "trigger", "from", "to", "status"],
               [[e["id"], e["trigger"], e["from_unit"], e["to_unit"], e["status"]] for e in d["escalations"]])
    if d.get("related"):
        _table("related cases", ["number", "kind", "status"],
               [[r["number"], r["kind"], r["status"]] for r in d["related"]])
    _table("timeline", ["at", "step", "by", "note"],
           [[t["at"], t["kind"], t["actor"], t["note"]] for t in d["timeline"]])


# ---------------------------------------------------------------- escalations

@escalations_app.command("list")
def escalations_list(status: str = typer.Option("open", help="open|decided|all"),
                     api: str = ApiOpt, token: str = TokenOpt, home: Path = HomeOpt) -> None:
    rows = Api(api, token, home).call("GET", "/api/escalations", params={"status": status})
    _table(f"escalations ({len(rows)})", ["id", "case", "trigger", "from", "to", "status", "opened"],
           [[e.get("id"), e.get("case_number"), e.get("trigger"), e.get("from_unit"), e.get("to_unit"),
             e.get("status"), e.get("opened_at")] for e in rows])


@escalations_app.command("decide")
def escalations_decide(escalation_id: int,
                       action: str = typer.Option(..., help="reassign|extend|take_over|close"),
                       reason: str = typer.Option(..., help="recorded on the case timeline"),
                       unit: str = typer.Option(None, help="reassign: the new unit's code"),
                       until: str = typer.Option(None, help="extend: the new due time, ISO 8601"),
                       leader: str = typer.Option(None, help="take_over: who takes the case over (包案)"),
                       api: str = ApiOpt, token: str = TokenOpt, home: Path = HomeOpt) -> None:
    """A supervisor's decision (CONTRACT §4)."""
    body = {k: v for k, v in {"action": action, "reason": reason, "unit": unit, "until": until,
                              "leader": leader}.items() if v is not None}
    result = Api(api, token, home).call("POST", f"/api/escalations/{escalation_id}/decision", json=body)
    console().print(f"decided: {json.dumps(result, ensure_ascii=False)}")


# ---------------------------------------------------------------- units

@units_app.command("list")
def units_list(api: str = ApiOpt, token: str = TokenOpt, home: Path = HomeOpt) -> None:
    rows = Api(api, token, home).call("GET", "/api/units")
    _table(f"units ({len(rows)})", ["code", "name", "level", "parent", "webhook"],
           [[u.get("code"), u.get("name"), u.get("level"), u.get("parent"), u.get("webhook_url")] for u in rows])


@units_app.command("add")
def units_add(code: str, name: str = typer.Option(...),
              level: str = typer.Option(..., help="community|street|department|utility|district"),
              parent: str = typer.Option(None), webhook_url: str = typer.Option(None),
              api: str = ApiOpt, token: str = TokenOpt, home: Path = HomeOpt) -> None:
    """Register a unit; prints its token and webhook secret once (they are stored hashed / not shown again)."""
    body = {k: v for k, v in {"name": name, "level": level, "parent": parent, "webhook_url": webhook_url}.items()
            if v is not None}
    result = Api(api, token, home).call("PUT", f"/api/units/{code}", json=body)
    console().print(json.dumps(result, ensure_ascii=False, indent=2))

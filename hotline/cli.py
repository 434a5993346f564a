"""`hotline`: start the product on the embedded default, run the demo on it, or write a monthly report."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from hotline import ops
from hotline.runtime import Stack, admin_token, free_port, stop_on_sigterm
from hotline.settings import get_settings

app = typer.Typer(help="12345 hotline (接诉即办) case handling.", no_args_is_help=True)
app.add_typer(ops.cases_app, name="cases")
app.add_typer(ops.escalations_app, name="escalations")
app.add_typer(ops.units_app, name="units")


def _start(home: Path | None, api_port: int, prefect_port: int, policy_dir: Path | None) -> Stack:
    settings = get_settings()
    home = (home or settings.home).resolve()
    stack = Stack(home=home, api_port=api_port, prefect_port=prefect_port, policy_dir=policy_dir,
                  database_url=settings.database_url, watch_interval_seconds=settings.watch_interval_seconds,
                  executor=settings.executor)
    runner = "the in-process executor" if settings.executor == "inprocess" else "serve"
    stop_on_sigterm()  # `kill` stops the stack as Ctrl-C does
    typer.echo(f"starting in {home} (Prefect server on SQLite, {runner}, API) …")
    stack.start()
    typer.echo(f"API:        {stack.api_url}  (OpenAPI: {stack.api_url}/docs)")
    typer.echo(f"Prefect UI: {stack.prefect_url}")
    typer.echo(f"admin token: {admin_token(home)}  (kept in {home / 'admin_token'})")
    typer.echo(f"logs:       {home / 'logs'}")
    return stack


def _hold(stack: Stack) -> None:
    typer.echo("running; Ctrl-C stops everything.")
    try:
        while all(p.poll() is None for p in stack.procs.values()):
            time.sleep(1)
        typer.echo("a process exited; stopping. See the logs folder.", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


@app.command()
def up(home: Path = typer.Option(None, help="data folder (default ./.hotline)"),
       api_port: int = 8000, prefect_port: int = 4200,
       demo: bool = typer.Option(False, help="also load the demo district and run the seed cases")) -> None:
    """Start the Prefect server, the flow-serving process and the API."""
    if demo:
        return run_demo(home=home, api_port=api_port, prefect_port=prefect_port, exit=False, timeout=300)
    _hold(_start(home, api_port, prefect_port, None))


@app.command("demo")
def run_demo(home: Path = typer.Option(None, help="data folder (default ./.hotline)"),
             api_port: int = 8000, prefect_port: int = 4200,
             exit: bool = typer.Option(False, "--exit", help="stop when the demo cases are closed"),
             timeout: float = typer.Option(300, help="seconds to wait for every demo case to close")) -> None:
    """Start everything, load the demo district and push the seed cases through their lifecycle."""
    from hotline.demo import demo_policy_dir, run_demo as drive

    settings = get_settings()
    home = (home or settings.home).resolve()
    stack = _start(home, api_port, prefect_port, demo_policy_dir(home))
    try:
        ok = drive(stack.api_url, stack.prefect_url, admin_token(home), free_port(), timeout=timeout)
    except BaseException:
        stack.stop()
        raise
    if exit:
        stack.stop()
        raise typer.Exit(0 if ok else 1)
    _hold(stack)


@app.command("scaled")
def run_scaled(home: Path = typer.Option(None, help="data folder for logs (default ./.hotline-scaled)"),
               executors: int = 2, api_workers: int = 2, prefect_servers: int = 2,
               redis_url: str = typer.Option(None, help="Redis database for Prefect's messaging, emptied at start "
                                                        "(default redis://127.0.0.1:6379/15)"),
               api_port: int = 8000, prefect_port: int = 4200) -> None:
    """The scaled shape on this machine (hotline/topology.py): Prefect on Postgres with separate services and
    Redis, several executors and API workers. Fresh databases on the local Postgres, dropped on exit."""
    from hotline.topology import REDIS_URL, scaled

    home = (home or get_settings().home.with_name(".hotline-scaled")).resolve()
    stack, dbs = scaled(home, executors=executors, api_workers=api_workers, prefect_servers=prefect_servers,
                        redis_url=redis_url or REDIS_URL, api_port=api_port, prefect_port=prefect_port)
    stop_on_sigterm()  # `kill` stops the stack and drops its databases, as Ctrl-C does
    typer.echo(f"starting the scaled shape in {home}: {prefect_servers} Prefect servers + services, "
               f"{executors} executors, {api_workers} API workers …")
    try:
        stack.start()
        typer.echo(f"API:        {stack.api_url}")
        typer.echo("Prefect:    " + ", ".join(f"http://127.0.0.1:{p}" for p in stack.prefect_ports))
        typer.echo(f"admin token: {admin_token(home)}")
        _hold(stack)
    finally:
        stack.stop()
        dbs.drop()


def _use_home(home: Path | None) -> None:
    """Work on the database of that data folder (unless HOTLINE_DATABASE_URL names another)."""
    if home is None:
        return
    import os

    from hotline.db import get_engine
    os.environ["HOTLINE_HOME"] = str(home.resolve())
    get_settings.cache_clear()
    get_engine.cache_clear()


@app.command()
def report(month: str = typer.Option(None, help="YYYY-MM, local calendar (default: the previous month)"),
           out: Path = typer.Option(None, help="output folder (default <home>/reports/<month>/)"),
           home: Path = typer.Option(None, help="data folder (default ./.hotline); its database is read")) -> None:
    """Write the monthly report (月度报告): report.html and the CSV files of the same numbers."""
    from hotline.clock import now

    _use_home(home)
    from services.evaluation import month_bounds
    from services.reports import default_out_dir, make_report
    from services.trends import previous_month

    settings = get_settings()
    month = month or previous_month(now())
    try:
        month_bounds(month, settings.timezone)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from exc
    if settings.database_url is None and not (settings.home / "hotline.db").exists():
        typer.echo(f"no database in {settings.home} (start the product there first, or give --home)", err=True)
        raise typer.Exit(1)
    for path in make_report(month, out or default_out_dir(month)):
        typer.echo(str(path))


@app.command("import")
def import_cases(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV file (UTF-8, header row)"),
                 home: Path = typer.Option(None, help="data folder (default ./.hotline); its database is written"),
                 rejects: Path = typer.Option(None, help="write the rejected rows with reasons to this CSV")) -> None:
    """Import historic (closed) cases from a CSV; bad rows are reported with row, field and reason, never lost."""
    from rich.progress import Progress

    from hotline.db import init_db, session_scope
    from services import imports

    _use_home(home)
    try:
        rows = imports.read_csv(file)
    except (ValueError, UnicodeDecodeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    init_db()
    with Progress() as progress:
        bar = progress.add_task(f"importing {file.name}", total=len(rows))
        result = imports.import_rows(rows, session_scope, progress=lambda: progress.advance(bar))
    typer.echo(f"imported {result.imported}, skipped {result.duplicates} already imported, "
               f"rejected {len(result.rejected)}")
    for r in result.rejected:
        typer.echo(f"  row {r.row} ({r.source_ref or '-'}): {r.field}: {r.reason}")
    if rejects and result.rejected:
        imports.write_rejects(rejects, result.rejected)
        typer.echo(f"rejected rows written to {rejects}")


if __name__ == "__main__":
    app()

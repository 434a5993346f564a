"""Autovacuum's rule, applied by us to our own databases when the Postgres server runs with autovacuum off.

Postgres's autovacuum (on by default) vacuums a table once enough of its rows are dead and re-analyzes it once
enough have changed. A lifecycle updates Prefect's `flow_run` row about twenty times and our `case`, `workorder`
and `delivery` rows several times each, so without it dead rows pile up by the hundred thousand and every query
on those tables, and the planner's statistics, get worse as the day goes on. This machine's Postgres has
`autovacuum = off` in its configuration file; a production server keeps the default (docs/deployment.md).

Where it is off, `AutovacuumStandIn` does what the autovacuum launcher would for the databases the scaled shape
and the benchmark make for themselves (hotline/topology.py `Databases`): every `autovacuum_naptime` it reads the
tables' counters and runs `VACUUM` / `ANALYZE` on those past the server's own thresholds
(threshold + scale factor × rows, for dead rows, rows inserted since the last vacuum, and rows changed since the
last analyze). Its work runs in Postgres backends, so a benchmark counts it as Postgres's CPU, as it would
count autovacuum's workers.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# a table due for work, by the thresholds autovacuum uses (the server's own autovacuum_* settings)
_DUE = """
WITH s AS (
    SELECT current_setting('autovacuum_vacuum_threshold')::float AS vt,
           current_setting('autovacuum_vacuum_scale_factor')::float AS vs,
           current_setting('autovacuum_vacuum_insert_threshold')::float AS it,
           current_setting('autovacuum_vacuum_insert_scale_factor')::float AS "is",
           current_setting('autovacuum_analyze_threshold')::float AS at,
           current_setting('autovacuum_analyze_scale_factor')::float AS "as")
SELECT t.schemaname, t.relname,
       t.n_dead_tup > s.vt + s.vs * greatest(c.reltuples, 0)
           OR t.n_ins_since_vacuum > s.it + s."is" * greatest(c.reltuples, 0) AS vacuum,
       t.n_mod_since_analyze > s.at + s."as" * greatest(c.reltuples, 0) AS analyze
FROM pg_stat_user_tables t JOIN pg_class c ON c.oid = t.relid, s
WHERE t.schemaname = %s
"""


def autovacuum_settings(conninfo: str) -> tuple[bool, float]:
    """(whether the server's autovacuum is on, its naptime in seconds)."""
    with psycopg.connect(conninfo) as conn:
        on, naptime = conn.execute("SELECT current_setting('autovacuum') = 'on', setting FROM pg_settings "
                                   "WHERE name = 'autovacuum_naptime'").fetchone()
    return on, float(naptime)


def due_tables(conn: psycopg.Connection, schema: str) -> list[tuple[str, str, bool, bool]]:
    """(schema, table, needs vacuum, needs analyze) for the tables of `schema` past autovacuum's thresholds."""
    return [row for row in conn.execute(_DUE, (schema,)).fetchall() if row[2] or row[3]]


def tend(conninfo: str, schema: str) -> tuple[int, int]:
    """One round of autovacuum's rule on one schema: (tables vacuumed, tables analyzed only)."""
    vacuumed = analyzed = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:  # VACUUM cannot run in a transaction block
        for schema_name, table, vacuum, analyze in due_tables(conn, schema):
            name = sql.Identifier(schema_name, table)
            if vacuum:  # VACUUM (ANALYZE) re-analyzes too, as autovacuum's worker would when both are due
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}" if analyze else "VACUUM {}").format(name))
                vacuumed += 1
            else:
                conn.execute(sql.SQL("ANALYZE {}").format(name))
                analyzed += 1
    return vacuumed, analyzed


@dataclass
class AutovacuumStandIn:
    """A thread applying autovacuum's rule to (conninfo, schema) pairs every `autovacuum_naptime`, while the
    server's own autovacuum is off. `start` does nothing where it is on."""
    targets: list[tuple[str, str]]
    vacuums: int = 0
    analyzes: int = 0
    active: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "AutovacuumStandIn":
        on, every = autovacuum_settings(self.targets[0][0])
        if on:
            return self
        self.active = True
        log.warning("Postgres runs with autovacuum off; applying its rule to our databases every %.0f s", every)
        self._thread = threading.Thread(target=self._run, args=(every,), name="autovacuum-stand-in", daemon=True)
        self._thread.start()
        return self

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            for conninfo, schema in self.targets:
                try:
                    vacuumed, analyzed = tend(conninfo, schema)
                except psycopg.Error as e:  # a dropped database at shutdown, a lock timeout: try next round
                    log.warning("autovacuum stand-in on %s: %s", schema, e)
                    continue
                self.vacuums += vacuumed
                self.analyzes += analyzed

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=600)  # a VACUUM under way finishes first

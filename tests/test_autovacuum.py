"""Autovacuum's rule on a table of our own, on the machine's Postgres (hotline/autovacuum.py)."""
from __future__ import annotations

import uuid

import psycopg
import pytest

from hotline.autovacuum import AutovacuumStandIn, autovacuum_settings, due_tables, tend
from tests.conftest import POSTGRES_ADMIN


@pytest.fixture
def schema():
    name = f"vacuum_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
        conn.execute(f'CREATE TABLE "{name}".churn (id int PRIMARY KEY, n int)')
        conn.execute(f'CREATE TABLE "{name}".quiet (id int PRIMARY KEY)')
        conn.execute(f'INSERT INTO "{name}".churn SELECT i, 0 FROM generate_series(1, 1000) i')
    yield name
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def dead_rows(schema: str, table: str) -> tuple[int, bool]:
    with psycopg.connect(POSTGRES_ADMIN) as conn:
        return conn.execute("SELECT n_dead_tup, last_vacuum IS NOT NULL FROM pg_stat_user_tables "
                            "WHERE schemaname = %s AND relname = %s", (schema, table)).fetchone()


def test_a_churned_table_is_vacuumed_and_a_quiet_one_is_left_alone(schema):
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        for _ in range(2):  # each update leaves a dead version of every row
            conn.execute(f'UPDATE "{schema}".churn SET n = n + 1')
    # a closed connection has reported its counters to the server's statistics
    assert dead_rows(schema, "churn") == (2000, False)
    with psycopg.connect(POSTGRES_ADMIN) as conn:
        assert due_tables(conn, schema) == [(schema, "churn", True, True)]

    assert tend(POSTGRES_ADMIN, schema) == (1, 0)
    assert dead_rows(schema, "churn") == (0, True)
    with psycopg.connect(POSTGRES_ADMIN) as conn:
        assert due_tables(conn, schema) == []  # analyzed too: its 1,000 rows now set the thresholds
    assert tend(POSTGRES_ADMIN, schema) == (0, 0)


def test_a_few_changes_stay_under_the_thresholds_then_an_analyze_alone_is_due(schema):
    # 1,000 inserted rows: past the analyze threshold (50), not past the insert one (1,000 + 0.2 × rows, and
    # a table never analyzed counts as empty)
    assert tend(POSTGRES_ADMIN, schema) == (0, 1)
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".churn SET n = 1 WHERE id <= 40')  # under 50 + 0.2 × 1,000 dead rows
    with psycopg.connect(POSTGRES_ADMIN) as conn:
        assert due_tables(conn, schema) == []
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:  # 40 + 130 changed > 50 + 0.1 × 1,000
        conn.execute(f'UPDATE "{schema}".churn SET n = 2 WHERE id > 870')
    with psycopg.connect(POSTGRES_ADMIN) as conn:
        assert due_tables(conn, schema) == [(schema, "churn", False, True)]
    assert tend(POSTGRES_ADMIN, schema) == (0, 1)


def test_the_stand_in_runs_only_where_autovacuum_is_off(schema):
    keeper = AutovacuumStandIn([(POSTGRES_ADMIN, schema)]).start()
    try:
        assert keeper.active is not autovacuum_settings(POSTGRES_ADMIN)[0]
    finally:
        keeper.stop()

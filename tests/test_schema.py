"""Our schema on a database an earlier release created (hotline/db.py `init_db`): `create_all` leaves an existing
table as it is, so what a release adds to it (an index, a nullable column) is added at start, and what cannot be
added so stops the start with the table and column named — on SQLite and on Postgres."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect

from hotline.db import init_db
from models import ExecutorBeat


def test_an_index_added_by_a_release_is_created_on_an_existing_database(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_case_signal_unapplied")
    assert "ix_case_signal_unapplied" not in {i["name"] for i in inspect(engine).get_indexes("casesignal")}
    init_db()
    assert "ix_case_signal_unapplied" in {i["name"] for i in inspect(engine).get_indexes("casesignal")}


def test_a_nullable_column_added_by_a_release_is_added_and_the_rows_kept(engine):
    from hotline.db import session_scope
    with session_scope() as session:
        session.add(ExecutorBeat(id="executor:old:1:abc", host="old", pid=1))
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE executorbeat DROP COLUMN starter_shard")
    assert "starter_shard" not in {c["name"] for c in inspect(engine).get_columns("executorbeat")}
    init_db()
    assert "starter_shard" in {c["name"] for c in inspect(engine).get_columns("executorbeat")}
    with session_scope() as session:
        beat = session.get(ExecutorBeat, "executor:old:1:abc")
        assert beat.host == "old" and beat.starter_shard is None
        beat.starter_shard = "1/2"
    with session_scope() as session:
        assert session.get(ExecutorBeat, "executor:old:1:abc").starter_shard == "1/2"
    init_db()  # nothing left to add: a second start changes nothing


def test_a_missing_column_that_cannot_be_null_stops_the_start_saying_which(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE executorbeat DROP COLUMN host")
    with pytest.raises(RuntimeError, match="executorbeat lacks column host"):
        init_db()

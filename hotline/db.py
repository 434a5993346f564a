"""Database engine and sessions: SQLite by default, Postgres by HOTLINE_DATABASE_URL."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from hotline.settings import get_settings


def _normalise(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


@lru_cache
def get_engine(url: str | None = None) -> Engine:
    url = _normalise(url or get_settings().db_url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL lets the API and flows read while one writes
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            # Writers take the write lock up front (no lock-upgrade deadlocks between processes);
            # readers (read_scope) start a plain deferred transaction and never block on writers (WAL).
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("read_only") else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=10)


def init_db() -> None:
    import models  # noqa: F401  (registers every table)

    settings = get_settings()
    if settings.db_url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
    engine = get_engine()
    SQLModel.metadata.create_all(engine)
    # create_all skips a table that exists, columns and indexes and all: what a release adds is added here
    _add_missing_columns(engine)
    for table in SQLModel.metadata.sorted_tables:
        for index in table.indexes:
            index.create(engine, checkfirst=True)


def _add_missing_columns(engine: Engine) -> None:
    """Add the columns a release adds to an existing table. Only a nullable column can be added so (existing rows
    get NULL); any other change needs a migration by hand, and the start stops here saying which."""
    inspector = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"table {table.name} lacks column {column.name}, which is NOT NULL: "
                                   "migrate the database by hand")
            preparer = engine.dialect.identifier_preparer
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN "
                                     f"{preparer.format_column(column)} {column.type.compile(engine.dialect)}")


@contextmanager
def read_scope() -> Iterator[Session]:
    """A read-only unit of work: on SQLite it does not take the write lock."""
    with Session(get_engine().execution_options(read_only=True), expire_on_commit=False) as session:
        yield session  # closing returns the connection, whose transaction the pool rolls back


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on error."""
    with Session(get_engine(), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise

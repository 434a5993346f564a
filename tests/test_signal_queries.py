"""The inbox queries the deadline watch and every case run make (models/signals.py): which runs the watch wakes, and
that each reads only the signals not applied yet, through the partial index, however many applied ones there are
— on SQLite and on Postgres."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, insert
from sqlmodel import Session

from hotline.clock import now
from models import Case, CaseSignal, Deliberation, DeliberationSignal
from services import cases, deliberations

APPLIED = 20_000  # applied signals beside a few pending ones: enough that reading them all is never the cheap plan


def _case(session: Session, n: int) -> Case:
    case = Case(source="web", source_ref=f"ref-{n}", description="d", reported_at=now(), flow_run_id=f"run-{n}")
    session.add(case)
    session.flush()
    return case


def _deliberation(session: Session, n: int) -> Deliberation:
    deliberation = Deliberation(topic_type="公共事务", title=f"t{n}", created_by="test", flow_run_id=f"d-run-{n}")
    session.add(deliberation)
    session.flush()
    return deliberation


def test_the_watch_wakes_runs_with_this_rounds_signals_or_signals_past_the_grace(engine):
    """A signal an answer wrote a moment ago is left to that answer's own wake; the watch wakes runs with a signal it
    wrote this round, or one older than the grace (its writer's wake was lost). Applied signals wake nothing."""
    at = now()
    round_started, past_grace = at - timedelta(seconds=2), at - timedelta(seconds=15)
    with Session(engine) as session:
        written = {}
        for name, created, processed in [("just_answered", at - timedelta(seconds=5), None),
                                         ("lost_wake", at - timedelta(seconds=60), None),
                                         ("this_round", at - timedelta(seconds=1), None),
                                         ("applied", at - timedelta(seconds=60), at)]:
            case, deliberation = _case(session, len(written)), _deliberation(session, len(written))
            session.add(CaseSignal(case_id=case.id, kind="unit_event", created_at=created, processed_at=processed))
            session.add(DeliberationSignal(deliberation_id=deliberation.id, kind="session", created_at=created,
                                           processed_at=processed))
            written[name] = (case.flow_run_id, deliberation.flow_run_id)
        session.commit()
        woken_cases = {run for run, _ in cases.waiting_runs(session, written_since=round_started,
                                                            older_than=past_grace)}
        woken_deliberations = {run for run, _ in deliberations.waiting_runs(session, written_since=round_started,
                                                                            older_than=past_grace)}
    assert woken_cases == {written["lost_wake"][0], written["this_round"][0]}
    assert woken_deliberations == {written["lost_wake"][1], written["this_round"][1]}


def test_the_first_pending_signal_of_each_run_is_the_one_woken_with(engine):
    with Session(engine) as session:
        case = _case(session, 1)
        old = now() - timedelta(minutes=5)
        ids = []
        for _ in range(3):
            signal = CaseSignal(case_id=case.id, kind="unit_event", created_at=old)
            session.add(signal)
            session.flush()
            ids.append(signal.id)
        session.commit()
        assert cases.waiting_runs(session, written_since=now(), older_than=now()) == [(case.flow_run_id, ids[0])]


def _plans(engine, read) -> list[str]:
    """The plan of every statement `read()` runs, as the database explains it."""
    statements = []

    def seen(_conn, _cursor, statement, parameters, _context, _many):
        statements.append((statement, parameters))
    event.listen(engine, "before_cursor_execute", seen)
    try:
        read()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    plans = []
    with engine.execution_options(read_only=True).connect() as conn:  # SQLite: no write lock beside the reader
        for statement, parameters in statements:
            if statement.lstrip().upper().startswith("SELECT"):
                rows = conn.exec_driver_sql(explain + statement, parameters).all()
                plans.append("\n".join(str(row[-1]) for row in rows))
    return plans


def test_pending_signals_are_read_through_the_partial_index(engine):
    with Session(engine) as session:
        case, deliberation = _case(session, 1), _deliberation(session, 1)
        others = [_case(session, n).id for n in range(2, 50)]
        session.commit()
        applied_at = now()
        session.execute(insert(CaseSignal), [dict(case_id=others[i % len(others)], kind="unit_event",
                                                  created_at=applied_at, processed_at=applied_at)
                                             for i in range(APPLIED)])
        session.execute(insert(DeliberationSignal), [dict(deliberation_id=deliberation.id, kind="session",
                                                          created_at=applied_at, processed_at=applied_at)
                                                     for _ in range(APPLIED)])
        session.add(CaseSignal(case_id=case.id, kind="unit_event"))
        session.add(DeliberationSignal(deliberation_id=deliberation.id, kind="session"))
        session.commit()
        case_id, deliberation_id = case.id, deliberation.id
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()

    at = now()
    with Session(engine.execution_options(read_only=True)) as session:  # as the watch reads (read_scope)
        reads = {
            "the watch's case runs": lambda: cases.waiting_runs(session, written_since=at, older_than=at),
            "the watch's deliberation runs": lambda: deliberations.waiting_runs(session, written_since=at,
                                                                                older_than=at),
            "a case run's own": lambda: cases.pending_signals(session, case_id),
            "a deliberation run's own": lambda: deliberations.pending_signals(session, deliberation_id),
        }
        for what, read in reads.items():
            plans = _plans(engine, read)
            assert plans, f"{what}: no query seen"
            for plan in plans:
                full_scans = [line for line in plan.splitlines() if _reads_whole_signal_table(line)]
                assert "signal_unapplied" in plan and not full_scans, (
                    f"{what} reads the signals without the partial index:\n{plan}")


def _reads_whole_signal_table(line: str) -> bool:
    line = line.strip().lstrip("->").strip()
    return any(line.startswith(f"Seq Scan on {table}") or (line.startswith(f"SCAN {table}") and "INDEX" not in line)
               for table in ("casesignal", "deliberationsignal"))

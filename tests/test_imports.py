"""`hotline import`: historic cases from a CSV into a temporary SQLite DB — good rows become closed cases that the
monthly rates count like any other, bad rows are reported with row, field and reason, a re-import skips."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

HEADER = ("source_ref,reported_at,closed_at,category,lead_unit,community,street,urgency,responded_in_time,"
          "resolved,satisfaction,follow_up,description\n")
ROWS = [
    "IMP-1,2026-10-05T09:00,2026-10-06T10:00,street_lights,st_a,c1,,normal,true,true,satisfied,,路灯不亮",
    "IMP-2,2026-10-07T09:00,2026-10-09T10:00,路灯,st_a,小南庄社区,,,false,是,basically_satisfied,,",
    "IMP-3,2026-10-10T09:00+08:00,2026-10-12T18:00+08:00,street_lights,st_a,,st_a,urgent,1,0,,,",
    "IMP-1,2026-10-05T09:00,2026-10-06T10:00,street_lights,st_a,c1,,,true,true,satisfied,,",  # line 5: twice
    "IMP-4,yesterday,2026-10-06T10:00,street_lights,st_a,c1,,,,,,,",          # line 6
    "IMP-5,2026-10-05T09:00,2026-10-06T10:00,flying_cars,st_a,c1,,,,,,,",     # line 7
    "IMP-6,2026-10-05T09:00,2026-10-06T10:00,street_lights,nobody,c1,,,,,,,",  # line 8
    "IMP-7,2026-10-05T09:00,2026-10-06T10:00,street_lights,st_a,c1,,,,,happy,,",  # line 9
    "IMP-8,2026-10-06T09:00,2026-10-05T10:00,street_lights,st_a,c1,,,,,,,",   # line 10
    ",2026-10-05T09:00,2026-10-06T10:00,street_lights,st_a,c1,,,,,,,",        # line 11
    "IMP-9,2026-10-05T09:00,2026-10-06T10:00,street_lights,st_a,nowhere,,,,,,,",  # line 12
]


@pytest.fixture
def home(db, tmp_path):
    """The temporary DB (tests/conftest.py) with a district, a street and a community; the data folder."""
    from hotline.db import session_scope
    from models import Unit
    with session_scope() as s:
        for code, name, level, parent in (("hd", "海淀区", "district", None), ("st_a", "海淀街道", "street", "hd"),
                                          ("c1", "小南庄社区", "community", "st_a")):
            s.add(Unit(code=code, name=name, level=level, parent=parent, token_hash=f"h-{code}", webhook_secret="s"))
    return tmp_path / "home"


def run_import(home, tmp_path, *extra):
    from hotline.cli import app
    path = tmp_path / "old.csv"
    path.write_text(HEADER + "\n".join(ROWS) + "\n", encoding="utf-8")
    return CliRunner().invoke(app, ["import", str(path), "--home", str(home), *extra])


def test_good_rows_imported_bad_rows_reported_with_reasons(home, tmp_path):
    r = run_import(home, tmp_path, "--rejects", str(tmp_path / "rejects.csv"))
    assert r.exit_code == 0, r.output
    assert "imported 3, skipped 1 already imported, rejected 7" in r.output
    for expected in ("row 6 (IMP-4): reported_at: not an ISO 8601 time: 'yesterday'",
                     "row 7 (IMP-5): category: unknown category 'flying_cars'",
                     "row 8 (IMP-6): lead_unit: unknown unit 'nobody'",
                     "row 9 (IMP-7): satisfaction: must be one of",
                     "row 10 (IMP-8): closed_at: before reported_at",
                     "row 11 (-): source_ref: required",
                     "row 12 (IMP-9): community: unknown place 'nowhere'"):
        assert expected in r.output, r.output
    rejects = (tmp_path / "rejects.csv").read_text(encoding="utf-8-sig").splitlines()
    assert rejects[0] == "row,source_ref,field,reason" and len(rejects) == 8

    from hotline.db import read_scope
    from models import Case, TimelineEntry
    from sqlmodel import select
    with read_scope() as s:
        cases = {c.source_ref: c for c in s.exec(select(Case).where(Case.source == "import"))}
        assert set(cases) == {"IMP-1", "IMP-2", "IMP-3"}
        two = cases["IMP-2"]
        assert (two.category, two.community, two.street, two.status, two.resolved, two.follow_up_outcome) == (
            "street_lights", "c1", "st_a", "closed", True, "answered")  # category and place by Chinese name
        assert cases["IMP-3"].follow_up_outcome == "not_reached" and cases["IMP-3"].satisfaction is None
        assert [t.kind for t in s.exec(select(TimelineEntry).where(TimelineEntry.case_id == two.id))] == ["imported"]


def test_a_second_import_skips_what_is_there(home, tmp_path):
    run_import(home, tmp_path)
    again = run_import(home, tmp_path)
    assert again.exit_code == 0 and "imported 0, skipped 4 already imported, rejected 7" in again.output


def test_imported_month_counts_in_the_rates(home, tmp_path):
    run_import(home, tmp_path)
    from hotline.db import read_scope
    from services.evaluation import rates_for_month
    with read_scope() as s:
        [row] = rates_for_month(s, "2026-10", "street")
    # responded: IMP-1, IMP-3 -> 2/3; resolved: IMP-1, IMP-2 -> 2/3; satisfaction (answered: IMP-1 = 1,
    # IMP-2 basically = 0.8) -> 0.9; score = 100 * (0.2 * 2/3 + 0.4 * 2/3 + 0.4 * 0.9) = 76.0
    assert (row["unit"], row["cases"], row["response_rate"], row["resolution_rate"], row["satisfaction_rate"],
            row["score"], row["rank"]) == ("st_a", 3, 0.6667, 0.6667, 0.9, 76.0, 1)


def test_a_file_without_the_required_columns_is_refused(home, tmp_path):
    from hotline.cli import app
    path = tmp_path / "bad.csv"
    path.write_text("ref,when\n1,2\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["import", str(path), "--home", str(home)])
    assert r.exit_code == 1 and "missing columns" in r.output

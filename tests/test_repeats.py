"""重复诉求 / 同人诉求 and hot spots (services/repeats.py, policies/repeat.yaml) on a temporary SQLite DB:
cases are recorded and collected through the one case writer, exactly as the case flow does."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from tests.conftest import clear_caches

T0 = datetime(2026, 11, 10, 2, 0, tzinfo=timezone.utc)
_ref = itertools.count(1)


@pytest.fixture
def db(db):
    """The temporary DB (tests/conftest.py) with a district, a street and two communities."""
    from hotline.db import session_scope
    from models import Unit
    with session_scope() as s:
        for code, level, parent in (("hd", "district", None), ("st_a", "street", "hd"),
                                    ("c1", "community", "st_a"), ("c2", "community", "st_a")):
            s.add(Unit(code=code, name=f"name of {code}", level=level, parent=parent, token_hash=f"h-{code}",
                       webhook_secret="s"))
    return db


def submit(*, phone: str | None = "13912345678", category="street_lights", community="c1", days=0.0,
           anonymous=False, urgency="normal"):
    """Record and collect one case; returns its id."""
    from hotline.db import session_scope
    from services import cases
    fields = {"source": "hotline", "source_ref": f"r-{next(_ref)}", "category": category, "description": "d",
              "urgency": urgency, "location": {"community": community}, "citizen_name": "陈阿姨",
              "citizen_phone": phone, "anonymous": anonymous, "reported_at": T0 + timedelta(days=days)}
    with session_scope() as s:
        case, _ = cases.create_case(session=s, fields=fields)
        case_id = case.id
    with session_scope() as s:
        cases.collect(s, case_id)
    return case_id


def links(case_id: int) -> list[tuple[str, str]]:
    from hotline.db import read_scope
    from services.repeats import related
    with read_scope() as s:
        return [(r["kind"], r["direction"]) for r in related(s, case_id)]


def case(case_id: int):
    from hotline.db import read_scope
    from models import Case
    with read_scope() as s:
        return s.get(Case, case_id)


def kinds(case_id: int) -> list[str]:
    from hotline.db import read_scope
    from models import TimelineEntry
    from sqlmodel import select
    with read_scope() as s:
        return [t.kind for t in s.exec(select(TimelineEntry).where(TimelineEntry.case_id == case_id))]


def write_policy(policy_dir, **sections):
    (policy_dir / "repeat.yaml").write_text(yaml.safe_dump(sections), encoding="utf-8")


def test_same_citizen_same_category_and_place_is_a_repeat_on_both_cases(db):
    first = submit(phone="139 1234 5678")
    second = submit(phone="+86 139-1234-5678", days=3)  # the same number written differently
    assert links(second) == [("same_citizen", "earlier")]
    assert links(first) == [("same_citizen", "later")]
    assert "repeat.linked" in kinds(first) and "repeat.linked" in kinds(second)
    assert case(second).urgency == "urgent" and "urgency.raised" in kinds(second)  # policy: raise to urgent
    assert case(first).urgency == "normal"


def test_not_a_repeat_other_category_other_place_other_citizen_or_anonymous(db):
    submit()
    assert links(submit(category="noise", days=1)) == []
    assert links(submit(community="c2", days=1)) == []
    assert links(submit(phone="13700000000", days=1)) == []
    anonymous = links(submit(anonymous=True, days=1))
    assert ("same_citizen", "earlier") not in anonymous  # anonymous: never a same-citizen link…
    assert anonymous == [("hot_spot", "earlier"), ("hot_spot", "earlier")]  # …but 3 cases, 2+ citizens in c1


def test_window_counts_for_closed_cases_but_open_ones_always_repeat(db):
    from hotline.db import session_scope
    from models import Case, CaseStatus
    old_closed, old_open = submit(), submit(category="noise")
    with session_scope() as s:
        c = s.get(Case, old_closed)
        c.status = CaseStatus.closed
        s.add(c)
    assert links(submit(days=31)) == []  # closed and older than 30 days: not a repeat
    assert links(submit(category="noise", days=31)) == [("same_citizen", "earlier")]  # still open: a repeat


def test_urgency_not_raised_when_the_policy_says_null_and_never_lowered(db):
    write_policy(db, same_citizen={"window_days": 30, "raise_urgency_to": None})
    submit()
    assert case(submit(days=1)).urgency == "normal"
    write_policy(db, same_citizen={"window_days": 30, "raise_urgency_to": "urgent"})
    assert case(submit(days=2, urgency="emergency")).urgency == "emergency"


def test_collecting_again_links_nothing_twice(db):
    from hotline.db import session_scope
    from services import cases
    submit()
    second = submit(days=1)
    with session_scope() as s:
        cases.collect(s, second)  # a replay of the flow's first step
    assert links(second) == [("same_citizen", "earlier")]
    assert kinds(second).count("repeat.linked") == 1


def test_hot_spot_needs_enough_cases_and_enough_citizens(db):
    write_policy(db, hot_spot={"window_days": 7, "min_cases": 3, "min_citizens": 2})
    a = submit(phone="13100000001", category="noise")
    b = submit(phone="13100000001", category="noise", days=1)  # same citizen: a repeat, one citizen so far
    assert [k for k, _ in links(b)] == ["same_citizen"]
    c = submit(phone="13100000002", category="noise", days=2)  # 3 cases, 2 citizens: a hot spot
    assert sorted(k for k, d in links(c)) == ["hot_spot", "hot_spot"] and "hot_spot" in kinds(c)
    late = submit(phone="13100000003", category="noise", days=20)  # outside the 7-day window of the others
    assert links(late) == []
    other = submit(phone="13100000004", category="noise", community="c2", days=2)  # another community
    assert links(other) == []
    assert a  # the first case of a cluster is linked from the later ones
    assert ("hot_spot", "later") in links(a)


def test_hot_spot_min_citizens_matters(db):
    write_policy(db, hot_spot={"window_days": 7, "min_cases": 3, "min_citizens": 3})
    submit(phone="13100000001", category="noise")
    submit(phone="13100000002", category="noise", days=1)
    third = submit(phone="13100000002", category="noise", days=2)
    assert [k for k, _ in links(third)] == ["same_citizen"]  # 3 cases but only 2 citizens


def test_hot_spots_of_a_period(db):
    from hotline.db import read_scope
    from services.repeats import hot_spots
    write_policy(db, hot_spot={"window_days": 7, "min_cases": 3, "min_citizens": 2})
    for i in range(3):
        submit(phone=f"1310000000{i}", category="noise", days=i)
    submit(phone="13100000009", category="noise", community="c2")  # alone: no hot spot
    with read_scope() as s:
        [spot] = hot_spots(s, T0 - timedelta(days=1), T0 + timedelta(days=30))
        assert (spot.community, spot.category, spot.cases, spot.citizens, spot.street) == ("c1", "noise", 3, 3, "st_a")
        assert spot.first_at < spot.last_at
        assert hot_spots(s, T0 + timedelta(days=10), T0 + timedelta(days=30)) == []


def test_citizen_key_is_a_keyed_hash_not_the_phone(db, monkeypatch):
    from services.repeats import _secret, citizen_key
    key = citizen_key("13912345678")
    assert key and "13912345678" not in key and len(key) == 64
    assert citizen_key("+86 139 1234 5678") == key
    assert citizen_key(None) is None and citizen_key("") is None
    monkeypatch.setenv("HOTLINE_CITIZEN_KEY", "another-secret")
    clear_caches()
    assert citizen_key("13912345678") != key
    assert case(submit()).citizen_key == citizen_key("13912345678")
    _secret.cache_clear()


def test_without_a_configured_secret_a_key_file_is_made_once(db, monkeypatch, tmp_path):
    from hotline.settings import get_settings
    from services.repeats import _secret, citizen_key
    monkeypatch.delenv("HOTLINE_CITIZEN_KEY")
    clear_caches()
    first = citizen_key("13912345678")
    path = get_settings().home / "citizen_key"
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    _secret.cache_clear()
    assert citizen_key("13912345678") == first  # read back from the file


def test_repeat_policy_is_validated(db):
    from services.policies import PolicyError
    from services.repeats import repeat_policy
    write_policy(db, same_citizen={"raise_urgency_to": "very"})
    with pytest.raises(PolicyError, match="raise_urgency_to"):
        repeat_policy()
    write_policy(db, hot_spot={"min_cases": 1})
    with pytest.raises(PolicyError, match="min_cases"):
        repeat_policy()


def test_a_big_hot_spot_links_only_the_latest_cases(db):
    write_policy(db, hot_spot={"window_days": 7, "min_cases": 3, "min_citizens": 2, "max_links": 2})
    ids = [submit(phone=f"1310000001{i}", category="noise", days=i / 10) for i in range(5)]
    assert [k for k, d in links(ids[-1]) if d == "earlier"] == ["hot_spot", "hot_spot"]
    from hotline.db import read_scope
    from models import TimelineEntry
    from sqlmodel import select
    with read_scope() as s:
        entry = s.exec(select(TimelineEntry).where(TimelineEntry.case_id == ids[-1],
                                                   TimelineEntry.kind == "hot_spot")).one()
    assert entry.data["cases"] == 5 and entry.data["citizens"] == 5 and len(entry.data["related"]) == 2


def test_a_big_hot_spot_is_counted_up_to_the_policy_bound(db):
    write_policy(db, hot_spot={"window_days": 7, "min_cases": 3, "min_citizens": 2, "max_links": 2,
                               "count_up_to": 3})
    ids = [submit(phone=f"1310000002{i}", category="noise", days=i / 10) for i in range(6)]
    from hotline.db import read_scope
    from models import TimelineEntry
    from sqlmodel import select
    with read_scope() as s:
        entries = {e.case_id: e for e in s.exec(select(TimelineEntry).where(TimelineEntry.kind == "hot_spot"))}
    # the third case is the first in the spot; up to the bound the count is exact, past it "以上"
    assert sorted(entries) == ids[2:]
    assert [(entries[i].data["cases"], entries[i].data["counted_up_to"]) for i in ids[2:]] == [
        (3, False), (4, False), (4, True), (4, True)]
    assert entries[ids[-1]].note.endswith("4 件以上") and entries[ids[2]].note.endswith("3 件")
    assert [k for k, d in links(ids[-1]) if d == "earlier"] == ["hot_spot", "hot_spot"]


def test_count_up_to_must_cover_the_other_bounds(db):
    from services.policies import PolicyError
    from services.repeats import repeat_policy
    write_policy(db, hot_spot={"max_links": 20, "count_up_to": 10})
    with pytest.raises(PolicyError, match="count_up_to"):
        repeat_policy()

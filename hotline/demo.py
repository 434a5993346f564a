"""The demo: a district from the seed scenes, a receiver playing its departments, seed cases pushed through
the whole lifecycle while the terminal shows each stage (and the Prefect UI shows the runs)."""
from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from hotline.receiver import Received, Receiver
from hotline.settings import REPO_ROOT

DEMO_DIR = REPO_ROOT / "demo"


def demo_policy_dir(home: Path) -> Path:
    """The district's policies with the demo's short service levels."""
    target = home / "demo-policies"
    shutil.copytree(REPO_ROOT / "policies", target, dirs_exist_ok=True)
    shutil.copy(DEMO_DIR / "sla.yaml", target / "sla.yaml")
    return target


@dataclass
class District:
    unit_tokens: dict[str, str] = field(default_factory=dict)
    staff_tokens: dict[str, str] = field(default_factory=dict)  # role -> token


def register_district(api: httpx.Client, admin: str, receiver: Receiver,
                      path: Path = DEMO_DIR / "district.yaml") -> District:
    """Register the units (webhooks pointing at the receiver) and staff; idempotent (rotates existing units)."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    auth = {"Authorization": f"Bearer {admin}"}
    district = District()
    for unit in spec["units"]:
        code = unit["code"]
        body = {k: v for k, v in unit.items() if k != "code"} | {"webhook_url": receiver.hook_url(code)}
        r = api.put(f"/api/units/{code}", json=body, headers=auth)
        r.raise_for_status()
        creds = r.json() if r.json().get("token") else api.post(f"/api/units/{code}/rotate", headers=auth).json()
        district.unit_tokens[code] = creds["token"]
        receiver.secrets[code] = creds["webhook_secret"]
    for staff in spec["staff"]:
        r = api.post("/api/staff", json=staff, headers=auth)
        r.raise_for_status()
        district.staff_tokens[staff["role"]] = r.json()["token"]
    return district


class Departments:
    """Answers work orders the way each seed case's `plays` says."""

    def __init__(self, api_url: str, district: District, plays: dict[str, str], say: Callable[[str], None]):
        self.api_url, self.district, self.plays, self.say = api_url, district, plays, say
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def on_event(self, item: Received) -> None:
        if item.type != "work_order.assigned":
            self.say(f"  [{item.unit}] received {item.type} for {item.data.get('case_number')}")
            return
        number = item.data["case_number"]
        with self.lock:
            self.seen[number] = self.seen.get(number, 0) + 1
            nth = self.seen[number]
        self.pool.submit(self._answer, item, self.plays.get(number, "resolve"), nth)

    def _answer(self, item: Received, play: str, nth: int) -> None:
        unit, data = item.unit, item.data
        self.say(f"  [{unit}] work order {data['work_order_id']} for case {data['case_number']} arrived (signed, verified)")
        if play == "silent" and nth == 1:
            self.say(f"  [{unit}] stays silent: the deadline watch will escalate it")
            return
        events = [{"type": "reject", "reason": "不属于本单位职责"}] if play == "reject_then_resolve" and nth == 1 else [
            {"type": "accept"}, {"type": "contacted", "note": "已电话联系诉求人"},
            {"type": "complete", "resolved": True, "note": "已处理完毕"}]
        with httpx.Client(timeout=30) as client:
            for event in events:
                time.sleep(1.5)
                r = client.post(data["callback_url"], json=event,
                                headers={"Authorization": f"Bearer {self.district.unit_tokens[unit]}"})
                self.say(f"  [{unit}] {event['type']} -> {r.status_code}")


def run_demo(api_url: str, prefect_url: str, admin: str, receiver_port: int, timeout: float = 300,
             say: Callable[[str], None] = print) -> bool:
    receiver = Receiver(port=receiver_port)
    api = httpx.Client(base_url=api_url, timeout=30)
    district = register_district(api, admin, receiver)
    say(f"registered {len(district.unit_tokens)} units of the demo district")
    spec = yaml.safe_load((DEMO_DIR / "cases.yaml").read_text(encoding="utf-8"))["cases"]
    plays: dict[str, str] = {}
    departments = Departments(api_url, district, plays, say)
    receiver.on_event = departments.on_event
    receiver.start()
    run_tag = time.strftime("%Y%m%d%H%M%S")
    numbers: dict[str, str] = {}
    for seed in spec:
        body = {k: v for k, v in seed.items() if k != "plays"}
        body |= {"source": "hotline", "source_ref": f"{seed['source_ref']}-{run_tag}",
                 "citizen": {"name": "示例居民", "phone": "13800000000"}}
        created = api.post("/api/cases", json=body).json()
        plays[created["number"]] = seed["plays"]
        numbers[created["case_id"]] = created["number"]
        say(f"case {created['number']} ({seed['title']}): {seed['plays']}; flow run {created['flow_run_id']}")
    say(f"watch them in the Prefect UI: {prefect_url}/runs")
    auth = {"Authorization": f"Bearer {admin}"}
    follow_up = {"Authorization": f"Bearer {district.staff_tokens['follow_up']}"}
    shown: dict[str, int] = {}
    followed: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = {}
        for case_id, number in numbers.items():
            detail = api.get(f"/api/cases/{case_id}", headers=auth).json()
            statuses[case_id] = detail["status"]
            for entry in detail["timeline"][shown.get(case_id, 0):]:
                say(f"{number} | {entry['kind']:<22} {entry['note'] or ''}")
            shown[case_id] = len(detail["timeline"])
            rounds = followed.get(case_id, 0)
            if detail["status"] == "awaiting_follow_up" and rounds <= detail["reopen_count"]:
                unhappy = plays[number] == "reopen" and rounds == 0
                answer = {"reached": True, "resolved": not unhappy,
                          "satisfaction": "unsatisfied" if unhappy else "satisfied",
                          "note": "问题仍未解决" if unhappy else "满意"}
                r = api.post(f"/api/cases/{case_id}/follow-up", json=answer, headers=follow_up)
                if r.status_code == 200:
                    followed[case_id] = rounds + 1
                    say(f"{number} | follow-up call: {answer['satisfaction']}")
        if all(s == "closed" for s in statuses.values()):
            say("all demo cases closed.")
            receiver.stop()
            return True
        time.sleep(2)
    say("demo timed out before every case closed; see the timelines above and the Prefect UI")
    receiver.stop()
    return False

"""The monthly report as the scheduled deployment runs it: on the real stack, a run of `monthly-report/hotline`
for this month writes report.html and the CSV files and publishes the rates table as a Prefect artifact."""
from __future__ import annotations


from hotline.clock import local, now
from tests.conftest import Env, eventually


def test_monthly_report_flow_writes_files_and_publishes_the_rates(env: Env):
    created = env.submit(category="street_lights")  # one case closed this month, so the month has numbers
    order = env.wait_orders(created["case_id"], 1)["work_orders"][0]
    env.resolve(order["work_order_id"], order["unit"])
    env.wait(created["case_id"], lambda d: d["status"] == "awaiting_follow_up", "follow-up")
    env.follow_up(created["case_id"], reached=True, resolved=True, satisfaction="satisfied")
    env.wait(created["case_id"], lambda d: d["status"] == "closed", "close")

    month = f"{local(now()):%Y-%m}"
    deployment = env.prefect.get("/api/deployments/name/monthly-report/hotline")
    assert deployment.status_code == 200, deployment.text
    assert deployment.json()["schedules"][0]["schedule"]["cron"] == "0 2 1 * *"
    run = env.prefect_post(f"/api/deployments/{deployment.json()['id']}/create_flow_run",
                           {"parameters": {"month": month}})
    assert run.status_code == 201, run.text
    state = eventually(lambda: env.flow_run(run.json()["id"]), "the monthly report run to end",
                       lambda state: state["state_type"] in ("COMPLETED", "FAILED", "CRASHED"),
                       describe=lambda state: state["state_name"])
    assert state["state_type"] == "COMPLETED", state["state_name"]
    assert state["name"] == f"report-{month}"

    folder = env.stack.home / "reports" / month
    assert {"report.html", "rates_street.csv", "trend.csv", "hot_spots.csv"} <= {p.name for p in folder.iterdir()}
    assert "<svg" in (folder / "report.html").read_text(encoding="utf-8")
    artifacts = env.prefect_post("/api/artifacts/filter", {"artifacts": {"key": {"any_": [f"rates-{month}"]}}})
    assert artifacts.status_code == 200 and artifacts.json(), artifacts.text
    markdown = artifacts.json()[0]["data"]
    assert "haidian_st" in markdown or "海淀街道" in markdown
    for secret in ("陈阿姨", "13912345678"):
        assert secret not in markdown

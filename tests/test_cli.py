"""The operators' CLI (`hotline cases|escalations|units`) against the real stack's API, as an operator runs it."""
from __future__ import annotations

from typer.testing import CliRunner

from hotline.cli import app
from hotline.runtime import admin_token
from tests.conftest import Env

runner = CliRunner()


def cli(env: Env, *args: str, token: str | None = None):
    return runner.invoke(app, [*args, "--api", env.stack.api_url, "--token", token or admin_token(env.stack.home)],
                         env={"COLUMNS": "250"})  # wide enough that no column is cut


def test_cases_list_and_show_mask_the_citizen(env: Env):
    created = env.submit(category="street_lights", citizen={"name": "钱大爷", "phone": "13600001234"})
    env.wait_orders(created["case_id"], 1)
    listed = cli(env, "cases", "list", "--street", "haidian_st", "--limit", "500")
    assert listed.exit_code == 0, listed.output
    assert created["number"] in listed.output
    shown = cli(env, "cases", "show", created["case_id"])
    assert shown.exit_code == 0, shown.output
    assert created["number"] in shown.output and "work_order.assigned" in shown.output
    for secret in ("钱大爷", "13600001234"):
        assert secret not in listed.output + shown.output


def test_units_add_prints_credentials_once_and_list_shows_the_unit(env: Env):
    added = cli(env, "units", "add", "cli_dept", "--name", "区测试局", "--level", "department",
                "--parent", "haidian")
    assert added.exit_code == 0, added.output
    assert "whsec_" in added.output and '"created": true' in added.output
    again = cli(env, "units", "add", "cli_dept", "--name", "区测试局", "--level", "department")
    assert again.exit_code == 0 and "whsec_" not in again.output  # an update shows no secret
    listed = cli(env, "units", "list")
    assert "cli_dept" in listed.output and "区测试局" in listed.output
    bad = cli(env, "units", "add", "x", "--name", "y", "--level", "galaxy")
    assert bad.exit_code == 1 and "422" in bad.output and "level" in bad.output


def test_escalations_list_and_decide_reassign(env: Env):
    created = env.submit(urgency="emergency", category="sanitation", location={"community": "万泉庄社区"})
    detail = env.wait(created["case_id"], lambda d: d["escalations"], "an escalation")
    escalation_id = detail["escalations"][0]["id"]
    listed = cli(env, "escalations", "list")
    assert listed.exit_code == 0 and created["number"] in listed.output, listed.output

    refused = cli(env, "escalations", "decide", escalation_id, "--action", "reassign", "--reason", "转派",
                  "--unit", "no_such_unit")
    assert refused.exit_code == 1 and "no_such_unit" in refused.output, refused.output
    missing = cli(env, "escalations", "decide", escalation_id, "--action", "reassign", "--reason", "")
    assert missing.exit_code == 1 and "reason" in missing.output, missing.output

    decided = cli(env, "escalations", "decide", escalation_id, "--action", "reassign", "--reason", "改由水务处理",
                  "--unit", "water_co")
    assert decided.exit_code == 0, decided.output
    env.wait(created["case_id"], lambda d: any(o["unit"] == "water_co" for o in d["work_orders"]), "reassignment")


def test_without_a_token_the_cli_says_what_to_do(env: Env, tmp_path, monkeypatch):
    monkeypatch.delenv("HOTLINE_ADMIN_TOKEN", raising=False)
    from hotline.settings import get_settings
    get_settings.cache_clear()
    try:
        r = runner.invoke(app, ["cases", "list", "--api", env.stack.api_url, "--home", str(tmp_path)])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 1 and "no token" in r.output

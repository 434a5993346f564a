"""The supervisor console in a real browser (Playwright driving Debian's Chromium) against the real stack:
log in, see an overdue case in the queue, reassign it, see the reassignment (in Chinese) and the new unit's webhook;
forms refuse a missing or wrong CSRF token; a wrong token does not log in. Screenshots of the queue and the case
page, on a laptop and on a tablet, go to docs/screenshots/. Fast page tests: tests/test_console_pages.py."""
from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from hotline.settings import REPO_ROOT
from tests.conftest import Env, eventually

SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
LAPTOP, TABLET = {"width": 1280, "height": 900}, {"width": 820, "height": 1180}


def screenshots(page: Page, name: str) -> None:
    """console-<name>.png at laptop size and console-<name>-tablet.png at tablet size (portrait)."""
    page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"), full_page=True)
    page.set_viewport_size(TABLET)
    page.screenshot(path=str(SCREENSHOTS / f"console-{name}-tablet.png"), full_page=True)
    page.set_viewport_size(LAPTOP)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium",
                              args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def login(browser: Browser, env: Env, token: str) -> Page:
    page = browser.new_page(viewport=LAPTOP, locale="zh-CN")
    page.goto(f"{env.stack.api_url}/console")
    expect(page).to_have_url(f"{env.stack.api_url}/console/login")  # not logged in: sent to the login page
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    return page


def overdue_case(env: Env) -> dict:
    """An emergency case whose response deadline lapses in seconds (test SLA): it escalates."""
    created = env.submit(urgency="emergency", category="sanitation", location={"community": "万泉庄社区"})
    env.wait(created["case_id"], lambda d: d["escalations"], "an escalation")
    return created


def test_supervisor_reassigns_an_overdue_case(env: Env, browser: Browser):
    created = overdue_case(env)
    page = login(browser, env, env.district.staff_tokens["supervisor"])
    expect(page).to_have_url(f"{env.stack.api_url}/console")
    row = page.locator("tr", has_text=created["number"]).first
    expect(row).to_contain_text("响应超时")
    expect(row).to_contain_text("特急")
    screenshots(page, "queue")

    row.locator("a").click()
    expect(page.locator("h1")).to_contain_text(created["number"])
    form = page.locator("form.decide").first
    form.locator("select[name=action]").select_option("reassign")
    form.locator("select[name=unit]").select_option("water_co")
    form.locator("textarea[name=reason]").fill("水质问题, 改由自来水公司办理")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash.ok")).to_contain_text("改派")

    detail = env.wait(created["case_id"], lambda d: any(o["unit"] == "water_co" for o in d["work_orders"]),
                      "the reassigned work order")
    assert any(t["kind"] == "escalation.decided" and "水质问题" in (t["note"] or "") for t in detail["timeline"])
    eventually(lambda: env.receiver.of(unit="water_co", type="work_order.assigned", case_number=created["number"]),
               "the new unit's work order webhook")
    page.reload()
    water = env.api.get("/api/units", headers=env.admin).json()
    water_name = next(u["name"] for u in water if u["code"] == "water_co")
    expect(page.locator("#work-orders")).to_contain_text(water_name)  # unit names, the code small beside
    expect(page.locator("#work-orders")).to_contain_text("已撤回")  # the street's order, withdrawn
    expect(page.locator("#timeline")).to_contain_text("改派")
    expect(page.locator("#timeline")).to_contain_text("水质问题")
    timeline = page.locator("#timeline").inner_text()
    for machine in ("reassigned", "escalation.decided", "work_order.assigned", "overdue_response", "staff:"):
        assert machine not in timeline, machine
    expect(page.locator("#case-status")).not_to_contain_text(re.compile("[a-z_]{4,}"))  # a Chinese label
    assert "13912345678" not in page.content()  # the case page shows the citizen masked
    screenshots(page, "case")
    page.close()


def test_forms_without_the_csrf_token_are_refused(env: Env, browser: Browser):
    created = overdue_case(env)
    escalation_id = env.case(created["case_id"])["escalations"][0]["id"]
    page = login(browser, env, env.district.staff_tokens["supervisor"])
    expect(page).to_have_url(f"{env.stack.api_url}/console")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    page.close()
    with httpx.Client(base_url=env.stack.api_url, cookies=cookies) as client:
        body = {"action": "close", "reason": "forged"}
        for forged in (body, body | {"csrf": "not-the-token"}):
            r = client.post(f"/console/escalations/{escalation_id}/decision", data=forged)
            assert r.status_code == 403 and "CSRF" in r.text
    assert env.case(created["case_id"])["escalations"][0]["status"] == "open"  # nothing was decided
    with httpx.Client(base_url=env.stack.api_url) as client:  # a login post without its form's token
        r = client.post("/console/login", data={"token": env.district.staff_tokens["supervisor"]})
        assert r.status_code == 403


def test_a_wrong_or_non_supervisor_token_does_not_log_in(env: Env, browser: Browser):
    for token in ("nonsense", env.district.unit_tokens["haidian_st"], env.district.staff_tokens["follow_up"]):
        page = login(browser, env, token)
        expect(page).to_have_url(re.compile(r"/console/login\?error="))
        expect(page.locator(".flash.err")).to_contain_text("令牌无效")
        page.close()


def test_rates_page(env: Env, browser: Browser):
    page = login(browser, env, env.district.staff_tokens["supervisor"])
    page.goto(f"{env.stack.api_url}/console/rates?level=street")
    expect(page.locator("h1")).to_contain_text("三率与排名")
    expect(page.locator("table")).to_contain_text("海淀街道")
    page.close()

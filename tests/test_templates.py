"""The human-readable messages (jinja2 templates in notifications/templates): exact output, escaping, masking."""
from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

from notifications.payloads import follow_up_script, reminder_text, work_order_payload

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)  # 10:00 in Beijing


def case(**over):
    base = dict(id=7, number="20261123000007", category="street_lights", title="路灯太亮",
                description="楼前路灯太亮, 一层住户无法休息", urgency="urgent",
                location={"address": "小南庄社区14号楼前", "community": "小南庄社区"},
                citizen_name="陈阿姨", citizen_phone="13912345678", anonymous=False, follow_up_due_at=T0)
    return SimpleNamespace(**(base | over))


def order(**over):
    return SimpleNamespace(**({"id": 3, "role": "lead", "respond_by": T0, "due_at": T0, "resolved": True,
                               "note": "已更换为低功率灯具"} | over))


UNIT = SimpleNamespace(code="haidian_st", name="海淀街道")


def test_work_order_text_for_the_lead_unit():
    data = work_order_payload(case(), order(), UNIT)
    assert data["text"] == (
        "【紧急工单】20261123000007\n"
        "分类: 路灯\n"
        "地点: 小南庄社区14号楼前\n"
        "诉求: 路灯太亮: 楼前路灯太亮, 一层住户无法休息\n"
        "联系人: 陈阿姨 13912345678\n"
        "请于 2026-11-23T10:00:00+08:00 前联系诉求人, 2026-11-23T10:00:00+08:00 前办结并反馈。\n")


def test_co_units_and_anonymous_cases_get_no_contact():
    co = work_order_payload(case(), order(role="co"), UNIT)
    assert "联系人: 陈** 139****5678" in co["text"] and "13912345678" not in str(co)
    anonymous = work_order_payload(case(anonymous=True), order(), UNIT)
    assert "联系人" not in anonymous["text"] and anonymous["citizen"] == {"anonymous": True}


def test_html_is_autoescaped_and_text_is_not():
    data = work_order_payload(case(description='<script>alert("x")</script> & 噪音'), order(), UNIT)
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; 噪音" in data["html"]
    assert "<script>" not in data["html"]
    assert '<script>alert("x")</script> & 噪音' in data["text"]
    assert '<time datetime="2026-11-23T10:00:00+08:00">' in data["html"]


def test_reminder_text():
    assert reminder_text(case(), order(), 0.8) == (
        "【催办提醒】工单 20261123000007 已用时 80%, 请于 2026-11-23T10:00:00+08:00 前办结并反馈。\n")


def test_follow_up_script_for_the_staff_who_call():
    script = follow_up_script(case(), order(), UNIT)
    assert script.splitlines() == [
        "【回访】20261123000007 路灯",
        "诉求人: 陈阿姨 13912345678",
        '承办单位: 海淀街道 报告已解决 ("已更换为低功率灯具")',
        "请于 2026-11-23T10:00:00+08:00 前回访:",
        '1. 您反映的"路灯太亮"问题是否已解决?',
        "2. 您对办理结果是否满意? (满意 / 基本满意 / 不满意)",
        "3. 还有什么意见和建议?",
    ]
    untitled = follow_up_script(case(title=None, description="自来水持续发黄, 多次反映, 希望出具有资质的检测报告和处理结果"),
                                order(resolved=False, note=None), UNIT)
    assert '"自来水持续发黄, 多次反映, 希望出具有资质的检测报告和处理…"' in untitled
    assert "报告未解决" in untitled


def test_operators_timeline_masks_numbers_and_the_citizen_name():
    """The Prefect artifact is seen by all staff: a unit's note quoting the citizen is masked."""
    from services.run_view import _clean
    note = "已联系陈阿姨 13912345678, 约明天| 上门\n查看"
    assert _clean(note, case()) == "已联系陈** 139********, 约明天\\| 上门 查看"
    assert _clean("3号楼", case()) == "3号楼"  # short numbers (house numbers) stay
    assert _clean(None, case()) == ""


def test_run_tags_name_place_unit_level_and_stage():
    from services.run_view import run_tags
    tags = run_tags(case(source="hotline", district="haidian", street="haidian_st", community=None,
                         lead_unit="haidian_st"), unit_level="street", stage="Awaiting follow-up")
    assert tags == ["category:street_lights", "urgency:urgent", "source:hotline", "district:haidian",
                    "street:haidian_st", "unit:haidian_st", "level:street", "stage:awaiting-follow-up"]

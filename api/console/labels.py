"""What the console shows people instead of machine values: Chinese labels for codes, unit names, local times.

One place for every page (registered as jinja2 filters by `install`): `{{ case.status|zh("case_status") }}`,
`{{ code|unit }}` (the unit's name, its code small beside it), `{{ at|when }}` (e.g. `11-24 14:05`, Asia/Shanghai),
`{{ entry|note }}` (a timeline note with unit and trigger codes named). An unknown code is shown as itself, so a new
status shows up as its code rather than as nothing. Forms keep posting the machine values.
"""
from __future__ import annotations

import re
from datetime import datetime

from jinja2 import Environment, pass_context
from markupsafe import Markup, escape

from hotline.clock import local

LABELS: dict[str, dict[str, str]] = {
    "case_status": {  # models.states.CaseStatus
        "received": "已受理", "dispatched": "已派单", "handling": "办理中", "awaiting_follow_up": "待回访",
        "evaluating": "考评中", "closed": "已办结",
    },
    "order_status": {  # models.states.WorkOrderStatus
        "assigned": "待签收", "accepted": "已签收", "in_progress": "办理中", "completed": "已办结",
        "rejected": "已退单", "lapsed": "已超时", "withdrawn": "已撤回",
    },
    "order_reason": {  # why a work order was created (WorkOrder.reason)
        "dispatch": "派单", "direct": "直派", "co_dispatch": "协办派单", "reject": "退单后改派",
        "escalation": "超时升级", "reopen": "重办", "reassign": "督办改派", "directed": "指定承办",
    },
    "role": {"lead": "主办", "co": "协办"},
    "trigger": {  # services.policies.TRIGGERS
        "overdue_response": "响应超时", "overdue_completion": "办理超时", "bounced": "退单过多",
        "whistle_not_reported": "吹哨未报到", "unsatisfied": "回访不满意", "unsatisfied_twice": "两次不满意", "extension_request": "申请延期",
        "unroutable": "无法派单",
    },
    "escalation_status": {"open": "待处理", "decided": "已处理"},
    "action": {"reassign": "改派", "extend": "延期", "take_over": "包案", "close": "办结"},
    "urgency": {"normal": "普通", "urgent": "紧急", "emergency": "特急"},
    "level": {"community": "社区", "street": "街道", "department": "委办局", "utility": "公共服务企业",
              "district": "区"},
    "timeline": {  # TimelineEntry.kind, as written by services/cases.py, repeats.py, whistles.py, imports.py
        "received": "受理", "category_unknown": "分类未知", "collected": "信息采集", "routed": "派单",
        "route_unit_unknown": "派单单位不存在", "work_order.assigned": "工单派发", "work_order.withdrawn": "撤回工单",
        "work_order.reminder": "时限提醒", "unit.accept": "签收", "unit.contacted": "联系诉求人",
        "unit.progress": "办理进展", "unit.complete": "办结上报", "unit.reject": "退单", "unit.extend": "申请延期",
        "sla.paused": "暂停计时", "sla.resumed": "恢复计时", "handling": "办理中", "bounced_too_often": "退单过多",
        "awaiting_dispatch": "待派单", "redispatched": "重新派单", "deadline_lapsed": "超时",
        "escalated": "升级", "escalation.decided": "督办决定", "extension.approved": "批准延期",
        "extension.refused": "驳回延期", "taken_over": "包案", "reassigned": "改派",
        "closed_by_supervisor": "督办办结", "reopened": "重办", "follow_up.requested": "待回访",
        "follow_up.attempt": "回访未接通", "follow_up.answered": "回访完成", "follow_up.not_reached": "回访未联系上",
        "follow_up.skipped": "免回访", "closed": "办结", "imported": "历史导入", "repeat.linked": "重复诉求",
        "urgency.raised": "提升紧急程度", "hot_spot": "热点", "whistle.blown": "吹哨",
        "whistle.reported": "报到", "whistle.rated": "吹哨评价",
        "deliberation.linked": "转入商量", "deliberation.result": "商量结果反馈",
    },
    "deliberation_timeline": {  # DeliberationEntry.kind, as written by services/deliberations.py
        "created": "确定议题", "case.linked": "关联诉求", "participant.invited": "邀请代表",
        "participant.rsvp": "代表回复", "step": "进入下一环节", "session.held": "组织商量", "decided": "形成决定",
        "item.case": "事项派单", "items.done": "事项办结", "published.topic": "议题公示",
        "published.decision": "决议公开", "published.result": "结果公开", "result.told": "结果告知",
        "evaluated": "群众评议", "concluded": "商量完成",
    },
    "rsvp": {"pending": "待回复", "accepted": "参加", "declined": "不参加"},
    "publicity_stage": {"topic": "议题公示", "decision": "决议公开", "result": "实施结果公开"},
    "delivery_status": {  # models.deliveries.Delivery.status
        "pending": "待发送", "delivered": "已送达", "failed": "被拒收", "dead_letter": "投递失败 (死信)",
        "no_endpoint": "无接收地址",
    },
    "event_type": {  # webhook event types (CONTRACT)
        "work_order.assigned": "派单", "work_order.escalated": "工单升级", "work_order.withdrawn": "撤回工单",
        "work_order.reminder": "时限提醒", "work_order.co_report": "协办报告", "escalation.opened": "升级通知",
        "whistle.summoned": "吹哨召集", "deliberation.invited": "商量邀请", "deliberation.result": "商量结果",
    },
    "alert_kind": {  # models.alerts.OpsAlert.kind
        "webhook_gone": "接收地址已失效 (410)", "delivery_failed": "推送被拒收", "delivery_dead_letter": "推送失败 (死信)",
    },
    "follow_up": {  # Case.follow_up_outcome
        "answered": "已回访", "not_reached": "未联系上", "skipped_anonymous": "匿名免回访",
        "closed_by_supervisor": "督办办结",
    },
    "satisfaction": {"satisfied": "满意", "basically_satisfied": "基本满意", "unsatisfied": "不满意"},
    "related": {"same_citizen": "同一诉求人", "hot_spot": "热点"},
    "actor": {"system": "系统", "admin": "管理员", "import": "导入"},
    "staff_role": {"supervisor": "督办", "dispatcher": "派单员", "follow_up": "回访员"},
}

TIME_FORMAT = "%m-%d %H:%M"
_CODE = re.compile(r"(?<![A-Za-z0-9_])[a-z][a-z0-9_]*(?![A-Za-z0-9_])")


def zh(code: str | None, group: str) -> str:
    """The Chinese label of `code` in `group`; the code itself when unknown, "—" when empty."""
    if code is None or code == "":
        return "—"
    return LABELS[group].get(str(code), str(code))


def when(value: str | datetime | None, fmt: str = TIME_FORMAT) -> str:
    """A time (ISO text with offset, or an aware datetime) in local time, e.g. `11-24 14:05`."""
    if not value:
        return "—"
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return local(at).strftime(fmt)


def unit_label(code: str | None, names: dict[str, str], *, with_code: bool = True) -> Markup:
    """A unit's name, with its code small beside it; the bare code when the unit is not known."""
    if not code:
        return Markup("—")
    name = names.get(code)
    if name is None:
        return escape(code)
    return escape(name) + (Markup(' <small class="code">') + escape(code) + Markup("</small>") if with_code else "")


def actor_label(actor: str | None, names: dict[str, str], staff: dict[str, str]) -> str:
    """Who did it: 系统 / 管理员 / a unit's name / 督办 王主任 (staff are recorded as `staff:<id>:<role>`)."""
    if not actor:
        return "—"
    if actor.startswith("staff:"):
        _, staff_id, role = (actor.split(":") + ["", ""])[:3]
        return f"{zh(role, 'staff_role')} {staff.get(staff_id, '#' + staff_id)}"
    return LABELS["actor"].get(actor) or names.get(actor, actor)


def note_text(entry: dict, names: dict[str, str]) -> str:
    """A timeline note for people: unit and trigger codes the services wrote into it become names, and an
    escalation decision's leading action code (`reassign: …`) its label."""
    text = entry.get("note") or ""
    action = (entry.get("data") or {}).get("action")
    if entry.get("kind") == "escalation.decided" and action and text.startswith(f"{action}: "):
        text = f"{zh(action, 'action')}: {text[len(action) + 2:]}"

    def name(match: re.Match) -> str:
        code = match.group(0)
        return names.get(code) or LABELS["trigger"].get(code) or code
    return _CODE.sub(name, text)


def install(env: Environment) -> None:
    """Register the filters; pages pass `unit_names` (code → name) and `staff_names` (id → name)."""
    env.filters["zh"] = zh
    env.filters["when"] = when
    env.filters["unit"] = pass_context(lambda ctx, code, with_code=True: unit_label(
        code, ctx.get("unit_names") or {}, with_code=with_code))
    env.filters["actor"] = pass_context(lambda ctx, actor: actor_label(
        actor, ctx.get("unit_names") or {}, ctx.get("staff_names") or {}))
    env.filters["note"] = pass_context(lambda ctx, entry: note_text(entry, ctx.get("unit_names") or {}))

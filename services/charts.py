"""Inline SVG charts for the monthly report, drawn on the server: no JavaScript, no external files.

`rate_bars` draws grouped horizontal bars (one group per unit, one bar per rate); `rate_lines` draws one line per
series over a run of months. Both take plain numbers (rates 0..1 or None) and return escaped SVG markup; every
label passes through `escape`. A chart with nothing to draw returns None: the template says "no data" instead.
"""
from __future__ import annotations

import math

from markupsafe import Markup, escape

FONT = "'Noto Sans CJK SC','Source Han Sans SC','PingFang SC','Microsoft YaHei',sans-serif"
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
DASHES = ("", "6 3", "2 3")  # after ten series the colours repeat with another dash pattern
RATE_SERIES = (("response_rate", "响应率", "#4e79a7"), ("resolution_rate", "解决率", "#59a14f"),
               ("satisfaction_rate", "满意率", "#f28e2b"))
AXIS, GRID, MUTED = "#555", "#e3e3e3", "#777"


def text_width(text: str, size: float) -> float:
    """An estimate of the rendered width: CJK characters are square, others about 0.6 em."""
    return sum(size if ord(ch) >= 0x2E80 else 0.6 * size for ch in str(text))


def percent(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, content: str, *, size: int = 12, anchor: str = "start", fill: str = AXIS,
          weight: str | None = None, cls: str | None = None, baseline: str = "middle", halo: bool = False) -> str:
    extra = (f' font-weight="{weight}"' if weight else "") + (f' class="{cls}"' if cls else "")
    if halo:  # a white outline keeps the label readable over the lines it crosses
        extra += ' stroke="#fff" stroke-width="3" paint-order="stroke"'
    return (f'<text x="{_num(x)}" y="{_num(y)}" font-size="{size}" text-anchor="{anchor}" '
            f'dominant-baseline="{baseline}" fill="{fill}"{extra}>{escape(content)}</text>')



def _svg_start(cls: str, width: int, height: float, left: int, title: str) -> list[str]:
    """The opening of a chart: the svg element, its accessible title and the visible title line."""
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {cls}" viewBox="0 0 {width} {_num(height)}" '
            f'width="{width}" height="{_num(height)}" role="img" font-family="{FONT}">',
            f"<title>{escape(title)}</title>",
            _text(left, 16, title, size=15, weight="bold", fill="#222", cls="chart-title")]

def _legend(items: list[tuple[str, str, str, float]], x0: float, y0: float, width: float) -> tuple[list[str], float]:
    """Legend items (label, colour, dash, stroke width) flowing left to right, wrapping at `width`.
    Returns the SVG parts and the height used."""
    parts, x, y, row_h = ['<g class="legend">'], x0, y0, 20
    for label, colour, dash, stroke in items:
        w = 30 + text_width(label, 12) + 18
        if x + w > x0 + width and x > x0:
            x, y = x0, y + row_h
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{_num(x)}" y1="{_num(y)}" x2="{_num(x + 22)}" y2="{_num(y)}" stroke="{colour}" '
                     f'stroke-width="{max(stroke, 4) if not dash else stroke}"{dash_attr}/>')
        parts.append(_text(x + 28, y, label, cls="legend-label"))
        x += w
    parts.append("</g>")
    return parts, y - y0 + row_h


def rate_bars(rows: list[dict], title: str, series=RATE_SERIES, width: int = 1000) -> Markup | None:
    """Grouped horizontal bars: `rows` are dicts with "label", optionally "note" (a small second line under the
    label) and one 0..1 value (or None) per series key. None when no row has a value."""
    if not rows or all(r.get(key) is None for r in rows for key, _, _ in series):
        return None
    size = 13
    left = min(max(max(text_width(r["label"], size) for r in rows) + 20, 90), 280)
    right, top = 64, 40
    bar_h, bar_gap, group_gap = 13, 2, 16
    group_h = len(series) * (bar_h + bar_gap) - bar_gap
    plot_w = width - left - right
    plot_h = len(rows) * (group_h + group_gap) + group_gap
    legend, legend_h = _legend([(name, colour, "", 10) for _, name, colour in series], left, 0, plot_w)
    axis_y = top + plot_h
    height = axis_y + 44 + legend_h
    parts = _svg_start("bar-chart", width, height, left, title)
    for tick in range(0, 101, 20):  # x axis: 0% .. 100%
        x = left + plot_w * tick / 100
        parts.append(f'<line x1="{_num(x)}" y1="{top}" x2="{_num(x)}" y2="{_num(axis_y)}" stroke="{GRID}"/>')
        parts.append(_text(x, axis_y + 14, f"{tick}%", size=11, anchor="middle", cls="tick"))
    parts.append(f'<line x1="{_num(left)}" y1="{top}" x2="{_num(left)}" y2="{_num(axis_y)}" stroke="{AXIS}"/>')
    parts.append(f'<line x1="{_num(left)}" y1="{_num(axis_y)}" x2="{_num(left + plot_w)}" y2="{_num(axis_y)}" '
                 f'stroke="{AXIS}"/>')
    parts.append(_text(left + plot_w / 2, axis_y + 32, "比率 (%)", size=12, anchor="middle", cls="axis-title"))
    for i, row in enumerate(rows):
        y0 = top + group_gap + i * (group_h + group_gap)
        middle = y0 + group_h / 2
        if row.get("note"):
            parts.append(_text(left - 10, middle - 8, row["label"], size=size, anchor="end", fill="#222",
                               cls="category-label"))
            parts.append(_text(left - 10, middle + 9, row["note"], size=11, anchor="end", fill=MUTED, cls="note"))
        else:
            parts.append(_text(left - 10, middle, row["label"], size=size, anchor="end", fill="#222",
                               cls="category-label"))
        for j, (key, name, colour) in enumerate(series):
            y = y0 + j * (bar_h + bar_gap)
            value = row.get(key)
            if value is None:
                parts.append(_text(left + 4, y + bar_h / 2, f"{name}: 无数据", size=10, fill=MUTED, cls="no-value"))
                continue
            w = max(plot_w * value, 0.5)
            parts.append(f'<rect class="bar" data-series="{key}" x="{_num(left)}" y="{_num(y)}" width="{_num(w)}" '
                         f'height="{bar_h}" fill="{colour}"><title>{escape(row["label"])} {name} '
                         f'{percent(value)}</title></rect>')
            parts.append(_text(left + w + 4, y + bar_h / 2, percent(value), size=10, cls="value"))
    legend_svg = "".join(legend).replace('<g class="legend">', f'<g class="legend" transform="translate(0 '
                                                                f'{_num(axis_y + 48)})">', 1)
    parts.append(legend_svg)
    parts.append("</svg>")
    return Markup("".join(parts))


def rate_lines(months: list[str], series: list[dict], title: str, width: int = 1000) -> Markup | None:
    """One line per series over `months`: series are dicts with "label", "values" (one 0..1 or None per month) and
    optionally "emphasis" (drawn thick and dark, with value labels). Missing months break the line.
    None when there is no value at all."""
    values = [v for s in series for v in s["values"] if v is not None]
    if not months or not values:
        return None
    low = min(values)
    floor = max(0.0, math.floor(low * 10) / 10 - (0.1 if low - math.floor(low * 10) / 10 < 0.02 else 0))
    floor = round(min(floor, 0.8), 2)  # the y axis starts at a round 10 % step below the data, at most 80 %
    floor = 0.0 if floor < 0.4 else floor  # (or at 0 when the data go that low anyway)
    left, right, top, plot_h, inset = 64, 30, 40, 260, 36  # inset: room for the labels of the first/last point
    plot_w = width - left - right
    step = (plot_w - 2 * inset) / max(len(months) - 1, 1)

    def x_of(i: int) -> float:
        return left + (inset + i * step if len(months) > 1 else plot_w / 2)

    def y_of(v: float) -> float:
        return top + plot_h * (1 - (v - floor) / (1 - floor))

    items, styled = [], []
    k = 0
    for s in series:
        if s.get("emphasis"):
            style = ("#222", "", 3.0)
        else:
            style = (PALETTE[k % len(PALETTE)], DASHES[(k // len(PALETTE)) % len(DASHES)], 1.8)
            k += 1
        styled.append((s, style))
        items.append((s["label"], *style))
    legend, legend_h = _legend(items, left, 0, plot_w)
    axis_y = top + plot_h
    height = axis_y + 50 + legend_h
    parts = _svg_start("line-chart", width, height, left, title)
    tick_step = 0.05 if floor >= 0.7 else 0.1 if floor >= 0.4 else 0.2  # round steps: 5 %, 10 % or 20 %
    ticks = [floor + tick_step * i for i in range(round((1 - floor) / tick_step) + 1)]
    for t in ticks:  # y axis
        y = y_of(t)
        parts.append(f'<line x1="{left}" y1="{_num(y)}" x2="{_num(left + plot_w)}" y2="{_num(y)}" stroke="{GRID}"/>')
        parts.append(_text(left - 8, y, f"{100 * t:.0f}%", size=11, anchor="end", cls="tick"))
    for i, m in enumerate(months):  # x axis
        parts.append(_text(x_of(i), axis_y + 16, m, size=12, anchor="middle", cls="month"))
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{_num(axis_y)}" stroke="{AXIS}"/>')
    parts.append(f'<line x1="{left}" y1="{_num(axis_y)}" x2="{_num(left + plot_w)}" y2="{_num(axis_y)}" '
                 f'stroke="{AXIS}"/>')
    if floor > 0:
        parts.append(_text(left + 4, axis_y - 8, f"纵轴自 {100 * floor:.0f}% 起", size=10, fill=MUTED))
    # the emphasised series last: drawn on top
    for s, (colour, dash, stroke) in sorted(styled, key=lambda p: bool(p[0].get("emphasis"))):
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<g class="series" data-label="{escape(s["label"])}">')
        segment: list[tuple[float, float]] = []
        points = [(i, v) for i, v in enumerate(s["values"])] + [(len(months), None)]
        for i, v in points:
            if v is not None:
                segment.append((x_of(i), y_of(v)))
                continue
            if len(segment) > 1:
                path = " ".join(f"{_num(px)},{_num(py)}" for px, py in segment)
                parts.append(f'<polyline class="line" points="{path}" fill="none" stroke="{colour}" '
                             f'stroke-width="{stroke}"{dash_attr} stroke-linejoin="round"/>')
            segment = []
        for i, v in enumerate(s["values"]):
            if v is None:
                continue
            parts.append(f'<circle cx="{_num(x_of(i))}" cy="{_num(y_of(v))}" r="{4 if s.get("emphasis") else 3}" '
                         f'fill="{colour}"><title>{escape(s["label"])} {escape(months[i])} {percent(v)}</title>'
                         f'</circle>')
            if s.get("emphasis"):
                parts.append(_text(x_of(i), y_of(v) - 12, percent(v), size=11, anchor="middle", fill="#222",
                                   weight="bold", cls="value", halo=True))
        parts.append("</g>")
    legend_svg = "".join(legend).replace('<g class="legend">', f'<g class="legend" transform="translate(0 '
                                                                f'{_num(axis_y + 44)})">', 1)
    parts.append(legend_svg)
    parts.append("</svg>")
    return Markup("".join(parts))

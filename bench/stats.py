"""The benchmark's arithmetic, kept pure so it is unit-tested: percentiles, rates, lost cases, process CPU and
memory from /proc, and the report table."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"p must be in [0, 100], not {p}")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rate(count: int, seconds: float) -> float | None:
    return count / seconds if seconds > 0 else None


def ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline else None


def above_rest(cpu: float, rest_per_second: float, seconds: float, count: int) -> float | None:
    """CPU seconds per item beyond what the processes spend at rest over the same time (polls, heartbeats, scheduled
    runs): the cost that grows with the load. None for no items."""
    return (cpu - rest_per_second * seconds) / count if count else None


def capacity(cores: int, rest_per_second: float, per_item: float | None) -> float | None:
    """Items/s the cores can carry once the rest load is paid, at `per_item` CPU seconds each above rest."""
    return (cores - rest_per_second) / per_item if per_item and per_item > 0 else None


def lost(sent: Iterable[str], stored: Iterable[str]) -> list[str]:
    """References accepted by the API but missing from the DB (should be empty)."""
    return sorted(set(sent) - set(stored))


# ---------------------------------------------------------------- processes (Linux /proc)

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def children(pid: int) -> list[int]:
    """All descendants of `pid` (via /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def cpu_seconds(pid: int, *, with_children: bool = True) -> float:
    """User + system CPU of `pid` (and its live descendants, plus reaped children's times) in seconds."""
    total = 0.0
    for p in [pid, *(children(pid) if with_children else [])]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += (utime + stime + (cutime + cstime if p == pid else 0)) / _TICKS
    return total


def machine_cpu_seconds(stat_line: str | None = None) -> float:
    """CPU seconds the whole machine has been busy (every core, every process, the kernel), from /proc/stat's
    first line: all time but idle and I/O wait."""
    if stat_line is None:
        with open("/proc/stat") as f:
            stat_line = f.readline()
    ticks = [int(x) for x in stat_line.split()[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS


def speed_probe(loops: int = 3_000_000) -> float:
    """CPU seconds of a fixed pure-Python loop in this process: how fast the machine runs Python right now. On a
    shared virtual machine the same work takes up to half as long again at another hour, so runs are compared with
    this beside them."""
    started = time.process_time()
    total = 0
    for i in range(loops):
        total += i
    return time.process_time() - started


def rss_mb(pid: int) -> tuple[float | None, float | None]:
    """(current RSS, peak RSS) of one process in MB."""
    current = peak = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return current, peak


def tree_rss_mb(pid: int) -> float | None:
    """Current RSS of `pid` and its live descendants in MB (uvicorn's workers with their master; pages shared
    between them are counted in each, as `ps` does). None if `pid` is gone."""
    own = rss_mb(pid)[0]
    if own is None:
        return None
    return own + sum(rss_mb(child)[0] or 0.0 for child in children(pid))


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y) points; None for fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


# ---------------------------------------------------------------- the report table

@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    ratio: float | None = None       # against the baseline of the same run
    target: str | None = None        # e.g. ">= 1.5"
    note: str = ""

    def met(self) -> str:
        if self.target is None or self.value is None:
            return ""
        op, bound = self.target.split()
        value, bound = self.value, float(bound)
        ok = value >= bound if op == ">=" else value <= bound
        return "met" if ok else "NOT met"


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(figures: list[Figure]) -> str:
    """A Markdown table (also readable in a terminal)."""
    lines = ["| figure | value | unit | × baseline | target | |", "|---|---:|---|---:|---|---|"]
    for f in figures:
        lines.append(f"| {f.name} | {fmt(f.value)} | {f.unit} | {fmt(f.ratio)} | {f.target or ''} | "
                     f"{f.met()} {f.note}".rstrip() + " |")
    return "\n".join(lines)


RUN_HEADING = "## Run"


def add_run(document: str | None, section: str) -> str:
    """docs/performance.md with a new run's section added, newest first: before the first `## Run` heading, or at
    the end of a file that has none yet, or as a new file under a `# Performance` title. Nothing in the file is
    replaced (it is the record of every earlier run and of what was read from them)."""
    section = section.strip() + "\n"
    if not document or not document.strip():
        return f"# Performance\n\n{section}"
    lines = document.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.startswith(RUN_HEADING)), None)
    if at is None:
        return document.rstrip("\n") + "\n\n" + section
    return "".join(lines[:at]) + section + "\n" + "".join(lines[at:])

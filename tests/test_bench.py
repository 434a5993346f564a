"""The benchmark's own logic (bench/stats.py), and its smoke mode end to end on a real stack (no targets judged)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.stats import (
    _TICKS, Figure, above_rest, add_run, capacity, cpu_seconds, lost, machine_cpu_seconds, percentile, rate, ratio,
    rss_mb, slope, speed_probe, table, tree_rss_mb,
)


def test_percentiles_interpolate_between_ranks():
    values = [10, 1, 4, 2, 3, 5, 6, 7, 8, 9]  # 1..10, unordered
    assert percentile(values, 50) == 5.5
    assert percentile(values, 0) == 1 and percentile(values, 100) == 10
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_a_run_is_added_before_the_earlier_runs_and_nothing_is_replaced():
    doc = "# Performance\n\nIntro.\n\n## Targets\n\n| a |\n\n## Run 2. Later\n\ntwo\n\n## Run 1. First\n\none\n"
    new = "## Run of 2026-12-07 (written by the benchmark)\n\n| figure |\n"
    added = add_run(doc, new)
    assert added.startswith("# Performance\n\nIntro.\n\n## Targets\n\n| a |\n\n## Run of 2026-12-07")
    assert added.endswith("| figure |\n\n## Run 2. Later\n\ntwo\n\n## Run 1. First\n\none\n")
    assert added.replace(new + "\n", "") == doc  # everything that was there is still there, in its order
    assert add_run("# Performance\n\nIntro.\n", new) == "# Performance\n\nIntro.\n\n" + new  # no run yet
    assert add_run(None, new) == "# Performance\n\n" + new and add_run("  \n", new) == "# Performance\n\n" + new


def test_rates_ratios_and_lost_cases():
    assert rate(30, 20.0) == 1.5 and rate(5, 0) is None
    assert ratio(1.5, 0.5) == 3.0 and ratio(None, 1.0) is None and ratio(1.0, None) is None
    assert lost(["a", "b", "c", "c"], ["c", "a", "x"]) == ["b"]
    assert lost([], ["x"]) == []


def test_cost_above_rest_and_the_capacity_it_leaves():
    # 300 CPU-s over 150 s for 100 items, with the processes spending 0.2 CPU-s/s at rest anyway
    assert above_rest(300.0, 0.2, 150.0, 100) == pytest.approx(2.7)
    assert above_rest(10.0, 0.0, 5.0, 0) is None
    assert capacity(2, 0.2, 1.2) == pytest.approx(1.5)  # (2 − 0.2) / 1.2
    assert capacity(2, 0.2, None) is None and capacity(2, 0.2, 0.0) is None


def test_targets_are_judged_in_the_table():
    figures = [Figure("lifecycles", 1.2, "cases/s", 1.2, ">= 1.5"), Figure("p95", 4.0, "s", None, "<= 5"),
               Figure("lost", 0, "cases", None, "<= 0"), Figure("baseline", None, "runs/s")]
    text = table(figures)
    assert "| lifecycles | 1.20 | cases/s | 1.20 | >= 1.5 | NOT met |" in text
    assert "| p95 | 4.00 | s | — | <= 5 | met |" in text
    assert "| lost | 0.00 | cases | — | <= 0 | met |" in text
    assert "| baseline | — | runs/s | — |  | |" in text


def test_process_cpu_and_memory_from_proc():
    busy = sum(i * i for i in range(200_000))  # spend a little CPU
    assert busy > 0 and cpu_seconds(os.getpid()) > 0
    current, peak = rss_mb(os.getpid())
    assert current and peak and peak >= current > 10
    assert rss_mb(2 ** 22 + 12345) == (None, None)  # no such process


def test_the_machines_busy_time_and_speed():
    line = "cpu  100 20 30 1000 50 5 5 10 0 0"  # user nice system idle iowait irq softirq steal guest guest_nice
    assert machine_cpu_seconds(line) == pytest.approx((100 + 20 + 30 + 5 + 5 + 10) / _TICKS)  # not idle, not iowait
    before, deadline = machine_cpu_seconds(), time.monotonic() + 10
    while machine_cpu_seconds() <= before and time.monotonic() < deadline:  # busy for a clock tick or more
        sum(i * i for i in range(100_000))
    assert machine_cpu_seconds() > before
    assert 0 < speed_probe(100_000) < speed_probe(1_000_000)


def test_memory_of_a_process_tree_and_its_slope():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = b\"x\" * (60 * 2**20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while (rss_mb(child.pid)[0] or 0) < 60 and time.monotonic() < deadline:
            time.sleep(0.1)
        own, tree = rss_mb(os.getpid())[0], tree_rss_mb(os.getpid())
        assert tree >= own + 60  # the child's 60 MB counted with ours
    finally:
        child.kill()
        child.wait()
    assert tree_rss_mb(2 ** 22 + 12345) is None
    assert slope([(0, 100.0), (1000, 110.0), (2000, 120.0)]) == pytest.approx(0.01)
    assert slope([(0, 100.0), (1000, 100.0)]) == 0
    assert slope([(5, 100.0)]) is None and slope([(5, 1.0), (5, 2.0)]) is None


@pytest.mark.stack
def test_smoke_run_writes_a_report(tmp_path, capsys):
    """The whole benchmark at tiny sizes: it runs, measures every figure, and writes the report; each wave's
    figures are printed as it ends (a long run stopped early keeps them)."""
    from bench.run import main
    out = tmp_path / "performance.md"
    out.write_text("# Performance\n\n## Run 1. An earlier run\n\nits figures\n", encoding="utf-8")
    assert main(["--smoke", "--executor", "inprocess", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    waves = [line for line in printed.splitlines() if line.startswith("wave ")]
    assert [line.split(",")[0] for line in waves] == ["wave 1/2: 2 lifecycles", "wave 2/2: 3 lifecycles"]
    assert "2 of 2 closed" in waves[0] and "1 of 1 closed" in waves[1]
    assert all("; RSS MB " in line and "executor " in line for line in waves)
    for line in waves:  # each wave's own CPU per lifecycle (the machine did work) and the machine's speed
        per_lifecycle = line.split("; CPU-s per lifecycle ")[1].split(";")[0]
        assert float(per_lifecycle.split("the whole machine ")[1].split(",")[0]) > 0, line
        assert int(line.split("; machine speed ")[1].removesuffix(" ms")) > 0, line
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Performance\n\n## Run of ") and text.endswith("## Run 1. An earlier run\n\nits figures\n")
    for figure in ("empty flow runs/s through serve", "empty flow runs/s through the in-process executor",
                   "in-process executor (one event loop", "CPU per lifecycle: executor", "full lifecycles/s", "durable accepts/s",
                   "cases lost", "intake → first webhook p95", "escalation latency p99"):
        assert figure in text
    line = next(l for l in text.splitlines() if l.startswith("| full lifecycles/s"))
    assert "| — |" not in line.split("cases/s")[0]  # a measured figure, not a blank
    assert "| cases lost (accepted, not in DB) | 0.00 |" in text
    assert "RSS growth executor: after 2 lifecycles" in text and "RSS executor by wave:" in text
    assert "| CPU at rest: the whole machine |" in text and "| CPU per lifecycle above rest" in text


@pytest.mark.stack
def test_smoke_run_of_the_scaled_shape(tmp_path):
    """The scaled shape (hotline/topology.py) at tiny sizes: intake only records, the executors' starters start
    the runs, and every lifecycle closes."""
    from bench.run import main
    out = tmp_path / "performance.md"
    assert main(["--smoke", "--topology", "scaled", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "**scaled**" in text and "CPU per lifecycle: executor-2" in text
    assert "lifecycles: only" not in text and "were not accepted" not in text
    assert "| cases lost (accepted, not in DB) | 0.00 |" in text


def test_the_load_generator_keeps_connections_and_reconnects(tmp_path):
    """bench/load.py against a small server that closes every third connection after answering."""
    import asyncio
    import json

    from bench.load import post_json_many
    seen, connections = [], 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        answered = 0
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(next(l for l in head.decode().split("\r\n") if l.lower().startswith("content-length"))
                         .split(":")[1])
            body = json.loads(await reader.readexactly(length))
            seen.append(body["n"])
            answered += 1
            close = answered == 3
            out = json.dumps({"got": body["n"]}).encode()
            writer.write(f"HTTP/1.1 {201 if body['n'] % 2 else 200} OK\r\nContent-Length: {len(out)}\r\n"
                         f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n".encode() + out)
            await writer.drain()
            if close:
                break
        writer.close()

    async def go():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await post_json_many(f"http://127.0.0.1:{port}", "/x", [{"n": i} for i in range(60)], 4)
    answers = asyncio.run(go())
    assert [status for status, _ in answers] == [201 if i % 2 else 200 for i in range(60)]
    assert [json.loads(body)["got"] for _, body in answers] == list(range(60))
    assert sorted(seen) == list(range(60)) and connections == 20  # kept alive for 3 requests each

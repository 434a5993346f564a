"""The stack's processes do not outlive whoever started them: a killed bench, test session or `./run up` leaves
no Prefect server, executor or API behind (they would hold ports and databases)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hotline.settings import REPO_ROOT

# A parent that starts one child the way Stack starts its processes, prints the child's pid, then waits to be killed.
PARENT = """
import sys, time
from pathlib import Path
from hotline.runtime import Stack, stop_on_sigterm
stack = Stack(home=Path(sys.argv[1]))
if sys.argv[2] == "term":
    stop_on_sigterm()
try:
    stack._spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
    print(stack.procs["sleeper"].pid, flush=True)
    time.sleep(120)
finally:
    if sys.argv[2] == "term":
        stack.stop_process("sleeper", timeout=5)
        print("stopped", flush=True)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (ended, not yet reaped by init) counts as ended
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def start_parent(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), mode], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(REPO_ROOT)})
    child = int(parent.stdout.readline())
    assert alive(child)
    return parent, child


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_a_killed_parent_takes_its_stack_processes_with_it(tmp_path):
    parent, child = start_parent(tmp_path, "plain")
    try:
        parent.kill()  # SIGKILL: no finally block runs in the parent
        parent.wait()
        assert wait_gone(child), "the stack's child outlived its killed parent"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_sigterm_stops_like_ctrl_c_so_the_stack_is_stopped(tmp_path):
    parent, child = start_parent(tmp_path, "term")
    try:
        parent.terminate()
        out, _ = parent.communicate(timeout=30)
        assert out.strip() == "stopped"  # the finally block ran
        assert wait_gone(child, 2)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)

"""The README's main command on a fresh data folder: `./run demo --exit` starts the embedded default, loads the demo
district and pushes the seed cases through their whole lifecycle, then stops."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hotline.runtime import free_port
from hotline.settings import REPO_ROOT


@pytest.mark.stack
def test_demo_closes_every_seed_case(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTLINE_", "PREFECT_"))}
    done = subprocess.run(
        [sys.executable, "-m", "hotline", "demo", "--exit", "--home", str(tmp_path / "home"),
         "--api-port", str(free_port()), "--prefect-port", str(free_port()), "--timeout", "600"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "all demo cases closed." in out
    for stage in ("routed", "work_order.assigned", "deadline_lapsed", "redispatched", "reopened", "closed"):
        assert f"| {stage}" in out, f"no '{stage}' step shown in the demo's output"
    assert "13800000000" not in out  # the citizen's phone never shows
    assert (tmp_path / "home" / "prefect" / "prefect.db").exists()  # Prefect's data under the project data folder

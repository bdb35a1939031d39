"""The bench scripts still run: each is started with tiny sizes and must exit 0.

Benchmarks are not timed here (their figures come from a quiet run, README's Speed
table); this only catches a script broken by a change elsewhere (an API it calls
moved), which otherwise shows up only when someone next measures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMOKE = [
    ("update.py", ["--size-mib", "2", "--delta-mib", "4", "--runs", "1"]),
    ("attest.py", ["--seconds", "0.2"]),
    ("httpsig.py", ["--seconds", "0.1", "--requests", "4"]),
    ("boot.py", ["--small-mib", "4", "--large-mib", "8", "--runs", "1"]),
    ("uki.py", ["--kernel-mib", "1", "--initrd-mib", "1", "--runs", "1"]),
    ("tuf_refresh.py", ["--targets", "50", "--runs", "1"]),
    ("reports.py", ["--devices", "20"]),
    ("decompress.py", ["--mib", "1", "--runs", "1"]),
    (  # needs the local PostgreSQL (BASTION_BENCH_PG), as the server tests do
        "agents.py",
        ["--agents", "20", "--duration", "2", "--commands", "10", "--agent-procs", "1"],
    ),
    (
        "provision.py",
        [
            "--procs",
            "1",
            "--enrolments",
            "2",
            "--pollers",
            "2",
            "--poll-seconds",
            "1",
            "--poll-interval",
            "0",
        ],
    ),
    (
        "device_api.py",
        ["--seconds", "1", "--devices", "1", "--workers", "1", "--connections", "2"],
    ),
    ("device_api_profile.py", ["--db", "sqlite", "--devices", "1", "--requests", "30"]),
    (
        "device_heartbeat.py",
        ["--devices", "2", "--period", "1", "--periods", "2", "--workers", "1"],
    ),
    (
        "device_fleet.py",
        [
            "--fleet",
            "30",
            "--enrolled",
            "1",
            "--fill",
            "1",
            "--seconds",
            "1",
            "--rate",
            "2000",
            "--workers",
            "1",
        ],
    ),
    (
        "device_signed.py",
        [
            "--fleet",
            "20",
            "--fill",
            "2",
            "--rate",
            "20",
            "--seconds",
            "1",
            "--warmup",
            "1",
            "--workers",
            "1",
        ],
    ),
]


@pytest.mark.parametrize(("script", "args"), SMOKE, ids=[s for s, _ in SMOKE])
def test_bench_script_runs(script: str, args: list[str], tmp_path: Path) -> None:
    extra = ["--dir", str(tmp_path)] if script in {"boot.py", "uki.py", "update.py"} else []
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    # bench/boot.py, bench/update.py and bench/device_api.py exit 1 when a ratio or goal is
    # missed, which at these tiny sizes on a busy machine is noise: only a crash counts here
    allowed = {0, 1} if script in {"boot.py", "update.py", "device_api.py"} else {0}
    assert done.returncode in allowed, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "ratio" in (done.stdout + done.stderr).lower()

"""The agent's offline log buffer: durable FIFO, bound, and a real full disk (tmpfs)."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.device.agent.agent import backoff_delay, env_file
from bastion.device.agent.logbuffer import LogBuffer


def test_lines_survive_a_restart_and_leave_only_when_committed(tmp_path: Path) -> None:
    buf = LogBuffer(tmp_path, segment_lines=3)
    assert buf.append([f"line {i}" for i in range(7)]) == 7
    again = LogBuffer(tmp_path, segment_lines=3)  # a restart
    got: list[str] = []
    while (found := again.peek()) is not None and found[1]:
        got += found[1]
        again.commit(found[0])
    assert got == [f"line {i}" for i in range(7)]


def test_the_bound_drops_the_oldest_and_says_so(tmp_path: Path) -> None:
    buf = LogBuffer(tmp_path, max_bytes=200, segment_bytes=60)
    buf.append([f"line number {i:03d}" for i in range(40)])
    assert buf.size() <= 200 + 60
    found = buf.peek()
    assert found is not None
    assert "log lines dropped" in found[1][0]
    assert found[1][-1].startswith("line number")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up (needs root, as CI runs)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.fail("the full-disk test mounts a tmpfs and needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_keeps_what_was_queued(small_disk: Path) -> None:
    buf = LogBuffer(small_disk / "logs", segment_bytes=8192)
    line = "x" * 1000
    queued = 0
    for _ in range(200):
        queued += buf.append([line])
    assert 0 < queued < 200, "the disk should have filled up"
    waiting = len(buf.memory)
    assert waiting == 200 - queued  # the rest waits in memory (bound: 1024 lines)
    # every line on disk is whole; as shipped segments free space, the lines held in
    # memory reach the disk too, and nothing is lost or garbled
    out = 0
    while (found := buf.peek()) is not None and found[1]:
        assert all(entry == line for entry in found[1])
        out += len(found[1])
        buf.commit(found[0])
    assert out == 200
    assert len(buf.memory) == 0 and buf.dropped() == 0


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, rng, 1.0, 300.0) for n in range(12)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(d <= 300.0 for d in delays) and delays[-1] >= 150.0
    assert len({round(d, 6) for d in delays}) == len(delays)


def test_env_file_escapes_values() -> None:
    assert env_file({"B": 'a "q"\nz', "A": "x\\y"}) == b'A="x\\\\y"\nB="a \\"q\\"\\nz"\n'

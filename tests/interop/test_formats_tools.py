"""bastion's GPT and event-log bytes read by the reference tools (sfdisk, tpm2_eventlog)."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.formats import eventlog as el
from bastion.formats import gpt

pytestmark = pytest.mark.interop


def test_sfdisk_reads_gpt(tmp_path: Path) -> None:
    sfdisk = need_tool("sfdisk")
    disk = gpt.GptDisk(
        8192,
        uuid.UUID("11111111-2222-4333-8444-555555555555"),
        (
            gpt.Partition(
                gpt.TYPE_ROOT_X86_64, uuid.UUID(int=7), 2048, 4095, gpt.FLAG_READ_ONLY, "root-a"
            ),
            gpt.Partition(gpt.TYPE_XBOOTLDR, uuid.UUID(int=9), 4096, 6143, 0, "boot"),
        ),
    )
    image = bytearray(disk.size)
    head = disk.head_bytes()
    image[: len(head)] = head
    image[disk.tail_offset :] = disk.tail_bytes()
    path = tmp_path / "g.img"
    path.write_bytes(bytes(image))
    out = json.loads(
        subprocess.run([sfdisk, "--json", str(path)], capture_output=True, check=True).stdout
    )
    table = out["partitiontable"]
    assert table["label"] == "gpt" and table["id"] == "11111111-2222-4333-8444-555555555555"
    got = [
        (p["start"], p["size"], p["type"].lower(), p["uuid"].lower(), p["name"])
        for p in table["partitions"]
    ]
    assert got == [
        (2048, 2048, str(gpt.TYPE_ROOT_X86_64), str(uuid.UUID(int=7)), "root-a"),
        (4096, 2048, str(gpt.TYPE_XBOOTLDR), str(uuid.UUID(int=9)), "boot"),
    ]
    assert table["partitions"][0]["attrs"] == "GUID:60"
    verify = subprocess.run(
        [sfdisk, "--verify", str(path)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0 and "No errors detected" in verify.stdout


def test_tpm2_eventlog_parses_and_replays(tmp_path: Path) -> None:
    tool = need_tool("tpm2_eventlog")
    log = el.EventLog(
        el.SpecIdEvent(),
        (
            el.measure(4, el.EventType.EV_IPL, b"bastion:loader\0", b"loader"),
            el.measure(11, el.EventType.EV_IPL, b".linux\0"),
            el.measure(11, el.EventType.EV_IPL, b".linux", b"kernel"),
            el.measure(4, el.EventType.EV_SEPARATOR, bytes(4)),
        ),
    )
    path = tmp_path / "log.bin"
    path.write_bytes(log.to_bytes())
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, check=True)
    values = dict(re.findall(r"^\s+(\d+)\s*: 0x([0-9a-f]{64})$", proc.stdout, re.M))
    ours = el.replay(log.events)
    assert values == {str(k): v.hex() for k, v in ours.items()}

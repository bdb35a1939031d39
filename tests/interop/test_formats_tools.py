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


def _legacy_event(pcr: int, etype: int, data: bytes, content: bytes | None = None) -> bytes:
    """One TCG_PCR_EVENT written by hand per the TCG PC Client spec (not by bastion)."""
    import hashlib
    import struct

    digest = hashlib.sha1(data if content is None else content).digest()
    return struct.pack("<II", pcr, etype) + digest + struct.pack("<I", len(data)) + data


def test_legacy_sha1_log_matches_tpm2_eventlog(tmp_path: Path) -> None:
    tool = need_tool("tpm2_eventlog")
    raw = b"".join(
        (
            _legacy_event(0, 0x8, b"1.0\0"),  # EV_S_CRTM_VERSION
            _legacy_event(0, 0x80000008, bytes(16), b"firmware volume"),
            _legacy_event(4, 0xD, b"bastion:loader\0", b"loader"),  # EV_IPL
            _legacy_event(7, 0x4, bytes(4)),  # EV_SEPARATOR
            _legacy_event(4, 0x4, bytes(4)),
        )
    )
    path = tmp_path / "legacy.bin"
    path.write_bytes(raw)
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, check=True)
    log = el.parse(raw)
    assert log.legacy and log.spec.algorithms == ((el.ALG_SHA1, 20),)
    assert log.to_bytes() == raw
    theirs_events = re.findall(
        r"PCRIndex: (\d+)\n\s+EventType: \S+\n\s+DigestCount: 1\n\s+Digests:\n"
        r"\s+- AlgorithmId: sha1\n\s+Digest: \"([0-9a-f]{40})\"",
        proc.stdout,
    )
    assert theirs_events == [(str(e.pcr), e.digest(el.ALG_SHA1).hex()) for e in log.events]
    values = dict(re.findall(r"^\s+(\d+)\s*: 0x([0-9a-f]{40})$", proc.stdout, re.M))
    ours = el.replay(log.events, el.ALG_SHA1)
    assert values == {str(k): v.hex() for k, v in ours.items()}


def test_legacy_sha1_no_action_divergence_from_tpm2_eventlog(tmp_path: Path) -> None:
    """tpm2_eventlog 5.4 extends EV_NO_ACTION in SHA-1 logs; the TCG spec and bastion do not."""
    import hashlib

    tool = need_tool("tpm2_eventlog")
    raw = _legacy_event(0, 0x8, b"1.0\0") + _legacy_event(0, 0x3, b"note")
    path = tmp_path / "noaction.bin"
    path.write_bytes(raw)
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, check=True)
    theirs = dict(re.findall(r"^\s+(\d+)\s*: 0x([0-9a-f]{40})$", proc.stdout, re.M))
    log = el.parse(raw)
    ours = el.replay(log.events, el.ALG_SHA1)
    both = bytes(20)
    for event in log.events:
        both = hashlib.sha1(both + event.digest(el.ALG_SHA1)).digest()
    assert theirs == {"0": both.hex()}
    assert ours[0] == hashlib.sha1(bytes(20) + log.events[0].digest(el.ALG_SHA1)).digest()

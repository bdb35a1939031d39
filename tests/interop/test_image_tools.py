"""A bastion image and device read by the reference tools.

sfdisk shows the layout and DPS type GUIDs; veritysetup verifies the root partition
with its hash partition and the root hash from the signature partition; openssl checks
the PKCS#7 in the signature partition; cryptsetup luksDump reads the data partition
after first boot; tpm2_eventlog parses the event log and replays the same PCRs.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from tests.bootkit import make_tree, product_keys, spec_for, trust_of
from tests.conftest import need_tool

from bastion.build import image as img
from bastion.device import boot as chain
from bastion.device.boot_create import create_device
from bastion.formats import bootunit as bu
from bastion.formats import eventlog as el
from bastion.formats import gpt
from bastion.storage import disk_image as di
from bastion.trust import image as ti

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> tuple[img.BuiltImage, Path]:
    need_tool("mkfs.ext4")
    root = tmp_path_factory.mktemp("interop")
    built = img.build_image(spec_for(make_tree(root / "tree")), product_keys(), root / "disk.img")
    dev = root / "dev"
    create_device(dev, built.path, trust_of(product_keys()), product_keys().platform_root)
    chain.boot(dev)
    return built, dev


def _extract(disk: Path, part: gpt.Partition, out: Path, size: int | None = None) -> Path:
    out.write_bytes(di.read_partition(disk, part, size))
    return out


def test_sfdisk_shows_layout_and_dps_types(device: tuple[img.BuiltImage, Path]) -> None:
    sfdisk = need_tool("sfdisk")
    built, _ = device
    proc = subprocess.run([sfdisk, "--json", str(built.path)], capture_output=True, check=True)
    table = json.loads(proc.stdout)["partitiontable"]
    assert table["label"] == "gpt"
    got = {
        p["name"]: (p["type"].lower(), p["uuid"].lower(), p["start"]) for p in table["partitions"]
    }
    root_uuid, verity_uuid = gpt.verity_partition_uuids(built.root_hash)
    assert got["root-a"][:2] == (str(gpt.TYPE_ROOT_X86_64), str(root_uuid))
    assert got["root-a-verity"][:2] == (str(gpt.TYPE_ROOT_VERITY_X86_64), str(verity_uuid))
    assert got["root-a-verity-sig"][0] == str(gpt.TYPE_ROOT_VERITY_SIG_X86_64)
    assert got["boot"][0] == str(gpt.TYPE_XBOOTLDR)
    assert got["data"][0] == str(gpt.TYPE_LINUX_DATA)
    for part in built.layout.partitions:
        assert got[part.name][2] == part.first_lba
    verify = subprocess.run(
        [sfdisk, "--verify", str(built.path)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_veritysetup_verifies_root_with_signed_root_hash(
    device: tuple[img.BuiltImage, Path], tmp_path: Path
) -> None:
    veritysetup = need_tool("veritysetup")
    built, _ = device
    layout = built.layout
    sig = bu.parse_verity_signature(di.read_partition(built.path, layout.find("root-a-verity-sig")))
    root = _extract(built.path, layout.find("root-a"), tmp_path / "root.img")
    hashes = _extract(built.path, layout.find("root-a-verity"), tmp_path / "hash.img")
    ok = subprocess.run(
        [veritysetup, "verify", str(root), str(hashes), sig.root_hash.hex()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    with open(root, "r+b") as handle:
        handle.seek(4096 * 2 + 5)
        b = handle.read(1)
        handle.seek(4096 * 2 + 5)
        handle.write(bytes([b[0] ^ 1]))
    bad = subprocess.run(
        [veritysetup, "verify", str(root), str(hashes), sig.root_hash.hex()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0


def test_openssl_verifies_the_verity_pkcs7(
    device: tuple[img.BuiltImage, Path], tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    openssl = need_tool("openssl")
    built, _ = device
    sig = bu.parse_verity_signature(
        di.read_partition(built.path, built.layout.find("root-a-verity-sig"))
    )
    (tmp_path / "sig.der").write_bytes(sig.signature)
    (tmp_path / "content").write_bytes(sig.root_hash.hex().encode())
    cert = product_keys().verity_cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert)
    proc = subprocess.run(
        [openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
         "-content", str(tmp_path / "content"), "-certfile", str(tmp_path / "cert.pem"),
         "-nointern", "-noverify", "-out", "/dev/null"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_cryptsetup_reads_data_volume_after_first_boot(
    device: tuple[img.BuiltImage, Path], tmp_path: Path
) -> None:
    cryptsetup = need_tool("cryptsetup")
    _, dev = device
    disk = dev / "disk.img"
    data = di.read_layout(disk).find("data")
    vol = _extract(disk, data, tmp_path / "data.img")
    proc = subprocess.run(
        [cryptsetup, "luksDump", str(vol)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Version:       \t2" in proc.stdout or "Version:" in proc.stdout
    assert "systemd-tpm2" in proc.stdout and "systemd-recovery" in proc.stdout


def test_tpm2_eventlog_parses_the_boot_log(
    device: tuple[img.BuiltImage, Path], tmp_path: Path
) -> None:
    tool = need_tool("tpm2_eventlog")
    built, dev = device
    proc = subprocess.run(
        [tool, str(dev / "eventlog.bin")], capture_output=True, text=True, check=True
    )
    values = {
        int(k): v for k, v in re.findall(r"^\s+(\d+)\s*: 0x([0-9a-f]{64})$", proc.stdout, re.M)
    }
    predicted = ti.predict_pcrs(di.DiskImage(built.path))
    replay = el.replay(chain.read_eventlog(dev).events)
    assert values == {k: v.hex() for k, v in replay.items()}
    assert all(values[k] == predicted[k].hex() for k in values)

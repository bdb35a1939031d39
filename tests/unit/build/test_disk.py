"""The VM disk: ESP through mkfs.vfat + mtools, GPT with DPS types, verity root, signed UKI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.bootkit import _cert
from tests.conftest import need_tool

from bastion.build import disk
from bastion.errors import ConfigError
from bastion.formats import gpt
from bastion.formats.uki import uki_sections
from bastion.trust.authenticode import verify_pe
from bastion.trust.signer import SignatureScheme, SoftwareSigner

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
KERNEL = b"MZ not a kernel " * 64
INITRD = b"070701" + b"0" * 200


def _tools() -> None:
    for tool in ("mkfs.vfat", "mmd", "mcopy", "mkfs.erofs"):
        need_tool(tool)
    if not STUB.is_file() or not disk.DEFAULT_LOADER.is_file():
        pytest.skip("systemd-boot-efi is not installed")


def _mcopy_out(esp: Path, name: str, tmp_path: Path) -> bytes:
    out = tmp_path / "out.bin"
    out.unlink(missing_ok=True)
    subprocess.run(
        ["mcopy", "-n", "-i", str(esp), f"::/{name}", str(out)],
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    )
    return out.read_bytes()


def test_esp_holds_the_files(tmp_path: Path) -> None:
    _tools()
    esp = tmp_path / "esp.img"
    size = disk.build_esp(esp, {"EFI/BOOT/BOOTX64.EFI": b"pe" * 1000, "loader/x.conf": b"a"})
    assert esp.stat().st_size == size == disk.ESP_MIN_SIZE
    assert _mcopy_out(esp, "EFI/BOOT/BOOTX64.EFI", tmp_path) == b"pe" * 1000
    assert _mcopy_out(esp, "loader/x.conf", tmp_path) == b"a"


@pytest.mark.parametrize("name", ["/EFI/x", "EFI/../x", "EFI//x", ""])
def test_esp_refuses_bad_paths(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        disk.build_esp(tmp_path / "esp.img", {name: b"x"})


def test_esp_size_grows_with_content() -> None:
    assert disk.esp_size({"a": b"x"}) == disk.ESP_MIN_SIZE
    assert disk.esp_size({"a": b"x" * 40 * disk.MiB}) >= 50 * disk.MiB


def _key() -> disk.SecureBootSigner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return disk.SecureBootSigner(
        SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256), _cert(key, "test db")
    )


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello.txt").write_text("hello\n")
    return root


def test_vm_image_layout_and_signature(tmp_path: Path) -> None:
    _tools()
    need_tool("veritysetup")
    sb = _key()
    spec = disk.VmImageSpec(kernel=KERNEL, initrd=INITRD, root_dir=_root(tmp_path), stub=STUB)
    image = disk.build_vm_image(spec, tmp_path / "disk.img", secure_boot=sb)
    raw = image.path.read_bytes()
    layout = gpt.parse(raw[: 34 * 512], len(raw) // 512, raw[-33 * 512 :])
    esp, root, verity = layout.partitions
    assert (esp.type_guid, root.type_guid, verity.type_guid) == (
        gpt.TYPE_ESP,
        gpt.TYPE_ROOT_X86_64,
        gpt.TYPE_ROOT_VERITY_X86_64,
    )
    assert (root.part_guid, verity.part_guid) == gpt.verity_partition_uuids(image.root_hash)
    assert root.attributes & gpt.FLAG_READ_ONLY and verity.attributes & gpt.FLAG_READ_ONLY
    assert image.cmdline.endswith(f"roothash={image.root_hash.hex()}")
    # the kernel's dm-verity reads the same tree veritysetup checks
    root_file, hash_file = tmp_path / "root.part", tmp_path / "verity.part"
    root_file.write_bytes(raw[root.offset : root.offset + root.size])
    hash_file.write_bytes(raw[verity.offset : verity.offset + verity.size])
    subprocess.run(
        ["veritysetup", "verify", str(root_file), str(hash_file), image.root_hash.hex()],
        check=True,
        capture_output=True,
    )
    # the ESP: signed systemd-boot at the removable-media path, the signed UKI as a
    # counted BLS type #2 entry, a loader.conf without menu or editor
    esp_file = tmp_path / "esp.part"
    esp_file.write_bytes(raw[esp.offset : esp.offset + esp.size])
    assert image.uki_path == "EFI/Linux/bastion+3-0.efi"
    uki = _mcopy_out(esp_file, image.uki_path, tmp_path)
    assert uki == image.uki
    verify_pe(uki, [sb.certificate])
    loader = _mcopy_out(esp_file, disk.BOOT_PATH, tmp_path)
    assert verify_pe(loader, [sb.certificate]).image.section(".sdmagic") is not None
    assert _mcopy_out(esp_file, disk.LOADER_CONF, tmp_path) == disk.DEFAULT_LOADER_CONF
    sections = uki_sections(uki)
    assert sections[".cmdline"] == image.cmdline.encode() + b"\0"
    assert sections[".linux"] == KERNEL and sections[".initrd"] == INITRD


def test_vm_image_without_loader(tmp_path: Path) -> None:
    _tools()
    spec = disk.VmImageSpec(
        kernel=KERNEL, initrd=INITRD, root_dir=_root(tmp_path), stub=STUB, loader=None
    )
    image = disk.build_vm_image(spec, tmp_path / "disk.img")
    assert image.uki_path == disk.BOOT_PATH and not image.signed
    esp = image.partition(disk.PART_ESP)
    esp_file = tmp_path / "esp.part"
    esp_file.write_bytes(image.path.read_bytes()[esp.offset : esp.offset + esp.size])
    assert _mcopy_out(esp_file, disk.BOOT_PATH, tmp_path) == image.uki


def test_vm_image_refusals(tmp_path: Path) -> None:
    both = disk.VmImageSpec(
        kernel=KERNEL, initrd=INITRD, root_dir=tmp_path, root_image=tmp_path / "x", stub=STUB
    )
    with pytest.raises(ConfigError, match="exactly one"):
        disk.build_vm_image(both, tmp_path / "d.img")
    own_hash = disk.VmImageSpec(
        kernel=KERNEL, initrd=INITRD, root_dir=tmp_path, cmdline=("roothash=00",), stub=STUB
    )
    with pytest.raises(ConfigError, match="roothash"):
        disk.build_vm_image(own_hash, tmp_path / "d.img")
    _tools()
    signer = SoftwareSigner(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        SignatureScheme.RSA_PKCS1V15_SHA256,
    )
    root = _root(tmp_path)
    for given in ({"pcrsig": b"{}"}, {"pcrpkey": b"PEM"}):
        key_and_sig = disk.VmImageSpec(
            kernel=KERNEL, initrd=INITRD, root_dir=root, stub=STUB, pcr_signer=signer, **given
        )
        with pytest.raises(ConfigError, match="not both"):
            disk.build_vm_image(key_and_sig, tmp_path / "d.img")


def test_vm_image_is_reproducible(tmp_path: Path) -> None:
    _tools()
    spec = disk.VmImageSpec(kernel=KERNEL, initrd=INITRD, root_dir=_root(tmp_path), stub=STUB)
    first = disk.build_vm_image(spec, tmp_path / "a.img").path.read_bytes()
    second = disk.build_vm_image(spec, tmp_path / "b.img").path.read_bytes()
    assert first == second

"""Fixtures for real boots: the host's kernel, a test initrd, a db key, one VM at a time.

QEMU under TCG takes a whole core for ~25 s; two at once on a loaded machine slow both
past their time limits. The suite runs under pytest-xdist, so every boot takes an
exclusive ``fcntl`` lock on one file in the system temp folder first.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.bootkit import _cert
from tests.conftest import need_tool

from bastion.build import disk, initrd, ovmf
from bastion.formats.efivars import encode_signature_lists
from bastion.io import qemu
from bastion.trust import secureboot
from bastion.trust.signer import SignatureScheme, SoftwareSigner

LOCK_FILE = Path(tempfile.gettempdir()) / "bastion-e2e-qemu.lock"
BOOT_TIMEOUT = 300.0  # a TCG boot takes ~25 s alone, 110-170 s on a loaded machine


@dataclass(frozen=True)
class Parts:
    kernel: bytes
    initrd: bytes
    secure_boot: disk.SecureBootSigner
    pcr_signer: SoftwareSigner  # signs the UKI's PCR 11 policy (.pcrsig)


def _need_everything() -> Path:
    for tool in ("qemu-system-x86_64", "swtpm", "swtpm_setup", "depmod", "veritysetup"):
        need_tool(tool)
    for tool in ("mkfs.vfat", "mcopy", "mkfs.erofs", "zstd"):
        need_tool(tool)
    for path, package in (
        (qemu.DEFAULT_CODE, "ovmf"),
        (qemu.DEFAULT_VARS, "ovmf"),
        (Path(initrd.DEFAULT_BUSYBOX), "busybox-static"),
        (disk.DEFAULT_STUB, "systemd-boot-efi"),
        (disk.DEFAULT_LOADER, "systemd-boot-efi"),
    ):
        if not Path(path).is_file():
            need_tool(str(path), package)
    kernels = initrd.host_kernels()
    if not kernels:
        need_tool("/boot/vmlinuz-*", "linux-image-amd64")
    return kernels[-1]


def _enrolled_vars(db: x509.Certificate) -> bytes:
    """Debian's empty OVMF vars with a throwaway PK and KEK, ``db``, and Secure Boot on,
    written by bastion's own store builder (:func:`bastion.build.ovmf.enrol_ovmf_vars`)."""
    pk, kek = (
        _cert(rsa.generate_private_key(public_exponent=65537, key_size=2048), name)
        for name in ("PK", "KEK")
    )
    owner = secureboot.owner_guid(pk)
    esl = {
        name: encode_signature_lists([secureboot.certificate_list(owner, cert)])
        for name, cert in (("PK", pk), ("KEK", kek), ("db", db))
    }
    with tempfile.TemporaryDirectory(prefix="bastion-e2e-vars-") as tmp:
        out = Path(tmp) / "vars.fd"
        store = ovmf.enrol_ovmf_vars(
            out,
            pk=esl["PK"],
            kek=esl["KEK"],
            db=esl["db"],
            owner=owner,
            timestamp=dt.datetime.now(dt.UTC),
            template=qemu.DEFAULT_VARS,
        )
        assert store.secure_boot_enable and not store.custom_mode
        return out.read_bytes()


@functools.cache
def _parts(kernel: Path) -> Parts:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = disk.SecureBootSigner(
        SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256), _cert(key, "bastion e2e db")
    )
    spec = initrd.InitrdSpec(initrd.host_kernel_release(kernel))
    pcr_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pcr_signer = SoftwareSigner(pcr_key, SignatureScheme.RSA_PKCS1V15_SHA256)
    return Parts(kernel.read_bytes(), initrd.build_initrd(spec), signer, pcr_signer)


@pytest.fixture(scope="session")
def vm_parts() -> Parts:
    """Kernel, initrd and db key, made once per worker."""
    return _parts(_need_everything())


@pytest.fixture(scope="session")
def sb_vars(vm_parts: Parts) -> bytes:
    """OVMF variables with a test PK and KEK and the db certificate, Secure Boot on."""
    return _enrolled_vars(vm_parts.secure_boot.certificate)


def make_root(folder: Path) -> Path:
    """A small root tree: a greeting and 256 KiB of fixed bytes (many data blocks)."""
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / "hello.txt").write_text("hello from the verity root\n")
    (folder / "usr").mkdir()
    (folder / "usr" / "blob").write_bytes(bytes(i * 7 % 251 for i in range(256 * 1024)))
    return folder


def locked_boot(
    image: Path,
    work: Path,
    vars_: bytes | None = None,
    *,
    tpm_state: Path | None = None,
    extra_args: tuple[str, ...] = (),
    writable: bool = False,
    timeout: float = BOOT_TIMEOUT,
) -> qemu.BootResult:
    """One boot while holding the machine-wide QEMU lock (waits for any other boot).

    ``vars_`` is an OVMF variable store to boot with (default: Debian's, Secure Boot off);
    ``tpm_state`` a swtpm state folder to boot with (default: a fresh one in ``work``);
    ``extra_args`` more QEMU arguments (e.g. ``-fw_cfg`` for a quote nonce);
    ``writable`` lets the guest write ``image`` (systemd-boot's counter renames stay);
    ``timeout`` the time limit of this boot in seconds.
    """
    config = qemu.VmConfig(timeout=timeout, extra_args=extra_args, writable=writable)
    if vars_ is not None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "enrolled-vars.fd").write_bytes(vars_)
        config = replace(config, vars=work / "enrolled-vars.fd")
    with open(LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            return qemu.boot(image, work, config, tpm_state=tpm_state)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


BootVm = Callable[..., qemu.BootResult]


@pytest.fixture(scope="session")
def boot_vm() -> BootVm:
    """Boot under the machine-wide lock: ``boot_vm(image, work_dir[, vars_bytes]
    [, tpm_state=folder][, extra_args=(...)][, writable=True][, timeout=S])``."""
    return locked_boot

"""OVMF itself as the reference: it enrols bastion's .auth files and boots under our keys.

Two QEMU (TCG) boots of Debian's OVMF Secure Boot build, about 20 s each:

1. **Enrolment through firmware.** From the empty ``OVMF_VARS_4M.fd`` (setup mode) the
   built-in UEFI shell starts the Debian kernel with a busybox initramfs, which writes
   bastion's updates through efivarfs (firmware ``SetVariable()``): db, KEK, then PK
   (leaving setup mode), then updates that OVMF verifies in user mode against the PK and
   KEK it now holds. Each firmware verdict is compared with bastion's
   :func:`verify_update` verdict; the one difference (edk2 accepts a PK-signed dbx,
   bastion refuses it) is asserted as such. The store virt-firmware reads afterwards
   holds exactly the accepted data.
2. **Boot under our keys, PCR 7.** bastion's UKI (``build.uki`` on systemd-stub with
   the kernel and an initramfs), signed by bastion's Authenticode with the key set's db
   key (``sbverify`` agrees), boots from that store with a swtpm TPM; the guest prints
   the kernel's copy of the firmware event log and PCR 7. bastion's prediction from the
   enrolled variables equals both the event-log replay and the TPM's PCR 7.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.conftest import IN_CI, need_module, need_tool

from bastion.build.ovmf import DEBIAN_OVMF_VARS, read_secureboot_store
from bastion.build.uki import UkiInputs, build_uki
from bastion.errors import BastionError
from bastion.formats import cpio
from bastion.formats import efivars as ev
from bastion.formats import eventlog as el
from bastion.trust import pcr7
from bastion.trust import secureboot as sb
from bastion.trust.authenticode import sign_pe, verify_pe
from bastion.trust.keys import KeyAlgorithm
from bastion.trust.keyset import KeySet, create_keyset
from bastion.trust.signer import SignatureScheme

pytestmark = [pytest.mark.interop, pytest.mark.slow]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
HELPER = Path(__file__).parent / "vm" / "efiwrite.c"
T0, T1, T2 = ev.EfiTime(2026, 6, 1), ev.EfiTime(2026, 6, 2), ev.EfiTime(2026, 6, 3)
BOOT_DEADLINE = 400.0  # seconds per boot, for two loaded cores under TCG


def _need_file(path: Path, package: str) -> Path:
    if not path.is_file():
        message = f"{path} is missing (Debian package {package!r})"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def _kernel() -> tuple[Path, Path]:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        _need_file(Path("/boot/vmlinuz"), "linux-image-amd64")
    kernel = kernels[-1]
    version = kernel.name.removeprefix("vmlinuz-")
    module = Path(f"/lib/modules/{version}/kernel/fs/efivarfs/efivarfs.ko")
    return kernel, _need_file(module, "linux-image-amd64")


def _initramfs(script: str, files: dict[str, bytes]) -> bytes:
    """A gzip newc initramfs (bastion's cpio codec): busybox, ``files``, and /init."""
    busybox = _need_file(Path("/bin/busybox"), "busybox-static").read_bytes()
    members = {"bin/busybox": busybox, **files}
    members["init"] = ("#!/bin/busybox sh\nB=/bin/busybox\n" + script).encode()
    dirs = sorted({str(Path(n).parent) for n in members if "/" in n})
    entries = [cpio.CpioEntry(d, stat.S_IFDIR | 0o755) for d in dirs]
    entries += [cpio.CpioEntry(n, stat.S_IFREG | 0o755, d) for n, d in sorted(members.items())]
    return gzip.compress(cpio.archive(entries), compresslevel=1, mtime=0)


def _qemu(folder: Path, vars_fd: Path, esp: Path, extra: list[str], done: str) -> str:
    """Boot; return the serial log once ``done`` appears (fail on Access Denied/timeout)."""
    serial = folder / "serial.log"
    argv = [
        need_tool("qemu-system-x86_64", "qemu-system-x86"),
        "-machine", "q35,smm=on,accel=tcg", "-cpu", "max", "-m", "512",
        "-global", "driver=cfi.pflash01,property=secure,value=on",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
        "-drive", f"file=fat:{esp},format=raw,if=virtio,readonly=on",
        "-nographic", "-net", "none", "-no-reboot", "-monitor", "none",
        "-serial", f"file:{serial}", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + BOOT_DEADLINE
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            text = serial.read_bytes().decode(errors="replace") if serial.exists() else ""
            if "Access Denied" in text or "Security Violation" in text:
                break
        text = serial.read_bytes().decode(errors="replace") if serial.exists() else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert done in text, f"QEMU did not reach {done!r}; serial tail:\n{text[-3000:]}"
    return text.replace("\r", "")


@dataclass(frozen=True)
class Step:
    label: str
    variable: str
    auth: bytes
    append: bool
    firmware_accepts: bool
    bastion_accepts: bool


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    folder = tmp_path_factory.mktemp("vmks") / "keys"
    return create_keyset(folder, product="acme", rsa_algorithm=KeyAlgorithm.RSA_2048)


def _steps(keyset: KeySet) -> list[Step]:
    enrol = sb.build_enrolment(keyset, T0, dbx_hashes=[hashlib.sha256(b"good").digest()])
    files, owner = enrol.files, enrol.owner
    signer = {
        v: keyset.signer(role, scheme=SignatureScheme.RSA_PKCS1V15_SHA256)
        for v, role in sb.ROLES.items()
    }
    cert = {v: keyset.certificate(role) for v, role in sb.ROLES.items()}

    def hashes(word: bytes) -> bytes:
        return ev.encode_signature_lists(
            [ev.SignatureList.sha256(owner, [hashlib.sha256(word).digest()])]
        )

    def sign(var: str, data: bytes, by: str, when: ev.EfiTime, append: bool = False) -> bytes:
        return sb.sign_update(var, data, signer[by], cert[by], when, append=append).to_bytes()

    kek_esl = files["KEK.esl"]
    appended = sign("db", hashes(b"extra"), "KEK", T1, append=True)
    evil = hashes(b"evil")
    flipped = bytearray(sign("dbx", hashes(b"good"), "KEK", T1))
    flipped[-7] ^= 0x01
    return [
        Step("db in setup mode", "db", files["db.auth"], False, True, True),
        Step("KEK in setup mode", "KEK", files["KEK.auth"], False, True, True),
        Step("PK, self-signed", "PK", files["PK.auth"], False, True, True),
        Step("dbx signed by KEK", "dbx", files["dbx.auth"], False, True, True),
        Step("dbx with a flipped bit", "dbx", bytes(flipped), False, False, False),
        Step("dbx signed by db", "dbx", sign("dbx", hashes(b"x"), "db", T1), False, False, False),
        Step("KEK signed by KEK", "KEK", sign("KEK", kek_esl, "KEK", T1), False, False, False),
        Step("db replayed, same timestamp", "db", files["db.auth"], False, False, False),
        Step("KEK signed by PK, newer", "KEK", sign("KEK", kek_esl, "PK", T1), False, True, True),
        Step("db append signed by KEK", "db", appended, True, True, True),
        # edk2 2022.11 accepts db/dbx signed by PK; bastion's rule is stricter (ADR 0017)
        Step("dbx signed by PK", "dbx", sign("dbx", evil, "PK", T2), False, True, False),
    ]  # fmt: skip


def _bastion_verdicts(keyset: KeySet, steps: list[Step]) -> list[bool]:
    """bastion's verify_update over the same sequence (anchors: the key set's PK and KEK;
    bastion checks the setup-mode writes too), tracking the accepted timestamps."""
    pk, kek = keyset.certificate("secureboot-pk"), keyset.certificate("secureboot-kek")
    current: dict[str, ev.EfiTime] = {}
    verdicts = []
    for step in steps:
        try:
            got = sb.verify_update(
                step.variable, step.auth, pk=pk, kek=[kek],
                append=step.append, current=current.get(step.variable),
            )  # fmt: skip
        except BastionError:
            verdicts.append(False)
            continue
        verdicts.append(True)
        current[step.variable] = max(got.timestamp, current.get(step.variable, got.timestamp))
    return verdicts


def test_ovmf_enrols_and_boots_with_bastion_keys(keyset: KeySet, tmp_path: Path) -> None:
    need_module("virt.firmware", "virt-firmware")
    _need_file(DEBIAN_OVMF_VARS, "ovmf")
    _need_file(OVMF_CODE, "ovmf")
    _need_file(STUB, "systemd-boot-efi")
    kernel, efivarfs = _kernel()
    gcc = need_tool("gcc")
    need_tool("swtpm")
    helper = tmp_path / "efiwrite"
    subprocess.run([gcc, "-static", "-Os", "-o", str(helper), str(HELPER)], check=True)

    # --- boot 1: enrolment through firmware ---------------------------------------------
    steps = _steps(keyset)
    files = {"bin/efiwrite": helper.read_bytes(), "efivarfs.ko": efivarfs.read_bytes()}
    script = [
        "$B mkdir -p /proc /sys /dev /tmp",
        "$B mount -t proc proc /proc; $B mount -t sysfs sysfs /sys",
        "$B insmod /efivarfs.ko",
        "$B mount -t efivarfs efivarfs /sys/firmware/efi/efivars",
    ]
    for i, step in enumerate(steps):
        attrs = 0x67 if step.append else 0x27
        files[f"auth/{i}"] = attrs.to_bytes(4, "little") + step.auth
        target = (
            f"/sys/firmware/efi/efivars/{step.variable}-{ev.SECURE_BOOT_VARIABLES[step.variable]}"
        )
        script.append(
            f"/bin/efiwrite /auth/{i} {target} 2>/tmp/e && echo BASTION-STEP {i} ok "
            f'|| echo BASTION-STEP {i} refused "$($B cat /tmp/e)"'
        )
    script += ["echo BASTION-DONE", "$B poweroff -f"]
    boot1, esp = tmp_path / "boot1", tmp_path / "esp1"
    boot1.mkdir()
    esp.mkdir()
    (esp / "initrd.img").write_bytes(_initramfs("\n".join(script) + "\n", files))
    shutil.copy(kernel, esp / "vmlinuz.efi")
    (esp / "startup.nsh").write_bytes(
        b"fs0:\r\nvmlinuz.efi initrd=\\initrd.img console=ttyS0 quiet panic=-1\r\n"
    )
    vars_fd = tmp_path / "vars.fd"
    shutil.copy(DEBIAN_OVMF_VARS, vars_fd)
    log = _qemu(boot1, vars_fd, esp, [], "BASTION-DONE")
    firmware = {}
    for line in log.splitlines():
        if line.startswith("BASTION-STEP "):
            _, index, verdict = line.split(" ", 3)[:3]
            firmware[int(index)] = verdict == "ok"
    assert [firmware.get(i) for i in range(len(steps))] == [s.firmware_accepts for s in steps], (
        "firmware verdicts differ:\n"
        + "\n".join(line for line in log.splitlines() if "BASTION" in line)
    )
    assert _bastion_verdicts(keyset, steps) == [s.bastion_accepts for s in steps]
    store = read_secureboot_store(vars_fd)
    enrol = sb.build_enrolment(keyset, T0)
    assert store.pk == enrol.files["PK.esl"] and store.kek == enrol.files["KEK.esl"]
    appended = ev.AuthenticatedVariable.parse(steps[9].auth).data
    assert store.db == enrol.files["db.esl"] + appended
    assert store.dbx == ev.AuthenticatedVariable.parse(steps[10].auth).data

    # --- boot 2: a db-signed UKI under Secure Boot, PCR 7 against the TPM ---------------
    probe = (
        "$B mkdir -p /proc /sys /dev\n"
        "$B mount -t proc proc /proc; $B mount -t sysfs sysfs /sys\n"
        "S=/sys/kernel/security; $B mount -t securityfs securityfs $S\n"
        "echo BASTION-PCR7 $($B cat /sys/class/tpm/tpm0/pcr-sha256/7)\n"
        "echo BASTION-LOG-BEGIN\n"
        '$B hexdump -v -e \'64/1 "%02x" "\\n"\' $S/tpm0/binary_bios_measurements\n'
        "echo BASTION-LOG-END\n"
        "$B poweroff -f\n"
    )
    work = tmp_path / "uki"
    work.mkdir()
    initrd = _initramfs(probe, {})
    # the UKI is bastion's own (build.uki) signed by bastion's Authenticode with the db key
    inputs = UkiInputs(linux=kernel.read_bytes(), cmdline=b"console=ttyS0 quiet panic=-1",
                       initrd=initrd)  # fmt: skip
    uki = build_uki(STUB.read_bytes(), inputs)
    db_signer = keyset.signer("secureboot-db", scheme=SignatureScheme.RSA_PKCS1V15_SHA256)
    signed = sign_pe(uki, db_signer, keyset.certificate("secureboot-db"))
    enrolled_db = sb.certificates_in(ev.parse_signature_lists(read_secureboot_store(vars_fd).db))
    verify_pe(signed, enrolled_db)  # the offline check agrees with what firmware will do
    esp2 = tmp_path / "esp2"
    (esp2 / "EFI" / "BOOT").mkdir(parents=True)
    (esp2 / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(signed)
    # sbsigntool's verifier accepts it with the enrolled db certificate
    db_pem = tmp_path / "db.pem"
    db_pem.write_bytes(keyset.certificate("secureboot-db").public_bytes(Encoding.PEM))
    subprocess.run(
        [need_tool("sbverify", "sbsigntool"), "--cert", str(db_pem),
         str(esp2 / "EFI" / "BOOT" / "BOOTX64.EFI")],
        check=True, capture_output=True,
    )  # fmt: skip
    tpm = tmp_path / "tpm"
    tpm.mkdir()
    sock = tpm / "ctrl.sock"
    swtpm = subprocess.Popen(
        [need_tool("swtpm"), "socket", "--tpm2", "--tpmstate", f"dir={tpm}",
         "--ctrl", f"type=unixio,path={sock}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        log = _qemu(
            work, vars_fd, esp2,
            ["-chardev", f"socket,id=chrtpm,path={sock}", "-tpmdev",
             "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"],
            "BASTION-LOG-END",
        )  # fmt: skip
    finally:
        if swtpm.poll() is None:
            swtpm.kill()
        swtpm.wait(timeout=30)
    lines = log.splitlines()
    tpm_pcr7 = next(line.split()[1] for line in lines if line.startswith("BASTION-PCR7 "))
    begin, end = lines.index("BASTION-LOG-BEGIN"), lines.index("BASTION-LOG-END")
    events = el.parse(bytes.fromhex("".join(lines[begin + 1 : end]))).events
    after = read_secureboot_store(vars_fd)
    state = pcr7.state_for_boot(
        pk=after.pk, kek=after.kek, db=after.db, dbx=after.dbx,
        boot_signer=keyset.certificate("secureboot-db"),
    )  # fmt: skip
    predicted = pcr7.predict(state)
    assert el.replay(events)[7] == predicted
    assert tpm_pcr7.lower() == predicted.hex()
    measured = [(e.event_type, e.data) for e in events if e.pcr == 7]
    assert measured == [(e.event_type, e.data) for e in pcr7.events(state)]
    assert os.path.getsize(vars_fd) == os.path.getsize(DEBIAN_OVMF_VARS)

"""The device and fleet lifecycle steps of ``bastion demo``, run through the real CLI.

Each step calls ``bastion`` commands in-process, exactly as a user would type them, and
checks what they printed: make the product keys; build the signed A/B disk (an ESP with
signed systemd-boot and a signed UKI, what UEFI, QEMU and the sim all boot); predict
its PCRs; create a sim device (Secure Boot keys enrolled, software TPM); boot it twice
(firmware -> systemd-boot -> stub -> initrd -> running; the first boot creates the LUKS2
data volume under the UKI's signed PCR 11 policy and shows the recovery key once); check
the event log against the TPM and the prediction; show that the data key cannot be
unsealed after boot but the recovery key still opens the volume; attest the device
with a TPM quote checked against the image's golden PCRs; run a fleet server on
loopback, enrol the device with a provisioning key (TPM-bound), let it read its own
record, revoke it and see its next request refused, and verify the audit chain; and
finally flip one bit of the kernel inside the signed UKI and watch Secure Boot refuse it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion.errors import AuthError, BastionError

if TYPE_CHECKING:
    from bastion.cli.demo import DemoContext, StepOutcome

#: a stand-in kernel for the sim platform (it is signed and measured, never executed)
DEMO_KERNEL = b"\x7fELF bastion demo kernel " * 512
DEMO_INITRD = b"070701 bastion demo initrd " * 128
#: what the attestation quote covers: the sim firmware (0), boot code (4), Secure Boot (7),
#: the kernel's command line and initrd (9), the UKI and the boot phases (11)
SEAL_SELECTION = "sha256:0,4,7,9,11"


def _outcome(ok: bool, detail: str, data: dict[str, Any] | None = None) -> StepOutcome:
    from bastion.cli.demo import StepOutcome

    return StepOutcome(ok, detail, data or {})


def bastion(*argv: str) -> tuple[int, str, str]:
    """Run one ``bastion`` command in-process; return (exit code, stdout, stderr)."""
    from bastion.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _json(*argv: str) -> dict[str, Any]:
    code, out, err = bastion(*argv, "--json")
    if code != 0:
        raise _StepFailedError(f"bastion {' '.join(argv)} exited {code}: {err.strip()}")
    doc: dict[str, Any] = json.loads(out)
    return doc


class _StepFailedError(BastionError):
    """A command the demo expected to succeed did not."""


def _ok(*argv: str) -> str:
    code, out, err = bastion(*argv)
    if code != 0:
        raise _StepFailedError(f"bastion {' '.join(argv)} exited {code}: {err.strip()}")
    return out


# --- build plane ---------------------------------------------------------------------------


def step_keys(ctx: DemoContext) -> StepOutcome:
    """Create the product key set (platform root, boot, image, update, module, fleet CAs)."""
    keys = ctx.workdir / "keys"
    _ok("keys", "init", str(keys), "--product", "demo")
    ctx.state["keys"] = keys
    made = sorted(p.name for p in keys.iterdir() if p.name.endswith(".key.pem"))
    return _outcome(True, f"{len(made)} private keys in {keys.name}/ (mode 0600)", {"keys": made})


def step_build_image(ctx: DemoContext) -> StepOutcome:
    """Build the signed A/B disk image from a tiny root filesystem."""
    tree = ctx.workdir / "rootfs"
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "os-release").write_text('ID=bastion-demo\nVERSION_ID="1.0"\n')
    (tree / "usr" / "bin" / "app").write_bytes(b"#!/bin/sh\necho hello from the verified root\n")
    kernel = ctx.workdir / "vmlinuz"
    kernel.write_bytes(DEMO_KERNEL)
    initrd = ctx.workdir / "initrd.img"
    initrd.write_bytes(DEMO_INITRD)
    disk = ctx.workdir / "disk.img"
    started = time.perf_counter()
    _ok(
        "image", "build", "--rootfs", str(tree), "--kernel", str(kernel), "--initrd", str(initrd),
        "--version", "1.0", "--security-version", "1", "--keys", str(ctx.state["keys"]),
        "--data-size", "24", "-o", str(disk),
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    info = _json("image", "verify", str(disk), "--keys", str(ctx.state["keys"]))
    ctx.state["disk"] = disk
    return _outcome(
        True,
        f"{disk.name} ({disk.stat().st_size // (1024 * 1024)} MiB, ESP + A/B GPT/DPS, signed "
        "systemd-boot and UKI) built in "
        f"{elapsed:.1f} s and verified offline",
        {"image": str(disk), "verify": info},
    )


def step_golden_pcrs(ctx: DemoContext) -> StepOutcome:
    """Predict, offline, the PCRs a device will have after booting this image."""
    doc = _json("image", "pcrs", str(ctx.state["disk"]), "--keys", str(ctx.state["keys"]))
    pcrs = {int(k): v for k, v in doc["pcrs"].items()}
    ctx.state["golden"] = pcrs
    return _outcome(
        True, "golden PCRs " + ", ".join(f"{i}={v[:12]}.." for i, v in sorted(pcrs.items())), doc
    )


# --- device plane --------------------------------------------------------------------------


def step_device_create(ctx: DemoContext) -> StepOutcome:
    """Create a sim device: image signature checked, the key set's PK, KEK, db enrolled."""
    dev = ctx.workdir / "device"
    out = _ok(
        "device", "create", str(dev), "--image", str(ctx.state["disk"]),
        "--keys", str(ctx.state["keys"]),
    )  # fmt: skip
    ctx.state["dev"] = dev
    return _outcome("image signature verified" in out, out.strip().splitlines()[0])


def step_first_boot(ctx: DemoContext) -> StepOutcome:
    """First boot: every stage verified and measured; the sealed data volume is created."""
    code, out, err = bastion("device", "boot", str(ctx.state["dev"]))
    key = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if "RECOVERY KEY" in ln), "")
    ctx.state["recovery_key"] = key
    ok = code == 0 and "-> running" in out and bool(key)
    return _outcome(
        ok, "firmware (db) -> systemd-boot (bastion-1-a+3-0.efi, counted) -> stub -> initrd -> "
        "running, entry blessed; data volume created under the signed PCR 11 policy, recovery "
        "key shown once" if ok else f"boot failed: {err.strip() or out.strip()}",
    )  # fmt: skip


def step_second_boot(ctx: DemoContext) -> StepOutcome:
    """Second boot: the TPM releases the data key to the expected measurements only."""
    doc = _json("device", "boot", str(ctx.state["dev"]))
    ok = doc.get("reached") == "running" and not doc.get("first_boot")
    return _outcome(
        ok, f"reached {doc.get('reached')}; the TPM released the data key to the UKI's .pcrsig",
        doc,
    )  # fmt: skip


def step_eventlog(ctx: DemoContext) -> StepOutcome:
    """Replay the TCG event log: it must equal the TPM's PCRs and the offline prediction."""
    doc = _json("device", "eventlog", "--check", str(ctx.state["dev"]))
    replay = {int(k): v for k, v in doc["replay"].items()}
    ok = bool(doc.get("tpm_matches")) and replay == ctx.state["golden"]
    return _outcome(
        ok, f"{len(doc.get('events', []))} events; replay == TPM PCRs == golden values", {}
    )


def _data_volume(ctx: DemoContext) -> Any:
    from bastion.storage.disk_image import read_layout
    from bastion.storage.luks2_volume import FileRange, Luks2Volume

    disk = Path(ctx.state["dev"]) / "disk.img"
    part = read_layout(disk).find("data")
    return Luks2Volume.open(FileRange(disk, offset=part.offset, size=part.size, writable=False))


def step_key_locked(ctx: DemoContext) -> StepOutcome:
    """After the initrd the key is out of reach: the UKI's .pcrsig signs enter-initrd only,
    and leave-initrd moved PCR 11 past it."""
    from bastion.device.platform.sim import SimPlatform
    from bastion.formats.image import is_slot_entry
    from bastion.formats.uki import uki_sections
    from bastion.storage.sealed import unlock_with_token

    volume = _data_volume(ctx)
    plat = SimPlatform(Path(ctx.state["dev"]))
    esp = plat.esp()
    name = next(n for n in esp.list("EFI/Linux") if is_slot_entry(n, "a"))
    pcrsig = uki_sections(esp.read(f"EFI/Linux/{name}"))[".pcrsig"]
    tpm = plat.open_tpm()
    try:
        unlock_with_token(volume, tpm, pcr_signature=pcrsig)
    except BastionError as exc:
        return _outcome(True, f"refused (expected): {type(exc).__name__}: {exc}")
    finally:
        tpm.close()
    return _outcome(False, "the data key was released after boot: the lock did not hold")


def step_recovery_key(ctx: DemoContext) -> StepOutcome:
    """The recovery key shown at first boot still opens the data volume."""
    from bastion.storage.recovery import unlock_recovery_key

    volume = _data_volume(ctx)
    slot = unlock_recovery_key(volume, ctx.state["recovery_key"])
    return _outcome(True, f"recovery key opens keyslot {slot}")


def step_attest(ctx: DemoContext) -> StepOutcome:
    """Attestation: a fresh TPM quote, checked against the image's golden PCR values."""
    from bastion.device.platform.sim import SimPlatform
    from bastion.tpm.base import PcrSelection
    from bastion.tpm.quote import verify_quote

    dev = Path(ctx.state["dev"])
    nonce = secrets.token_bytes(16)
    out_dir = ctx.workdir / "quote"
    tpm_uri = SimPlatform(dev).tpm_spec()
    _ok(
        "tpm", "quote", "--tpm", tpm_uri, "--nonce", nonce.hex(), "--pcrs", SEAL_SELECTION,
        "--out", str(out_dir), "--ak-file", str(dev / "ak.json"),
    )  # fmt: skip
    selection = PcrSelection.parse(SEAL_SELECTION)
    golden = {i: bytes.fromhex(ctx.state["golden"][i]) for i in selection.indexes}
    verify_quote(
        (out_dir / "quote.msg").read_bytes(),
        (out_dir / "quote.sig").read_bytes(),
        (out_dir / "ak.pem").read_bytes(),
        nonce,
        selection,
        golden,
    )
    return _outcome(True, f"quote over {SEAL_SELECTION} matches the golden values (fresh nonce)")


# --- fleet plane ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _server(data_dir: Path) -> Iterator[str]:
    import uvicorn

    from bastion.io.http import HttpClient
    from bastion.server.app import create_app
    from bastion.server.settings import ServerSettings

    port = _free_port()
    app = create_app(ServerSettings(data_dir=data_dir, listen_port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            with contextlib.suppress(BastionError), HttpClient(url, timeout=1) as probe:
                if probe.request("GET", "/v1/health").status == 200:
                    break
            time.sleep(0.05)
        else:
            raise _StepFailedError("the fleet server did not start")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _device_reads(url: str, api_key: str) -> list[str]:
    """The device reads its own config and is refused the fleet list."""
    from bastion.io.http import HttpClient

    with HttpClient(url, api_key) as device:
        try:
            own = device.request("GET", "/v1/device/config")
        except BastionError as exc:
            raise _StepFailedError(f"device could not read its config: {exc}") from exc
        if b"MODE" not in own.content:
            raise _StepFailedError("device config lacks the MODE the operator set")
        try:
            device.request("GET", "/v1/fleets")
        except AuthError as exc:
            return [f"device reads its own config, fleet list refused ({type(exc).__name__})"]
    raise _StepFailedError("a device key could list fleets")


def step_fleet(ctx: DemoContext) -> StepOutcome:
    """Fleet: enrol the device (TPM-bound), least-privilege reads, revoke, audit chain."""
    from cryptography import x509

    from bastion.device.platform.sim import SimPlatform
    from bastion.device.provision import DeviceIdentity
    from bastion.io.http import HttpClient
    from bastion.tpm.uri import open_tpm

    data_dir = ctx.workdir / "server"
    # the server issues device certificates from the product's fleet CA (bastion keys init)
    pki = data_dir / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    keys = Path(ctx.state["keys"])
    (pki / "device-ca.pem").write_bytes((keys / "fleet-ca.crt.pem").read_bytes())
    (pki / "device-ca.key").write_bytes((keys / "fleet-ca.key.pem").read_bytes())
    os.chmod(pki / "device-ca.key", 0o600)
    password = ctx.workdir / "operator.password"
    password.write_text(secrets.token_urlsafe(18) + "\n")
    os.chmod(password, 0o600)
    env = {
        "BASTION_CONFIG": str(ctx.workdir / "operator.json"),
        "BASTION_SERVER_ARGON2_MEMORY_KIB": "8192",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    lines: list[str] = []
    try:
        _ok("server", "user", "add", "ops@demo.example", "--password-file", str(password),
            "--data-dir", str(data_dir))  # fmt: skip
        with _server(data_dir) as url:
            _ok("login", "--server", url, "--email", "ops@demo.example",
                "--password-file", str(password))  # fmt: skip
            _ok("org", "create", "demo")
            # the demo device has a software TPM (no EK certificate): it may enrol only
            # into a development fleet, which every listing marks loudly
            _ok("fleet", "create", "cameras", "--org", "demo", "--ek-policy", "any")
            lines.append(
                "fleet demo/cameras created with EK policy 'any': a DEVELOPMENT fleet "
                "(the software TPM has no EK certificate; production fleets stay 'certified')"
            )
            _ok("env", "set", "--fleet", "demo/cameras", "MODE=demo")
            pk_file = ctx.workdir / "provisioning.key"
            _ok("provisioning-key", "create", "--fleet", "demo/cameras", "--ttl", "10m",
                "--out", str(pk_file))  # fmt: skip
            dev = Path(ctx.state["dev"])
            tpm_uri = SimPlatform(dev).tpm_spec()
            doc = _json("device", "provision", str(dev), "--provisioning-key", str(pk_file),
                        "--server", url, "--serial", "demo-cam-1", "--tpm", tpm_uri)  # fmt: skip
            device_id = str(doc.get("device_id") or doc.get("id"))
            lines.append(f"enrolled {device_id[:12]}.. (EK/AK proven by credential activation)")
            if pk_file.exists():
                return _outcome(False, "the provisioning key was not deleted after enrolment")
            lines.append("provisioning key deleted")
            tpm = open_tpm(tpm_uri)
            try:
                api_key = DeviceIdentity.load(dev).api_key(tpm)  # only this TPM can open it
            finally:
                tpm.close()
            lines += _device_reads(url, api_key)
            _ok("device", "revoke", device_id, "--fleet", "demo/cameras")
            try:
                with HttpClient(url, api_key) as device:
                    device.request("GET", "/v1/device")
                return _outcome(False, "a revoked device still got an answer")
            except AuthError as exc:
                if "HTTP 401" not in str(exc):
                    return _outcome(False, f"revoked device refused otherwise: {exc}")
            with HttpClient(url) as anonymous:
                crl = x509.load_der_x509_crl(anonymous.request("GET", "/v1/crl").content)
            cert = x509.load_pem_x509_certificate((dev / "device.pem").read_bytes())
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None:
                return _outcome(False, "the revoked device's certificate is not on the CRL")
            lines.append("revoked: next request refused (401), certificate on the CRL")
        audit = _json("server", "audit", "verify", "--data-dir", str(data_dir))
        lines.append(f"audit chain of {audit.get('entries', '?')} entries verifies")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return _outcome(True, "; ".join(lines))


def step_tamper_kernel(ctx: DemoContext) -> StepOutcome:
    """Flip one bit of the kernel inside the signed UKI: Secure Boot must refuse it."""
    from bastion.device.platform.sim import SimPlatform
    from bastion.formats.image import is_slot_entry

    esp = SimPlatform(Path(ctx.state["dev"])).esp()
    name = next(n for n in esp.list("EFI/Linux") if is_slot_entry(n, "a"))
    uki = bytearray(esp.read(f"EFI/Linux/{name}"))
    at = uki.index(DEMO_KERNEL[:32]) + 4096
    uki[at] ^= 0x01
    esp.write(f"EFI/Linux/{name}", bytes(uki))
    code, _out, err = bastion("device", "boot", str(ctx.state["dev"]))
    ok = code != 0 and "systemd-boot" in err and "Access Denied" in err
    return _outcome(ok, f"refused (expected): {err.strip().removeprefix('bastion: ')}")

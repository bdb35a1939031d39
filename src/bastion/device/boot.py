"""The verified and measured boot chain: ROM -> bootloader -> kernel -> initrd -> running.

Each stage verifies the next before handing over, and measures it (TPM extend plus a
TCG event-log entry, trust/measure.py) once verified:

* **rom**: fuse bank -> platform root key hash; the boot archive's platform key must
  hash to it; the signed security profile and the bootloader statement must verify with
  it (the profile may instead be signed by the key a root-signed delegation names,
  trust/delegation.py); measures ROM identity (PCR 0), the authority (PCR 7) and the loader (PCR 4).
* **bootloader**: boot-control (two checksummed copies) -> slot; the slot's boot unit
  statement must verify with the boot key the loader carries, the unit and each section
  must match it; security version >= fuse counter; tries left decremented; every
  section measured into PCR 11.
* **kernel**: every module in ``.modules`` must carry a valid signature by ``.modcert``.
* **initrd**: the DPS verity signature partition must verify with ``.veritycert`` and
  name the command line's ``roothash=``; partition UUIDs must derive from it; the root
  opens through the verifying VerityReader (``full_verify`` checks every block); root
  hash measured into PCR 15; data volume formatted + sealed on first boot, else
  unsealed and unlocked; then the lock event extends PCR 15.
* **running**: the root's first blocks are read through verity (mount); the slot is
  marked successful and only then is the fuse counter raised to the unit's security
  version.

Each stage is one method of :class:`BootChain`, handing a frozen result to the next
(``FirmwareResult`` -> ``LoaderResult`` -> ``KernelResult`` -> ``InitrdResult`` ->
``RunningResult``). The chain touches hardware only through its
:class:`~bastion.device.platform.base.Platform` (disk partitions by name, TPM, fuses,
console, store); the decisions are trust/image.py's and trust/measure.py's, the layout
formats/image.py's.

A failure raises a :class:`~bastion.errors.VerificationError` subclass whose message
starts with the stage; the security profile decides the response (halt, try the other
slot by rebooting into it, or wipe the data volume) and whether a feature is enforced or
only audited. Nothing falls through: an exception that is not a handled verification
failure stops the boot too.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from bastion.device import boot_data
from bastion.device.platform.base import ConsoleKind, FuseBank, Platform, VerifiedRoot
from bastion.device.platform.sim import SimPlatform
from bastion.device.profile import DELEGATION_FILE as PROFILE_DELEGATION_FILE
from bastion.device.profile import PAYLOAD_TYPE as PROFILE_TYPE
from bastion.device.profile import (
    Feature,
    Mode,
    SecurityProfile,
    TamperResponse,
    device_id,
    parse_profile,
)
from bastion.errors import (
    BackendError,
    BastionError,
    DigestMismatchError,
    FormatError,
    NotFoundError,
    RollbackError,
    SignatureError,
    TamperError,
    VerificationError,
)
from bastion.formats import bootctl, gpt, modsig
from bastion.formats import bootunit as bu
from bastion.formats import eventlog as el
from bastion.formats.image import (
    PART_BOOT,
    PART_BOOTCTL,
    parse_archive,
    root_part,
    sig_part,
    verity_data_size,
    verity_part,
)
from bastion.tpm.base import HashAlg, PcrSelection, Tpm
from bastion.trust import delegation, measure
from bastion.trust.envelope import parse_envelope, verify_envelope
from bastion.trust.image import open_statement, platform_key_hash, verify_verity_signature
from bastion.trust.keys import load_public_key
from bastion.trust.signer import Verifier

MOUNT_READ = 64 * 1024  # bytes of the root read at mount (superblocks live here)
EVENTLOG_FILE = "eventlog.bin"
REPORT_FILE = "boot.json"


#: TPM NV bits index holding the highest accepted security-profile serial (thermometer code)
PROFILE_SERIAL_NV = 0x013BA510


class Stage(enum.StrEnum):
    """Boot stages, in order."""

    ROM = "rom"
    BOOTLOADER = "bootloader"
    KERNEL = "kernel"
    INITRD = "initrd"
    RUNNING = "running"


class _RebootError(Exception):
    """Internal: the profile asked to try the other slot."""


@dataclass
class BootReport:
    """What one boot did."""

    slot: str | None = None
    version: str | None = None
    security_version: int | None = None
    root_hash: str | None = None
    first_boot: bool = False
    recovery_key: str | None = None
    reached: Stage | None = None
    full_verify: bool = False
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pcrs: dict[int, str] = field(default_factory=dict)
    events: int = 0
    error: str | None = None

    def to_json(self, *, secrets: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "slot": self.slot,
            "version": self.version,
            "security_version": self.security_version,
            "root_hash": self.root_hash,
            "first_boot": self.first_boot,
            "reached": self.reached.value if self.reached else None,
            "full_verify": self.full_verify,
            "warnings": self.warnings,
            "notes": self.notes,
            "pcrs": {str(k): v for k, v in sorted(self.pcrs.items())},
            "events": self.events,
            "error": self.error,
        }
        if secrets and self.recovery_key:
            doc["recovery_key"] = self.recovery_key
        return doc


class _Recorder:
    """Extends the TPM and appends to the event log, in one step per event."""

    def __init__(self, tpm: Tpm) -> None:
        self.tpm = tpm
        self.events: list[el.Event] = []

    def extend(self, events: list[el.Event]) -> None:
        for event in events:
            self.tpm.pcr_extend(event.pcr, {HashAlg.SHA256: event.digest(el.ALG_SHA256)})
            self.events.append(event)

    def log_bytes(self) -> bytes:
        return el.EventLog(el.SpecIdEvent(), tuple(self.events)).to_bytes()


def _fail(stage: Stage, reason: str) -> TamperError:
    return TamperError(f"{stage.value}: {reason}", stage=stage.value)


def _prefixed(stage: Stage, exc: BastionError) -> BastionError:
    """The same error class with the stage in front of the message and as ``.stage``."""
    message = f"{stage.value}: {exc}"
    new: BastionError
    if isinstance(exc, TamperError):
        return TamperError(message, stage=stage.value)
    if isinstance(exc, DigestMismatchError):
        new = DigestMismatchError(message, area=exc.area, block=exc.block, level=exc.level)
    else:
        try:
            new = type(exc)(message)
        except TypeError:
            return exc
    setattr(new, "stage", stage.value)  # noqa: B010 - not every class declares it
    return new


# --- hand-offs between stages (each stage returns what the next one needs) ---------------


@dataclass(frozen=True, slots=True)
class FirmwareResult:
    """ROM -> bootloader: the fused state and the verified boot archive."""

    fuses: FuseBank
    key_hash: bytes  # the platform root key hash burned into the fuses
    counter: int  # the fuse counter (lowest security version allowed) at power-on
    layout: gpt.GptDisk
    archive: bu.Container
    loader: bytes  # the bootloader stage, verified (or audited) against the platform key


@dataclass(frozen=True, slots=True)
class LoaderResult:
    """Bootloader -> kernel: the chosen slot and its verified boot unit."""

    firmware: FirmwareResult
    slot: str
    unit: bu.BootUnit


@dataclass(frozen=True, slots=True)
class KernelResult:
    """Kernel -> initrd: the unit whose modules were verified."""

    loader: LoaderResult


@dataclass(frozen=True, slots=True)
class InitrdResult:
    """Initrd -> running: the verity root (None when audited after a failure) and the
    data volume's first-boot state."""

    kernel: KernelResult
    root_hash: bytes
    root: VerifiedRoot | None
    first_boot: bool


@dataclass(frozen=True, slots=True)
class RunningResult:
    """What the running system was handed: the slot, marked good, and its version."""

    slot: str
    security_version: int


class BootChain:
    """One boot of a device, through its :class:`Platform` only.

    One method per stage, each taking the previous stage's result: ``firmware`` (the
    ROM), ``bootloader``, ``kernel``, ``initrd``, ``running``. ``run`` powers the
    device on and calls them in order (and once more after a try-other-slot response).
    """

    def __init__(self, platform: Platform, *, full_verify: bool = False) -> None:
        self.platform = platform
        self.full_verify = full_verify
        self.report = BootReport(full_verify=full_verify)
        self.profile = SecurityProfile()
        self._stage = Stage.ROM
        self._abandoned: str | None = None  # why a slot was given up (try-other-slot)
        self._rec: _Recorder | None = None  # the event recorder of the current power-on

    # --- public --------------------------------------------------------------------------

    def run(self) -> BootReport:
        """Boot to running or raise; the report and event log are stored either way."""
        for _attempt in range(2):
            try:
                self._boot_once()
                return self.report
            except _RebootError:
                self.report = BootReport(
                    full_verify=self.full_verify,
                    notes=list(self.report.notes),
                    warnings=list(self.report.warnings),  # a repair stays reported
                )
                continue
            except BastionError as exc:
                setattr(exc, "boot_report", self.report)  # noqa: B010 - for the CLI's warnings
                raise
        err = _fail(
            Stage.BOOTLOADER,
            f"no slot left to try after a tamper response ({self._abandoned or 'no cause'})",
        )
        setattr(err, "boot_report", self.report)  # noqa: B010
        raise err

    # --- one power-on --------------------------------------------------------------------

    def _boot_once(self) -> None:
        plat = self.platform
        with plat.power_on() as tpm:
            rec = self._rec = _Recorder(tpm)
            try:
                self._chain(tpm)
            except BastionError as exc:
                err = exc
                if getattr(exc, "stage", None) is None:  # name the stage, always
                    err = _prefixed(self._stage, exc)
                self.report.error = f"{type(err).__name__}: {err}"
                if err is exc:
                    raise
                raise err from exc
            except OSError as exc:
                err = BackendError(f"{self._stage.value}: I/O error: {exc}")
                self.report.error = f"BackendError: {err}"
                raise err from exc
            finally:
                plat.store(EVENTLOG_FILE, rec.log_bytes())
                self.report.events = len(rec.events)
                self.report.pcrs = {
                    i: v.hex()
                    for i, v in tpm.pcr_read(
                        PcrSelection(HashAlg.SHA256, (0, 4, 7, 11, 15))
                    ).items()
                }
                plat.store(REPORT_FILE, json.dumps(self.report.to_json(), indent=2).encode())

    def _handle(
        self, stage: Stage, feature: Feature | None, exc: BastionError, *, slot: str | None
    ) -> None:
        """Apply the profile to a verification failure: audit, or respond and raise."""
        err = _prefixed(stage, exc)
        if feature is not None and self.profile.mode(feature) is Mode.AUDIT:
            self._warn(f"audit ({feature.value}): {err}")
            return
        response = self.profile.tamper_response
        if response is TamperResponse.TRY_OTHER_SLOT and slot is not None:
            self._mark_unbootable(slot)
            self._abandoned = f"slot {slot} marked unbootable after: {err}"
            self._note(self._abandoned)
            raise _RebootError() from err
        if response is TamperResponse.WIPE_DATA:
            boot_data.wipe(self.platform)
            self.platform.set_state(reprovision=True)
            wiped = "tamper response: data volume wiped; the device must be re-provisioned"
            self._note(wiped)
            self._warn(wiped)
            err.args = (f"{err}; {wiped}",)  # the one error line announces the wipe
        raise err from exc

    def _chain(self, tpm: Tpm) -> None:
        firmware = self.firmware(tpm)
        loader = self.bootloader(firmware)
        kernel = self.kernel(loader)
        initrd = self.initrd(kernel, tpm)
        self.running(initrd)

    # --- the stages ----------------------------------------------------------------------

    def firmware(self, tpm: Tpm) -> FirmwareResult:
        """ROM: fuses -> platform key -> security profile -> signed bootloader."""
        plat = self.platform
        stage = self._stage = Stage.ROM
        if plat.state().get("reprovision"):
            raise _fail(stage, "device was wiped after tamper; re-provision it")
        try:
            fuses = plat.fuses(tpm)
            key_hash = fuses.key_hash()
            counter = fuses.counter()
        except BastionError as exc:
            raise _fail(stage, f"fuse bank unreadable: {exc}") from exc
        if key_hash is None:
            raise _fail(stage, "no platform key hash is burned into the fuses")
        try:
            # like UEFI firmware, restore a damaged GPT copy from the intact one, and say so
            layout, repaired = plat.repair_disk_layout()
            for line in repaired:
                self._warn(line)
            archive = parse_archive(plat.read_partition(PART_BOOT))
            root_pem = archive.get("loader.key")
        except FormatError as exc:
            raise _fail(stage, f"boot partition unreadable: {exc}") from exc
        actual = platform_key_hash(root_pem)
        if actual != key_hash:
            raise _fail(
                stage,
                f"platform key hash {actual.hex()[:16]}... differs from the fused "
                f"{key_hash.hex()[:16]}...",
            )
        root_verifier = Verifier.of(load_public_key(root_pem))
        self.profile = self._load_profile(root_verifier, tpm)
        loader = archive.get("loader")
        try:
            doc = open_statement(archive.get("loader.sig"), bu.STATEMENT_TYPE_LOADER, root_verifier)
            if doc != json.loads(bu.loader_statement(loader)):
                raise TamperError(
                    f"bootloader digest {hashlib.sha256(loader).hexdigest()[:16]}... does not "
                    f"match the signed {str(doc.get('sha256'))[:16]}..."
                )
        except (VerificationError, FormatError) as exc:
            self._handle(stage, Feature.LOADER_SIGNATURE, exc, slot=None)
        self._extend(measure.rom_events(key_hash, loader))
        self._reached(stage)
        return FirmwareResult(fuses, key_hash, counter, layout, archive, loader)

    def bootloader(self, firmware: FirmwareResult) -> LoaderResult:
        """Bootloader: boot control -> slot -> signed boot unit -> rollback -> PCR 11."""
        stage = self._stage = Stage.BOOTLOADER
        try:
            stage_obj = bu.parse_loader(firmware.loader)
            boot_verifier = Verifier.of(load_public_key(stage_obj.boot_key))
        except (FormatError, VerificationError) as exc:
            raise _fail(stage, f"bootloader stage unusable: {exc}") from exc
        state = bootctl.parse_partition(self.platform.read_partition(PART_BOOTCTL))
        for problem in state.errors:
            self._note(f"boot-control {problem}; using the other copy")
        slot = state.control.choose()
        if slot is None:
            why = f" ({self._abandoned})" if self._abandoned else ""
            raise _fail(stage, f"no bootable slot in boot-control{why}")
        self.report.slot = slot
        unit = self._verify_unit(firmware.archive, slot, boot_verifier)
        if unit.security_version < firmware.counter:
            self._handle(
                stage,
                Feature.ROLLBACK,
                RollbackError(
                    f"slot {slot} security version {unit.security_version} is below the "
                    f"fuse counter {firmware.counter}"
                ),
                slot=slot,
            )
        slot_state = state.control.slot(slot)
        if not slot_state.successful:
            new = state.control.with_slot(
                slot,
                bootctl.SlotState(
                    slot_state.priority,
                    max(0, slot_state.tries_left - 1),
                    False,
                    slot_state.unbootable,
                ),
            )
            self._write_bootctl(state, new)
        self._extend(measure.unit_events(unit.sections()))
        self.report.security_version = unit.security_version
        self._reached(stage)
        return LoaderResult(firmware, slot, unit)

    def kernel(self, loader: LoaderResult) -> KernelResult:
        """Kernel: every module must carry a valid signature by ``.modcert``."""
        stage = self._stage = Stage.KERNEL
        unit, slot = loader.unit, loader.slot
        if unit.modules:
            try:
                cert = x509.load_pem_x509_certificate(unit.modcert)
            except ValueError as exc:
                raise _fail(stage, f"module certificate unreadable: {exc}") from exc
            for name, data in unit.modules:
                try:
                    modsig.verify_module(data, cert)
                except (VerificationError, FormatError) as exc:
                    self._handle(
                        stage,
                        Feature.MODULE_SIGNATURES,
                        SignatureError(f"module {name}: {exc}"),
                        slot=slot,
                    )
            self._note(f"{len(unit.modules)} kernel module(s) verified")
        self._reached(stage)
        return KernelResult(loader)

    def initrd(self, kernel: KernelResult, tpm: Tpm) -> InitrdResult:
        """Initrd: signed root hash -> verity root -> PCR 15 -> data volume -> lock."""
        plat = self.platform
        stage = self._stage = Stage.INITRD
        unit, slot = kernel.loader.unit, kernel.loader.slot
        layout = kernel.loader.firmware.layout
        params = unit.cmdline_params()
        if params.get("bastion.slot") != slot:
            raise _fail(stage, f"command line names slot {params.get('bastion.slot')!r}")
        try:
            root_hash = bytes.fromhex(params.get("roothash", ""))
        except ValueError:
            root_hash = b""
        if len(root_hash) != 32:
            raise _fail(stage, "command line carries no valid roothash=")
        try:
            data_size = verity_data_size(unit)
        except FormatError as exc:
            raise _fail(stage, str(exc)) from exc
        self.report.root_hash = root_hash.hex()
        root = layout.find(root_part(slot))
        verity = layout.find(verity_part(slot))
        try:
            cert = x509.load_pem_x509_certificate(unit.veritycert)
            sig = bu.parse_verity_signature(plat.read_partition(sig_part(slot)))
            signed_root = verify_verity_signature(sig, cert)
            if signed_root != root_hash:
                raise SignatureError(
                    f"signed root hash {signed_root.hex()[:16]}... differs from the command "
                    f"line's {root_hash.hex()[:16]}..."
                )
        except (VerificationError, FormatError, ValueError) as exc:
            err = exc if isinstance(exc, BastionError) else FormatError(str(exc))
            self._handle(stage, Feature.VERITY_SIGNATURE, err, slot=slot)
        want_root, want_verity = gpt.verity_partition_uuids(root_hash)
        if (root.part_guid, verity.part_guid) != (want_root, want_verity):
            self._handle(
                stage,
                Feature.VERITY,
                TamperError("root/verity partition UUIDs do not derive from the root hash"),
                slot=slot,
            )
        reader: VerifiedRoot | None
        try:
            if self.full_verify:
                plat.verify_root(root.name, verity.name, root_hash, data_size)
                self._note("root verified in full")
            reader = plat.open_root(root.name, verity.name, root_hash, data_size)
        except (VerificationError, FormatError) as exc:
            self._handle(stage, Feature.VERITY, exc, slot=slot)
            reader = None
        self._extend(measure.root_events(root_hash))
        volume_warnings: list[str] = []
        try:
            first, recovery = boot_data.open_data_volume(
                plat,
                tpm,
                self.profile,
                measure.seal_selection(),
                warnings=volume_warnings,
            )
        except BastionError as exc:
            raise _prefixed(stage, exc) from exc
        finally:
            for line in volume_warnings:
                self._warn(line)
        self.report.first_boot = first
        self.report.recovery_key = recovery
        self._extend(measure.lock_events())
        self._reached(stage)
        return InitrdResult(kernel, root_hash, reader, first)

    def running(self, initrd: InitrdResult) -> RunningResult:
        """Running: mount through verity, mark the slot good, then raise the fuses."""
        stage = self._stage = Stage.RUNNING
        loader = initrd.kernel.loader
        unit, slot, fuses = loader.unit, loader.slot, loader.firmware.fuses
        reader = initrd.root
        if reader is not None:
            try:
                try:
                    reader.pread(min(MOUNT_READ, reader.size), 0)
                finally:
                    reader.close()
            except (VerificationError, FormatError) as exc:
                self._handle(stage, Feature.VERITY, exc, slot=slot)
        fresh = bootctl.parse_partition(self.platform.read_partition(PART_BOOTCTL))
        cur = fresh.control.slot(slot)
        if not cur.successful:
            done = fresh.control.with_slot(
                slot, bootctl.SlotState(cur.priority, cur.tries_left, True, False)
            )
            self._write_bootctl(fresh, done)
        if unit.security_version > fuses.counter():
            fuses.blow_to(unit.security_version)
            self._note(f"fuse counter raised to {unit.security_version}")
        self._reached(stage)
        return RunningResult(slot, unit.security_version)

    # --- helpers -------------------------------------------------------------------------

    def _extend(self, events: list[el.Event]) -> None:
        if self._rec is None:
            raise BackendError("boot chain: a stage ran outside a power-on")
        self._rec.extend(events)

    def _warn(self, message: str) -> None:
        self.report.warnings.append(message)
        self.platform.console(ConsoleKind.WARNING, message)

    def _note(self, message: str) -> None:
        self.report.notes.append(message)
        self.platform.console(ConsoleKind.NOTE, message)

    def _reached(self, stage: Stage) -> None:
        self.report.reached = stage
        self.platform.console(ConsoleKind.MARKER, f"bastion: {stage.value} reached")

    def _load_profile(self, root: Verifier, tpm: Tpm) -> SecurityProfile:
        """Verify the profile's signature, its binding to this TPM and its serial."""
        raw = self.platform.load("profile.json")
        if raw is None:
            raise _fail(Stage.ROM, "no signed security profile on the device")
        trusted = [root]
        try:
            granted = self.platform.load(PROFILE_DELEGATION_FILE)
            if granted is not None:  # a present but bad delegation refuses the boot
                trusted.append(
                    delegation.verify_delegation(
                        granted, root, delegation.ROLE_PROFILE, what="profile delegation"
                    )
                )
            payload = verify_envelope(parse_envelope(raw), trusted, payload_type=PROFILE_TYPE)
            profile = parse_profile(payload)
        except (VerificationError, FormatError) as exc:
            raise _fail(Stage.ROM, f"security profile refused: {exc}") from exc
        mine = device_id(tpm.ek_public())
        if not hmac.compare_digest(profile.device, mine):
            raise _fail(
                Stage.ROM,
                f"security profile refused: it is for device {profile.device[:16]}..., "
                f"this device is {mine[:16]}...",
            )
        # the highest accepted serial is kept as a thermometer code in a TPM NV bits index
        # (bits only ever set, like fuses): serial n = bits 0..n-1 set
        try:
            bits = tpm.nv_read_bits(PROFILE_SERIAL_NV)
        except NotFoundError:
            tpm.nv_define_bits(PROFILE_SERIAL_NV)
            bits = tpm.nv_read_bits(PROFILE_SERIAL_NV)
        accepted = (bits + 1).bit_length() - 1  # length of the run of ones from bit 0
        if profile.serial < accepted:
            raise _prefixed(
                Stage.ROM,
                RollbackError(
                    f"security profile serial {profile.serial} is older than the accepted "
                    f"{accepted}"
                ),
            )
        if profile.serial > accepted:
            tpm.nv_set_bits(PROFILE_SERIAL_NV, (1 << profile.serial) - 1)
        return profile

    def _verify_unit(self, archive: bu.Container, slot: str, boot: Verifier) -> bu.BootUnit:
        stage = Stage.BOOTLOADER
        try:
            raw = archive.get(f"unit.{slot}")
            doc = open_statement(archive.get(f"unit.{slot}.sig"), bu.STATEMENT_TYPE_UNIT, boot)
        except (VerificationError, FormatError) as exc:
            self._handle(stage, Feature.UNIT_SIGNATURE, exc, slot=slot)
            doc = {}
            raw = archive.get(f"unit.{slot}")
        try:
            container = bu.parse(raw, bu.Kind.UNIT)
            unit = bu.parse_unit(raw)
        except FormatError as exc:
            self._handle(stage, Feature.UNIT_SIGNATURE, exc, slot=slot)
            raise _fail(stage, f"boot unit unreadable: {exc}") from exc
        if doc:
            signed = doc.get("sections", {})
            for name, digest in bu.section_digests(container.entries).items():
                if signed.get(name) != digest:
                    self._handle(
                        stage,
                        Feature.UNIT_SIGNATURE,
                        TamperError(
                            f"boot unit section {name} of slot {slot} does not match "
                            "its signed digest"
                        ),
                        slot=slot,
                    )
            problems = []
            if doc.get("sha256") != hashlib.sha256(raw).hexdigest():
                problems.append("unit digest")
            if doc.get("slot") != slot:
                problems.append(f"signed for slot {doc.get('slot')!r}")
            if doc.get("security_version") != unit.security_version:
                problems.append("security version")
            if set(signed) != set(container.names()):
                problems.append("section list")
            if problems:
                self._handle(
                    stage,
                    Feature.UNIT_SIGNATURE,
                    TamperError(f"boot unit of slot {slot}: {', '.join(problems)} mismatch"),
                    slot=slot,
                )
            self.report.version = str(doc.get("version"))
        return unit

    def _write_bootctl(self, state: bootctl.PartitionState, new: bootctl.BootControl) -> None:
        offset, record = bootctl.next_write(state, new)
        self.platform.write_partition(PART_BOOTCTL, offset, record)

    def _mark_unbootable(self, slot: str) -> None:
        state = bootctl.parse_partition(self.platform.read_partition(PART_BOOTCTL))
        cur = state.control.slot(slot)
        new = state.control.with_slot(slot, bootctl.SlotState(cur.priority, 0, False, True))
        other = "b" if slot == "a" else "a"
        new = replace(new, active=bootctl.slot_index(other))
        self._write_bootctl(state, new)


def boot(folder: Path, *, full_verify: bool = False) -> BootReport:
    """Boot the sim device in ``folder`` to running (or raise)."""
    return BootChain(SimPlatform(folder), full_verify=full_verify).run()


def read_eventlog(folder: Path) -> el.EventLog:
    """The event log of the device's last boot."""
    plat = SimPlatform(folder)
    _ = plat.config  # NotFoundError naming the folder when it is not a device
    raw = plat.load(EVENTLOG_FILE)
    if raw is None:
        raise FormatError(f"device {folder} has no event log yet: boot it first")
    return el.parse(raw)

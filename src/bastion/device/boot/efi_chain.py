"""The sim boot of a real bastion disk: UEFI firmware -> systemd-boot -> systemd-stub ->
kernel -> initrd -> running, over the same ESP, UKIs and verity root QEMU boots.

One method per stage, each handing a frozen result to the next, touching the device
only through its :class:`~bastion.device.platform.base.Platform` (``esp()``,
``efi_variable``, partitions, TPM, fuses, console, store):

* **firmware** (device/boot/firmware.py): reads PK/KEK/db/dbx, measures PCR 0 and 7's
  variables and PCR 4's "calling" action, then loads ``\\EFI\\BOOT\\BOOTX64.EFI`` from
  the ESP: Authenticode against db, dbx refusals; PCR 4 its digest, PCR 7 its authority.
* **loader** (device/boot/loader.py): systemd-boot's choice among ``EFI/Linux/*.efi``
  (bad entries last), the boot-counter rename, then LoadImage of the UKI (same check;
  PCR 4, PCR 7 authority once). A refusal halts: systemd-boot returns the error to the
  firmware, which has no other option. Boot counting then falls back, boot by boot.
* **stub** (device/boot/stub.py): PCR 11 (sections), the security version from
  ``.osrel`` against the fuse counter, PCR 9 (command line, initrd). The event log is
  complete here, as the kernel finds it.
* **initrd**: the kernel loads the modules the initrd lists (device/boot/modules.py:
  signatures against the kernel's trusted keys, ``module.sig_enforce``; a refused module
  is a warning and is not loaded, as systemd-modules-load fails and the boot goes on);
  ``roothash=`` from the command line; the root and verity partitions found
  by the PARTUUIDs the root hash gives (Discoverable Partitions Specification), the
  superblock's geometry, userspace verity (``full_verify`` reads every block);
  systemd-pcrphase's ``enter-initrd`` into PCR 11 (not in the firmware log, as on a real
  device); the data partition, when there is one, unlocked by the signed PCR 11 policy
  (device/boot/data.py).
* **running**: the root's first blocks read through verity; the entry blessed (its
  counter dropped, as systemd-bless-boot ``good``); the fuse counter raised to the
  image's security version.

Any refusal is fatal for this power-on (the message starts with the stage, and a console
line says what a real device's screen would); the boot report and the event log are
stored either way (``boot.json``, ``eventlog.bin``).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bastion.device.boot import data as data_volume
from bastion.device.boot import firmware as fw
from bastion.device.boot import loader as sdboot
from bastion.device.boot import modules, policy, stub
from bastion.device.platform.base import ConsoleKind, FuseBank, Platform, VerifiedRoot
from bastion.device.platform.esp import Esp
from bastion.device.profile import Feature, Mode, SecurityProfile, TamperResponse
from bastion.device.update import slots as update_slots
from bastion.errors import (
    BackendError,
    BastionError,
    FormatError,
    LimitError,
    NotFoundError,
    RollbackError,
    TamperError,
    VerificationError,
)
from bastion.formats import bls, gpt
from bastion.formats import eventlog as el
from bastion.formats.uki import uki_sections
from bastion.formats.verity import VeritySuperblock
from bastion.tpm.base import HashAlg, PcrSelection, Tpm
from bastion.trust.pki import load_certificates

EVENTLOG_FILE = "eventlog.bin"
#: what userspace measured after the kernel started (systemd-pcrphase), TCG format: the
#: firmware log and this one together replay to the TPM's PCRs
USERSPACE_LOG_FILE = "eventlog-userspace.bin"
REPORT_FILE = "boot.json"
MOUNT_READ = 64 * 1024
#: the data partition's GPT name in bastion images
DATA_PART = "data"
REPORTED_PCRS = (0, 4, 7, 9, 11)
#: the entry names of the A/B slots (``bastion-GEN-SLOT``, formats/image.py entry_name)
_SLOT_ENTRY = re.compile(r"bastion-[0-9]{1,9}-[ab]")


class _RebootError(Exception):
    """Internal: the profile asked to try the other slot."""


class EfiStage(enum.StrEnum):
    """The stages, in order."""

    FIRMWARE = "firmware"
    LOADER = "systemd-boot"
    STUB = "stub"
    INITRD = "initrd"
    RUNNING = "running"


@dataclass
class EfiBootReport:
    """What one boot did."""

    entry: str | None = None  # the BLS entry file name chosen (before its rename)
    booted_as: str | None = None  # its name after systemd-boot's rename
    version: str | None = None
    security_version: int | None = None
    root_hash: str | None = None
    secure_boot: bool | None = None
    first_boot: bool = False
    recovery_key: str | None = None
    reached: EfiStage | None = None
    full_verify: bool = False
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: PCRs when the kernel started (what the firmware event log replays to)
    handoff_pcrs: dict[int, str] = field(default_factory=dict)
    pcrs: dict[int, str] = field(default_factory=dict)
    events: int = 0
    error: str | None = None
    #: the initrd's modules: loaded (name, signer, taint), refused (name, reason), missing
    modules: dict[str, Any] = field(default_factory=dict)

    def to_json(self, *, secrets: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "entry": self.entry,
            "booted_as": self.booted_as,
            "version": self.version,
            "security_version": self.security_version,
            "root_hash": self.root_hash,
            "secure_boot": self.secure_boot,
            "first_boot": self.first_boot,
            "reached": self.reached.value if self.reached else None,
            "full_verify": self.full_verify,
            "warnings": self.warnings,
            "notes": self.notes,
            "handoff_pcrs": {str(k): v for k, v in sorted(self.handoff_pcrs.items())},
            "pcrs": {str(k): v for k, v in sorted(self.pcrs.items())},
            "events": self.events,
            "error": self.error,
            "modules": self.modules,
        }
        if secrets and self.recovery_key:
            doc["recovery_key"] = self.recovery_key
        return doc


class _Recorder:
    """Extends the TPM and appends to the event log, one event at a time."""

    def __init__(self, tpm: Tpm) -> None:
        self.tpm = tpm
        self.events: list[el.Event] = []
        self.userspace: list[el.Event] = []

    def extend(self, events: list[el.Event], *, log: bool = True) -> None:
        for event in events:
            self.tpm.pcr_extend(event.pcr, {HashAlg.SHA256: event.digest(el.ALG_SHA256)})
            (self.events if log else self.userspace).append(event)

    def log_bytes(self, *, userspace: bool = False) -> bytes:
        events = self.userspace if userspace else self.events
        return el.EventLog(el.SpecIdEvent(), tuple(events)).to_bytes()


@dataclass(frozen=True, slots=True)
class FirmwareResult:
    """Firmware -> systemd-boot: the Secure Boot variables, the ESP, the loader started."""

    variables: fw.SecureBootVariables
    esp: Esp
    loader: fw.LoadedImage


@dataclass(frozen=True, slots=True)
class LoaderResult:
    """systemd-boot -> stub: the entry chosen and the UKI LoadImage accepted."""

    firmware: FirmwareResult
    entry: sdboot.Candidate
    path: str  # the entry's path after the rename
    uki: bytes


@dataclass(frozen=True, slots=True)
class StubResult:
    """stub -> initrd: what the kernel was handed, and the image's security version."""

    loader: LoaderResult
    kernel: stub.KernelHandoff
    security_version: int
    fuses: FuseBank


@dataclass(frozen=True, slots=True)
class InitrdResult:
    """initrd -> running: the verity root and the root hash it was opened with."""

    stub: StubResult
    root_hash: bytes
    root: VerifiedRoot | None  # None when a verity failure was audited


def _fail(stage: EfiStage, reason: str) -> TamperError:
    return TamperError(f"{stage.value}: {reason}", stage=stage.value)


def _prefixed(stage: EfiStage, exc: BastionError) -> BastionError:
    """The same error class (TamperError if it cannot be rebuilt) with the stage first."""
    message = f"{stage.value}: {exc}"
    try:
        new = type(exc)(message)
    except TypeError:
        return TamperError(message, stage=stage.value)
    setattr(new, "stage", stage.value)  # noqa: B010 - not every class declares it
    return new


class EfiBootChain:
    """One boot of a device through its :class:`Platform`: ``firmware``, ``loader``,
    ``stub``, ``initrd``, ``running``; ``run`` powers on and calls them in order."""

    def __init__(self, platform: Platform, *, full_verify: bool = False) -> None:
        self.platform = platform
        self.full_verify = full_verify
        self.report = EfiBootReport(full_verify=full_verify)
        self._stage = EfiStage.FIRMWARE
        self._rec: _Recorder | None = None
        self._authorities: set[bytes] = set()
        self.profile: SecurityProfile | None = None
        self._entry_path: str | None = None  # the entry being booted (for try-other-slot)
        self._esp: Esp | None = None
        self._abandoned: list[str] = []  # "entry: cause" of each entry try-other-slot left

    def run(self) -> EfiBootReport:
        """Boot to running or raise; the report and the event log are stored either way.
        A ``try-other-slot`` response reboots once (the refused entry marked bad)."""
        for _attempt in range(2):
            try:
                self._boot_once()
                return self.report
            except _RebootError:
                self.report = EfiBootReport(
                    full_verify=self.full_verify,
                    notes=list(self.report.notes),
                    warnings=list(self.report.warnings),
                )
                self._authorities = set()
        causes = "; ".join(self._abandoned)
        err = _fail(
            EfiStage.LOADER,
            f"no entry left to try after a try-other-slot response (abandoned: {causes})",
        )
        setattr(err, "boot_report", self.report)  # noqa: B010
        raise err

    def _boot_once(self) -> None:
        plat = self.platform
        with plat.power_on() as tpm:
            rec = self._rec = _Recorder(tpm)
            try:
                result = self.firmware(tpm)
                loaded = self.loader(result)
                kernel = self.stub(loaded, tpm)
                initrd = self.initrd(kernel, tpm)
                self.running(initrd)
            except BastionError as exc:
                err = exc
                if getattr(exc, "stage", None) is None:
                    err = _prefixed(self._stage, exc)
                self.report.error = f"{type(err).__name__}: {err}"
                plat.console(ConsoleKind.WARNING, f"{err}; halted")
                setattr(err, "boot_report", self.report)  # noqa: B010 - for the CLI
                if err is exc:
                    raise
                raise err from exc
            except OSError as exc:
                err = BackendError(f"{self._stage.value}: I/O error: {exc}")
                self.report.error = f"BackendError: {err}"
                raise err from exc
            finally:
                plat.store(EVENTLOG_FILE, rec.log_bytes())
                plat.store(USERSPACE_LOG_FILE, rec.log_bytes(userspace=True))
                self.report.events = len(rec.events)
                self.report.pcrs = {
                    i: v.hex()
                    for i, v in tpm.pcr_read(PcrSelection(HashAlg.SHA256, REPORTED_PCRS)).items()
                }
                plat.store(REPORT_FILE, json.dumps(self.report.to_json(), indent=2).encode())

    def _refused(self, stage: EfiStage, feature: Feature | None, exc: BastionError) -> None:
        """Apply the security profile to a refusal: audit (return), or respond and raise."""
        err = exc if getattr(exc, "stage", None) else _prefixed(stage, exc)
        profile = self.profile
        if profile is None:
            raise err from exc
        if feature is not None and profile.mode(feature) is Mode.AUDIT:
            self._warn(f"audit ({feature.value}): {err}")
            return
        response = profile.tamper_response
        if response is TamperResponse.TRY_OTHER_SLOT and self._entry_path and self._esp:
            name = self._entry_path.rsplit("/", 1)[1]
            bad = f"{sdboot.ENTRIES_DIR}/{bls.parse(name).marked_bad().to_string()}"
            if bad != self._entry_path:
                self._esp.rename(self._entry_path, bad)
            self._note(f"entry {name} marked bad after: {err}; rebooting")
            self._abandoned.append(f"{name}: {err}")
            raise _RebootError() from err
        if response is TamperResponse.WIPE_DATA:
            data_volume.wipe(self.platform, DATA_PART)
            self.platform.set_state(reprovision=True)
            wiped = "tamper response: data volume wiped; the device must be re-provisioned"
            self._note(wiped)
            self._warn(wiped)
            err.args = (f"{err}; {wiped}",)
        raise err from exc

    # --- the stages ----------------------------------------------------------------------

    def firmware(self, tpm: Tpm) -> FirmwareResult:
        """UEFI: Secure Boot variables measured, then systemd-boot loaded and checked;
        the signed security profile (when the device has one) checked."""
        plat = self.platform
        stage = self._stage = EfiStage.FIRMWARE
        if plat.state().get("reprovision"):
            raise _fail(stage, "device was wiped after tamper; re-provision it")
        try:
            # as edk2's partition driver: a damaged GPT copy is restored from the intact one
            _layout, repaired = plat.repair_disk_layout()
        except FormatError as exc:
            raise _fail(stage, f"disk unreadable: {exc}") from exc
        for line in repaired:
            self._warn(line)
        try:
            fused = plat.fuses(tpm).key_hash()
            self.profile = policy.load_profile(plat, tpm, fused)
        except VerificationError as exc:
            raise _fail(stage, str(exc)) from exc
        try:
            variables = fw.SecureBootVariables.from_efivars(plat.efi_variable)
        except FormatError as exc:
            raise _fail(stage, f"Secure Boot variables unreadable: {exc}") from exc
        self.report.secure_boot = variables.secure_boot
        self._extend(fw.power_on_events(variables))
        esp = self._esp = plat.esp()
        try:
            image = esp.read(sdboot.LOADER_PATH)
        except NotFoundError as exc:
            raise _fail(
                stage, f"no boot option: {_efi_path(sdboot.LOADER_PATH)} not found"
            ) from exc
        loaded = fw.check_image(_efi_path(sdboot.LOADER_PATH), image, variables)
        self._extend(fw.load_events(loaded, self._authorities))
        self._reached(stage)
        return FirmwareResult(variables, esp, loaded)

    def loader(self, firmware: FirmwareResult) -> LoaderResult:
        """systemd-boot: choose the entry, count the try, load the UKI through LoadImage."""
        stage = self._stage = EfiStage.LOADER
        esp = firmware.esp
        found: list[sdboot.Candidate] = []
        images: dict[str, bytes] = {}
        for name in esp.list(sdboot.ENTRIES_DIR):
            if not name.lower().endswith(".efi"):
                continue
            data = esp.read(f"{sdboot.ENTRIES_DIR}/{name}")
            try:
                osrel = sdboot.parse_osrel(uki_sections(data).get(".osrel", b""))
            except FormatError as exc:
                self._note(f"skipping {name}: not a unified kernel image ({exc})")
                continue
            entry = sdboot.candidate(name, osrel)
            if entry is None:
                self._note(f"skipping {name}: no boot entry (name or .osrel)")
                continue
            found.append(entry)
            images[name] = data
        ordered = sdboot.order(found)
        if not ordered:
            raise _fail(stage, f"no boot entries found in {_efi_path(sdboot.ENTRIES_DIR)}")
        chosen = ordered[0]
        if chosen.entry.bad:
            self._warn(f"every entry has used its tries: booting {chosen.filename} anyway")
        self.report.entry = chosen.filename
        self.report.version = chosen.version
        path = chosen.path
        renamed = sdboot.booted_name(chosen)
        if renamed is not None:
            path = f"{sdboot.ENTRIES_DIR}/{renamed}"
            esp.rename(chosen.path, path)
        self.report.booted_as = path.rsplit("/", 1)[1]
        self._entry_path = path
        try:
            loaded = fw.check_image(_efi_path(path), images[chosen.filename], firmware.variables)
        except (VerificationError, FormatError) as exc:
            self._refused(stage, None, _fail(stage, f"Error loading {exc}"))
            raise  # pragma: no cover - _refused always raises without a feature
        self._extend(fw.load_events(loaded, self._authorities))
        self._export_selected(chosen.filename)
        self._reached(stage)
        return LoaderResult(firmware, chosen, path, images[chosen.filename])

    def stub(self, loaded: LoaderResult, tpm: Tpm) -> StubResult:
        """systemd-stub and the kernel's EFI stub: PCR 11, the security version, PCR 9."""
        stage = self._stage = EfiStage.STUB
        try:
            kernel = stub.handoff(loaded.uki)
            osrel = sdboot.parse_osrel(kernel.sections.get(".osrel", b""))
            svn = stub.security_version(osrel)
        except FormatError as exc:
            raise _fail(stage, str(exc)) from exc
        self._extend(stub.stub_events(kernel.sections))
        self.report.security_version = svn
        fuses = self.platform.fuses(tpm)
        counter = fuses.counter()
        if svn < counter:
            self._refused(
                stage,
                Feature.ROLLBACK,
                RollbackError(
                    f"{loaded.entry.filename} has security version {svn}, below the fuse "
                    f"counter {counter}"
                ),
            )
        self._extend(stub.kernel_events(kernel))
        self.report.handoff_pcrs = {
            i: v.hex() for i, v in tpm.pcr_read(PcrSelection(HashAlg.SHA256, REPORTED_PCRS)).items()
        }
        self._reached(stage)
        return StubResult(loaded, kernel, svn, fuses)

    def initrd(self, kernel: StubResult, tpm: Tpm) -> InitrdResult:
        """The verity root named by ``roothash=``, then the data volume (signed policy)."""
        plat = self.platform
        stage = self._stage = EfiStage.INITRD
        self._load_modules(kernel)
        text = kernel.kernel.params().get("roothash", "")
        try:
            root_hash = bytes.fromhex(text)
        except ValueError:
            root_hash = b""
        if len(root_hash) != 32:
            raise _fail(stage, f"the command line carries no valid roothash= (got {text!r})")
        self.report.root_hash = root_hash.hex()
        layout = plat.disk_layout()
        want_root, want_verity = gpt.verity_partition_uuids(root_hash)
        parts = {p.part_guid: p for p in layout.partitions}
        root, verity = parts.get(want_root), parts.get(want_verity)
        if root is None or verity is None:
            raise _fail(
                stage,
                f"no root partition with PARTUUID {want_root} and verity partition "
                f"{want_verity} (from roothash=)",
            )
        if (root.type_guid, verity.type_guid) != (
            gpt.TYPE_ROOT_X86_64,
            gpt.TYPE_ROOT_VERITY_X86_64,
        ):
            raise _fail(stage, "the partitions named by roothash= have the wrong DPS types")
        try:
            superblock = VeritySuperblock.parse(plat.read_partition(verity.name, 512))
            params = superblock.params
            data_size = params.data_blocks * params.data_block_size
            if data_size > root.size:
                raise FormatError(
                    f"verity superblock claims {data_size} bytes of data, the root partition "
                    f"holds {root.size}"
                )
            if self.full_verify:
                plat.verify_root(root.name, verity.name, root_hash, data_size)
                self._note("root verified in full")
            reader: VerifiedRoot | None = plat.open_root(
                root.name, verity.name, root_hash, data_size
            )
        except (VerificationError, FormatError) as exc:
            self._refused(stage, Feature.VERITY, _fail(stage, f"verity root refused: {exc}"))
            reader = None
        # systemd-pcrphase-initrd: the enter-initrd phase the .pcrsig signs (no firmware log)
        self._extend(
            [el.measure(11, el.EventType.EV_IPL, stub.PHASE_ENTER_INITRD.encode())], log=False
        )
        if any(p.name == DATA_PART for p in layout.partitions):
            first, key = data_volume.open_signed(
                plat, tpm, DATA_PART, kernel.kernel.sections, warnings=self.report.warnings
            )
            self.report.first_boot, self.report.recovery_key = first, key
            self._note("data volume " + ("created, sealed to the signed PCR 11 policy" if first
                                         else "unlocked by the signed PCR 11 policy"))  # fmt: skip
        # systemd-pcrphase-initrd leaves the initrd: a key signed for enter-initrd only is
        # out of reach from here on
        self._extend(
            [el.measure(11, el.EventType.EV_IPL, stub.PHASE_LEAVE_INITRD.encode())], log=False
        )
        self._reached(stage)
        return InitrdResult(kernel, root_hash, reader)

    def running(self, initrd: InitrdResult) -> None:
        """Mount through verity, bless the entry, then raise the fuses."""
        stage = self._stage = EfiStage.RUNNING
        reader = initrd.root
        if reader is not None:
            try:
                try:
                    reader.pread(min(MOUNT_READ, reader.size), 0)
                finally:
                    reader.close()
            except (VerificationError, FormatError) as exc:
                self._refused(stage, Feature.VERITY, _fail(stage, f"mounting the root: {exc}"))
        loaded = initrd.stub.loader
        entry = bls.parse(loaded.path.rsplit("/", 1)[1])
        if entry.counting:
            good = f"{sdboot.ENTRIES_DIR}/{entry.blessed().to_string()}"
            loaded.firmware.esp.rename(loaded.path, good)
            self._note(f"entry blessed: {good.rsplit('/', 1)[1]}")
        svn, fuses = initrd.stub.security_version, initrd.stub.fuses
        if svn > fuses.counter():
            fuses.blow_to(svn)
            self._note(f"fuse counter raised to {svn}")
        self._reached(stage)

    # --- helpers -------------------------------------------------------------------------

    def _load_modules(self, handed: StubResult) -> None:
        """The kernel loads what the initrd lists, each module's signature checked against
        its trusted keys (``kernel-keys.pem``, none when absent)."""
        kernel = handed.kernel
        initrd = kernel.sections.get(".initrd", b"")
        if not initrd:
            return
        raw = self.platform.load(modules.KERNEL_KEYS_FILE)
        keyring = load_certificates(raw, modules.KERNEL_KEYS_FILE) if raw else []
        enforce = modules.enforced(kernel.params())
        try:
            done = modules.load_initrd_modules(initrd, keyring, enforce=enforce)
        except (FormatError, LimitError) as exc:
            self.report.modules = {"enforce": enforce, "unreadable": str(exc)}
            self._note(f"kernel: {exc}: no modules loaded from the initrd")
            return
        self.report.modules = {
            "enforce": enforce,
            "loaded": [{"name": m.name, "signer": m.signer, "taint": m.taint}
                       for m in done.loaded],
            "refused": [{"name": n, "reason": r} for n, r in done.refused],
            "missing": list(done.missing),
        }  # fmt: skip
        for loaded in done.loaded:
            if loaded.taint:
                self._warn(f"module {loaded.name}: {loaded.taint} - tainting kernel")
        for _name, reason in done.refused:
            self._warn(reason)
        for name in done.missing:
            self._note(f"module {name}: not found in the initrd")

    def _export_selected(self, filename: str) -> None:
        """systemd-boot's ``LoaderEntrySelected`` for the code after boot: the entry booted
        (its name before the try was counted) as device/update/slots.py reads it
        (``update-booted.json``). Entries not named ``bastion-GEN-SLOT`` are not slots."""
        name = bls.parse(filename)
        if _SLOT_ENTRY.fullmatch(name.name) is None:
            return
        shown = update_slots.Booted(name.name[-1], name.name, name.counting)
        self.platform.store(update_slots.BOOTED, json.dumps(asdict(shown), sort_keys=True).encode())

    def _extend(self, events: list[el.Event], *, log: bool = True) -> None:
        if self._rec is None:
            raise BackendError("boot chain: a stage ran outside a power-on")
        self._rec.extend(events, log=log)

    def _warn(self, message: str) -> None:
        self.report.warnings.append(message)
        self.platform.console(ConsoleKind.WARNING, message)

    def _note(self, message: str) -> None:
        self.report.notes.append(message)
        self.platform.console(ConsoleKind.NOTE, message)

    def _reached(self, stage: EfiStage) -> None:
        self.report.reached = stage
        self.platform.console(ConsoleKind.MARKER, f"bastion: {stage.value} reached")


def has_esp(plat: Platform) -> bool:
    """True when the device's disk has an EFI System Partition (it boots this chain)."""
    return any(p.type_guid == gpt.TYPE_ESP for p in plat.disk_layout().partitions)


def _efi_path(path: str) -> str:
    """An ESP path as firmware prints it (``\\EFI\\Linux\\x.efi``)."""
    return "\\" + path.replace("/", "\\")

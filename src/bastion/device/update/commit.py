"""After a boot: commit a healthy slot in trial, fall back from a bad one, say what happened.

:func:`settle` runs once per boot (the agent, or ``bastion update settle``). It reads
the entry the firmware booted (device/update/slots.py) and the slot records, then:

* **booted a slot in trial** whose entry still counts: run the health checks
  (release ones from the manifest, kept in the record's bundle; device ones from
  ``update.json``; device/update/health.py). Healthy: **commit**, in this order:
  bless the entry (drop its counter: systemd-bless-boot ``good``), THEN blow the fuses
  to the slot's SVN (never before: a slot that never committed can always fall back),
  then record ``committed``, then report. Unhealthy: record ``failed`` with the
  reason, then mark the entry bad (``+0-N``); the next boot falls back;
* **booted a blessed slot still recorded in trial**: a commit cut short after the
  bless; finish it (fuses, record, report);
* **booted a committed slot while the other slot is in trial or failed**: the new
  slot ran out of tries or failed its checks: **fell back**; record it with the reason
  (the failed checks, or "out of boot tries") and report it once.

Reports go to a hook (``report(event)``); h/rollout's device/update/report.py signs
them with the TPM identity key and sends them. Every step is idempotent, so a power
cut between any two writes is finished by the next boot's :func:`settle`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from bastion.device.platform.base import ConsoleKind, FuseBank, Platform
from bastion.device.update import health, journal, preflight
from bastion.device.update.install import RESULT, write_result
from bastion.device.update.slots import (
    ENTRY_DIR,
    SlotRecord,
    SlotState,
    booted,
    entries_of,
    load_records,
    other,
    update_record,
)
from bastion.errors import FormatError, NotFoundError
from bastion.formats import strict_json
from bastion.tpm.base import Tpm

OUT_OF_TRIES = "out of boot tries (the new slot never reported healthy)"


@dataclass(frozen=True, slots=True)
class UpdateEvent:
    """What a report says: the outcome of an update on this device."""

    result: str  # committed | fell-back
    slot: str  # the slot now running
    version: str
    svn: int
    bundle: str
    reason: str
    fuse_counter: int


ReportHook = Callable[[UpdateEvent], None]


@dataclass(frozen=True, slots=True)
class SettleResult:
    action: str  # committed | failed | fell-back | none
    slot: str
    reason: str
    health: health.HealthResult | None = None


def _release_spec(platform: Platform, record: SlotRecord) -> health.Spec:
    raw = platform.load(f"update-health-{record.slot}.json")
    return health.parse_spec(raw.decode() if raw else None)


def last_result(platform: Platform) -> dict[str, object]:
    raw = platform.load(RESULT)
    return strict_json.loads_object(raw, what=RESULT) if raw else {}


def _report_once(platform: Platform, event: UpdateEvent, report: ReportHook | None) -> None:
    last = last_result(platform)
    if (
        last.get("reported")
        and last.get("result") == event.result
        and last.get("bundle") == event.bundle
    ):
        return
    write_result(platform, **asdict(event), reported=False)
    if report is not None:
        report(event)
    write_result(platform, **asdict(event), reported=True)


def _finish_commit(
    platform: Platform, fuses: FuseBank, rec: SlotRecord, report: ReportHook | None
) -> None:
    if fuses.counter() < rec.svn:
        fuses.blow_to(rec.svn)
    if rec.state != SlotState.COMMITTED:
        rec = update_record(platform, rec.slot, state=SlotState.COMMITTED, reason="")
    if not journal.is_clear(platform):
        journal.clear(platform)
    event = UpdateEvent(
        "committed", rec.slot, rec.version, rec.svn, rec.bundle, "healthy", fuses.counter()
    )
    _report_once(platform, event, report)


def settle(
    platform: Platform,
    *,
    probe: health.Probe | None = None,
    report: ReportHook | None = None,
    device_spec: health.Spec | None = None,
    tpm: Tpm | None = None,
) -> SettleResult:
    """Commit, fail or record a fallback for the slot booted last (see module).

    ``device_spec`` defaults to the ``health`` of the device's ``update.json``. ``tpm``
    is the device's open TPM, needed where the platform keeps its fuses in TPM NV; the
    fuse bank is opened before anything is written, so a device whose fuses cannot be
    read refuses (ConfigError) instead of committing without them."""
    fuses = platform.fuses(tpm)
    boot = booted(platform)
    if boot is None:
        raise NotFoundError("the device has no record of the slot it booted")
    records = load_records(platform)
    rec = records.get(boot.slot)
    if rec is None:
        raise NotFoundError(f"booted slot {boot.slot} has no record")
    esp = platform.esp()
    mine = [e for e in entries_of(esp, boot.slot) if e.stem == rec.entry_stem]
    if rec.state in (SlotState.TRIAL, SlotState.FAILED) and mine:
        entry = mine[0]
        if not entry.name.counting:  # blessed: a commit cut short
            _finish_commit(platform, fuses, rec, report)
            return SettleResult("committed", rec.slot, "commit finished after a restart")
        if rec.state == SlotState.FAILED or entry.name.bad:
            if not entry.name.bad:
                esp.rename(entry.path, f"{ENTRY_DIR}/{entry.name.marked_bad().to_string()}")
            return SettleResult("failed", rec.slot, rec.reason or OUT_OF_TRIES)
        spec = _release_spec(platform, rec)
        if device_spec is None and platform.load(preflight.DEVICE_CONFIG) is not None:
            device_spec = health.parse_spec(preflight.load_config(platform).health)
        if device_spec is not None:
            spec = spec.merged(device_spec)
        result = health.run(spec, probe or health.Prober())
        if result.ok:
            esp.rename(entry.path, f"{ENTRY_DIR}/{entry.name.blessed().to_string()}")
            _finish_commit(platform, fuses, rec, report)
            for warning in result.warnings:
                platform.console(ConsoleKind.WARNING, f"update health: {warning}")
            return SettleResult("committed", rec.slot, "healthy", result)
        update_record(platform, rec.slot, state=SlotState.FAILED, reason=result.reason)
        esp.rename(entry.path, f"{ENTRY_DIR}/{entry.name.marked_bad().to_string()}")
        platform.console(ConsoleKind.WARNING, f"update: slot {rec.slot} failed: {result.reason}")
        return SettleResult("failed", rec.slot, result.reason, result)
    if rec.state != SlotState.COMMITTED:
        raise FormatError(
            f"booted slot {rec.slot} is recorded {rec.state} without its entry on the ESP"
        )
    # a committed slot runs: finish a commit's fuses if a cut stopped them
    if fuses.counter() < rec.svn:
        _finish_commit(platform, fuses, rec, report)
    new = records.get(other(boot.slot))
    if new is not None and new.state in (SlotState.TRIAL, SlotState.FAILED):
        news = [e for e in entries_of(esp, new.slot) if e.stem == new.entry_stem]
        if news and news[0].name.bad:
            reason = new.reason or OUT_OF_TRIES
            if new.state != SlotState.FAILED:
                update_record(platform, new.slot, state=SlotState.FAILED, reason=reason)
            event = UpdateEvent(
                "fell-back",
                rec.slot,
                new.version,
                new.svn,
                new.bundle,
                reason,
                fuses.counter(),
            )
            _report_once(platform, event, report)
            return SettleResult("fell-back", rec.slot, reason)
    return SettleResult("none", rec.slot, "")


def status(platform: Platform, tpm: Tpm | None = None) -> dict[str, object]:
    """Slots, versions, SVNs, states, the booted slot and the last result (for the CLI);
    ``tpm`` as for :func:`settle`."""
    fuses = platform.fuses(tpm)
    boot = booted(platform)
    records = load_records(platform)
    esp = platform.esp()
    slots = {}
    for slot, rec in sorted(records.items()):
        ents = [e.filename for e in entries_of(esp, slot)]
        slots[slot] = {**asdict(rec), "entries": ents}
    pending = journal.load(platform) if not journal.is_clear(platform) else None
    return {
        "booted": asdict(boot) if boot else None,
        "fuse_counter": fuses.counter(),
        "slots": slots,
        "last_result": last_result(platform),
        "install_in_progress": asdict(pending) if pending else None,
    }


def status_text(doc: dict[str, object]) -> str:
    lines = []
    boot = doc.get("booted")
    lines.append(
        f"booted: slot {boot['slot']} ({boot['stem']})"
        if isinstance(boot, dict)
        else "booted: unknown"
    )
    lines.append(f"fuse counter: {doc['fuse_counter']}")
    slots = doc.get("slots")
    if isinstance(slots, dict):
        for slot, rec in slots.items():
            lines.append(
                f"slot {slot}: {rec['version']} svn {rec['svn']} {rec['state']}"
                + (f" ({rec['reason']})" if rec.get("reason") else "")
            )
    last = doc.get("last_result")
    if isinstance(last, dict) and last:
        result, version, reason = last.get("result"), last.get("version"), last.get("reason")
        lines.append(f"last result: {result} {version} {reason or ''}".rstrip())
    if doc.get("install_in_progress"):
        lines.append(f"install in progress: {json.dumps(doc['install_in_progress'])}")
    return "\n".join(lines)

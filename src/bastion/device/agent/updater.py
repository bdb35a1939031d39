"""The agent's updater: "update now", the periodic check, and settling after each boot.

:class:`Updater` joins the fleet server and the device's update machinery (ADR 0038):

* :meth:`Updater.update_now` (the ``check-update`` command and the periodic check):
  the fleet's target (``GET /v1/device/target-release``: the rollout's release once the
  device's wave is open, else the fleet target) says *when* and *which version*; the
  device's TUF repository, refreshed now, says whether that version is trustworthy for
  this device. Only when the fleet names a version other than the running one, TUF
  picks exactly that version, and the SHA-256 the fleet gives (if any) is the signed
  target's, is the bundle streamed into the inactive slot (device/update/install.py,
  both checks of ADR 0030). The answer says what happened, and whether to reboot into
  the trial slot; a failed install is reported ``failed`` to the server and raised. A
  version whose trial failed on this device (the other slot's record) is not installed
  again: the fleet must name another release.
* :meth:`Updater.settle` (at agent start and every cycle: it is idempotent) runs
  :func:`bastion.device.update.commit.settle` with a hook that signs the outcome in the
  TPM (device/update/report.py, a fresh server nonce each time; with the enrolled AK,
  the report's TPM clock is attested by a TPM2_Certify); a slot that failed its
  health checks is rebooted out of (the firmware falls back), and the fallback is
  reported with its reason. A report the server did not take stays unsent in the
  device's ``update-result.json`` and :meth:`Updater.send_pending` retries it.
* :meth:`Updater.tick` is the cycle's part: settle, send what is pending, and run
  :meth:`update_now` when the check interval has passed.

The TPM the agent holds open is passed to install, check and settle (``tpm=``): where
the platform keeps its fuses in TPM NV, it is the fuse bank they read and blow.

Decisions are values (:class:`UpdateOutcome`); every refusal raises a
:class:`~bastion.errors.BastionError` naming both sides.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.device.platform.base import Platform
from bastion.device.update import commit, install, slots, stream, tuf_update
from bastion.device.update.report import ReportFields, report_update
from bastion.errors import (
    BastionError,
    ConfigError,
    ConflictError,
    FormatError,
    NotFoundError,
    VerificationError,
)
from bastion.formats.update_report import UpdateResult
from bastion.io.http import HttpClient
from bastion.tpm.base import Tpm, TpmKey
from bastion.trust.bundle import load_keyring

TARGET_PATH = "/v1/device/target-release"
#: the fleet config key (``GET /v1/device/config`` -> ``config``) of the check interval
INTERVAL_KEY = "update_check_seconds"
DEFAULT_INTERVAL_SECONDS = 6 * 3600.0
#: a failed slot is rebooted out of; the sim's reboot returns, so settle runs again
_SETTLE_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """What :meth:`Updater.update_now` did."""

    #: ``installed`` | ``awaiting-reboot`` | ``up-to-date``
    action: str
    text: str
    #: reboot into the trial slot now
    reboot: bool = False
    version: str | None = None


def fleet_target(http: HttpClient) -> dict[str, Any]:
    """The fleet server's answer: what this device should run (``release`` may be null)."""
    answer = http.call_object("GET", TARGET_PATH)
    release = answer.get("release")
    if release is not None and not isinstance(release, str):
        raise FormatError(f"GET {TARGET_PATH}: 'release' is not a string")
    sha = answer.get("sha256")
    if sha is not None and not isinstance(sha, str):
        raise FormatError(f"GET {TARGET_PATH}: 'sha256' is not a string")
    return answer


def interval_of(config: Mapping[str, Any] | None, default: float) -> float:
    """The check interval: the fleet config's ``update_check_seconds``, else ``default``.
    0 turns the periodic check off."""
    if config is None or INTERVAL_KEY not in config:
        return default
    value = config[INTERVAL_KEY]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise FormatError(f"fleet config {INTERVAL_KEY} must be a number of seconds >= 0")
    return float(value)


def report_fields(platform: Platform, device_id: str, event: commit.UpdateEvent) -> ReportFields:
    """The report of a settle outcome: the running slot and its SVN, the version tried."""
    if event.result == "committed":
        return ReportFields(device_id, event.version, event.slot, event.svn, UpdateResult.COMMITTED)
    if event.result != "fell-back":
        raise FormatError(f"unknown update outcome {event.result!r}")
    running = slots.load_records(platform).get(event.slot)
    svn = running.svn if running is not None else event.fuse_counter
    return ReportFields(
        device_id, event.version, event.slot, svn, UpdateResult.FELL_BACK, event.reason[:500]
    )


class Updater:
    """One device's update driver (module docstring)."""

    def __init__(
        self,
        platform: Platform,
        metadata_dir: Path,
        http: HttpClient,
        *,
        tpm: Tpm,
        identity_key: Callable[[], TpmKey],
        ak: Callable[[], TpmKey] | None = None,
        device_id: str,
        reboot: Callable[[], None],
        ca_file: str | None = None,
        note: Callable[[str], None] | None = None,
        open_client: Callable[[], Any] | None = None,
    ) -> None:
        self.platform = platform
        self.metadata_dir = metadata_dir
        self.tpm = tpm
        self.identity_key = identity_key
        self.ak = ak
        self.device_id = device_id
        self.http = http
        self.reboot = reboot
        self.ca_file = ca_file
        self.note = note or (lambda _text: None)
        self._open_client = open_client or (
            lambda: tuf_update.open_client(platform, metadata_dir, ca_file=ca_file)
        )
        self.next_check: float | None = None
        self._last_settled: tuple[str, str, str] | None = None

    # --- reports ----------------------------------------------------------------------------

    def _report(self, fields: ReportFields) -> None:
        ak = self.ak() if self.ak is not None else None
        answer = report_update(self.tpm, self.identity_key(), self.http, None, fields, ak=ak)
        self.note(
            f"update report {fields.result.value} {fields.version} sent"
            + (f" (rollout {answer.get('rollout_state')})" if answer.get("rollout_state") else "")
        )

    def _report_event(self, event: commit.UpdateEvent) -> None:
        self._report(report_fields(self.platform, self.device_id, event))

    def send_pending(self) -> bool:
        """Send the last outcome if the server never took it; True if one was sent."""
        last = commit.last_result(self.platform)
        if not last or last.get("reported") is not False:
            return False
        try:
            event = commit.UpdateEvent(
                result=str(last["result"]),
                slot=str(last["slot"]),
                version=str(last["version"]),
                svn=int(str(last["svn"])),
                bundle=str(last["bundle"]),
                reason=str(last.get("reason", "")),
                fuse_counter=int(str(last["fuse_counter"])),
            )
        except (KeyError, ValueError) as exc:
            raise FormatError(f"{install.RESULT}: an unsent result without {exc}") from exc
        self._report_event(event)
        fields = {k: v for k, v in last.items() if k != "reported"}
        install.write_result(self.platform, **fields, reported=True)
        return True

    # --- after a boot -----------------------------------------------------------------------

    def settle(self) -> commit.SettleResult:
        """Health-check and commit a trial slot, or leave a failed one (reboot), and report.

        On a real device the reboot does not return: the next start settles again."""
        result = commit.settle(self.platform, report=self._report_event, tpm=self.tpm)
        for _ in range(_SETTLE_ROUNDS - 1):
            if result.action != "failed":
                break
            self.note(f"update: slot {result.slot} failed its trial ({result.reason}); rebooting")
            self.reboot()
            result = commit.settle(self.platform, report=self._report_event, tpm=self.tpm)
        seen = (result.action, result.slot, result.reason)
        if result.action in ("committed", "fell-back") and seen != self._last_settled:
            self.note(f"update: slot {result.slot} {result.action}: {result.reason}")
        self._last_settled = seen  # a fallback stays one until the next install: say it once
        return result

    # --- update now -------------------------------------------------------------------------

    def update_now(self) -> UpdateOutcome:
        """Check the fleet target against TUF and install it (module docstring)."""
        boot = slots.booted(self.platform)
        if boot is None:
            raise NotFoundError("the device has no record of the slot it booted")
        running = slots.load_records(self.platform).get(boot.slot)
        if running is None:
            raise NotFoundError(f"the running slot {boot.slot} has no record")
        fleet = fleet_target(self.http)
        wanted = fleet.get("release")
        if wanted is None:
            return UpdateOutcome(
                "up-to-date", f"running {running.version}: the fleet assigns no release"
            )
        if wanted == running.version:
            return UpdateOutcome("up-to-date", f"running {running.version}, the fleet's target")
        tried = slots.load_records(self.platform).get(slots.other(boot.slot))
        if tried is not None and tried.state == slots.SlotState.FAILED and tried.version == wanted:
            raise ConflictError(
                f"{wanted} failed its trial on this device ({tried.reason or 'no reason'}): "
                "not installing it again; the fleet needs another release"
            )
        client = self._open_client()
        try:
            checked = tuf_update.check(self.platform, client, tpm=self.tpm)
            target = checked.target
            if target is None or target.version != wanted:
                offered = "nothing" if target is None else f"{target.version}"
                why = "; ".join(f"{p}: {r}" for p, r in checked.refused)
                raise VerificationError(
                    f"the fleet's target {wanted} is not the release TUF offers this device "
                    f"(TUF offers {offered}, status {checked.status}"
                    + (f": {why}" if why else "")
                    + "): nothing installed"
                )
            sha = fleet.get("sha256")
            if isinstance(sha, str) and not hmac.compare_digest(sha, target.sha256):
                raise VerificationError(
                    f"the fleet's target {wanted} has SHA-256 {sha}, the signed TUF target "
                    f"{target.path} says {target.sha256}: nothing installed"
                )
            if checked.status == "awaiting-reboot":
                return UpdateOutcome(
                    "awaiting-reboot",
                    f"{wanted} is installed in the other slot: rebooting to try it",
                    reboot=True,
                    version=wanted,
                )
            location = client.target_url(target)
        finally:
            client.close()
        try:
            result = self._install(location, target)
        except BastionError as exc:
            self._report_failed(running, wanted, exc)
            raise
        return UpdateOutcome(
            "installed",
            f"installed {result.version} (svn {result.svn}) into slot {result.slot}: "
            f"{result.bytes_downloaded} of {result.bundle_size} bundle bytes read; "
            "rebooting into trial",
            reboot=True,
            version=result.version,
        )

    def _install(self, location: str, target: Any) -> install.InstallResult:
        stored = self.platform.load(tuf_update.KEYRING)
        if stored is None:
            raise ConfigError("no release keyring: bastion update configure DEV ... --keyring PEM")
        source = stream.open_source(location, ca_file=self.ca_file)
        try:
            return install.install(
                self.platform, source, load_keyring(stored), target=target, tpm=self.tpm
            )
        finally:
            source.close()

    def _report_failed(self, running: slots.SlotRecord, version: str, exc: BastionError) -> None:
        fields = ReportFields(
            self.device_id,
            version,
            running.slot,
            running.svn,
            UpdateResult.FAILED,
            f"{type(exc).__name__}: {exc}"[:500],
        )
        try:
            self._report(fields)
        except BastionError as sent:  # the install error is what the caller must see
            self.note(f"update report failed not sent: {sent}")

    # --- the cycle --------------------------------------------------------------------------

    def tick(self, now: float, interval: float) -> UpdateOutcome | None:
        """Settle, send a pending report, and check when ``interval`` has passed since the
        last check (``now`` is monotonic seconds). Reboots after an install."""
        self.settle()
        self.send_pending()
        if interval <= 0:
            return None
        if self.next_check is None:  # the first check one interval after the start
            self.next_check = now + interval
        if now < self.next_check:
            return None
        self.next_check = now + interval
        outcome = self.update_now()
        self.note(f"periodic update check: {outcome.text}")
        if outcome.reboot:
            self.reboot()
        return outcome

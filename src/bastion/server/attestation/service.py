"""Remote attestation on the fleet server: challenges, verdicts, fleet settings, gating.

* :func:`challenge` gives a device a fresh 32-byte nonce (single use, expires after
  ``ATTEST_CHALLENGE_TTL``; at most ``ATTEST_OPEN_CHALLENGES`` open per device).
* :func:`submit` consumes the challenge the quote answers (or the newest open one, so a
  replayed quote fails with ``quote.nonce``), runs the pure verifier
  (:func:`bastion.trust.verdict.evidence_result`) with the AK recorded at enrolment, the
  fleet's signed golden statements and product key, its SVN floor, posture policy and
  the clock info of the last accepted verdict, and stores the verdict (history kept)
  with the event log it judged (the device's newest verdict only keeps its log).
  The golden statements are split (ADR 0037): what the device should run (its rollout
  wave's and the fleet's target release, the release of its newest signed update
  report, the fleet's own accepted sets) and the fleet's other releases, which fail
  ``release.unexpected`` when the device runs one.
* :func:`update_settings`, :func:`add_golden` (the statement must verify with the
  fleet's product key), :func:`history` for operators.
* :func:`require_attested`: the gate (docs/adr/0023-attestation.md).

Services own the transaction and write the audit entry in it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import (
    AttestationRequiredError,
    ConflictError,
    FormatError,
    NotFoundError,
    VerificationError,
)
from bastion.formats.tpm2 import Attest
from bastion.server.attestation import repository as repo
from bastion.server.attestation.models import (
    DEFAULT_INTERVAL,
    DEFAULT_SELECTION,
    AttestationNonce,
    AttestationVerdict,
    FleetAttestation,
    FleetGolden,
)
from bastion.server.audit.service import record
from bastion.server.auth.principal import Principal
from bastion.server.auth.rbac import FleetAccess
from bastion.server.devices import service as devices
from bastion.server.webhooks import service as webhooks
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.trust.signer import Verifier
from bastion.trust.verdict import (
    AttestationPolicy,
    ClockState,
    PosturePolicy,
    evidence_from_json,
    evidence_result,
    golden_digest,
    open_golden,
)

ATTEST_CHALLENGE_TTL = dt.timedelta(minutes=5)
ATTEST_OPEN_CHALLENGES = 4
INTERVAL_MIN, INTERVAL_MAX = 60, 30 * 86400
HISTORY_MAX = 500


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes
    selection: str
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Settings:
    """A fleet's effective attestation settings (defaults when it has no row)."""

    fleet_id: str
    gating: bool
    interval_seconds: int
    svn_floor: int
    pcr_selection: str
    posture_policy: PosturePolicy
    product_key: str | None
    #: golden statements devices are judged with: the fleet's own and its releases'
    golden_count: int

    @property
    def enforced(self) -> bool:
        """Gating applies once the fleet can judge devices: it has golden values."""
        return self.gating and self.golden_count > 0


def settings_of(session: Session, fleet_id: str) -> Settings:
    row = repo.settings(session, fleet_id)
    count = repo.judged_count(session, fleet_id)
    if row is None:
        return Settings(
            fleet_id, True, DEFAULT_INTERVAL, 0, DEFAULT_SELECTION, PosturePolicy(), None, count
        )
    return Settings(
        fleet_id,
        row.gating,
        row.interval_seconds,
        row.svn_floor,
        row.pcr_selection,
        PosturePolicy.from_json(json.loads(row.posture_policy)),
        row.product_key,
        count,
    )


def _product_key(pem: str) -> Verifier:
    if len(pem) > limits.KEY_FILE_MAX_SIZE:
        raise FormatError("product key PEM is too large")
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise FormatError(f"product key is not a PEM public key: {exc}") from exc
    return Verifier.of(key)  # type: ignore[arg-type]


def _selection(text: str) -> PcrSelection:
    try:
        sel = PcrSelection.parse(text)
    except Exception as exc:  # ConfigError and friends: the client's input
        raise FormatError(f"PCR selection {text!r}: {exc}") from exc
    if sel.bank is not HashAlg.SHA256:
        raise FormatError("attestation PCR selection must be in the sha256 bank")
    return sel


def update_settings(
    session: Session, access: FleetAccess, changes: dict[str, Any], now: dt.datetime
) -> Settings:
    """Apply the given changes to the fleet's settings (admin; audited)."""
    for name in ("gating", "interval_seconds", "svn_floor", "pcr_selection"):
        if name in changes and changes[name] is None:
            raise FormatError(f"{name} may not be null")
    row = repo.settings(session, access.fleet_id)
    if row is None:
        row = FleetAttestation(
            fleet_id=access.fleet_id,
            gating=True,
            interval_seconds=DEFAULT_INTERVAL,
            svn_floor=0,
            pcr_selection=DEFAULT_SELECTION,
            posture_policy="{}",
        )
        session.add(row)
    if "gating" in changes:
        row.gating = bool(changes["gating"])
    if "interval_seconds" in changes:
        value = int(changes["interval_seconds"])
        if not INTERVAL_MIN <= value <= INTERVAL_MAX:
            raise FormatError(f"interval_seconds must be {INTERVAL_MIN}..{INTERVAL_MAX}")
        row.interval_seconds = value
    if "svn_floor" in changes:
        value = int(changes["svn_floor"])
        if not 0 <= value < 2**32:
            raise FormatError("svn_floor must be 0..2^32-1")
        row.svn_floor = value
    if "pcr_selection" in changes:
        row.pcr_selection = str(_selection(str(changes["pcr_selection"])))
    if "posture_policy" in changes:
        policy = PosturePolicy.from_json(changes["posture_policy"])
        row.posture_policy = json.dumps(policy.to_json(), sort_keys=True)
    if "product_key" in changes:
        pem = changes["product_key"]
        if pem is not None:
            _product_key(str(pem))
        row.product_key = pem
    row.updated_at = now
    record(
        session,
        "fleet.attestation",
        access.principal.actor,
        {"fleet": access.fleet_id, "changed": ",".join(sorted(changes))},
        org_id=access.org_id,
        at=now,
    )
    session.commit()
    return settings_of(session, access.fleet_id)


def add_golden(
    session: Session, access: FleetAccess, statement: bytes, now: dt.datetime
) -> FleetGolden:
    """Accept a golden-values statement signed with the fleet's product key."""
    current = settings_of(session, access.fleet_id)
    if current.product_key is None:
        raise ConflictError("the fleet has no product key: set it before golden values")
    golden = open_golden(statement, [_product_key(current.product_key)])
    sha = golden_digest(statement)
    if repo.golden_by_sha(session, access.fleet_id, sha) is not None:
        raise ConflictError(f"golden statement {sha[:16]}... is already set")
    if repo.golden_count(session, access.fleet_id) >= limits.ATTEST_GOLDEN_PER_FLEET:
        raise ConflictError(f"fleet already has {limits.ATTEST_GOLDEN_PER_FLEET} golden sets")
    row = FleetGolden(
        fleet_id=access.fleet_id,
        sha256=sha,
        version=golden.version,
        security_version=golden.security_version,
        statement=statement,
        added_by=access.principal.actor,
        added_at=now,
    )
    session.add(row)
    session.flush()
    record(
        session,
        "fleet.golden.add",
        access.principal.actor,
        {"fleet": access.fleet_id, "golden": row.id, "version": golden.version},
        org_id=access.org_id,
        at=now,
    )
    session.commit()
    return row


def remove_golden(session: Session, access: FleetAccess, golden_id: str, now: dt.datetime) -> None:
    row = repo.golden(session, access.fleet_id, golden_id)
    if row is None:
        raise NotFoundError(f"golden statement {golden_id!r} not found in this fleet")
    session.delete(row)
    record(
        session,
        "fleet.golden.remove",
        access.principal.actor,
        {"fleet": access.fleet_id, "golden": golden_id, "version": row.version},
        org_id=access.org_id,
        at=now,
    )
    session.commit()


def list_golden(session: Session, fleet_id: str) -> list[FleetGolden]:
    return repo.goldens(session, fleet_id)


# --- the device's side ------------------------------------------------------------------------


def challenge(session: Session, principal: Principal, now: dt.datetime) -> Challenge:
    """A fresh nonce for the calling device."""
    device = devices.own(session, principal)
    repo.purge_nonces(session, now)
    for stale in repo.open_nonces(session, device.id)[ATTEST_OPEN_CHALLENGES - 1 :]:
        session.delete(stale)
    nonce = os.urandom(limits.ATTEST_NONCE_SIZE)
    expires = now + ATTEST_CHALLENGE_TTL
    session.add(AttestationNonce(device_id=device.id, nonce=nonce, expires_at=expires))
    selection = settings_of(session, device.fleet_id).pcr_selection
    session.commit()
    return Challenge(nonce, selection, expires)


def _take_nonce(session: Session, device_id: str, quote: bytes, now: dt.datetime) -> bytes:
    """Consume the open challenge the quote answers, else the newest (the verdict will
    then fail ``quote.nonce``); VerificationError when none is open."""
    repo.purge_nonces(session, now)
    candidates = repo.open_nonces(session, device_id)
    if not candidates:
        raise VerificationError("no open attestation challenge: ask for one first")
    try:
        answered = Attest.parse(quote).extra_data
    except FormatError:
        answered = b""
    chosen = next((c for c in candidates if c.nonce == answered), candidates[0])
    if not repo.consume_nonce(session, chosen.id):  # a concurrent request took it
        raise VerificationError("the attestation challenge was already used")
    return chosen.nonce


def _golden_sets(
    session: Session, device_id: str, fleet_id: str
) -> tuple[list[bytes], list[bytes]]:
    """The statements of what the device should run (its wave's or the fleet's target
    release, the release of its newest signed report, then the fleet's own sets), and
    those of the fleet's other releases (ADR 0037)."""
    wanted = repo.expected_release_ids(session, device_id, fleet_id)
    statements = dict(repo.release_goldens(session, fleet_id, wanted, limits.ATTEST_OTHER_RELEASES))
    expected = [statements[r] for r in wanted if r in statements]
    expected += [g.statement for g in repo.goldens(session, fleet_id)]
    others = [s for r, s in statements.items() if r not in wanted and s not in expected]
    return expected, others


def submit(
    session: Session, principal: Principal, evidence: Any, now: dt.datetime
) -> AttestationVerdict:
    """Verify the device's evidence and store the verdict (pass or fail)."""
    device = devices.own(session, principal)
    parsed = evidence_from_json(evidence)
    nonce = _take_nonce(session, device.id, parsed.quote, now)
    current = settings_of(session, device.fleet_id)
    previous = repo.latest_accepted(session, device.id)
    prev_clock = (
        ClockState(previous.clock, previous.reset_count, previous.restart_count)
        if previous is not None
        and previous.clock is not None
        and previous.reset_count is not None
        and previous.restart_count is not None
        else None
    )
    product = [_product_key(current.product_key)] if current.product_key else []
    expected, others = _golden_sets(session, device.id, device.fleet_id)
    verdict = evidence_result(
        parsed,
        nonce=nonce,
        ak_public=device.ak_public,
        golden=expected,
        product_keys=product,
        policy=AttestationPolicy(
            _selection(current.pcr_selection), current.svn_floor, current.posture_policy
        ),
        previous=prev_clock,
        others=others,
    )
    before = repo.latest_verdict(session, device.id)
    row = AttestationVerdict(
        device_id=device.id,
        fleet_id=device.fleet_id,
        at=now,
        ok=verdict.ok,
        failures=json.dumps([{"id": f.id, "detail": f.detail[:500]} for f in verdict.failures]),
        release=verdict.release,
        security_version=verdict.security_version,
        clock=verdict.clock.clock if verdict.clock else None,
        reset_count=verdict.clock.reset_count if verdict.clock else None,
        restart_count=verdict.clock.restart_count if verdict.clock else None,
        # bounded by the evidence parser (ATTEST_EVENTLOG_MAX_SIZE); kept for the newest
        # verdict only (the dashboard's device page decodes it)
        eventlog=parsed.eventlog,
    )
    session.add(row)
    session.flush()
    repo.forget_older_eventlogs(session, device.id, keep=row.id)
    record(
        session,
        "device.attest",
        principal.actor,
        {
            "device": device.id,
            "verdict": row.id,
            "ok": str(verdict.ok).lower(),
            "failures": ",".join(verdict.failure_ids)[:500],
        },
        org_id=principal.org_id,
        at=now,
    )
    if not verdict.ok or (before is not None and not before.ok):
        # webhooks: every failure, and a pass right after a failure ("passed again")
        event = "attestation.passed" if verdict.ok else "attestation.failed"
        data = {"device": device.id, "verdict": row.id, "failures": verdict.failure_ids}
        webhooks.emit(session, device.fleet_id, event, data, now)
    session.commit()
    return row


def history(
    session: Session, fleet_id: str, device_id: str, limit: int
) -> list[AttestationVerdict]:
    device = devices.in_fleet(session, fleet_id, device_id)
    return repo.history(session, device.id, min(limit, HISTORY_MAX))


def require_attested(
    session: Session, principal: Principal, now: dt.datetime
) -> dt.datetime | None:
    """The gate: AttestationRequiredError unless the device's newest verdict passed and
    is younger than the fleet's interval (no-op where gating is off or not enforced).
    Returns when the pass ends (the verdict's time plus the interval), None where the
    gate does not apply: what the device answer cache keeps as a deadline (ADR 0044).

    Runs on every gated device request: the device row comes from authentication; the
    settings, the newest verdict and the golden count are one query."""
    device = devices.own_row(session, principal)
    state = repo.gate_state(session, device.id, device.fleet_id)
    if state.gating is False:
        return None
    if state.golden_count == 0:  # gating is enforced once the fleet can judge devices
        return None
    interval = state.interval_seconds if state.interval_seconds is not None else DEFAULT_INTERVAL
    if state.verdict_id is None or state.verdict_at is None:
        raise AttestationRequiredError(f"device {device.id} has never attested")
    if not state.verdict_ok:
        ids = ", ".join(f["id"] for f in json.loads(state.verdict_failures or "[]"))
        raise AttestationRequiredError(f"device {device.id}: last attestation failed ({ids})")
    age = (now - state.verdict_at).total_seconds()
    if age >= interval:
        raise AttestationRequiredError(
            f"device {device.id}: last passing attestation is {int(age)} s old, "
            f"the fleet requires one within {interval} s"
        )
    return state.verdict_at + dt.timedelta(seconds=interval)


def verdict_eventlog(session: Session, fleet_id: str, device_id: str, verdict_id: int) -> bytes:
    """The TCG event log the device sent with verdict ``verdict_id`` (the raw bytes, as
    ``tpm2_eventlog`` reads them). NotFoundError when the device is not in the fleet,
    the verdict is not the device's, or its log was not kept (only the newest verdict of a
    device keeps its log)."""
    device = devices.in_fleet(session, fleet_id, device_id)
    raw = repo.device_eventlog(session, device.id, verdict_id)
    if raw is None:
        raise NotFoundError(
            f"verdict {verdict_id} of device {device.id} has no stored event log "
            "(only a device's newest verdict keeps its log)"
        )
    return raw

"""The server side of TPM-bound enrolment: ``begin`` and ``finish`` (ADR 0008).

``begin``: provisioning key admission (revoked, expired, used up, allow-lists, per-key
rate limit), evidence verification (:mod:`.evidence`), the fleet's EK policy (an EK
certificate chaining to the fleet's EK CAs, an allow-listed EK, or ``any`` in a
development fleet), the fleet's EK deny-list, and one active device per EK (no clones)
and per serial; then a challenge holding a fresh 32-byte secret and
``make_credential(EK, Name(AK), secret)`` for the device. ``finish`` checks the
deny-list and uniqueness again (another device may have finished meanwhile).

``finish``: the challenge is deleted first (single use: a second finish, a replay, or a
wrong proof all find nothing the next time), it must belong to the same provisioning
key and be unexpired, the HMAC proof must match (constant time), then one use of the
key is consumed atomically, the device certificate is issued from the CSR, a device
API key is minted and returned sealed under the credential-derived key, and the device
row is written. Every refusal is audited (``enroll.refused``) in its own transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete
from sqlalchemy.orm import Session

from bastion.errors import (
    AuthError,
    BastionError,
    ConfigError,
    ConflictError,
    ExpiredError,
    PolicyError,
)
from bastion.formats import enrollment as en
from bastion.limits import ENROLL_SECRET_SIZE
from bastion.server.audit.service import record
from bastion.server.devices import repository as device_repo
from bastion.server.devices.ca import DeviceCa
from bastion.server.devices.models import Device, DeviceStatus
from bastion.server.ektrust import service as ektrust
from bastion.server.ektrust.policy import check_ek_policy, check_still_meets
from bastion.server.enrollment.evidence import EnrollmentEvidence, verify_evidence
from bastion.server.enrollment.models import EnrollmentChallenge
from bastion.server.orgs import repository as org_repo
from bastion.server.provisioning import repository as pk_repo
from bastion.server.provisioning.models import ProvisioningKey
from bastion.server.provisioning.policy import (
    DEVICE_KEY_PREFIX,
    RateLimiter,
    check_admission,
    display_prefix,
    ek_hash,
    new_token,
    token_hash,
)
from bastion.server.provisioning.service import state_of
from bastion.tpm.quote import make_credential

CHALLENGE_TTL = dt.timedelta(seconds=60)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Challenge:
    """What ``begin`` answers."""

    challenge_id: str
    credential_blob: bytes
    encrypted_secret: bytes
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Enrolled:
    """What ``finish`` answers."""

    device_id: str
    fleet_id: str
    certificate_pem: str
    ca_certificate_pem: str
    sealed_api_key: bytes


def _check_unique(session: Session, fleet_id: str, serial: str, ek_sha256: str) -> None:
    """ConflictError when an active device of the fleet has this EK (a clone) or serial."""
    for device in device_repo.active_in_fleet(session, fleet_id, ek_hash=ek_sha256, serial=serial):
        if device.ek_hash == ek_sha256:
            raise ConflictError(
                f"active device {device.id} of this fleet already has EK sha256 "
                f"{ek_sha256[:16]}... (a clone?); revoke it before enrolling this TPM again"
            )
        raise ConflictError(
            f"active device {device.id} of this fleet already has serial {serial!r}; "
            "revoke it before enrolling another device under that serial"
        )


@dataclass
class EnrollmentService:
    """Holds the device CA and the per-key rate limiter; one per app."""

    ca: DeviceCa
    limiter: RateLimiter
    monotonic: Callable[[], float]

    def _org_of(self, session: Session, fleet_id: str) -> str | None:
        fleet = org_repo.get_fleet(session, fleet_id)
        return fleet.org_id if fleet else None

    def _refused(
        self,
        session: Session,
        *,
        key: ProvisioningKey | None,
        actor: str,
        now: dt.datetime,
        step: str,
        exc: BastionError,
        extra: dict[str, str],
    ) -> None:
        session.rollback()
        record(
            session,
            "enroll.refused",
            actor,
            {"step": step, "reason": type(exc).__name__, "detail": str(exc)[:300]} | extra,
            org_id=self._org_of(session, key.fleet_id) if key else None,
            at=now,
        )
        session.commit()

    def _check_ek(
        self,
        session: Session,
        key: ProvisioningKey,
        ev: EnrollmentEvidence,
        ek_sha256: str,
        now: dt.datetime,
    ) -> str:
        """The fleet's EK policy, its deny-list, and one active device per EK and serial."""
        fleet = org_repo.get_fleet(session, key.fleet_id)
        if fleet is None:
            raise AuthError(f"provisioning key {key.id} has no fleet")
        ektrust.check_not_denied(session, fleet.id, ek_sha256)
        met = check_ek_policy(
            fleet.ek_policy,
            key=state_of(key),
            serial=ev.serial,
            ek_public=ev.ek_public,
            ek_certificate=ev.ek_certificate,
            anchors=ektrust.anchors(session, fleet.id) if ev.ek_certificate else [],
            now=now,
        )
        _check_unique(session, fleet.id, ev.serial, ek_sha256)
        return met.value

    def begin(
        self,
        session: Session,
        *,
        key_id: str,
        actor: str,
        ev: EnrollmentEvidence,
        now: dt.datetime,
        fleet_id: str | None = None,
    ) -> Challenge:
        """Check the key and the evidence; store and return a credential challenge."""
        key = pk_repo.get(session, key_id)
        extra = {"serial": ev.serial[:128], "ek_sha256": ek_hash(ev.ek_public)}
        try:
            if key is None:
                raise AuthError("provisioning key is not known")
            self.limiter.take(key.id, key.rate_per_minute, self.monotonic())
            check_admission(
                state_of(key),
                now=now,
                serial=ev.serial,
                ek_sha256=extra["ek_sha256"],
                fleet_id=fleet_id,
            )
            verified = verify_evidence(ev)
            ek_trust = self._check_ek(session, key, ev, extra["ek_sha256"], now)
            secret = os.urandom(ENROLL_SECRET_SIZE)
            try:
                blob, encrypted = make_credential(ev.ek_public, verified.ak_name, secret)
            except ConfigError as exc:  # an EK no credential can be made for
                raise PolicyError(f"EK cannot receive a credential: {exc}") from exc
        except BastionError as exc:
            self._refused(
                session, key=key, actor=actor, now=now, step="begin", exc=exc, extra=extra
            )
            raise
        session.execute(delete(EnrollmentChallenge).where(EnrollmentChallenge.expires_at < now))
        challenge = EnrollmentChallenge(
            id="ch_" + secrets.token_hex(16),
            provisioning_key_id=key.id,
            fleet_id=key.fleet_id,
            serial=ev.serial,
            ek_hash=extra["ek_sha256"],
            key_public=ev.key_public,
            ak_public=ev.ak_public,
            csr_pem=verified.csr.public_bytes(serialization.Encoding.PEM).decode(),
            secret=secret,
            expires_at=now + CHALLENGE_TTL,
            ek_trust=ek_trust,
        )
        session.add(challenge)
        record(
            session,
            "enroll.begin",
            actor,
            {"challenge": challenge.id} | extra,
            org_id=self._org_of(session, key.fleet_id),
            at=now,
        )
        session.commit()
        return Challenge(challenge.id, blob, encrypted, challenge.expires_at)

    def finish(
        self,
        session: Session,
        *,
        key_id: str,
        actor: str,
        challenge_id: str,
        proof: bytes,
        now: dt.datetime,
    ) -> Enrolled:
        """Check the proof; issue the certificate and the sealed API key; record the device."""
        key = pk_repo.get(session, key_id)
        challenge = session.get(EnrollmentChallenge, challenge_id)
        extra = {"challenge": challenge_id[:40]}
        try:
            if key is None:
                raise AuthError("provisioning key is not known")
            if challenge is None or challenge.provisioning_key_id != key.id:
                raise AuthError(f"enrolment challenge {challenge_id[:40]!r} is unknown or used")
            session.delete(challenge)
            session.flush()
            if now >= challenge.expires_at:
                raise ExpiredError(f"enrolment challenge {challenge.id} expired")
            keys = en.derive_keys(challenge.secret, challenge.id)
            en.check_finish_proof(keys, challenge.id, proof)
            org_repo.lock_fleet(session, key.fleet_id)  # one finish per fleet at a time
            fleet = org_repo.get_fleet(session, key.fleet_id)
            if fleet is None:
                raise AuthError(f"provisioning key {key.id} has no fleet")
            check_still_meets(challenge.ek_trust, fleet.ek_policy)
            ektrust.check_not_denied(session, key.fleet_id, challenge.ek_hash)
            _check_unique(session, key.fleet_id, challenge.serial, challenge.ek_hash)
            if not pk_repo.consume_use(session, key.id, now):
                check_admission(
                    state_of(key), now=now, serial=challenge.serial, ek_sha256=challenge.ek_hash
                )
                raise AuthError(f"provisioning key {key.id} has no use left")
        except BastionError as exc:
            if challenge is not None and challenge.provisioning_key_id == (key.id if key else ""):
                # the challenge is consumed even by a failed attempt: commit its deletion
                session.commit()
            self._refused(
                session, key=key, actor=actor, now=now, step="finish", exc=exc, extra=extra
            )
            raise
        csr = x509.load_pem_x509_csr(challenge.csr_pem.encode())
        device_id = secrets.token_hex(16)
        cert = self.ca.issue(csr, device_id=device_id, now=now)
        api_key = new_token(DEVICE_KEY_PREFIX)
        cert_der = cert.public_bytes(serialization.Encoding.DER)
        device = Device(
            id=device_id,
            fleet_id=key.fleet_id,
            serial=challenge.serial,
            status=DeviceStatus.ACTIVE,
            ek_hash=challenge.ek_hash,
            key_public=challenge.key_public,
            cert_serial=f"{cert.serial_number:x}",
            cert_sha256=hashlib.sha256(cert_der).hexdigest(),
            certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
            api_key_hash=token_hash(api_key),
            api_key_prefix=display_prefix(api_key),
            provisioning_key_id=key.id,
            created_at=now,
            ek_trust=challenge.ek_trust,
            ak_public=challenge.ak_public,
        )
        session.add(device)
        record(
            session,
            "enroll.finish",
            actor,
            {
                "device": device_id,
                "serial": challenge.serial,
                "cert_serial": device.cert_serial,
                "ek_trust": challenge.ek_trust or "",
            }
            | extra,
            org_id=self._org_of(session, key.fleet_id),
            at=now,
        )
        session.commit()
        return Enrolled(
            device_id=device_id,
            fleet_id=key.fleet_id,
            certificate_pem=device.certificate,
            ca_certificate_pem=self.ca.certificate_pem,
            sealed_api_key=en.seal_api_key(keys, device_id, api_key),
        )

"""A fleet's EK trust: its EK policy, its EK CA trust store and its EK deny-list.

Operators (fleet RBAC in the routes) add, list and remove TPM manufacturer CA
certificates; set the fleet's EK policy (:mod:`.policy`); list, add and lift deny-list
entries. Enrolment reads all three (:func:`anchors`, :func:`check_not_denied`), and
device revocation writes the deny-list (:func:`deny`). Services own the transaction
and write the audit entry in it.
"""

from __future__ import annotations

import datetime as dt
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import ConflictError, FormatError, NotFoundError, PolicyError
from bastion.server.audit.service import record
from bastion.server.auth.rbac import FleetAccess
from bastion.server.ektrust import repository as repo
from bastion.server.ektrust.models import DeniedEk, FleetEkCa
from bastion.server.ektrust.policy import EkPolicy, warning_for
from bastion.server.orgs.models import Fleet
from bastion.trust.ekcert import check_ca_certificate, fingerprint, load_ek_certificate

_EK_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def check_ek_hash(value: str) -> str:
    """The lowercase form of a hex SHA-256 EK hash; FormatError otherwise."""
    text = value.strip().lower()
    if not _EK_HASH_RE.match(text):
        raise FormatError(f"EK hash {value[:20]!r} is not 64 hex digits (sha256)")
    return text


# --- policy ------------------------------------------------------------------------------------


def set_policy(session: Session, access: FleetAccess, policy: EkPolicy, now: dt.datetime) -> Fleet:
    """Change the fleet's EK policy (the route demands the fleet owner)."""
    fleet = session.get(Fleet, access.fleet_id)
    if fleet is None:
        raise NotFoundError(f"fleet {access.fleet_id!r} not found")
    old, fleet.ek_policy = fleet.ek_policy, policy.value
    details: dict[str, str] = {"fleet": fleet.id, "from": old, "to": policy.value}
    warning = warning_for(policy.value)
    if warning:
        details["warning"] = warning
    record(
        session, "fleet.ek_policy", access.principal.actor, details, org_id=access.org_id, at=now
    )
    session.commit()
    return fleet


# --- the EK CA trust store ---------------------------------------------------------------------


def add_ca(
    session: Session, access: FleetAccess, pem: str, name: str | None, now: dt.datetime
) -> FleetEkCa:
    """Trust one CA certificate (PEM or base64 DER) to certify EKs in this fleet."""
    cert = load_ek_certificate(pem.encode())
    check_ca_certificate(cert)
    sha = fingerprint(cert)
    if repo.ca_by_sha256(session, access.fleet_id, sha) is not None:
        raise ConflictError(f"EK CA {sha[:16]}... is already trusted by this fleet")
    if len(repo.cas_of_fleet(session, access.fleet_id)) >= limits.EK_CA_MAX_PER_FLEET:
        raise ConflictError(f"fleet already trusts {limits.EK_CA_MAX_PER_FLEET} EK CAs")
    subject = cert.subject.rfc4514_string()[:512]
    row = FleetEkCa(
        fleet_id=access.fleet_id,
        name=(name or subject or sha[:16])[:128],
        subject=subject,
        sha256=sha,
        not_after=cert.not_valid_after_utc,
        certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
        added_by=access.principal.actor,
        added_at=now,
    )
    session.add(row)
    session.flush()
    record(
        session,
        "fleet.ek_ca.add",
        access.principal.actor,
        {"fleet": access.fleet_id, "ca": row.id, "sha256": sha, "subject": subject},
        org_id=access.org_id,
        at=now,
    )
    session.commit()
    return row


def list_cas(session: Session, fleet_id: str) -> list[FleetEkCa]:
    return repo.cas_of_fleet(session, fleet_id)


def remove_ca(session: Session, access: FleetAccess, ca_id: str, now: dt.datetime) -> None:
    """Stop trusting a CA (by id or SHA-256); devices enrolled through it stay enrolled."""
    wanted = ca_id.strip()
    rows = [
        r
        for r in repo.cas_of_fleet(session, access.fleet_id)
        if wanted == r.id or wanted.lower() == r.sha256
    ]
    if not rows:
        raise NotFoundError(f"EK CA {ca_id[:64]!r} not found in this fleet")
    row = rows[0]
    record(
        session,
        "fleet.ek_ca.remove",
        access.principal.actor,
        {"fleet": access.fleet_id, "ca": row.id, "sha256": row.sha256},
        org_id=access.org_id,
        at=now,
    )
    session.delete(row)
    session.commit()


def anchors(session: Session, fleet_id: str) -> list[x509.Certificate]:
    """The fleet's trusted EK CA certificates (for enrolment)."""
    return [
        x509.load_pem_x509_certificate(r.certificate.encode())
        for r in repo.cas_of_fleet(session, fleet_id)
    ]


# --- the deny-list -----------------------------------------------------------------------------


def check_not_denied(session: Session, fleet_id: str, ek_hash: str) -> None:
    """PolicyError (403) when the EK is on the fleet's deny-list."""
    row = repo.denied(session, fleet_id, ek_hash.lower())
    if row is not None:
        raise PolicyError(
            f"EK sha256 {ek_hash[:16]}... is on this fleet's deny-list since "
            f"{row.created_at.isoformat()} ({row.reason}); an operator must lift it first"
        )


def deny(
    session: Session,
    *,
    fleet_id: str,
    ek_hash: str,
    reason: str,
    actor: str,
    now: dt.datetime,
    device_id: str | None = None,
) -> DeniedEk:
    """Put an EK on the deny-list (in the caller's transaction; idempotent)."""
    key = check_ek_hash(ek_hash)
    row = repo.denied(session, fleet_id, key)
    if row is None:
        row = DeniedEk(
            fleet_id=fleet_id,
            ek_hash=key,
            reason=reason[:256],
            device_id=device_id,
            created_by=actor,
            created_at=now,
        )
        session.add(row)
    return row


def deny_by_operator(
    session: Session, access: FleetAccess, ek_hash: str, reason: str, now: dt.datetime
) -> DeniedEk:
    """An operator denies an EK before (or without) any device having it."""
    row = deny(
        session,
        fleet_id=access.fleet_id,
        ek_hash=ek_hash,
        reason=reason or "denied by an operator",
        actor=access.principal.actor,
        now=now,
    )
    record(
        session,
        "fleet.ek_deny.add",
        access.principal.actor,
        {"fleet": access.fleet_id, "ek_sha256": row.ek_hash, "reason": row.reason},
        org_id=access.org_id,
        at=now,
    )
    session.commit()
    return row


def list_denied(session: Session, fleet_id: str) -> list[DeniedEk]:
    return repo.denylist(session, fleet_id)


def lift(session: Session, access: FleetAccess, ek_hash: str, now: dt.datetime) -> None:
    """Remove an EK from the deny-list (NotFoundError if it is not there)."""
    key = check_ek_hash(ek_hash)
    row = repo.denied(session, access.fleet_id, key)
    if row is None:
        raise NotFoundError(f"EK sha256 {key[:16]}... is not on this fleet's deny-list")
    record(
        session,
        "fleet.ek_deny.lift",
        access.principal.actor,
        {"fleet": access.fleet_id, "ek_sha256": key},
        org_id=access.org_id,
        at=now,
    )
    session.delete(row)
    session.commit()

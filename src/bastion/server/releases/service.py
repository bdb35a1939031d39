"""Releases of a fleet: publish a bundle or register a URL, keyring, golden PCRs, target.

* :func:`publish_bundle`: an uploaded bundle is verified with
  :func:`bastion.trust.bundle.verify_bundle` against the fleet's release keyring
  (signature, certificate chain, every payload block against the signed verity root)
  before it is kept in the file store; version, compatible and SVN
  (``[meta.bastion] svn``, 0 when absent) come from the *signed* manifest. A bundle
  that carries a golden-values statement (``[meta.bastion-golden]``, ADR 0037) is
  refused unless the statement verifies with the fleet's product key and is about
  this version and SVN; it is then recorded like :func:`set_golden` does.
* :func:`register_url`: an external HTTP/CDN URL with its declared length and SHA-256
  (the server never downloads it; devices verify the bundle signature themselves and
  stop at the declared length). Shown as ``source: url``.
* :func:`set_golden`: a golden-values statement signed with the fleet's product key
  (the attestation settings' key) recorded with the release: its PCRs are what a device
  running this release must quote.
* :func:`set_target`: the fleet's target release (outside rollouts), a reference to a
  release of the same fleet.

Keyring and golden values are trust anchors: admin. Publishing and targets: operator.
Services own the transaction and write the audit entry in it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import ConflictError, FormatError, LimitError, NotFoundError
from bastion.formats.raucm import Manifest
from bastion.server.attestation.service import settings_of as attestation_settings
from bastion.server.audit.service import record
from bastion.server.auth.rbac import FleetAccess
from bastion.server.releases import repository as repo
from bastion.server.releases.models import FleetTarget, Release, ReleaseKeyring, ReleaseSource
from bastion.server.releases.store import ReleaseStore, Upload
from bastion.trust.bundle import bundle_golden, load_keyring, verify_bundle
from bastion.trust.golden import GoldenValues, golden_digest, open_golden, open_release_golden
from bastion.trust.signer import Verifier

LIST_MAX = limits.API_LIST_MAX
SVN_META = ("bastion", "svn")


@dataclass(frozen=True, slots=True)
class ExternalRelease:
    """What an operator declares about a bundle at an external URL."""

    url: str
    length: int
    sha256: str
    version: str
    compatible: str
    svn: int


def _audit(
    session: Session, access: FleetAccess, event: str, details: dict[str, str], now: dt.datetime
) -> None:
    record(
        session,
        event,
        access.principal.actor,
        {"fleet": access.fleet_id, **details},
        org_id=access.org_id,
        at=now,
    )


# --- keyring ------------------------------------------------------------------------------


def set_keyring(
    session: Session, access: FleetAccess, pem: str, now: dt.datetime
) -> ReleaseKeyring:
    """Replace the certificates uploaded bundles must chain to (admin; audited)."""
    if len(pem.encode()) > limits.RELEASE_KEYRING_MAX_SIZE:
        raise LimitError(f"release keyring is larger than {limits.RELEASE_KEYRING_MAX_SIZE} bytes")
    certs = load_keyring(pem.encode())
    if not certs:
        raise FormatError("release keyring holds no PEM certificate")
    row = repo.keyring(session, access.fleet_id)
    if row is None:
        row = ReleaseKeyring(fleet_id=access.fleet_id)
        session.add(row)
    row.keyring = pem
    row.updated_by = access.principal.actor
    row.updated_at = now
    _audit(session, access, "release.keyring", {"certificates": str(len(certs))}, now)
    session.commit()
    return row


def keyring_of(session: Session, fleet_id: str) -> ReleaseKeyring:
    row = repo.keyring(session, fleet_id)
    if row is None:
        raise NotFoundError("the fleet has no release keyring: an admin sets it first")
    return row


# --- publishing ---------------------------------------------------------------------------


def _svn(manifest: Manifest) -> int:
    for label, pairs in manifest.meta:
        if label == SVN_META[0]:
            for key, value in pairs:
                if key == SVN_META[1]:
                    if not value.isdigit() or int(value) >= 2**32:
                        raise FormatError(f"manifest [meta.bastion] svn {value!r} is not 0..2^32-1")
                    return int(value)
    return 0


def _states_svn(manifest: Manifest) -> bool:
    return any(
        label == SVN_META[0] and key == SVN_META[1]
        for label, pairs in manifest.meta
        for key, _ in pairs
    )


def _check_new_version(session: Session, fleet_id: str, version: str) -> None:
    if not version or len(version) > limits.RELEASE_VERSION_MAX_LENGTH:
        raise FormatError(f"release version must be 1..{limits.RELEASE_VERSION_MAX_LENGTH} chars")
    if repo.by_version(session, fleet_id, version) is not None:
        raise ConflictError(f"release {version!r} already exists in this fleet")


def publish_bundle(
    session: Session, access: FleetAccess, store: ReleaseStore, upload: Upload, now: dt.datetime
) -> Release:
    """Verify an uploaded bundle against the fleet keyring, keep it, record the release."""
    try:
        keyring = load_keyring(keyring_of(session, access.fleet_id).keyring.encode())
        with upload.path.open("rb") as stream:
            verified = verify_bundle(stream, keyring, now=now)
            statement = bundle_golden(stream, verified)
        manifest = verified.manifest
        if manifest.version is None:
            raise FormatError("bundle manifest has no [update] version")
        _check_new_version(session, access.fleet_id, manifest.version)
        if len(manifest.compatible) > limits.RELEASE_COMPATIBLE_MAX_LENGTH:
            raise FormatError(
                f"bundle compatible is over {limits.RELEASE_COMPATIBLE_MAX_LENGTH} characters"
            )
        svn = _svn(manifest)
        golden = (
            _bundle_golden(
                session,
                access.fleet_id,
                statement,
                manifest.version,
                svn if _states_svn(manifest) else None,
            )
            if statement is not None
            else None
        )
    except BaseException:
        store.discard(upload)
        raise
    store.keep(upload)
    signer = verified.signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    row = Release(
        fleet_id=access.fleet_id,
        version=manifest.version,
        compatible=manifest.compatible,
        svn=svn,
        sha256=upload.sha256,
        length=upload.length,
        source=ReleaseSource.STORE,
        manifest=manifest.to_text(),
        signer=str(signer[0].value)[:512] if signer else verified.signer.subject.rfc4514_string(),
        created_by=access.principal.actor,
        created_at=now,
    )
    if statement is not None and golden is not None:
        _record_golden(row, statement, golden)
    session.add(row)
    session.flush()
    details = {"release": row.id, "version": row.version, "sha256": row.sha256}
    if statement is not None:
        details["golden"] = golden_digest(statement)[:16]
    _audit(session, access, "release.publish", details | {"source": row.source}, now)
    session.commit()
    return row


def _bundle_golden(
    session: Session, fleet_id: str, statement: bytes, version: str, svn: int | None
) -> GoldenValues:
    """The bundle's golden statement opened with the fleet's product key (fail closed:
    a fleet without one cannot accept a bundle that carries golden values)."""
    product = attestation_settings(session, fleet_id).product_key
    if product is None:
        raise ConflictError(
            "the bundle carries golden values and the fleet has no product key to verify "
            "them: set it in the fleet's attestation settings first"
        )
    return open_release_golden(statement, [_product_verifier(product)], version=version, svn=svn)


def _record_golden(row: Release, statement: bytes, golden: GoldenValues) -> None:
    row.golden_statement = statement
    row.golden_pcrs = json.dumps({str(i): v.hex() for i, v in sorted(golden.pcrs.items())})


def _check_url(url: str) -> None:
    if len(url) > limits.RELEASE_URL_MAX_LENGTH:
        raise LimitError(f"release URL is longer than {limits.RELEASE_URL_MAX_LENGTH} characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise FormatError(f"release URL {url[:120]!r} is not a URL: {exc}") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise FormatError(f"release URL must be http(s)://host/..., got {url[:120]!r}")
    if parts.username or parts.password:
        raise FormatError("release URL must not carry credentials")


def register_url(
    session: Session, access: FleetAccess, ext: ExternalRelease, now: dt.datetime
) -> Release:
    """Record a bundle served from an external URL (declared length and SHA-256)."""
    _check_url(ext.url)
    _check_new_version(session, access.fleet_id, ext.version)
    if not 0 < ext.length <= limits.RELEASE_BUNDLE_MAX_SIZE:
        raise FormatError(f"release length must be 1..{limits.RELEASE_BUNDLE_MAX_SIZE}")
    if not ext.compatible or len(ext.compatible) > limits.RELEASE_COMPATIBLE_MAX_LENGTH:
        raise FormatError(
            f"release compatible must be 1..{limits.RELEASE_COMPATIBLE_MAX_LENGTH} characters"
        )
    if not 0 <= ext.svn < 2**32:
        raise FormatError("release svn must be 0..2^32-1")
    row = Release(
        fleet_id=access.fleet_id,
        version=ext.version,
        compatible=ext.compatible,
        svn=ext.svn,
        sha256=ext.sha256,
        length=ext.length,
        source=ReleaseSource.URL,
        url=ext.url,
        created_by=access.principal.actor,
        created_at=now,
    )
    session.add(row)
    session.flush()
    _audit(
        session,
        access,
        "release.publish",
        {"release": row.id, "version": row.version, "sha256": row.sha256, "source": row.source},
        now,
    )
    session.commit()
    return row


def list_releases(session: Session, fleet_id: str) -> list[Release]:
    return repo.of_fleet(session, fleet_id, LIST_MAX)


def show(session: Session, fleet_id: str, release_id: str) -> Release:
    row = repo.get(session, fleet_id, release_id)
    if row is None:
        raise NotFoundError(f"release {release_id!r} not found in this fleet")
    return row


# --- golden values ------------------------------------------------------------------------


def _product_verifier(pem: str) -> Verifier:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise FormatError(f"fleet product key is not a PEM public key: {exc}") from exc
    return Verifier.of(key)  # type: ignore[arg-type]


def set_golden(
    session: Session, access: FleetAccess, release_id: str, statement: bytes, now: dt.datetime
) -> Release:
    """Record the release's signed golden values (admin; the fleet's product key)."""
    row = show(session, access.fleet_id, release_id)
    if len(statement) > limits.ATTEST_GOLDEN_MAX_SIZE:
        raise LimitError(f"golden statement is larger than {limits.ATTEST_GOLDEN_MAX_SIZE} bytes")
    product = attestation_settings(session, access.fleet_id).product_key
    if product is None:
        raise ConflictError("the fleet has no product key: set it in its attestation settings")
    golden = open_golden(statement, [_product_verifier(product)])
    if golden.version != row.version:
        raise ConflictError(
            f"golden statement is for version {golden.version!r}, the release is {row.version!r}"
        )
    _record_golden(row, statement, golden)
    _audit(
        session,
        access,
        "release.golden",
        {"release": row.id, "version": row.version, "golden": golden_digest(statement)[:16]},
        now,
    )
    session.commit()
    return row


# --- fleet target -------------------------------------------------------------------------


def target_of(session: Session, fleet_id: str) -> Release | None:
    return repo.target_release(session, fleet_id)


def set_target(
    session: Session, access: FleetAccess, release_id: str | None, now: dt.datetime
) -> Release | None:
    """Point the fleet at one of its releases (None: no target)."""
    current = repo.target(session, access.fleet_id)
    if release_id is None:
        if current is not None:
            session.delete(current)
        _audit(session, access, "release.target", {"release": "none"}, now)
        session.commit()
        return None
    release = show(session, access.fleet_id, release_id)
    put_target(session, access.fleet_id, release, access.principal.actor, now)
    _audit(
        session,
        access,
        "release.target",
        {"release": release.id, "version": release.version},
        now,
    )
    session.commit()
    return release


def put_target(
    session: Session, fleet_id: str, release: Release, actor: str, now: dt.datetime
) -> None:
    """Set the fleet target in the caller's transaction (rollouts call it on completion)."""
    current = repo.target(session, fleet_id)
    if current is None:
        session.add(FleetTarget(fleet_id=fleet_id, release_id=release.id, set_by=actor, set_at=now))
    else:
        current.release_id = release.id
        current.set_by = actor
        current.set_at = now

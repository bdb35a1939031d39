"""Device request signatures on the server, and the agent's heartbeat (ADR 0032).

:func:`authenticate_signature` is the signature authenticator the agent feature
registers (:meth:`~bastion.server.auth.principal.AuthRegistry.set_signature`): it reads
the unverified ``keyid`` (the device id), loads that device's enrolled certificate,
verifies the RFC 9421 signature with :func:`bastion.trust.httpsig.verify_request`
against the certificate's public key and the server clock, then stores the nonce in
``device_request_nonces`` (one row per device and nonce, primary key: a second use is a
replay, whichever server process sees it) and refreshes ``last_seen_at``. Every refusal
is an :class:`~bastion.errors.AuthError` (401) naming what was expected; a signature
outside the time window is an :class:`~bastion.errors.ExpiredError` (401 too).

The body is not seen here: :class:`ContentDigestMiddleware` refuses any request whose
``Content-Digest`` does not match the bytes received, before a route runs, and the
signature must cover that header.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from bastion import limits
from bastion.errors import AuthError, BastionError, ExpiredError, FormatError, RevokedError
from bastion.server.agent.models import DevicePresence, DeviceRequestNonce
from bastion.server.auth.principal import Principal, PrincipalKind, SignedMessage, Via
from bastion.server.devices import repository as devices_repo
from bastion.server.devices import service as devices
from bastion.server.devices.models import DeviceStatus
from bastion.server.errors import error_body
from bastion.server.json_body import read_body, replay
from bastion.server.limits import _respond
from bastion.trust import httpsig

#: how long a nonce is kept: a signature this old is refused by its time anyway
NONCE_KEEP = dt.timedelta(seconds=2 * limits.DEVICE_SIGNATURE_MAX_SKEW_SECONDS)


@dataclass(frozen=True, slots=True)
class KnownDevice:
    """What verifying a device's signature needs of its row: an active device's id,
    fleet, organisation and enrolled public key (the hot path keeps it per process,
    ADR 0048)."""

    id: str
    fleet_id: str
    org_id: str
    #: the enrolled P-256 public key as its 65-byte uncompressed point: a key object
    #: takes about 2.2 KB of memory, this 65 bytes, and decoding it costs about 8 us
    #: per request (a process keeps every device's, ADR 0048 amendment)
    point: bytes
    #: the versions the device row holds (a heartbeat that reports the same ones leaves
    #: the row alone)
    agent_version: str | None = None
    os_version: str | None = None

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The enrolled public key (decoded from :attr:`point` on each call)."""
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.point)

    def changes_versions(self, report: dict[str, Any]) -> bool:
        """Whether a heartbeat ``report`` would change the row's versions (the full
        path's rule: a non-empty reported version replaces the stored one)."""
        agent, os_version = report.get("agent_version"), report.get("os_version")
        return bool(
            (agent and agent != self.agent_version)
            or (os_version and os_version != self.os_version)
        )


def signer_id(signed: SignedMessage) -> str:
    """The device id the request's signature names (unverified; AuthError if none)."""
    try:
        return httpsig.signed_key_id(signed.headers)
    except BastionError as exc:
        raise AuthError(f"request signature: {exc}") from exc


def known_device(session: Session, device_id: str) -> KnownDevice:
    """The enrolled, active device ``device_id`` and its key; AuthError (not enrolled,
    no signing key) or RevokedError. One Core query (the hot path loads it cold)."""
    row = devices_repo.signing_row(session, device_id)
    if row is None:
        raise AuthError(f"request signature names device {device_id!r}, which is not enrolled")
    return _known(row)


def _known(row: Any) -> KnownDevice:
    found, status, certificate, fleet_id, org_id, agent_version, os_version = row
    if status != DeviceStatus.ACTIVE:
        raise RevokedError(f"device {found} is revoked")
    if not certificate:
        raise AuthError(f"device {found} has no certificate to verify its requests with")
    try:
        public = x509.load_pem_x509_certificate(certificate.encode()).public_key()
    except ValueError as exc:
        raise AuthError(f"device {found}'s enrolled certificate cannot be read: {exc}") from exc
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise AuthError(f"device {found} was enrolled with a key that cannot sign requests")
    point = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return KnownDevice(found, fleet_id, org_id, point, agent_version, os_version)


def known_devices(session: Session, after: str, limit: int) -> tuple[list[KnownDevice], str | None]:
    """A page of the fleet's :class:`KnownDevice` (active devices with a P-256 key, ids
    after ``after``), and the id to continue after (None: this was the last page). A
    device whose key cannot sign is left out, as :func:`known_device` refuses it."""
    rows = devices_repo.signing_rows(session, after, limit)
    known: list[KnownDevice] = []
    for row in rows:
        try:
            known.append(_known(row))
        except BastionError:
            continue
    return known, (str(rows[-1][0]) if len(rows) == limit else None)


def verify_known(
    known: KnownDevice, signed: SignedMessage, now: dt.datetime
) -> tuple[Principal, str]:
    """The device principal of a request ``known`` signed, and the signature's nonce
    (not yet stored: :func:`remember_nonce`, or the hot path's :class:`~.writer.SignedWriter`);
    AuthError, or ExpiredError outside the time window."""
    try:
        found = httpsig.verify_request(
            signed.method, signed.target, signed.headers, known.public_key, known.id, now
        )
    except ExpiredError:
        raise
    except BastionError as exc:
        raise AuthError(f"request signature of device {known.id} refused: {exc}") from exc
    principal = Principal(
        kind=PrincipalKind.DEVICE,
        id=known.id,
        via=Via.SIGNATURE,
        org_id=known.org_id,
        fleet_id=known.fleet_id,
    )
    return principal, found.nonce


def authenticate_signature(
    session: Session, signed: SignedMessage, now: dt.datetime
) -> tuple[Principal, str]:
    """The device that signed this request and the signature's nonce (module docstring).

    The caller stores the nonce with :func:`remember_nonce` in a write session."""
    return verify_known(known_device(session, signer_id(signed)), signed, now)


def replayed(device_id: str, nonce: str) -> AuthError:
    """The refusal of a nonce the device has used before."""
    return AuthError(
        f"request signature nonce {nonce[:16]!r} of device {device_id} was already used "
        "(a replayed request)"
    )


def remember_nonce(write: Session, principal: Principal, nonce: str, now: dt.datetime) -> None:
    """Store a verified nonce and refresh last_seen (commits); AuthError if it was used.
    First every device's expired nonces go: the key leads with the nonce (ADR 0050), so
    the ``expires_at`` index finds them, and a device that fell silent leaves none behind
    for later requests to step over."""
    device_id = principal.id
    write.execute(delete(DeviceRequestNonce).where(DeviceRequestNonce.expires_at < now))
    write.add(DeviceRequestNonce(device_id=device_id, nonce=nonce, expires_at=now + NONCE_KEEP))
    try:
        write.flush()
    except IntegrityError as exc:
        write.rollback()
        raise replayed(device_id, nonce) from exc
    devices.touch(write, principal, now)  # commits when it refreshes last_seen
    write.commit()


# --- heartbeat ---------------------------------------------------------------------------


def presence(session: Session, device_id: str) -> DevicePresence:
    """The device's presence row (created on first use; not committed here)."""
    row = session.get(DevicePresence, device_id)
    if row is None:
        row = DevicePresence(device_id=device_id, connected=False)
        session.add(row)
    return row


def heartbeat(
    session: Session, principal: Principal, report: dict[str, Any], now: dt.datetime
) -> DevicePresence:
    """Record what the agent says about itself; also the device's own version fields."""
    device = devices.own(session, principal)
    row = presence(session, device.id)
    row.heartbeat_at = now
    for name in ("agent_version", "os_version", "slot", "uptime_seconds", "log_backlog"):
        if name in report:
            setattr(row, name, report[name])
    if report.get("agent_version"):
        device.agent_version = report["agent_version"]
    if report.get("os_version"):
        device.os_version = report["os_version"]
    # presence by the rule of every device request (once a minute, ADR 0045); the
    # heartbeat's own time is heartbeat_at (the hot path writes the same, ADR 0048)
    if device.last_seen_at is None or now - device.last_seen_at >= devices.LAST_SEEN_RESOLUTION:
        device.last_seen_at = now
    session.commit()
    return row


def pending_count(session: Session, device_id: str, now: dt.datetime) -> int:
    """Commands waiting for this device (queued or sent, not expired)."""
    from bastion.server.channel.models import CommandStatus, DeviceCommand

    count = session.execute(
        select(func.count())
        .select_from(DeviceCommand)
        .where(
            DeviceCommand.device_id == device_id,
            DeviceCommand.status.in_(CommandStatus.OPEN),
            DeviceCommand.expires_at > now,
        )
    ).scalar_one()
    return int(count)


# --- Content-Digest ----------------------------------------------------------------------


class ContentDigestMiddleware:
    """Refuse (400) an HTTP request whose ``Content-Digest`` does not match its body."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        digest = None
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-digest":
                    digest = bytes(value).decode("latin-1")
        if digest is None:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, send, self.max_body)
        if body is None:
            return
        try:
            httpsig.check_content_digest(digest, body)
        except (FormatError, BastionError) as exc:
            await _respond(send, 400, error_body("bad_request", str(exc)))
            return
        await self.app(scope, replay(body, receive), send)

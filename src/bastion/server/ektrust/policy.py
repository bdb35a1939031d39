"""Fleet EK policies, pure: which proof of TPM hardware enrolment asks for.

* ``certified`` (the default): the device presents its EK certificate and it verifies
  against the fleet's EK CA trust store (:mod:`bastion.trust.ekcert`);
* ``allow-list``: the EK's SHA-256 must be named by the provisioning key (an EK hash
  entry, or a serial + EK pair), for TPMs whose maker ships no EK certificate;
* ``any``: no hardware proof at all. Development only (the software TPM enrols only
  here); every listing of such a fleet carries :data:`DEVELOPMENT_WARNING`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence

from cryptography import x509

from bastion.errors import ExpiredError, PolicyError
from bastion.server.provisioning.policy import KeyState, ek_hash, ek_listed
from bastion.trust.ekcert import verify_ek_certificate


class EkPolicy(enum.StrEnum):
    """How a fleet's enrolment proves that the EK is in real TPM hardware."""

    CERTIFIED = "certified"
    ALLOW_LIST = "allow-list"
    ANY = "any"


DEFAULT_EK_POLICY = EkPolicy.CERTIFIED
DEVELOPMENT_WARNING = (
    "DEVELOPMENT FLEET: ek policy 'any' enrols devices without proof of TPM hardware "
    "(software TPMs included); never use it for production devices"
)


def warning_for(policy: str) -> str | None:
    """The loud line every listing shows for a development fleet, else None."""
    return DEVELOPMENT_WARNING if policy == EkPolicy.ANY else None


def check_ek_policy(
    policy: str,
    *,
    key: KeyState,
    serial: str,
    ek_public: bytes,
    ek_certificate: bytes | None,
    anchors: Sequence[x509.Certificate],
    now: dt.datetime,
) -> EkPolicy:
    """Raise unless the EK satisfies the fleet's ``policy``; return the policy met.

    An expired or not-yet-valid EK certificate is a refused proof (PolicyError, 403),
    not a failed login: :class:`ExpiredError` is re-raised as such.
    """
    try:
        kind = EkPolicy(policy)
    except ValueError as exc:  # a value the code does not know: fail closed
        raise PolicyError(f"fleet EK policy {policy!r} is unknown") from exc
    if kind is EkPolicy.CERTIFIED:
        if not ek_certificate:
            raise PolicyError(
                "this fleet requires a certified EK (policy 'certified') and the device sent no "
                "EK certificate; a software TPM has none and enrols only into a development "
                "fleet (policy 'any')"
            )
        if not anchors:
            raise PolicyError(
                "this fleet trusts no EK CA yet: add the TPM maker's CA certificate "
                "(bastion fleet ek-ca add)"
            )
        try:
            verify_ek_certificate(ek_certificate, ek_public, anchors, now=now)
        except ExpiredError as exc:
            raise PolicyError(f"EK certificate refused: {exc}") from exc
        return kind
    if kind is EkPolicy.ALLOW_LIST:
        if not ek_listed(key, serial, ek_hash(ek_public)):
            raise PolicyError(
                "this fleet's policy 'allow-list' admits only EKs named on the provisioning key "
                "(allow_ek_hashes or allow_devices); this EK is not"
            )
        return kind
    return kind


_STRENGTH = {EkPolicy.ANY: 0, EkPolicy.ALLOW_LIST: 1, EkPolicy.CERTIFIED: 2}


def check_still_meets(met: str | None, policy: str) -> None:
    """At finish: PolicyError when the fleet's policy became stricter than the one the
    evidence met at begin (an unknown or missing value counts as ``any``)."""
    try:
        have = _STRENGTH[EkPolicy(met or EkPolicy.ANY.value)]
    except ValueError:
        have = 0
    try:
        need = _STRENGTH[EkPolicy(policy)]
    except ValueError as exc:
        raise PolicyError(f"fleet EK policy {policy!r} is unknown") from exc
    if have < need:
        raise PolicyError(
            f"the fleet's EK policy became {policy!r} after this enrolment began "
            f"(its evidence met {met or 'any'!r}); start again"
        )

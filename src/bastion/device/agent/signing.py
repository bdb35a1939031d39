"""Sign the agent's requests with the device's TPM-held identity key (ADR 0032).

:class:`TpmRequestSigner` is an :class:`~bastion.io.http.RequestSigner`: for each
request it asks the TPM to sign the RFC 9421 signature base built by
:func:`bastion.trust.httpsig.sign_request` with the enrolled identity key (loaded from
its blobs into *this* TPM: a copy of the state folder on another machine cannot load
them, so it cannot sign), a fresh nonce (the time, then 128 random bits:
:func:`~bastion.trust.httpsig.request_nonce`) and the device clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from bastion.device.provision import DeviceIdentity
from bastion.errors import FormatError
from bastion.formats.tpm2 import Alg, Signature
from bastion.io.clock import Clock
from bastion.tpm.base import Tpm
from bastion.trust import httpsig

P256_SIZE = 32


def raw_ecdsa(tpmt_signature: bytes) -> bytes:
    """A TPMT_SIGNATURE (ECDSA P-256) as RFC 9421 wants it: r || s, 32 bytes each."""
    sig = Signature.parse(tpmt_signature)
    if sig.sig_alg != Alg.ECDSA:
        raise FormatError(f"the identity key signed with scheme 0x{sig.sig_alg:04x}, not ECDSA")
    r = sig.r.lstrip(b"\0").rjust(P256_SIZE, b"\0")
    s = sig.s.lstrip(b"\0").rjust(P256_SIZE, b"\0")
    if len(r) != P256_SIZE or len(s) != P256_SIZE:
        raise FormatError("the identity key's signature is not a P-256 signature")
    return r + s


class TpmRequestSigner:
    """Signs requests as ``identity.device_id`` with its key in ``tpm``."""

    def __init__(self, tpm: Tpm, identity: DeviceIdentity, clock: Clock) -> None:
        self.tpm = tpm
        self.identity = identity
        self.clock = clock

    def sign_base(self, base: bytes) -> bytes:
        """The TPM's signature over the SHA-256 of ``base``, as r || s."""
        return raw_ecdsa(self.tpm.sign(self.identity.key, hashlib.sha256(base).digest()))

    def __call__(self, method: str, target: str, body: bytes) -> Mapping[str, str]:
        now = self.clock.now().timestamp()
        return httpsig.sign_request(
            method,
            target,
            body,
            key_id=self.identity.device_id,
            created=int(now),
            nonce=httpsig.request_nonce(now),
            sign=self.sign_base,
        )

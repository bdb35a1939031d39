"""Request and response bodies of /enroll (pydantic, at the HTTP edge only)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits

_B64_TPM = Field(min_length=4, max_length=limits.ENROLL_MAX_TPM_PUBLIC_B64)
_B64_ATT = Field(min_length=4, max_length=limits.ENROLL_MAX_ATTEST_B64)


class EnrollBeginIn(BaseModel):
    """Device evidence: TPM2B_PUBLICs, TPMS_ATTEST and TPMT_SIGNATURE in base64, CSR PEM."""

    model_config = ConfigDict(extra="forbid")

    serial: str = Field(min_length=1, max_length=limits.ENROLL_MAX_SERIAL_LENGTH)
    #: the fleet the device means to join; refused unless it is the provisioning key's
    fleet_id: str | None = Field(default=None, min_length=1, max_length=64)
    ek_public: str = _B64_TPM
    ak_public: str = _B64_TPM
    key_public: str = _B64_TPM
    csr: str = Field(min_length=10, max_length=limits.ENROLL_MAX_CSR_SIZE)
    certify_attest: str = _B64_ATT
    certify_signature: str = _B64_ATT
    #: the EK certificate from the TPM's NV (base64 DER); none for a software TPM
    ek_certificate: str | None = Field(
        default=None, min_length=4, max_length=limits.ENROLL_MAX_EK_CERT_B64
    )


class EnrollBeginOut(BaseModel):
    """The credential challenge: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET in base64."""

    challenge_id: str
    credential_blob: str
    encrypted_secret: str
    expires_at: dt.datetime


class EnrollFinishIn(BaseModel):
    """The challenge id and the HMAC proof (base64)."""

    model_config = ConfigDict(extra="forbid")

    challenge_id: str = Field(min_length=1, max_length=40)
    proof: str = Field(min_length=4, max_length=64)


class EnrollFinishOut(BaseModel):
    """The device's identity: certificate, CA certificate, API key sealed to its TPM."""

    device_id: str
    fleet_id: str
    certificate: str
    ca_certificate: str
    sealed_api_key: str

"""PCR 11 of a UKI booted by systemd-stub 252, and the signed policy (``.pcrsig``) for it.

systemd-stub measures the UKI's sections into PCR 11 in its own fixed order (252:
``.linux .osrel .cmdline .initrd .splash .dtb .pcrpkey``; ``.pcrsig`` is never measured),
skipping sections that are absent or empty. Each section is two extends: the digest of
its name with one trailing NUL, then the digest of its content. systemd-pcrphase later
extends the digest of each boot-phase word (``enter-initrd``, ``leave-initrd``,
``sysinit``, ``ready``; no NUL). :func:`predict_pcr11` computes the value for one phase
path (``"enter-initrd:leave-initrd"``; ``""`` for the value right after the stub).

The ``.pcrsig`` JSON that ``systemd-measure sign`` writes (and systemd-cryptsetup reads
to satisfy a ``--tpm2-public-key`` PolicyAuthorize) is::

    {"sha256":[{"pcrs":[11],"pkfp":HEX,"pol":HEX,"sig":BASE64}, ... one per phase path]}

``pol`` is the TPM2_PolicyPCR digest (SHA-256 session) over PCR 11 of the bank holding
the predicted value; ``sig`` is RSASSA-PKCS1-v1_5/SHA-256 over ``pol`` (what
TPM2_VerifySignature checks for PolicyAuthorize with an empty policyRef); ``pkfp`` is
the SHA-256 of the public key as a PKCS#1 ``RSAPublicKey`` DER. Only the sha256 bank
and RSA keys are supported, like systemd's TPM-side verification.

:func:`verify_pcrsig` checks a UKI's ``.pcrsig`` against a trusted RSA public key: every
entry must be for PCR 11, carry the key's fingerprint and a valid signature, and sign the
policy of the PCR 11 value predicted from the UKI's own sections for one of the phase
paths; it returns the phase paths covered.

Pure: section bytes in, digests and JSON bytes out; the key is reached only through a
:class:`~bastion.trust.signer.Signer`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    LimitError,
    SignatureError,
)
from bastion.formats import eventlog as el
from bastion.limits import PCRSIG_MAX_ENTRIES, PCRSIG_MAX_SIZE
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.tpm.pcr import extend, policy_pcr, reset_value
from bastion.trust.signer import SignatureScheme, Signer, Verifier

PCR_KERNEL_IMAGE = 11
#: the sections systemd-stub 252 measures, in its order (UAPI UKI spec, stub 252 enum)
STUB_252_MEASURED = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
#: the phase paths ``systemd-measure sign`` signs by default
DEFAULT_PHASES = (
    "enter-initrd",
    "enter-initrd:leave-initrd",
    "enter-initrd:leave-initrd:sysinit",
    "enter-initrd:leave-initrd:sysinit:ready",
)


def _h(bank: HashAlg, data: bytes) -> bytes:
    return hashlib.new(bank.value, data).digest()


def measurements(sections: Mapping[str, bytes], bank: HashAlg = HashAlg.SHA256) -> list[bytes]:
    """The digests systemd-stub 252 extends into PCR 11 for ``sections``, in order."""
    out = []
    for name in STUB_252_MEASURED:
        content = sections.get(name)
        if content:
            out.append(_h(bank, name.encode("ascii") + b"\0"))
            out.append(_h(bank, content))
    return out


def stub_events(sections: Mapping[str, bytes]) -> list[el.Event]:
    """What systemd-stub 252 measures into PCR 11 for a UKI's ``sections``, as events: per
    measured section (its own order, empty ones skipped) ``EV_IPL`` of the name with its
    NUL, then of the content. The sim's stub extends exactly these (device/boot/stub.py),
    ``image golden`` names its components from them (build/golden.py), and they replay to
    :func:`predict_pcr11` before any phase."""
    out = []
    for name in STUB_252_MEASURED:
        content = sections.get(name)
        if content:
            text = name.encode("ascii") + b"\0"
            out.append(el.measure(PCR_KERNEL_IMAGE, el.EventType.EV_IPL, text))
            out.append(el.measure(PCR_KERNEL_IMAGE, el.EventType.EV_IPL, text, content))
    return out


def phase_words(phase: str) -> list[str]:
    """The words of a phase path (``a:b``), empty words skipped."""
    return [word for word in phase.split(":") if word]


def predict_pcr11(
    sections: Mapping[str, bytes], phase: str = "", bank: HashAlg = HashAlg.SHA256
) -> bytes:
    """PCR 11 after the stub measured ``sections`` and systemd-pcrphase the ``phase`` path."""
    value = reset_value(PCR_KERNEL_IMAGE, bank)
    for digest in measurements(sections, bank):
        value = extend(value, digest, bank)
    for word in phase_words(phase):
        value = extend(value, _h(bank, word.encode("utf-8")), bank)
    return value


def pcr11_policy(value: bytes, bank: HashAlg = HashAlg.SHA256) -> bytes:
    """The PolicyPCR digest (SHA-256 session) binding PCR 11 of ``bank`` to ``value``."""
    return policy_pcr(PcrSelection(bank, (PCR_KERNEL_IMAGE,)), {PCR_KERNEL_IMAGE: value})


def public_key_fingerprint(key: rsa.RSAPublicKey) -> str:
    """``pkfp``: hex SHA-256 of the PKCS#1 RSAPublicKey DER."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True)
class PcrSignature:
    """One ``.pcrsig`` entry: the policy for one phase path and its signature."""

    phase: str
    pcr_value: bytes
    policy: bytes
    fingerprint: str
    signature: bytes

    def to_json(self) -> dict[str, object]:
        """The entry as systemd-measure writes it (the phase itself is not recorded)."""
        return {
            "pcrs": [PCR_KERNEL_IMAGE],
            "pkfp": self.fingerprint,
            "pol": self.policy.hex(),
            "sig": base64.b64encode(self.signature).decode("ascii"),
        }


def sign_pcr11(
    sections: Mapping[str, bytes],
    signer: Signer,
    phases: Sequence[str] = DEFAULT_PHASES,
) -> list[PcrSignature]:
    """Predict PCR 11 (sha256 bank) for each phase path and sign its PolicyPCR digest."""
    key = signer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError("a .pcrsig signing key must be RSA (the TPM verifies PKCS#1 v1.5)")
    if signer.scheme is not SignatureScheme.RSA_PKCS1V15_SHA256:
        raise ConfigError(f"a .pcrsig needs scheme rsa-pkcs1v15-sha256, not {signer.scheme}")
    if not phases:
        raise ConfigError("sign at least one phase path")
    fingerprint = public_key_fingerprint(key)
    out = []
    for phase in phases:
        value = predict_pcr11(sections, phase)
        policy = pcr11_policy(value)
        out.append(PcrSignature(phase, value, policy, fingerprint, signer.sign(policy)))
    return out


def pcrsig_json(signatures: Sequence[PcrSignature]) -> bytes:
    """The ``.pcrsig`` section / ``tpm2-pcr-signature.json``: compact JSON and a newline."""
    doc = {HashAlg.SHA256.value: [s.to_json() for s in signatures]}
    return json.dumps(doc, separators=(",", ":")).encode("ascii") + b"\n"


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f".pcrsig: duplicate JSON key {key!r}")
        out[key] = value
    return out


def parse_pcrsig(data: bytes) -> list[dict[str, object]]:
    """The sha256 entries of a ``.pcrsig`` JSON (strict: size, duplicates, shape)."""
    if len(data) > PCRSIG_MAX_SIZE:
        raise LimitError(f".pcrsig is {len(data)} bytes, limit {PCRSIG_MAX_SIZE}")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f".pcrsig is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {HashAlg.SHA256.value}:
        raise FormatError('.pcrsig must be an object with exactly one bank, "sha256"')
    entries = doc[HashAlg.SHA256.value]
    if not isinstance(entries, list) or not entries:
        raise FormatError(".pcrsig sha256 must be a non-empty list")
    if len(entries) > PCRSIG_MAX_ENTRIES:
        raise LimitError(f".pcrsig has {len(entries)} entries, limit {PCRSIG_MAX_ENTRIES}")
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"pcrs", "pkfp", "pol", "sig"}:
            raise FormatError(".pcrsig entries must have exactly pcrs, pkfp, pol and sig")
        if not all(isinstance(entry[k], str) for k in ("pkfp", "pol", "sig")):
            raise FormatError(".pcrsig pkfp, pol and sig must be strings")
    return entries


def verify_pcrsig(
    sections: Mapping[str, bytes],
    public_key: rsa.RSAPublicKey,
    phases: Sequence[str] = DEFAULT_PHASES,
) -> list[str]:
    """Check the UKI's ``.pcrsig`` with the trusted ``public_key``; return the phase paths
    (of ``phases``) it signs. Raises SignatureError / DigestMismatchError / FormatError."""
    data = sections.get(".pcrsig")
    if not data:
        raise SignatureError("the UKI has no .pcrsig")
    fingerprint = public_key_fingerprint(public_key)
    verifier = Verifier.of(public_key, SignatureScheme.RSA_PKCS1V15_SHA256)
    expected = {pcr11_policy(predict_pcr11(sections, p)).hex(): p for p in phases}
    covered = []
    for index, entry in enumerate(parse_pcrsig(data)):
        if entry["pcrs"] != [PCR_KERNEL_IMAGE]:
            raise FormatError(f".pcrsig entry {index} is for PCRs {entry['pcrs']}, not [11]")
        if entry["pkfp"] != fingerprint:
            raise SignatureError(
                f".pcrsig entry {index} is by key {entry['pkfp']}, expected {fingerprint}"
            )
        try:
            policy = bytes.fromhex(str(entry["pol"]))
            signature = base64.b64decode(str(entry["sig"]), validate=True)
        except ValueError as exc:
            raise FormatError(f".pcrsig entry {index}: bad hex or base64: {exc}") from exc
        verifier.verify(policy, signature)
        phase = expected.get(policy.hex())
        if phase is None:
            raise DigestMismatchError(
                f".pcrsig entry {index} signs policy {policy.hex()}, which is not PCR 11 of "
                f"this UKI's sections for any of the phases {list(phases)}",
                area="pcrsig",
            )
        covered.append(phase)
    return covered

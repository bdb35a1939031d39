"""Golden values: what a device running one signed image must measure, and their statement.

:class:`GoldenValues` are PCRs (sha256 bank) and per-component digests of one image
release (``bastion image golden``, build/golden.py). They are used only from a
statement signed by a product key (:func:`sign_golden`, :func:`open_golden`: a DSSE
envelope of type ``application/vnd.bastion.golden-values+json``).
:func:`components_of` names the measured components in an event log the same way for
the build (over the boot chain's own event lists) and the verifier (over a device's
log). Pure: bytes and keys in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bastion import limits
from bastion.errors import ConfigError, FormatError, LimitError, VerificationError
from bastion.formats import eventlog as el
from bastion.formats import strict_json
from bastion.trust.envelope import Envelope, parse_envelope, sign_envelope, verify_envelope
from bastion.trust.pcr11 import STUB_252_MEASURED
from bastion.trust.signer import Verifier

GOLDEN_PAYLOAD_TYPE = "application/vnd.bastion.golden-values+json"
GOLDEN_TYPE = "golden-values"
_HEX256 = 64

#: UKI sections systemd-stub measures into PCR 11 and their component names (any other
#: section is ``section-NAME``)
_SECTIONS: dict[bytes, str] = {
    b".linux\0": "kernel",
    b".osrel\0": "os-release",
    b".cmdline\0": "cmdline",
    b".initrd\0": "initrd",
}
_UNIT_PCR = 11


def component_pcr(name: str) -> int:
    """The PCR a component is measured into: every component is a UKI section that
    systemd-stub measures into PCR 11."""
    return _UNIT_PCR


@dataclass(frozen=True, slots=True)
class GoldenValues:
    """What a device running one signed image must measure (sha256 bank)."""

    version: str
    image_sha256: str
    security_version: int
    pcrs: Mapping[int, bytes]
    components: Mapping[str, bytes]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": GOLDEN_TYPE,
            "image": {
                "version": self.version,
                "sha256": self.image_sha256,
                "security_version": self.security_version,
            },
            "bank": "sha256",
            "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
            "components": {k: v.hex() for k, v in sorted(self.components.items())},
        }

    def statement(self) -> bytes:
        """The canonical JSON payload a product key signs."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _hex_map(value: Any, what: str, key_ok: Any) -> dict[str, bytes]:
    if not isinstance(value, dict) or len(value) > limits.ATTEST_GOLDEN_MAX_ENTRIES:
        raise FormatError(f"golden values: {what} must be an object of at most the limit")
    out = {}
    for k, v in value.items():
        if not key_ok(k):
            raise FormatError(f"golden values: bad {what} name {k!r}")
        if not isinstance(v, str) or len(v) != _HEX256:
            raise FormatError(f"golden values: {what} {k} is not a sha256 hex digest")
        try:
            out[k] = bytes.fromhex(v)
        except ValueError:
            raise FormatError(f"golden values: {what} {k} is not hex") from None
    return out


def golden_from_json(doc: Any) -> GoldenValues:
    """Golden values from the (already verified) statement JSON; FormatError if bad."""
    if not isinstance(doc, dict) or doc.get("type") != GOLDEN_TYPE or doc.get("bank") != "sha256":
        raise FormatError("golden values: not a sha256 golden-values statement")
    image = doc.get("image")
    if not isinstance(image, dict):
        raise FormatError("golden values: no image object")
    version, sha, svn = image.get("version"), image.get("sha256"), image.get("security_version")
    if not isinstance(version, str) or not 0 < len(version) <= 128:
        raise FormatError("golden values: image version must be 1..128 characters")
    if not isinstance(sha, str) or len(sha) != _HEX256:
        raise FormatError("golden values: image sha256 is not a hex digest")
    if not isinstance(svn, int) or isinstance(svn, bool) or not 0 <= svn < 2**32:
        raise FormatError("golden values: security_version must be an integer 0..2^32-1")
    pcrs = _hex_map(
        doc.get("pcrs"), "PCR", lambda k: isinstance(k, str) and k.isdigit() and int(k) < 24
    )
    comps = _hex_map(
        doc.get("components"),
        "component",
        lambda k: isinstance(k, str) and 0 < len(k) <= 64 and k.replace("-", "").isalnum(),
    )
    return GoldenValues(version, sha, svn, {int(k): v for k, v in pcrs.items()}, comps)


def sign_golden(golden: GoldenValues, signer: Any) -> bytes:
    """A signed golden-values statement (one-signature envelope, serialised)."""
    return sign_envelope(GOLDEN_PAYLOAD_TYPE, golden.statement(), [signer]).to_bytes()


def open_golden(statement: bytes, product_keys: Iterable[Verifier]) -> GoldenValues:
    """Verify a golden-values statement with the product key(s); SignatureError if no
    trusted key signed it, FormatError if it is not a statement."""
    if len(statement) > limits.ATTEST_GOLDEN_MAX_SIZE:
        raise LimitError(
            f"golden statement is {len(statement)} bytes, limit is {limits.ATTEST_GOLDEN_MAX_SIZE}"
        )
    envelope: Envelope = parse_envelope(statement)
    keys = list(product_keys)
    if not keys:
        raise ConfigError("no product key is trusted: golden values cannot be verified")
    payload = verify_envelope(envelope, keys, payload_type=GOLDEN_PAYLOAD_TYPE)
    return golden_from_json(strict_json.loads(payload, what="golden values"))


def open_release_golden(
    statement: bytes, product_keys: Iterable[Verifier], *, version: str, svn: int | None
) -> GoldenValues:
    """:func:`open_golden` for the statement a release carries: it must also be about
    that release (same version and, when the release states one, the same SVN);
    VerificationError otherwise (ADR 0037)."""
    golden = open_golden(statement, product_keys)
    if golden.version != version:
        raise VerificationError(
            f"golden statement is for version {golden.version!r}, the release is {version!r}"
        )
    if svn is not None and golden.security_version != svn:
        raise VerificationError(
            f"golden statement has security version {golden.security_version}, "
            f"the release has svn {svn}"
        )
    return golden


def peek_golden(statement: bytes) -> GoldenValues:
    """The values of a statement WITHOUT checking its signature: for a builder's
    consistency checks and displays only, never for a trust decision."""
    if len(statement) > limits.ATTEST_GOLDEN_MAX_SIZE:
        raise LimitError(
            f"golden statement is {len(statement)} bytes, limit is {limits.ATTEST_GOLDEN_MAX_SIZE}"
        )
    envelope = parse_envelope(statement)
    if envelope.payload_type != GOLDEN_PAYLOAD_TYPE:
        raise FormatError(f"envelope payload type {envelope.payload_type!r} is not golden values")
    return golden_from_json(strict_json.loads(envelope.payload, what="golden values"))


def _stub_description(data: bytes) -> bytes:
    """A PCR 11 event's description as ASCII with its NUL: systemd-stub logs the section
    name in UTF-16LE (``.\\0l\\0...\\0\\0``), the sim's stub in ASCII."""
    if len(data) >= 4 and len(data) % 2 == 0 and data.endswith(b"\0\0") and not any(data[1::2]):
        return data[0::2]
    return data


def stub_components(sections: Mapping[str, bytes]) -> dict[str, bytes]:
    """The components a systemd-stub 252 boot of a UKI with ``sections`` measures into
    PCR 11, named as :func:`components_of` names them in its event log (offline)."""
    out = {}
    for name in STUB_252_MEASURED:
        content = sections.get(name)
        if content:
            tag = name.encode("ascii") + b"\0"
            out[_section_label(tag)] = hashlib.sha256(content).digest()
    return out


def _section_label(tag: bytes) -> str:
    label = _SECTIONS.get(tag, "section" + tag[:-1].decode("ascii", "replace"))
    return label.replace(".", "-").strip("-") or "section"


def components_of(
    events: Iterable[el.Event], pcrs: Iterable[int] | None = None
) -> tuple[dict[str, bytes], list[str]]:
    """The measured components an event log records (name -> sha256 digest of what was
    measured), and the names seen more than once (the first value is kept). With
    ``pcrs``, only events extended into those PCRs count (the ones a quote covers)."""
    only = set(pcrs) if pcrs is not None else None
    found: dict[str, bytes] = {}
    dupes: list[str] = []
    tags: set[bytes] = set()

    def put(name: str, digest: bytes) -> None:
        if name in found:
            dupes.append(name)
        else:
            found[name] = digest

    for ev in events:
        if ev.event_type != el.EventType.EV_IPL or (only is not None and ev.pcr not in only):
            continue
        try:
            digest = ev.digest(el.ALG_SHA256)
        except FormatError:
            continue
        tag = _stub_description(ev.data) if ev.pcr == _UNIT_PCR else ev.data
        if ev.pcr == _UNIT_PCR and tag.endswith(b"\0") and tag.startswith(b"."):
            # systemd-stub style: first the section name, then the section content
            if tag not in tags:
                tags.add(tag)
                continue
            put(_section_label(tag), digest)
    return found, dupes


def golden_digest(statement: bytes) -> str:
    """An identifier of a golden statement (SHA-256 of its bytes)."""
    return hashlib.sha256(statement).hexdigest()

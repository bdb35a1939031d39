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
from bastion.errors import ConfigError, FormatError, LimitError
from bastion.formats import eventlog as el
from bastion.formats import strict_json
from bastion.trust.envelope import Envelope, parse_envelope, sign_envelope, verify_envelope
from bastion.trust.signer import Verifier

GOLDEN_PAYLOAD_TYPE = "application/vnd.bastion.golden-values+json"
GOLDEN_TYPE = "golden-values"
_HEX256 = 64

#: what each measured event of the boot chain (device/measure.py) is called in a verdict
_TAGGED: dict[tuple[int, bytes], str] = {
    (4, b"bastion:bootloader\0"): "bootloader",
    (7, b"bastion:platform-key\0"): "secure-boot-authority",
    (15, b"bastion:verity-root\0"): "verity-root",
}
#: boot-unit sections (PCR 11, systemd-stub style) and their component names
_SECTIONS: dict[bytes, str] = {
    b".linux\0": "kernel",
    b".osrel\0": "os-release",
    b".cmdline\0": "cmdline",
    b".initrd\0": "initrd",
    b".svn\0": "svn",
    b".modcert\0": "module-cert",
    b".veritycert\0": "verity-cert",
    b".modules\0": "modules",
    b".profile\0": "profile",
}
_UNIT_PCR = 11


def component_pcr(name: str) -> int:
    """The PCR a component is measured into (boot-unit sections: PCR 11)."""
    for (pcr, _), label in _TAGGED.items():
        if label == name:
            return pcr
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
            f"golden statement is {len(statement)} bytes, limit is {limits.ATTEST_POSTURE_MAX_KEYS}"
        )
    envelope: Envelope = parse_envelope(statement)
    keys = list(product_keys)
    if not keys:
        raise ConfigError("no product key is trusted: golden values cannot be verified")
    payload = verify_envelope(envelope, keys, payload_type=GOLDEN_PAYLOAD_TYPE)
    return golden_from_json(strict_json.loads(payload, what="golden values"))


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
        name = _TAGGED.get((ev.pcr, ev.data))
        if name is not None:
            put(name, digest)
        elif ev.pcr == _UNIT_PCR and ev.data.endswith(b"\0") and ev.data.startswith(b"."):
            # systemd-stub style: first the section name, then the section content
            if ev.data not in tags:
                tags.add(ev.data)
                continue
            label = _SECTIONS.get(ev.data, "section" + ev.data[:-1].decode("ascii", "replace"))
            put(label.replace(".", "-").strip("-") or "section", digest)
    return found, dupes


def golden_digest(statement: bytes) -> str:
    """An identifier of a golden statement (SHA-256 of its bytes)."""
    return hashlib.sha256(statement).hexdigest()

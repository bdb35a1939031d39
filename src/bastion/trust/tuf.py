"""TUF glue shared by the repository and the device: keys, signers, release targets, choice.

bastion's TUF repository (build/tuf_repo.py) and device client
(device/update/tuf_client.py) use python-tuf; this module holds what both need and
what decides, without I/O (ADR 0029):

* :func:`tuf_key` turns a public key into python-tuf's key object (default TUF key id:
  SHA-256 of the canonical JSON key) and :class:`TufSigner` lets python-tuf sign
  through a bastion :class:`~bastion.trust.signer.Signer` (keys by URI: ``file:``,
  ``tpm:``), so private key bytes never pass through the repository code.
* :func:`release_custom` writes a bundle manifest's fields as a target's custom
  metadata; :func:`release_target` reads them back, strictly and bounded, as a
  :class:`ReleaseTarget`.
* :func:`check_release` raises unless a release may go on a device (product,
  hardware, channel, SVN never below the device's, minimum base version), and
  :func:`pick_release` chooses the newest such release, or None.

The manifest fields come from the signed manifest's ``[meta.bastion]`` group
(:func:`release_fields`): ``product``, ``svn``, ``hardware`` (comma-separated),
``min-base-version`` and ``golden-pcrs`` (``PCR=HEX`` pairs, comma-separated).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from securesystemslib.signer import Key, Signature, SSlibKey
from securesystemslib.signer import Signer as SslibSigner

from bastion.errors import (
    ConfigError,
    FormatError,
    IncompatibleError,
    LimitError,
    RollbackError,
)
from bastion.formats.raucm import Manifest
from bastion.limits import (
    TUF_CUSTOM_MAX_HARDWARE,
    TUF_NAME_MAX_CHARS,
)
from bastion.trust.signer import PublicKey, SignatureScheme, Signer

META_GROUP = "bastion"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_HEX = re.compile(r"[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128}")
_META_KEYS = ("product", "svn", "hardware", "min-base-version", "golden-pcrs")

#: bastion signature scheme -> the securesystemslib scheme name of the same signatures
_SSLIB_SCHEMES = {
    SignatureScheme.ED25519: "ed25519",
    SignatureScheme.ECDSA_P256_SHA256: "ecdsa-sha2-nistp256",
    SignatureScheme.ECDSA_P384_SHA384: "ecdsa-sha2-nistp384",
    SignatureScheme.RSA_PSS_SHA256: "rsassa-pss-sha256",
    SignatureScheme.RSA_PKCS1V15_SHA256: "rsa-pkcs1v15-sha256",
    SignatureScheme.RSA_PKCS1V15_SHA384: "rsa-pkcs1v15-sha384",
    SignatureScheme.RSA_PKCS1V15_SHA512: "rsa-pkcs1v15-sha512",
}


def tuf_key(public_key: PublicKey, scheme: SignatureScheme) -> Key:
    """The python-tuf key for ``public_key`` signing with ``scheme``."""
    try:
        return SSlibKey.from_crypto(public_key, scheme=_SSLIB_SCHEMES[scheme])
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"TUF cannot use a {scheme} key: {exc}") from exc


class TufSigner(SslibSigner):
    """A securesystemslib Signer that signs through a bastion Signer (keys by URI)."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._key = tuf_key(signer.public_key(), signer.scheme)

    @property
    def public_key(self) -> Key:
        return self._key

    @property
    def keyid(self) -> str:
        """The TUF key id (not bastion's SPKI key id)."""
        return str(self._key.keyid)

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._key.keyid, self._signer.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: Any = None
    ) -> TufSigner:
        raise ConfigError("open bastion TUF signers with bastion.trust.keys.open_signer")


# --- releases ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReleaseTarget:
    """One release as TUF lists it: the bundle file and the manifest fields about it."""

    path: str
    length: int
    sha256: str
    version: str
    svn: int
    product: str
    hardware: tuple[str, ...]
    channel: str
    min_base_version: str | None
    custom: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def _name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > TUF_NAME_MAX_CHARS:
        raise FormatError(f"release {what} {value!r}: expected 1-{TUF_NAME_MAX_CHARS} characters")
    if not _NAME.fullmatch(value):
        raise FormatError(f"release {what} {value!r}: expected letters, digits and ._+-")
    return value


def _svn(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise FormatError(f"release svn {value!r}: expected an integer 0..2^32-1")
    return value


def _hardware(values: Iterable[object]) -> tuple[str, ...]:
    out = tuple(_name("hardware", v) for v in values)
    if not out:
        raise FormatError("release lists no hardware")
    if len(out) > TUF_CUSTOM_MAX_HARDWARE:
        raise LimitError(
            f"release lists {len(out)} hardware names (limit {TUF_CUSTOM_MAX_HARDWARE})"
        )
    return out


def _golden(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        pcr, sep, value = part.partition("=")
        if not sep or not pcr.isdigit() or int(pcr) > 23 or not _HEX.fullmatch(value):
            raise FormatError(f"manifest golden-pcrs entry {part!r}: expected PCR=HEX")
        out[str(int(pcr))] = value
    return out


def release_fields(manifest: Manifest) -> dict[str, Any]:
    """The ``[meta.bastion]`` fields of a signed manifest (absent ones left out)."""
    pairs = dict(next((p for label, p in manifest.meta if label == META_GROUP), ()))
    extra = sorted(set(pairs) - set(_META_KEYS))
    if extra:
        raise FormatError(f"manifest [meta.{META_GROUP}] has unknown key(s): {', '.join(extra)}")
    out: dict[str, Any] = {}
    if "product" in pairs:
        out["product"] = _name("product", pairs["product"])
    if "svn" in pairs:
        if not pairs["svn"].isascii() or not pairs["svn"].isdigit():
            raise FormatError(f"manifest svn {pairs['svn']!r} is not an unsigned integer")
        out["svn"] = _svn(int(pairs["svn"]))
    if "hardware" in pairs:
        out["hardware"] = list(_hardware(pairs["hardware"].split(",")))
    if "min-base-version" in pairs:
        out["min_base_version"] = _name("min-base-version", pairs["min-base-version"])
    if "golden-pcrs" in pairs:
        out["golden_pcrs"] = _golden(pairs["golden-pcrs"])
    return out


def release_meta(
    *,
    product: str,
    svn: int,
    hardware: Sequence[str],
    min_base_version: str | None = None,
    golden_pcrs: Mapping[int, str] | None = None,
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The ``[meta.bastion]`` group ``release build`` writes into a manifest."""
    pairs = [
        ("product", _name("product", product)),
        ("svn", str(_svn(svn))),
        ("hardware", ",".join(_hardware(hardware))),
    ]
    if min_base_version:
        pairs.append(("min-base-version", _name("min-base-version", min_base_version)))
    if golden_pcrs:
        text = ",".join(f"{pcr}={value}" for pcr, value in sorted(golden_pcrs.items()))
        _golden(text)
        pairs.append(("golden-pcrs", text))
    return (META_GROUP, tuple(pairs))


def release_custom(
    manifest: Manifest, channel: str, fallback: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A target's custom metadata: the manifest's fields, ``fallback`` for absent ones.

    ``fallback`` (from the command line) may only fill fields the signed manifest lacks;
    a value that contradicts the manifest is refused.
    """
    fields = release_fields(manifest)
    for key, value in (fallback or {}).items():
        if value is None:
            continue
        if key in fields and fields[key] != value:
            raise ConfigError(
                f"release {key}: the signed manifest says {fields[key]!r}, not {value!r}"
            )
        fields.setdefault(key, value)
    if manifest.version is None:
        raise ConfigError("the bundle manifest has no version: rebuild it with --version")
    for key in ("product", "svn", "hardware"):
        if key not in fields:
            raise ConfigError(
                f"the bundle manifest has no {key}: rebuild it with `release build --{key}` "
                f"or publish with --{key}"
            )
    custom: dict[str, Any] = {
        "version": _name("version", manifest.version),
        "svn": _svn(fields["svn"]),
        "product": _name("product", fields["product"]),
        "hardware": list(_hardware(fields["hardware"])),
        "channel": _name("channel", channel),
        "min_base_version": fields.get("min_base_version"),
        "compatible": manifest.compatible,
        "bundle_format": manifest.bundle_format,
        "verity": {
            "hash": manifest.verity_hash,
            "salt": manifest.verity_salt,
            "size": manifest.verity_size,
        },
        "images": [
            {"slotclass": i.slotclass, "filename": i.filename, "sha256": i.sha256, "size": i.size}
            for i in manifest.images
        ],
    }
    if "golden_pcrs" in fields:
        custom["golden_pcrs"] = fields["golden_pcrs"]
    if manifest.build:
        custom["build"] = manifest.build
    return custom


def release_target(path: str, length: int, hashes: Mapping[str, str], custom: Any) -> ReleaseTarget:
    """Read a TUF target's fields and custom metadata as a :class:`ReleaseTarget`.

    The fields read are bounded here (names, hardware count); the custom object as a
    whole is bounded by the metadata file's size limit (``TUF_TARGETS_MAX_SIZE``).
    """
    if not isinstance(custom, dict):
        raise FormatError(f"target {path!r} carries no release metadata (custom)")
    sha = hashes.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise FormatError(f"target {path!r} has no sha256 hash")
    hardware = custom.get("hardware")
    if not isinstance(hardware, list):
        raise FormatError(f"target {path!r} hardware is not a list")
    min_base = custom.get("min_base_version")
    return ReleaseTarget(
        path=path,
        length=length,
        sha256=sha,
        version=_name("version", custom.get("version")),
        svn=_svn(custom.get("svn")),
        product=_name("product", custom.get("product")),
        hardware=_hardware(hardware),
        channel=_name("channel", custom.get("channel")),
        min_base_version=None if min_base is None else _name("min_base_version", min_base),
        custom=MappingProxyType(dict(custom)),
    )


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """An order for versions: digit runs compare as numbers (``2026.12.10 > 2026.12.9``)."""
    return tuple(
        (0, int(run), "") if run.isdigit() else (1, 0, run)
        for run in re.findall(r"\d+|[^\d]+", version)
    )


def check_release(
    target: ReleaseTarget,
    *,
    product: str,
    hardware: str,
    channel: str,
    current_svn: int,
    current_version: str | None,
) -> None:
    """Raise unless ``target`` may be installed on this device.

    IncompatibleError: another product, hardware or channel, or a minimum base version
    the device does not run; RollbackError: an SVN below the device's, or the same SVN
    with a version that is not newer.
    """
    if target.product != product:
        raise IncompatibleError(
            f"release {target.path} is for product {target.product!r}, not {product!r}"
        )
    if hardware not in target.hardware:
        raise IncompatibleError(
            f"release {target.path} supports hardware {', '.join(target.hardware)}, "
            f"not {hardware!r}"
        )
    if target.channel != channel:
        raise IncompatibleError(
            f"release {target.path} is on channel {target.channel!r}, not {channel!r}"
        )
    if target.svn < current_svn:
        raise RollbackError(
            f"release {target.path} has security version {target.svn}, "
            f"below the device's {current_svn}"
        )
    newer = current_version is None or version_key(target.version) > version_key(current_version)
    if target.svn == current_svn and not newer:
        raise RollbackError(
            f"release {target.path} version {target.version} is not newer than the running "
            f"{current_version} at security version {current_svn}"
        )
    if target.min_base_version is not None and (
        current_version is None
        or version_key(current_version) < version_key(target.min_base_version)
    ):
        raise IncompatibleError(
            f"release {target.path} needs at least version {target.min_base_version} running, "
            f"the device runs {current_version or 'an unknown version'}"
        )


def pick_release(
    targets: Iterable[ReleaseTarget],
    *,
    product: str,
    hardware: str,
    channel: str,
    current_svn: int,
    current_version: str | None,
) -> ReleaseTarget | None:
    """The newest release (by SVN, then version) :func:`check_release` accepts, or None."""
    allowed: list[ReleaseTarget] = []
    for target in targets:
        try:
            check_release(
                target,
                product=product,
                hardware=hardware,
                channel=channel,
                current_svn=current_svn,
                current_version=current_version,
            )
        except (IncompatibleError, RollbackError):
            continue
        allowed.append(target)
    if not allowed:
        return None
    return max(allowed, key=lambda t: (t.svn, version_key(t.version), t.path))

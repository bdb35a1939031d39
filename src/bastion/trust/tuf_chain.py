"""What a device that trusts root version N accepts: the root chain walk, before publishing.

A rotation that a device cannot follow bricks its updates: python-tuf's ngclient stops
at the first newer root that does not verify, and refuses timestamp, snapshot or
targets that the final root does not sign. :func:`device_view` replays, in pure code,
the checks ngclient makes (TUF specification 5.3 and 5.4, python-tuf
``TrustedMetadataSet``) over a proposed repository state:

* each newer root ``v+1``: exactly that version, signed by the threshold of the
  previous root's root keys **and** by its own (:func:`step_root`);
* the final root not expired;
* timestamp, snapshot, targets and every product role: signed by the threshold the
  final root (or targets, for a product role) names, the versions and hashes their
  parent lists, not expired (:func:`check_roles`).

``bastion tuf rotate --dry-run`` prints one view per root version devices may trust;
``tuf rotate`` refuses to publish a state that any of them refuses. Pure: bytes in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from bastion.errors import FormatError, SignatureError


@dataclass(frozen=True, slots=True)
class Step:
    """One check of the walk: which metadata, accepted or not, and why."""

    what: str
    accepted: bool
    reason: str


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What a device trusting root ``trusted_version`` does with the repository."""

    trusted_version: int
    final_version: int
    steps: tuple[Step, ...]

    @property
    def ok(self) -> bool:
        """True when the device accepts every step (its updates keep working)."""
        return all(s.accepted for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "trusted_root": self.trusted_version,
            "final_root": self.final_version,
            "ok": self.ok,
            "steps": [
                {"what": s.what, "accepted": s.accepted, "reason": s.reason} for s in self.steps
            ],
        }


def load(data: bytes, what: str) -> Metadata[Any]:
    """Parse TUF metadata; FormatError when it is not."""
    try:
        return Metadata.from_bytes(data)
    except Exception as exc:  # python-tuf raises DeserializationError and ValueError
        raise FormatError(f"{what} is not TUF metadata: {exc}") from exc


def _result_text(signed: int, threshold: int, unknown: list[str]) -> str:
    text = f"signed by {signed} of the {threshold} keys needed"
    if unknown:
        text += (
            f"; signatures by keys not trusted for the role: {', '.join(k[:16] for k in unknown)}"
        )
    return text


def step_root(previous: Root, data: bytes) -> Root:
    """Verify root ``previous.version + 1`` as ngclient does; return it or raise."""
    md = load(data, f"root v{previous.version + 1}")
    new = md.signed
    if not isinstance(new, Root):
        raise FormatError(f"root v{previous.version + 1} is a {new.type}, not root")
    if new.version != previous.version + 1:
        raise FormatError(f"expected root version {previous.version + 1}, found {new.version}")
    for who, delegator in (("previous", previous), ("its own", new)):
        result = delegator.get_verification_result(Root.type, md.signed_bytes, md.signatures)
        if not result.verified:
            keyids = delegator.roles[Root.type].keyids
            unknown = [k for k in md.signatures if k not in keyids]
            raise SignatureError(
                f"root v{new.version} does not meet {who} root threshold: "
                + _result_text(len(result.signed), result.threshold, unknown)
            )
    return new


def _check_signed(delegator: Root | Targets, role: str, md: Metadata[Any]) -> None:
    result = delegator.get_verification_result(role, md.signed_bytes, md.signatures)
    if not result.verified:
        keyids = delegator.get_delegated_role(role).keyids
        unknown = [k for k in md.signatures if k not in keyids]
        raise SignatureError(
            f"{role} " + _result_text(len(result.signed), result.threshold, unknown)
        )


def check_roles(root: Root, files: Mapping[str, bytes], now: dt.datetime) -> list[Step]:
    """Check the top-level roles and product roles in ``files`` (role -> bytes) under ``root``."""
    steps: list[Step] = []

    def run(what: str, check: Any) -> Any:
        try:
            value = check()
        except (SignatureError, FormatError, LengthOrHashMismatchError, ValueError) as exc:
            steps.append(Step(what, False, str(exc)))
            return None
        steps.append(Step(what, True, "verified"))
        return value

    def expiry(md: Metadata[Any], role: str) -> None:
        if md.signed.is_expired(now):
            raise FormatError(f"{role} expired at {md.signed.expires.isoformat()}")

    def timestamp() -> Metadata[Any]:
        md = load(files["timestamp"], "timestamp")
        if not isinstance(md.signed, Timestamp):
            raise FormatError("timestamp.json is not a timestamp")
        _check_signed(root, Timestamp.type, md)
        expiry(md, "timestamp")
        return md

    ts = run("timestamp", timestamp) if "timestamp" in files else None

    def snapshot() -> Metadata[Any]:
        data = files["snapshot"]
        md = load(data, "snapshot")
        if not isinstance(md.signed, Snapshot):
            raise FormatError("snapshot is not a snapshot")
        _check_signed(root, Snapshot.type, md)
        if ts is not None:
            meta = ts.signed.snapshot_meta
            meta.verify_length_and_hashes(data)
            if meta.version != md.signed.version:
                raise FormatError(
                    f"timestamp lists snapshot v{meta.version}, "
                    f"the snapshot is v{md.signed.version}"
                )
        expiry(md, "snapshot")
        return md

    snap = run("snapshot", snapshot) if "snapshot" in files else None

    def targets_role(role: str, delegator: Root | Targets) -> Metadata[Any]:
        data = files[role]
        md = load(data, role)
        if not isinstance(md.signed, Targets):
            raise FormatError(f"{role} is not targets metadata")
        _check_signed(delegator, role, md)
        if snap is not None:
            meta = snap.signed.meta.get(f"{role}.json")
            if meta is None:
                raise FormatError(f"snapshot does not list {role}")
            meta.verify_length_and_hashes(data)
            if meta.version != md.signed.version:
                raise FormatError(
                    f"snapshot lists {role} v{meta.version}, the file is v{md.signed.version}"
                )
        expiry(md, role)
        return md

    if "targets" in files:
        top = run("targets", lambda: targets_role("targets", root))
        if top is not None and top.signed.delegations and top.signed.delegations.roles:
            for name in top.signed.delegations.roles:
                if name in files:
                    run(name, lambda name=name: targets_role(name, top.signed))
                else:  # ngclient lists no releases of a role the snapshot does not name
                    steps.append(Step(name, True, "delegated, not published yet (no releases)"))
    return steps


def device_view(
    trusted_root: bytes,
    newer_roots: Mapping[int, bytes],
    files: Mapping[str, bytes],
    now: dt.datetime,
) -> DeviceView:
    """Walk from ``trusted_root`` through ``newer_roots`` (version -> bytes); check ``files``."""
    md = load(trusted_root, "trusted root")
    root = md.signed
    if not isinstance(root, Root):
        raise FormatError("the trusted root is not a root")
    start = root.version
    steps: list[Step] = []
    version = start + 1
    while version in newer_roots:
        try:
            root = step_root(root, newer_roots[version])
        except (SignatureError, FormatError) as exc:
            steps.append(Step(f"root v{version}", False, str(exc)))
            return DeviceView(start, root.version, tuple(steps))
        steps.append(Step(f"root v{version}", True, "signed by the previous and its own threshold"))
        version += 1
    if root.is_expired(now):
        steps.append(Step(f"root v{root.version}", False, f"final root expired at {root.expires}"))
        return DeviceView(start, root.version, tuple(steps))
    steps.extend(check_roles(root, files, now))
    return DeviceView(start, root.version, tuple(steps))

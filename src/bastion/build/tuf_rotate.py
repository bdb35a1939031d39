"""Key rotation that cannot brick a device: root and online-key rotation, guarded by a dry run.

``bastion tuf rotate`` makes root version N+1 with a role's keys or threshold changed
(root, targets, snapshot or timestamp), signed by the old root's threshold *and* the
new one's; it re-signs what the change invalidates (targets with the new targets keys,
snapshot and timestamp with the new online keys) so the repository stays consistent.

Every change is first made in a scratch copy of ``metadata/`` and ``staged/``
(:func:`guarded`); then, for every root version a device may still trust (each
published one), :func:`bastion.trust.tuf_chain.device_view` walks the chain as
ngclient does and checks the roles devices would fetch. ``--dry-run`` prints those
views; a real run copies the scratch result into the repository only when every view
accepts (``--force`` overrides, naming the devices it abandons), in crash-safe order:
versioned files first, then ``N.root.json``, ``root.json`` and ``timestamp.json``.
Root short of either threshold waits in ``staged/`` (devices never see it) until
``bastion tuf sign`` completes it through the same guard.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tuf.api.metadata import Root, Snapshot, Targets, Timestamp

from bastion.build.tuf_repo import (
    ONLINE_ROLES,
    KeySpec,
    TufRepository,
    Written,
    key_of,
    renew,
    renew_snapshot,
    renew_timestamp,
)
from bastion.errors import ConfigError, NotFoundError, VerificationError
from bastion.io.files import atomic_write
from bastion.trust.signer import Signer
from bastion.trust.tuf_chain import DeviceView, device_view

R = TypeVar("R")
ROTATABLE = (Root.type, Targets.type, Snapshot.type, Timestamp.type)


@dataclass(frozen=True, slots=True)
class Guarded:
    """A change made in scratch: its result, what each device would do, the files it wrote."""

    written: Written | None
    views: tuple[DeviceView, ...]
    files: dict[str, bytes]
    staged: dict[str, bytes | None]

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.views)


def _snapshot_dir(src: Path, dst: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for p in src.iterdir():
            if p.is_file():
                data = p.read_bytes()
                out[p.name] = data
                (dst / p.name).write_bytes(data)
    return out


def guarded(
    repo: TufRepository,
    action: Callable[[TufRepository], Written | None],
    now: dt.datetime,
    *,
    dry_run: bool,
    force: bool = False,
) -> Guarded:
    """Run ``action`` on a scratch copy, judge it for every trusted root, then apply it."""
    if not repo.exists() and not (repo.staged_dir / "root.json").is_file():
        raise NotFoundError(f"{repo.path} is not a TUF repository")
    trusted = repo.roots() if repo.exists() else {}  # no device trusts a root yet
    with tempfile.TemporaryDirectory(prefix="bastion-tuf-") as tmp:
        scratch = TufRepository(Path(tmp))
        before = _snapshot_dir(repo.metadata_dir, scratch.metadata_dir)
        staged_before = _snapshot_dir(repo.staged_dir, scratch.staged_dir)
        written = action(scratch)
        after_roots = scratch.roots()
        files = (
            scratch.current_files() if (scratch.metadata_dir / "timestamp.json").exists() else {}
        )
        views = tuple(
            device_view(
                data,
                {v: b for v, b in after_roots.items() if v > version},
                files,
                now,
            )
            for version, data in sorted(trusted.items())
        )
        changed = {
            p.name: p.read_bytes()
            for p in scratch.metadata_dir.iterdir()
            if p.is_file() and before.get(p.name) != p.read_bytes()
        }
        staged_now = (
            {p.name: p.read_bytes() for p in scratch.staged_dir.iterdir() if p.is_file()}
            if scratch.staged_dir.is_dir()
            else {}
        )
    staged: dict[str, bytes | None] = {
        name: staged_now.get(name) for name in set(staged_before) | set(staged_now)
    }
    result = Guarded(written, views, changed, staged)
    if dry_run:
        return result
    if not result.ok and not force:
        refused = [v for v in views if not v.ok]
        first = next(s for s in refused[0].steps if not s.accepted)
        raise VerificationError(
            f"this change would stop updates on devices trusting root "
            f"{', '.join(f'v{v.trusted_version}' for v in refused)}: {first.what}: {first.reason} "
            "(see --dry-run; --force publishes anyway)"
        )
    _apply(repo, result)
    return result


def _order(name: str) -> int:
    if name == "timestamp.json":
        return 3
    if name == "root.json":
        return 2
    if name.endswith(".root.json"):
        return 1
    return 0


def _apply(repo: TufRepository, result: Guarded) -> None:
    repo.metadata_dir.mkdir(parents=True, exist_ok=True)
    for name in sorted(result.files, key=lambda n: (_order(n), n)):
        atomic_write(repo.metadata_dir / name, result.files[name])
    for name, data in result.staged.items():
        path = repo.staged_dir / name
        if data is None:
            if path.exists():
                path.unlink()
        else:
            repo.staged_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)


@dataclass(frozen=True, slots=True)
class Online:
    """The online signers (and, for a targets rotation, the new targets signers)."""

    snapshot: Signer | None = None
    timestamp: Signer | None = None
    targets: Sequence[Signer] = ()


def _finish(scratch: TufRepository, role: str, online: Online, now: dt.datetime) -> None:
    """Re-sign what a published root change invalidates, in the scratch copy."""
    if role == Targets.type:
        if not online.targets:
            raise ConfigError("a targets rotation needs the new targets keys (--targets-key)")
        md = scratch.next_version(Targets.type, now)
        scratch.commit(Targets.type, md, online.targets)
    if online.snapshot is not None and online.timestamp is not None:
        renew(scratch, online.snapshot, online.timestamp, now, force=True)
    elif online.snapshot is not None:
        renew_snapshot(scratch, online.snapshot, now, force=True)
    elif online.timestamp is not None:
        renew_timestamp(scratch, online.timestamp, now, force=True)


def rotate(
    repo: TufRepository,
    *,
    role: str,
    add: Sequence[KeySpec] = (),
    remove: Sequence[str] = (),
    threshold: int | None = None,
    root_signers: Sequence[Signer],
    online: Online,
    now: dt.datetime,
    dry_run: bool = False,
    force: bool = False,
) -> Guarded:
    """Root version N+1 with ``role``'s keys/threshold changed; guarded (see module doc)."""
    if role not in ROTATABLE:
        raise ConfigError(f"role {role!r}: expected one of {', '.join(ROTATABLE)}")

    def action(scratch: TufRepository) -> Written:
        md = scratch.next_version(Root.type, now)
        root: Root = md.signed
        for keyid in remove:
            matches = [k for k in root.roles[role].keyids if k.startswith(keyid)]
            if len(matches) != 1:
                raise NotFoundError(
                    f"{role} has {len(matches)} key(s) whose id starts with {keyid!r} (expected 1)"
                )
            root.revoke_key(matches[0], role)
        for spec in add:
            key = key_of(spec)
            if key.keyid in root.roles[role].keyids:
                raise ConfigError(f"key {key.keyid[:16]}... is a {role} key already")
            root.add_key(key, role)
        if threshold is not None:
            root.roles[role].threshold = threshold
        count = len(root.roles[role].keyids)
        if not 1 <= root.roles[role].threshold <= count:
            raise ConfigError(
                f"{role} would have threshold {root.roles[role].threshold} with {count} key(s)"
            )
        if role in ONLINE_ROLES and root.roles[role].threshold != 1:
            raise ConfigError(f"{role} is signed online by one key: threshold must be 1")
        written = scratch.commit(Root.type, md, root_signers)
        if written.published:
            _finish(scratch, role, online, now)
        return written

    return guarded(repo, action, now, dry_run=dry_run, force=force)


def sign_guarded(
    repo: TufRepository,
    role: str,
    signers: Sequence[Signer],
    online: Online,
    now: dt.datetime,
    *,
    dry_run: bool = False,
    force: bool = False,
    bump: bool = False,
) -> Guarded:
    """``bastion tuf sign``: add signatures to staged ``role``; a completed root is guarded.

    ``bump`` first stages the next version of the published ``role`` with a fresh
    expiry (offline and product roles are re-signed this way before they expire).
    """
    if not signers:
        raise ConfigError("tuf sign needs at least one --key")
    if bump and role in ONLINE_ROLES:
        raise ConfigError(f"{role} is renewed with `bastion tuf renew`, not signed by hand")

    def action(scratch: TufRepository) -> Written:
        before = scratch.root().signed if role == Root.type and scratch.exists() else None
        if bump:
            if (scratch.staged_dir / f"{role}.json").exists():
                raise ConfigError(f"{role} has staged metadata: sign it before bumping")
            md = scratch.next_version(role, now)
            written = scratch.commit(role, md, signers)
        else:
            written = scratch.sign_staged(role, signers)
        if written.published:
            if role == Root.type and before is not None:
                after = scratch.root().signed
                changed = [
                    r
                    for r in ROTATABLE
                    if before.roles[r].keyids != after.roles[r].keyids
                    or before.roles[r].threshold != after.roles[r].threshold
                ]
                for r in changed:
                    if r == Targets.type:
                        _finish(scratch, r, online, now)
                if Targets.type not in changed:
                    _finish(scratch, Root.type, online, now)
            elif role != Root.type:
                _finish(scratch, Root.type, online, now)
        return written

    return guarded(repo, action, now, dry_run=dry_run, force=force)


def copy_repository(src: TufRepository, dst: Path) -> TufRepository:
    """A copy of ``src``'s metadata (tests and drills; target files are not copied)."""
    shutil.copytree(src.metadata_dir, dst / "metadata")
    return TufRepository(dst)

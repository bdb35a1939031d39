"""bastion's TUF repository on disk: roles, thresholds, product delegations, releases, renewal.

Built with python-tuf's Metadata API (ADR 0029, docs/updates.md). Layout of ``DIR``::

    metadata/1.root.json 2.root.json ... root.json        every root version, and the latest
    metadata/timestamp.json                              the one unversioned file
    metadata/N.snapshot.json N.targets.json N.<product>.json
    targets/<product>/<channel>/<sha256>.<bundle name>  releases (consistent snapshots)
    staged/<role>.json                                   metadata still short of its threshold

``metadata/`` and ``targets/`` are what a server serves (read-only, static); ``staged/``
is not served. Roles: **root** and **targets** are signed by offline keys with a
threshold; **targets** delegates ``<product>/*/*`` to one role per product (its own keys
and threshold: the release signers); **snapshot** and **timestamp** are signed online
(the server's keys) and renewed before they expire (:func:`renew_snapshot`,
:func:`renew_timestamp`). Consistent snapshots are on: devices fetch
``N.snapshot.json``, ``N.targets.json`` and ``targets/<dir>/<sha256>.<name>``, so a
publish never changes a file a device may be reading.

New metadata goes to ``metadata/`` only once it meets its threshold (root: the
previous root's *and* its own); short of it, it waits in ``staged/`` for
``bastion tuf sign`` by the other key holders. Writes are atomic and ordered: a
versioned file first, then the file that points at it (``root.json``,
``timestamp.json``), so a crash leaves the previous state served.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from bastion.errors import ConfigError, ConflictError, NotFoundError, SignatureError
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import TUF_ROOT_MAX_SIZE, TUF_TARGETS_MAX_SIZE
from bastion.trust.signer import Signer
from bastion.trust.tuf import ReleaseTarget, TufSigner, release_target, tuf_key
from bastion.trust.tuf_chain import load

TOP_ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
ONLINE_ROLES = (Snapshot.type, Timestamp.type)
SPEC_VERSION = "1.0.31"

#: how long each role's metadata is valid when signed (policy, see docs/updates.md)
DEFAULT_EXPIRY = {
    Root.type: dt.timedelta(days=365),
    Targets.type: dt.timedelta(days=365),
    "product": dt.timedelta(days=180),
    Snapshot.type: dt.timedelta(days=7),
    Timestamp.type: dt.timedelta(days=1),
}
_PRODUCT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # one target path segment
_VERSIONED = re.compile(r"(\d+)\.(.+)\.json")
_CHUNK = 1 << 20

KeySpec = Signer | Key


def key_of(spec: KeySpec) -> Key:
    """The TUF public key of a signer or a bare public key."""
    return TufSigner(spec).public_key if isinstance(spec, Signer) else spec


def _signers(specs: Iterable[KeySpec]) -> list[Signer]:
    return [s for s in specs if isinstance(s, Signer)]


def _expiry(now: dt.datetime, role: str) -> dt.datetime:
    period = DEFAULT_EXPIRY.get(role, DEFAULT_EXPIRY["product"])
    return (now + period).replace(microsecond=0)


def check_product(product: str) -> str:
    """A product name usable as a role name and a folder."""
    if not _PRODUCT.fullmatch(product) or product in TOP_ROLES:
        raise ConfigError(
            f"product {product!r}: expected letters, digits and ._+- (not a top-level role name)"
        )
    return product


@dataclass(frozen=True, slots=True)
class Written:
    """Metadata a command produced: published, or staged waiting for signatures."""

    role: str
    version: int
    published: bool
    signed: int
    threshold: int
    path: Path


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a renewal did: the role's version and expiry, and whether it signed anew."""

    role: str
    version: int
    expires: dt.datetime
    renewed: bool


class TufRepository:
    """A TUF repository folder (see the module docstring for its layout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata_dir = path / "metadata"
        self.targets_dir = path / "targets"
        self.staged_dir = path / "staged"
        self._serializer = JSONSerializer(compact=True)

    # --- reading -----------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.metadata_dir / "root.json").is_file()

    def _require(self) -> None:
        if not self.exists():
            raise NotFoundError(f"{self.path} is not a TUF repository (no metadata/root.json)")

    def read_bytes(self, name: str, limit: int = TUF_TARGETS_MAX_SIZE) -> bytes:
        return read_bounded(self.metadata_dir / name, limit, f"TUF metadata {name}")

    def versions(self, role: str) -> list[int]:
        """Every version of ``role`` in ``metadata/``, ascending."""
        out = []
        if self.metadata_dir.is_dir():
            for p in self.metadata_dir.iterdir():
                m = _VERSIONED.fullmatch(p.name)
                if m and m.group(2) == role:
                    out.append(int(m.group(1)))
        return sorted(out)

    def latest(self, role: str) -> Metadata[Any]:
        """The newest published metadata of ``role``."""
        self._require()
        if role == Timestamp.type:
            return load(self.read_bytes("timestamp.json"), "timestamp")
        versions = self.versions(role)
        if not versions:
            raise NotFoundError(f"{self.path}: no {role} metadata")
        return load(self.read_bytes(f"{versions[-1]}.{role}.json"), f"{role} v{versions[-1]}")

    def root(self) -> Metadata[Root]:
        return self.latest(Root.type)

    def roots(self) -> dict[int, bytes]:
        """Every published root version."""
        return {
            v: self.read_bytes(f"{v}.root.json", TUF_ROOT_MAX_SIZE) for v in self.versions("root")
        }

    def products(self) -> list[str]:
        """The product roles the newest targets metadata delegates to."""
        delegations = self.latest(Targets.type).signed.delegations
        return list(delegations.roles) if delegations and delegations.roles else []

    def current_files(self) -> dict[str, bytes]:
        """What a device would fetch now: timestamp, snapshot and the roles it lists."""
        files = {"timestamp": self.read_bytes("timestamp.json")}
        ts = load(files["timestamp"], "timestamp").signed
        files["snapshot"] = self.read_bytes(f"{ts.snapshot_meta.version}.snapshot.json")
        snap = load(files["snapshot"], "snapshot").signed
        for name, meta in snap.meta.items():
            role = name.removesuffix(".json")
            files[role] = self.read_bytes(f"{meta.version}.{name}")
        return files

    def releases(self) -> list[ReleaseTarget]:
        """Every release the snapshot devices see lists, product role by product role."""
        files = self.current_files()
        out: list[ReleaseTarget] = []
        for role, data in files.items():
            if role in ("timestamp", "snapshot"):
                continue
            signed = load(data, role).signed
            for path, tf in sorted(signed.targets.items()):
                out.append(release_target(path, tf.length, tf.hashes, tf.custom))
        return out

    # --- writing -----------------------------------------------------------------------------

    def _bytes(self, md: Metadata[Any]) -> bytes:
        return md.to_bytes(self._serializer)

    def _publish(self, role: str, md: Metadata[Any]) -> Path:
        """Write ``md`` as ``role``'s next published version (then its pointer file)."""
        data = self._bytes(md)
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        if role == Timestamp.type:
            path = self.metadata_dir / "timestamp.json"
            atomic_write(path, data)
            return path
        path = self.metadata_dir / f"{md.signed.version}.{role}.json"
        if path.exists() and path.read_bytes() != data:
            raise ConflictError(f"{path} exists with other content: versions never change")
        atomic_write(path, data)
        if role == Root.type:
            atomic_write(self.metadata_dir / "root.json", data)
        staged = self.staged_dir / f"{role}.json"
        if staged.exists():
            staged.unlink()
        return path

    def verification(self, role: str, md: Metadata[Any]) -> tuple[int, int]:
        """(valid signatures, threshold) of ``md`` as the role's delegator counts them.

        Root counts the lower of the previous root's and its own; a product role counts
        under the newest targets metadata.
        """
        if role == Root.type:
            previous = self.root().signed if self.exists() else None
            if previous is not None and previous.version != md.signed.version - 1:
                raise ConflictError(
                    f"root v{md.signed.version} does not follow the published v{previous.version}"
                )
            res = md.signed.get_root_verification_result(previous, md.signed_bytes, md.signatures)
            pairs = [(len(r.signed), r.threshold) for r in (res.first, res.second)]
            return min(pairs, key=lambda p: p[0] - p[1])
        if role in TOP_ROLES:
            delegator: Root | Targets = self.root().signed
        else:
            delegator = self.latest(Targets.type).signed
        result = delegator.get_verification_result(role, md.signed_bytes, md.signatures)
        return len(result.signed), result.threshold

    def commit(self, role: str, md: Metadata[Any], signers: Sequence[Signer]) -> Written:
        """Sign ``md`` with ``signers``; publish it when it meets its threshold, else stage it."""
        for signer in signers:
            md.sign(TufSigner(signer), append=True)
        signed, threshold = self.verification(role, md)
        if signed >= threshold:
            path = self._publish(role, md)
            return Written(role, md.signed.version, True, signed, threshold, path)
        self.staged_dir.mkdir(parents=True, exist_ok=True)
        path = self.staged_dir / f"{role}.json"
        atomic_write(path, self._bytes(md))
        return Written(role, md.signed.version, False, signed, threshold, path)

    def staged(self, role: str) -> Metadata[Any]:
        path = self.staged_dir / f"{role}.json"
        if not path.is_file():
            raise NotFoundError(f"no staged {role} metadata in {self.staged_dir}")
        return load(read_bounded(path, TUF_TARGETS_MAX_SIZE, "staged metadata"), f"staged {role}")

    def sign_staged(self, role: str, signers: Sequence[Signer]) -> Written:
        """Add signatures to staged metadata (``bastion tuf sign``); publish at the threshold."""
        md = self.staged(role)
        return self.commit(role, md, signers)

    def next_version(self, role: str, now: dt.datetime) -> Metadata[Any]:
        """A copy of the newest ``role`` with version + 1, a fresh expiry and no signatures."""
        md = self.latest(role)
        md.signed.version += 1
        md.signed.expires = _expiry(now, role if role in TOP_ROLES else "product")
        md.signatures.clear()
        return md

    # --- products and releases ---------------------------------------------------------------

    def delegate(
        self,
        product: str,
        keys: Sequence[KeySpec],
        threshold: int,
        targets_signers: Sequence[Signer],
        now: dt.datetime,
    ) -> Written:
        """Delegate ``<product>/*/*`` to a new role ``product`` (new targets version)."""
        check_product(product)
        if threshold < 1 or threshold > len(keys):
            raise ConfigError(
                f"threshold {threshold} with {len(keys)} key(s): expected 1..{len(keys)}"
            )
        md = self.next_version(Targets.type, now)
        targets: Targets = md.signed
        if targets.delegations is None:
            targets.delegations = Delegations(keys={}, roles={})
        assert targets.delegations.roles is not None
        if product in targets.delegations.roles:
            raise ConflictError(f"product {product!r} is delegated already")
        role = DelegatedRole(product, [], threshold, True, paths=[f"{product}/*/*"])
        targets.delegations.roles[product] = role
        for spec in keys:
            targets.add_key(key_of(spec), product)
        written = self.commit(Targets.type, md, targets_signers)
        if written.published and not self.versions(product):
            # the product role starts empty; its own keys sign it
            empty = Metadata(Targets(version=1, expires=_expiry(now, "product")))
            signers = _signers(keys)
            if signers:
                self.commit(product, empty, signers)
        return written

    def add_release(
        self,
        *,
        product: str,
        channel: str,
        bundle: Path,
        custom: Mapping[str, Any],
        signers: Sequence[Signer],
        now: dt.datetime,
    ) -> tuple[Written, TargetFile]:
        """Store ``bundle`` as ``<product>/<channel>/<name>`` and list it in the product role."""
        check_product(product)
        if product not in self.products():
            raise NotFoundError(f"product {product!r} has no role: `bastion tuf delegate` it first")
        for what, value in (("channel", channel), ("bundle file name", bundle.name)):
            if not _SEGMENT.fullmatch(value):
                raise ConfigError(f"{what} {value!r}: expected letters, digits and ._+-")
        name = f"{product}/{channel}/{bundle.name}"
        digest = hashlib.sha256()
        length = 0
        with bundle.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                length += len(chunk)
        sha = digest.hexdigest()
        folder = self.targets_dir / product / channel
        folder.mkdir(parents=True, exist_ok=True)
        stored = folder / f"{sha}.{bundle.name}"
        if not stored.exists():
            tmp = stored.with_name(stored.name + ".tmp")
            shutil.copyfile(bundle, tmp)
            tmp.replace(stored)
        target = TargetFile(length, {"sha256": sha}, name, {"custom": dict(custom)})
        return self.add_targets(product, [target], signers, now), target

    def add_targets(
        self,
        product: str,
        targets: Sequence[TargetFile],
        signers: Sequence[Signer],
        now: dt.datetime,
    ) -> Written:
        """List ``targets`` in a new version of the product role (replacing same paths)."""
        if product not in self.products():
            raise NotFoundError(f"product {product!r} has no role: `bastion tuf delegate` it first")
        if (self.staged_dir / f"{product}.json").is_file():
            md = self.staged(product)  # build on releases still waiting for signatures
            md.signatures.clear()
        elif self.versions(product):
            md = self.next_version(product, now)
        else:
            md = Metadata(Targets(version=1, expires=_expiry(now, "product")))
        role = self.latest(Targets.type).signed.delegations.roles[product]
        for target in targets:
            if not role.is_delegated_path(target.path):
                raise ConfigError(f"target {target.path} is outside {product}'s paths {role.paths}")
            md.signed.targets[target.path] = target
        return self.commit(product, md, signers)

    # --- snapshot and timestamp --------------------------------------------------------------

    def _check_online(self, role: str, signer: Signer) -> None:
        keyids = self.root().signed.roles[role].keyids
        keyid = TufSigner(signer).keyid
        if keyid not in keyids:
            raise SignatureError(
                f"key {keyid[:16]}... is not a {role} key of root v{self.root().signed.version} "
                f"(expected one of {', '.join(k[:16] for k in keyids)})"
            )


def _write_online(repo: TufRepository, md: Metadata[Any], signer: Signer) -> None:
    md.sign(TufSigner(signer))
    signed, threshold = repo.verification(md.signed.type, md)
    if signed < threshold:
        raise SignatureError(
            f"{md.signed.type} needs {threshold} signatures; an online role signs with one key"
        )
    repo._publish(md.signed.type, md)


def _wanted_meta(repo: TufRepository) -> dict[str, MetaFile]:
    roles = [Targets.type, *repo.products()]
    meta: dict[str, MetaFile] = {}
    for role in roles:
        versions = repo.versions(role)
        if not versions:
            continue
        data = repo.read_bytes(f"{versions[-1]}.{role}.json")
        meta[f"{role}.json"] = MetaFile(
            versions[-1], len(data), {"sha256": hashlib.sha256(data).hexdigest()}
        )
    return meta


def _due(md: Metadata[Any], role: str, now: dt.datetime) -> bool:
    """True when less than half of the role's period is left before expiry."""
    return bool(md.signed.expires - now < DEFAULT_EXPIRY[role] / 2)


def renew_snapshot(
    repo: TufRepository, online_signer: Signer, now: dt.datetime, *, force: bool = False
) -> Renewal:
    """Sign a new snapshot when a role changed or half its validity has passed."""
    repo._check_online(Snapshot.type, online_signer)
    wanted = _wanted_meta(repo)
    if repo.versions(Snapshot.type):
        current = repo.latest(Snapshot.type)
        if not force and current.signed.meta == wanted and not _due(current, Snapshot.type, now):
            return Renewal(Snapshot.type, current.signed.version, current.signed.expires, False)
        md = repo.next_version(Snapshot.type, now)
    else:
        md = Metadata(Snapshot(version=1, expires=_expiry(now, Snapshot.type)))
    md.signed.meta = wanted
    _write_online(repo, md, online_signer)
    return Renewal(Snapshot.type, md.signed.version, md.signed.expires, True)


def renew_timestamp(
    repo: TufRepository, online_signer: Signer, now: dt.datetime, *, force: bool = False
) -> Renewal:
    """Sign a new timestamp when the snapshot changed or half its validity has passed.

    The server calls this (and :func:`renew_snapshot` first) on a timer; a timestamp that
    still has more than half its period left and names the newest snapshot is kept.
    """
    repo._check_online(Timestamp.type, online_signer)
    versions = repo.versions(Snapshot.type)
    if not versions:
        raise NotFoundError(f"{repo.path}: no snapshot to timestamp (renew the snapshot first)")
    data = repo.read_bytes(f"{versions[-1]}.snapshot.json")
    meta = MetaFile(versions[-1], len(data), {"sha256": hashlib.sha256(data).hexdigest()})
    if (repo.metadata_dir / "timestamp.json").is_file():
        current = repo.latest(Timestamp.type)
        same = current.signed.snapshot_meta == meta
        if not force and same and not _due(current, Timestamp.type, now):
            return Renewal(Timestamp.type, current.signed.version, current.signed.expires, False)
        md = repo.next_version(Timestamp.type, now)
    else:
        md = Metadata(Timestamp(version=1, expires=_expiry(now, Timestamp.type)))
    md.signed.snapshot_meta = meta
    _write_online(repo, md, online_signer)
    return Renewal(Timestamp.type, md.signed.version, md.signed.expires, True)


def renew(
    repo: TufRepository,
    snapshot_signer: Signer,
    timestamp_signer: Signer,
    now: dt.datetime,
    *,
    force: bool = False,
) -> tuple[Renewal, Renewal]:
    """:func:`renew_snapshot` then :func:`renew_timestamp`."""
    snap = renew_snapshot(repo, snapshot_signer, now, force=force)
    ts = renew_timestamp(repo, timestamp_signer, now, force=force or snap.renewed)
    return snap, ts


# --- a new repository ----------------------------------------------------------------------


def init_repository(
    path: Path,
    *,
    root_keys: Sequence[KeySpec],
    root_threshold: int,
    targets_keys: Sequence[KeySpec],
    targets_threshold: int,
    snapshot_key: KeySpec,
    timestamp_key: KeySpec,
    now: dt.datetime,
) -> TufRepository:
    """Create root v1 and targets v1 (and snapshot and timestamp when their signers are here).

    Offline keys given as signers sign now; keys given as public keys sign later with
    ``bastion tuf sign`` (the metadata waits in ``staged/``).
    """
    repo = TufRepository(path)
    if repo.exists() or (repo.staged_dir / "root.json").exists():
        raise ConflictError(f"{path} holds a TUF repository already")
    for role, keys, threshold in (
        (Root.type, root_keys, root_threshold),
        (Targets.type, targets_keys, targets_threshold),
    ):
        if not keys or not 1 <= threshold <= len(keys):
            raise ConfigError(
                f"{role}: threshold {threshold} with {len(keys)} key(s): expected 1..{len(keys)}"
            )
    roles = {
        Root.type: Role([], root_threshold),
        Targets.type: Role([], targets_threshold),
        Snapshot.type: Role([], 1),
        Timestamp.type: Role([], 1),
    }
    root = Root(
        version=1,
        spec_version=SPEC_VERSION,
        expires=_expiry(now, Root.type),
        keys={},
        roles=roles,
        consistent_snapshot=True,
    )
    for role, keys in (
        (Root.type, root_keys),
        (Targets.type, targets_keys),
        (Snapshot.type, [snapshot_key]),
        (Timestamp.type, [timestamp_key]),
    ):
        seen = set()
        for spec in keys:
            key = key_of(spec)
            if key.keyid in seen:
                raise ConfigError(f"{role}: key {key.keyid[:16]}... is given twice")
            seen.add(key.keyid)
            root.add_key(key, role)
    path.mkdir(parents=True, exist_ok=True)
    repo.commit(Root.type, Metadata(root), _signers(root_keys))
    targets = Metadata(Targets(version=1, expires=_expiry(now, Targets.type)))
    if repo.exists():
        repo.commit(Targets.type, targets, _signers(targets_keys))
    else:
        for signer in _signers(targets_keys):
            targets.sign(TufSigner(signer), append=True)
        repo.staged_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(repo.staged_dir / "targets.json", repo._bytes(targets))
    online = isinstance(snapshot_key, Signer) and isinstance(timestamp_key, Signer)
    if online and repo.exists() and repo.versions(Targets.type):
        assert isinstance(snapshot_key, Signer) and isinstance(timestamp_key, Signer)
        renew(repo, snapshot_key, timestamp_key, now)
    return repo


def sign_role(repo: TufRepository, role: str, signers: Sequence[Signer]) -> Written:
    """``bastion tuf sign``: add signatures to the staged metadata of ``role``."""
    if not signers:
        raise ConfigError("tuf sign needs at least one --key")
    if role == Targets.type and not repo.exists():
        raise ConflictError("root is not published yet: sign the staged root first")
    return repo.sign_staged(role, signers)


def load_public_spec(path: str) -> Key:
    """A ``pub:PATH`` key spec: a PEM public key that signs later (``tuf sign``)."""
    from bastion.trust.keys import load_public_key_file
    from bastion.trust.signer import default_scheme

    public = load_public_key_file(path)
    return tuf_key(public, default_scheme(public))

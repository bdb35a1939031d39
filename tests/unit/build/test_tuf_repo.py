"""The TUF repository: thresholds and staging, renewal by expiry, the root-chain dry run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from tests.tufkit import NOW, Keys, custom, ed, make_repo, publish
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from bastion.build.tuf_repo import (
    TufRepository,
    init_repository,
    renew_snapshot,
    renew_timestamp,
    sign_role,
)
from bastion.build.tuf_rotate import Online, rotate
from bastion.errors import ConfigError, ConflictError, NotFoundError, SignatureError
from bastion.trust.tuf import TufSigner
from bastion.trust.tuf_chain import device_view


def _repo(tmp_path: Path, keys: Keys | None = None) -> tuple[TufRepository, Keys]:
    keys = keys or Keys()
    return make_repo(tmp_path / "repo", keys), keys


def test_layout_is_consistent_snapshots(tmp_path: Path) -> None:
    repo, keys = _repo(tmp_path)
    publish(repo, keys, tmp_path, "b.raucb", custom("1.0", 1))
    names = sorted(p.name for p in repo.metadata_dir.iterdir())
    assert "root.json" in names and "timestamp.json" in names and "1.root.json" in names
    assert not any(n in names for n in ("snapshot.json", "targets.json", "edge.json"))
    [stored] = (repo.targets_dir / "edge" / "stable").iterdir()
    assert stored.name.endswith(".b.raucb") and len(stored.name.split(".")[0]) == 64
    root = repo.root().signed
    assert root.consistent_snapshot is True
    assert root.roles["root"].threshold == 2


def test_timestamp_renewal_checks_expiry(tmp_path: Path) -> None:
    repo, keys = _repo(tmp_path)
    before = repo.latest("timestamp").signed
    kept = renew_timestamp(repo, keys.timestamp, NOW + dt.timedelta(hours=11))
    assert not kept.renewed and kept.version == before.version
    later = NOW + dt.timedelta(hours=13)  # less than half of the day left
    done = renew_timestamp(repo, keys.timestamp, later)
    assert done.renewed and done.version == before.version + 1
    assert done.expires == (later + dt.timedelta(days=1)).replace(microsecond=0)


def test_snapshot_renewal_follows_changed_roles(tmp_path: Path) -> None:
    repo, keys = _repo(tmp_path)
    assert not renew_snapshot(repo, keys.snapshot, NOW).renewed
    bundle = tmp_path / "x.raucb"
    bundle.write_bytes(b"x" * 100)
    repo.add_release(product="edge", channel="stable", bundle=bundle,
                     custom=custom("1.0", 1), signers=keys.product, now=NOW)  # fmt: skip
    snap = renew_snapshot(repo, keys.snapshot, NOW)
    assert snap.renewed
    listed = repo.latest("snapshot").signed.meta["edge.json"].version
    assert listed == repo.versions("edge")[-1]
    assert renew_timestamp(repo, keys.timestamp, NOW).renewed  # it names a new snapshot


def test_online_renewal_refuses_other_keys(tmp_path: Path) -> None:
    repo, keys = _repo(tmp_path)
    with pytest.raises(SignatureError, match="is not a timestamp key of root v1"):
        renew_timestamp(repo, keys.snapshot, NOW, force=True)
    with pytest.raises(SignatureError, match="is not a snapshot key"):
        renew_snapshot(repo, ed(), NOW, force=True)


def test_product_threshold_stages_until_signed(tmp_path: Path) -> None:
    keys = Keys(product=[ed(), ed()])
    repo, _ = _repo(tmp_path, keys)
    bundle = tmp_path / "x.raucb"
    bundle.write_bytes(b"x" * 100)
    written, _ = repo.add_release(
        product="edge", channel="stable", bundle=bundle, custom=custom("1.0", 1),
        signers=keys.product[:1], now=NOW,
    )  # fmt: skip
    assert not written.published and (written.signed, written.threshold) == (1, 2)
    assert (repo.staged_dir / "edge.json").exists()
    second = tmp_path / "y.raucb"
    second.write_bytes(b"y" * 100)
    written, _ = repo.add_release(
        product="edge", channel="stable", bundle=second, custom=custom("1.1", 1),
        signers=keys.product[:1], now=NOW,
    )  # fmt: skip
    assert not written.published  # builds on the staged version, still one signature
    done = sign_role(repo, "edge", keys.product[1:])
    assert done.published and not (repo.staged_dir / "edge.json").exists()
    listed = repo.latest("edge").signed.targets
    assert sorted(listed) == ["edge/stable/x.raucb", "edge/stable/y.raucb"]


def test_versions_never_change(tmp_path: Path) -> None:
    repo, keys = _repo(tmp_path)
    md = repo.latest("targets")
    md.signed.expires += dt.timedelta(days=1)
    with pytest.raises(ConflictError, match="versions never change"):
        repo.commit("targets", md, keys.targets)


def test_init_checks(tmp_path: Path) -> None:
    keys = Keys()
    args = dict(root_keys=keys.root, targets_keys=keys.targets, targets_threshold=1,
                snapshot_key=keys.snapshot, timestamp_key=keys.timestamp, now=NOW)  # fmt: skip
    with pytest.raises(ConfigError, match="threshold 3 with 2"):
        init_repository(tmp_path / "a", root_threshold=3, **args)  # type: ignore[arg-type]
    init_repository(tmp_path / "b", root_threshold=2, **args)  # type: ignore[arg-type]
    with pytest.raises(ConflictError, match="already"):
        init_repository(tmp_path / "b", root_threshold=2, **args)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="not a TUF repository"):
        TufRepository(tmp_path / "none").root()


def _root_v2(
    repo: TufRepository, signers: list[object], add: object | None = None, skip: int = 0
) -> bytes:
    md = repo.next_version("root", NOW)
    md.signed.version += skip
    if add is not None:
        md.signed.add_key(TufSigner(add).public_key, "root")  # type: ignore[arg-type]
        for keyid in list(md.signed.roles["root"].keyids)[:2]:
            md.signed.revoke_key(keyid, "root")
        md.signed.roles["root"].threshold = 1
    for s in signers:
        md.sign(TufSigner(s), append=True)  # type: ignore[arg-type]
    return md.to_bytes(JSONSerializer())


def test_device_view_negative_table(tmp_path: Path) -> None:
    repo, keys = _repo(tmp_path)
    v1 = repo.roots()[1]
    files = repo.current_files()
    new = ed()
    ok = device_view(v1, {2: _root_v2(repo, [*keys.root, new], add=new)}, files, NOW)
    assert ok.ok and ok.final_version == 2
    cases = {
        "previous root threshold": {2: _root_v2(repo, [new], add=new)},
        "its own root threshold": {2: _root_v2(repo, keys.root, add=new)},
        "expected root version 2": {2: _root_v2(repo, keys.root, skip=1)},
    }  # fmt: skip
    for match, roots in cases.items():
        view = device_view(v1, roots, files, NOW)
        assert not view.ok
        assert match in view.steps[0].reason, (match, view.steps[0].reason)
    expired = device_view(v1, {}, files, NOW + dt.timedelta(days=400))
    assert not expired.ok and "expired" in expired.steps[-1].reason
    stale = device_view(v1, {}, files, NOW + dt.timedelta(days=2))
    assert [s.what for s in stale.steps if not s.accepted] == ["timestamp"]


def test_rotation_of_snapshot_key_without_new_key_is_refused(tmp_path: Path) -> None:
    repo, keys = _repo(tmp_path)
    new = ed()
    old = TufSigner(keys.snapshot).keyid
    plan = rotate(repo, role="snapshot", add=[new], remove=[old], root_signers=keys.root,
                  online=Online(), now=NOW, dry_run=True)  # fmt: skip
    assert not plan.ok
    assert [s.what for s in plan.views[0].steps if not s.accepted] == ["snapshot"]
    plan = rotate(repo, role="snapshot", add=[new], remove=[old], root_signers=keys.root,
                  online=Online(snapshot=new, timestamp=keys.timestamp), now=NOW)  # fmt: skip
    assert plan.ok and repo.root().signed.version == 2
    assert isinstance(Metadata.from_bytes(repo.roots()[2]).signed, Root)
    with pytest.raises(ConfigError, match="threshold must be 1"):
        rotate(repo, role="timestamp", add=[ed()], threshold=2, root_signers=keys.root,
               online=Online(), now=NOW)  # fmt: skip


@pytest.mark.parametrize("alg", ["ecdsa-p256", "rsa-2048"])
def test_tpm_keys_sign_tuf_roles(tpm_rig, tmp_path: Path, alg: str) -> None:  # type: ignore[no-untyped-def]
    """A tpm: key (the server's online key, or an offline role key) signs TUF metadata."""
    from bastion.trust.keys import create_tpm_key

    tpm_key = create_tpm_key(tpm_rig.tpm, alg, tmp_path / "online.tpmkey")
    keys = Keys(timestamp=tpm_key, targets=[tpm_key])  # type: ignore[arg-type]
    repo = make_repo(tmp_path / "repo", keys)
    done = renew_timestamp(repo, tpm_key, NOW + dt.timedelta(hours=13))
    assert done.renewed
    view = device_view(repo.roots()[1], {}, repo.current_files(), NOW)
    assert view.ok, view.steps
    scheme = repo.root().signed.keys[TufSigner(tpm_key).keyid].scheme
    assert scheme == ("ecdsa-sha2-nistp256" if alg == "ecdsa-p256" else "rsa-pkcs1v15-sha256")


def test_release_paths_are_plain_segments(tmp_path: Path) -> None:
    repo, keys = _repo(tmp_path)
    bad = tmp_path / "a b.raucb"
    bad.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"bundle file name 'a b\.raucb'"):
        repo.add_release(product="edge", channel="stable", bundle=bad,
                         custom=custom("1", 1), signers=keys.product, now=NOW)  # fmt: skip
    good = tmp_path / "b.raucb"
    good.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"channel '\.\./x'"):
        repo.add_release(product="edge", channel="../x", bundle=good,
                         custom=custom("1", 1), signers=keys.product, now=NOW)  # fmt: skip
    with pytest.raises(NotFoundError, match="tuf delegate"):
        repo.add_release(product="nope", channel="stable", bundle=good,
                         custom=custom("1", 1), signers=keys.product, now=NOW)  # fmt: skip
    assert not (repo.targets_dir / "nope").exists()

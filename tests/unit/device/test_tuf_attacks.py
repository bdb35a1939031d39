"""The TUF attack table: each attack on the device's release metadata is refused with its own error.

The repository is bastion's (build/tuf_repo.py), served read-only over loopback HTTP;
the device is :class:`DeviceTufClient` (ngclient over bastion's HTTP client). The
attacker controls the server's files (and, where said, some keys).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from tests.tufkit import NOW, Keys, custom, ed, make_repo, publish, serve
from tuf.api import exceptions as tufx
from tuf.api.metadata import Metadata
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from bastion.build.tuf_repo import TufRepository, renew, renew_timestamp
from bastion.build.tuf_rotate import Online, rotate
from bastion.device.update.tuf_client import DeviceTufClient, translate
from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    ExpiredError,
    FormatError,
    IncompatibleError,
    LimitError,
    MixAndMatchError,
    RollbackError,
    SignatureError,
    TransportError,
)
from bastion.trust.tuf import TufSigner, check_release


def _client(tmp_path: Path, base: str, repo: TufRepository) -> DeviceTufClient:
    return DeviceTufClient(
        tmp_path / "device",
        f"{base}/metadata",
        f"{base}/targets",
        None,
        trusted_root=(repo.metadata_dir / "1.root.json").read_bytes(),
    )


def _setup(tmp_path: Path, **kw: int) -> tuple[TufRepository, Keys]:
    keys = Keys(targets=[ed(), ed()]) if kw.get("targets_threshold") == 2 else Keys()
    repo = make_repo(tmp_path / "repo", keys, **kw)
    files = tmp_path / "bundles"
    files.mkdir()
    publish(repo, keys, files, "edge-1.0.raucb", custom("1.0", 3))
    return repo, keys


def _forge_targets(repo: TufRepository, signers: list[object], keys: Keys) -> None:
    """The attacker writes a targets version signed by ``signers`` and re-signs online roles."""
    md = repo.next_version("targets", NOW)
    for signer in signers:
        md.sign(TufSigner(signer), append=True)  # type: ignore[arg-type]
    path = repo.metadata_dir / f"{md.signed.version}.targets.json"
    path.write_bytes(md.to_bytes(JSONSerializer(compact=True)))
    renew(repo, keys.snapshot, keys.timestamp, NOW)


def test_honest_refresh_lists_and_downloads(tmp_path: Path) -> None:
    repo, _ = _setup(tmp_path)
    with serve(repo.path) as base:
        client = _client(tmp_path, base, repo)
        client.refresh()
        [release] = client.releases()
        assert (release.version, release.svn, release.hardware) == ("1.0", 3, ("hw1",))
        got = client.download(release, tmp_path / "dl")
        assert got.read_bytes().startswith(b"edge-1.0.raucb")
        assert client.target_url(release).endswith(
            f"/targets/edge/stable/{release.sha256}.edge-1.0.raucb"
        )


def test_arbitrary_software_target_hash_mismatch(tmp_path: Path) -> None:
    repo, _ = _setup(tmp_path)
    with serve(repo.path) as base:
        client = _client(tmp_path, base, repo)
        client.refresh()
        [release] = client.releases()
        stored = next((repo.targets_dir / "edge" / "stable").iterdir())
        evil = bytearray(stored.read_bytes())
        evil[100] ^= 1
        stored.write_bytes(bytes(evil))
        with pytest.raises(DigestMismatchError, match="arbitrary software"):
            client.download(release, tmp_path / "dl")


def test_rollback_of_metadata(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path)
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    publish(repo, keys, tmp_path / "bundles", "edge-1.1.raucb", custom("1.1", 3))
    with serve(repo.path) as base:
        _client(tmp_path, base, repo).refresh()
        (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)
        with pytest.raises(RollbackError, match="metadata rollback: New timestamp version"):
            _client(tmp_path, base, repo).refresh()


def test_rollback_of_releases_lower_svn_never_picked(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path)
    publish(repo, keys, tmp_path / "bundles", "edge-0.9.raucb", custom("0.9", 2))
    with serve(repo.path) as base:
        client = _client(tmp_path, base, repo)
        client.refresh()
        assert client.pick("edge", "hw1", "stable", 3, "0.5").version == "1.0"  # type: ignore[union-attr]
        assert client.pick("edge", "hw1", "stable", 4, "1.5") is None
        old = next(r for r in client.releases() if r.svn == 2)
        with pytest.raises(RollbackError, match="security version 2, below the device's 3"):
            check_release(old, product="edge", hardware="hw1", channel="stable",
                          current_svn=3, current_version="1.0")  # fmt: skip


def test_indefinite_freeze_expired_timestamp(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path)
    renew_timestamp(repo, keys.timestamp, NOW - dt.timedelta(days=2), force=True)
    with serve(repo.path) as base, pytest.raises(ExpiredError, match="freeze"):
        _client(tmp_path, base, repo).refresh()


def test_endless_data_metadata_and_target(tmp_path: Path) -> None:
    repo, _ = _setup(tmp_path)
    with serve(repo.path) as base:
        client = _client(tmp_path, base, repo)
        client.refresh()
        [release] = client.releases()
        stored = next((repo.targets_dir / "edge" / "stable").iterdir())
        stored.write_bytes(stored.read_bytes() + b"\0" * 10_000_000)
        with pytest.raises(LimitError, match="endless data"):
            client.download(release, tmp_path / "dl")
        ts = repo.metadata_dir / "timestamp.json"
        ts.write_bytes(ts.read_bytes() + b" " * 40_000)
        with pytest.raises(LimitError, match="endless data"):
            _client(tmp_path, base, repo).refresh()


def test_mix_and_match(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path)
    publish(repo, keys, tmp_path / "bundles", "edge-1.1.raucb", custom("1.1", 3))
    versions = repo.versions("edge")
    newest = repo.metadata_dir / f"{versions[-1]}.edge.json"
    newest.write_bytes((repo.metadata_dir / f"{versions[-2]}.edge.json").read_bytes())
    with serve(repo.path) as base:
        client = _client(tmp_path, base, repo)
        client.refresh()  # root, timestamp, snapshot, targets: untouched
        with pytest.raises(MixAndMatchError, match="mix-and-match"):
            client.pick("edge", "hw1", "stable", 0, None)  # loads the product role
        with pytest.raises(MixAndMatchError, match="mix-and-match"):
            client.releases()


def test_mix_and_match_version(tmp_path: Path) -> None:
    """A snapshot file whose version is not the one the timestamp names."""
    repo, keys = _setup(tmp_path)
    ts = Metadata.from_bytes((repo.metadata_dir / "timestamp.json").read_bytes())
    snap_v = ts.signed.snapshot_meta.version
    md = repo.latest("snapshot")
    md.signed.version = snap_v - 1
    md.sign(TufSigner(keys.snapshot))
    (repo.metadata_dir / f"{snap_v}.snapshot.json").write_bytes(md.to_bytes(JSONSerializer()))
    ts.signed.snapshot_meta.hashes = None
    ts.signed.snapshot_meta.length = None
    ts.signed.version += 1
    ts.sign(TufSigner(keys.timestamp))
    (repo.metadata_dir / "timestamp.json").write_bytes(ts.to_bytes(JSONSerializer()))
    with serve(repo.path) as base, pytest.raises(MixAndMatchError, match="Expected snapshot"):
        _client(tmp_path, base, repo).refresh()


def test_fast_forward_recovery_after_timestamp_key_rotation(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path)
    honest = (repo.metadata_dir / "timestamp.json").read_bytes()
    # the attacker holds the timestamp key and fast-forwards devices to v1000
    ts = Metadata.from_bytes(honest)
    ts.signed.version = 1000
    ts.sign(TufSigner(keys.timestamp))
    (repo.metadata_dir / "timestamp.json").write_bytes(ts.to_bytes(JSONSerializer()))
    with serve(repo.path) as base:
        _client(tmp_path, base, repo).refresh()  # validly signed: the device takes v1000
        (repo.metadata_dir / "timestamp.json").write_bytes(honest)
        renew_timestamp(repo, keys.timestamp, NOW, force=True)
        with pytest.raises(RollbackError, match="must be >= 1000"):
            _client(tmp_path, base, repo).refresh()
        new_ts = ed()
        old_id = TufSigner(keys.timestamp).keyid
        rotate(repo, role="timestamp", add=[new_ts], remove=[old_id], root_signers=keys.root,
               online=Online(timestamp=new_ts), now=NOW)  # fmt: skip
        client = _client(tmp_path, base, repo)
        client.refresh()  # recovered: the old key's v1000 no longer counts
        assert [r.version for r in client.releases()] == ["1.0"]


def test_wrong_hardware_not_picked_and_refused(tmp_path: Path) -> None:
    repo, _ = _setup(tmp_path)
    with serve(repo.path) as base:
        client = _client(tmp_path, base, repo)
        client.refresh()
        assert client.pick("edge", "hw2", "stable", 0, None) is None
        assert client.pick("other", "hw1", "stable", 0, None) is None
        assert client.pick("edge", "hw1", "beta", 0, None) is None
        with pytest.raises(IncompatibleError, match="supports hardware hw1, not 'hw2'"):
            check_release(client.releases()[0], product="edge", hardware="hw2",
                          channel="stable", current_svn=0, current_version=None)  # fmt: skip


def test_keys_below_threshold(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path, targets_threshold=2)
    _forge_targets(repo, [keys.targets[0]], keys)
    with serve(repo.path) as base, pytest.raises(SignatureError, match="keys below threshold"):
        _client(tmp_path, base, repo).refresh()


def test_key_rotated_out(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path)
    old = keys.targets[0]
    new = ed()
    rotate(repo, role="targets", add=[new], remove=[TufSigner(old).keyid], root_signers=keys.root,
           online=Online(snapshot=keys.snapshot, timestamp=keys.timestamp, targets=[new]),
           now=NOW)  # fmt: skip
    with serve(repo.path) as base:
        _client(tmp_path, base, repo).refresh()
        _forge_targets(repo, [old], keys)
        with pytest.raises(SignatureError, match="rotated out"):
            _client(tmp_path, base, repo).refresh()


def test_plain_http_only_to_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain http"):
        DeviceTufClient(tmp_path, "http://updates.example/metadata", "http://updates.example/t",
                        None, trusted_root=b"{}")  # fmt: skip


def test_no_trusted_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no trusted TUF root"):
        DeviceTufClient(tmp_path, "http://127.0.0.1:1/m", "http://127.0.0.1:1/t", None)


@pytest.mark.parametrize(
    ("exc", "error", "match"),
    [
        (tufx.BadVersionNumberError("Expected snapshot version 3, got 2"), MixAndMatchError, "mix"),
        (tufx.BadVersionNumberError("Expected edge v3, got v2."), MixAndMatchError, "mix"),
        (tufx.BadVersionNumberError("Expected root version 2 instead got version 5"),
         MixAndMatchError, "mix"),
        (tufx.BadVersionNumberError("Expected targets.json version 2, got 3."), RollbackError,
         "rollback"),
        (tufx.BadVersionNumberError("New timestamp version 1 must be >= 2"), RollbackError,
         "rollback"),
        (tufx.ExpiredMetadataError("snapshot.json is expired"), ExpiredError, "freeze"),
        (tufx.DownloadLengthMismatchError("over"), LimitError, "endless data"),
        (tufx.LengthOrHashMismatchError("hash"), MixAndMatchError, "mix-and-match"),
        (DeserializationError("bad json"), FormatError, "bad json"),
        (tufx.DownloadHTTPError("HTTP 500", 500), TransportError, "HTTP 500"),
    ],
)  # fmt: skip
def test_translate_table(exc: Exception, error: type[Exception], match: str) -> None:
    out = translate(exc, what="TUF refresh")
    assert type(out) is error
    assert match in str(out)


def test_delegated_product_without_metadata_lists_nothing(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path)
    later = TufSigner(ed()).public_key  # its holder has not signed anything yet
    repo.delegate("other", [later], 1, keys.targets, NOW)
    renew(repo, keys.snapshot, keys.timestamp, NOW)
    with serve(repo.path) as base:
        client = _client(tmp_path, base, repo)
        client.refresh()
        assert [r.product for r in client.releases()] == ["edge"]
        assert client.pick("other", "hw1", "stable", 0, None) is None
        client.close()


def test_failed_refresh_forgets_earlier_releases(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path)
    with serve(repo.path) as base:
        client = _client(tmp_path, base, repo)
        client.refresh()
        assert client.releases()
        renew_timestamp(repo, keys.timestamp, NOW - dt.timedelta(days=2), force=True)
        with pytest.raises(ExpiredError):
            client.refresh()
        with pytest.raises(ConfigError, match="refresh"):
            client.releases()


def test_another_products_broken_role_does_not_block_this_product(tmp_path: Path) -> None:
    repo, keys = _setup(tmp_path)
    repo.delegate("other", keys.product, 1, keys.targets, NOW)
    publish(repo, keys, tmp_path / "bundles", "other-1.raucb", custom("1", 1, product="other"))
    publish(repo, keys, tmp_path / "bundles", "other-2.raucb", custom("2", 1, product="other"))
    versions = repo.versions("other")
    broken = repo.metadata_dir / f"{versions[-1]}.other.json"
    broken.write_bytes((repo.metadata_dir / f"{versions[-2]}.other.json").read_bytes())
    with serve(repo.path) as base:
        client = _client(tmp_path, base, repo)
        client.refresh()
        assert client.pick("edge", "hw1", "stable", 0, None) is not None
        with pytest.raises(MixAndMatchError):
            client.pick("other", "hw1", "stable", 0, None)


def test_fetcher_refuses_anything_but_200() -> None:
    import httpx

    from bastion.device.update.tuf_client import HttpFetcher
    from bastion.io.http import HttpClient

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("timestamp.json"):
            return httpx.Response(302, headers={"location": "http://evil.example/t.json"})
        return httpx.Response(404)

    client = HttpClient("http://127.0.0.1:1", transport=httpx.MockTransport(handler))
    fetcher = HttpFetcher(client)
    for name, status in (("timestamp.json", 302), ("2.root.json", 404)):
        with pytest.raises(tufx.DownloadHTTPError) as info:
            fetcher.download_bytes(f"http://127.0.0.1:1/metadata/{name}", 100)
        assert info.value.status_code == status
    fetcher.close()

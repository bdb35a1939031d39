"""End to end through the CLI: a TUF release repository feeds a sim device's A/B update.

``keys init`` / ``tuf init`` / ``tuf delegate`` / ``release build`` / ``release publish``
make the repository; a loopback HTTP server (free port, thread) serves it; a sim device
``update configure``d for it runs ``update check``, ``update install`` (TUF-picked,
Range-streamed), ``update reboot`` and ``update settle`` (commit, fuses bumped); a later
release with a lower SVN is never taken; the attacks (a substituted bundle, a flipped
bit, a target SHA-256 the bundle does not have, an expired timestamp) reach the CLI as
their own errors (exit code and error kind), and none activates anything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.server
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.bundlekit import release_keys
from tests.conftest import need_tool
from tests.updatekit import HARDWARE, PRODUCT, ReleaseFiles, make_device

from bastion.build.tuf_repo import TufRepository, renew, renew_timestamp
from bastion.cli.main import main
from bastion.tpm.fuses import FileFuseBank
from bastion.trust.keys import generate_private_key, load_private_key_pem, write_private_key
from bastion.trust.signer import SoftwareSigner

pytestmark = pytest.mark.integration

BLOCK = 4096
KEYS = release_keys("tuf-e2e")


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``folder`` over loopback HTTP (free port, a thread), with single Range requests
    as a CDN or the fleet server answers them; yields the base URL."""
    root = folder.resolve()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            return

        def do_GET(self) -> None:
            path = (root / self.path.lstrip("/")).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            header = self.headers.get("Range", "")
            if not header.startswith("bytes="):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            lo_text, _, hi_text = header[6:].partition("-")
            lo, hi = int(lo_text), min(int(hi_text), len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
            self.send_header("Content-Length", str(hi + 1 - lo))
            self.end_headers()
            self.wfile.write(data[lo : hi + 1])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _key(folder: Path, name: str) -> str:
    path = folder / f"{name}.pem"
    write_private_key(path, generate_private_key("ed25519"))
    return f"file:{path}"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    data = json.loads(out) if out.strip() else None
    return code, data, err


def _ok(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, data, err = _run(capsys, *argv)
    assert code == 0, (argv, err)
    return data


class Repo:
    """The test's build machine: keys, a TUF repository, releases built and published."""

    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp, self.capsys = tmp, capsys
        keys = tmp / "keys"
        _ok(capsys, "keys", "init", str(keys))  # the update-1 key signs the product role
        self.release_key = f"file:{keys / 'update-1.key.pem'}"
        r1, r2, tg = _key(keys, "root1"), _key(keys, "root2"), _key(keys, "targets")
        self.snap, self.ts = _key(keys, "snapshot"), _key(keys, "timestamp")
        self.path = tmp / "repo"
        _ok(capsys, "tuf", "init", str(self.path), "--root-key", r1, "--root-key", r2,
            "--root-threshold", "2", "--targets-key", tg, "--snapshot-key", self.snap,
            "--timestamp-key", self.ts)  # fmt: skip
        _ok(capsys, "tuf", "delegate", str(self.path), "--product", PRODUCT, "--key",
            self.release_key, "--targets-key", tg, "--snapshot-key", self.snap,
            "--timestamp-key", self.ts)  # fmt: skip
        self.ca, self.cert, self.bkey = KEYS.write(tmp)

    def build(self, version: str, svn: int, rootfs: bytes, uki: bytes) -> Path:
        folder = self.tmp / "build" / version
        folder.mkdir(parents=True)
        (folder / "root.img").write_bytes(rootfs)
        (folder / "uki.efi").write_bytes(uki)
        out = folder / f"{PRODUCT}-{version}.raucb"
        _ok(self.capsys, "release", "build", "--root", str(folder / "root.img"), "--uki",
            str(folder / "uki.efi"), "--compatible", PRODUCT, "--version", version,
            "--product", PRODUCT, "--svn", str(svn), "--hardware", HARDWARE,
            "--key", f"file:{self.bkey}", "--cert", str(self.cert), "-o", str(out))  # fmt: skip
        return out

    def publish(self, bundle: Path) -> dict[str, Any]:
        data: dict[str, Any] = _ok(
            self.capsys, "release", "publish", str(bundle), "--repo", str(self.path),
            "--channel", "stable", "--keyring", str(self.ca), "--key", self.release_key,
            "--snapshot-key", self.snap, "--timestamp-key", self.ts,
        )  # fmt: skip
        return data

    def stored(self, bundle: Path) -> Path:
        digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
        return self.path / "targets" / PRODUCT / "stable" / f"{digest}.{bundle.name}"


def _signer(uri: str) -> SoftwareSigner:
    return SoftwareSigner(load_private_key_pem(Path(uri.removeprefix("file:")).read_bytes()))


def _uki(tag: bytes) -> bytes:
    return b"MZ" + hashlib.sha512(tag).digest() * 64


@pytest.fixture
def world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Repo, Path, bytes]:
    need_tool("mksquashfs")
    repo = Repo(tmp_path, capsys)
    rnd = random.Random(7)
    base = rnd.randbytes(40 * BLOCK)
    factory = ReleaseFiles("1.0", 1, base, b"v" * BLOCK, _uki(b"1.0"), tmp_path / "none")
    dev = tmp_path / "dev"
    make_device(dev, factory)
    return repo, dev, base


def _configure(capsys: pytest.CaptureFixture[str], repo: Repo, dev: Path, base: str) -> Any:
    return _ok(capsys, "update", "configure", str(dev), "--product", PRODUCT, "--hardware",
               HARDWARE, "--channel", "stable", "--metadata-url", f"{base}/metadata",
               "--targets-url", f"{base}/targets", "--tuf-root",
               str(repo.path / "metadata" / "1.root.json"), "--keyring", str(repo.ca))  # fmt: skip


def test_tuf_update_end_to_end(
    world: tuple[Repo, Path, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, dev, base_root = world
    # release 2.0: one block of 40 changed (the delta downloads little of the rootfs)
    new_root = bytearray(base_root)
    new_root[5 * BLOCK : 6 * BLOCK] = random.Random(8).randbytes(BLOCK)
    b2 = repo.build("2.0", 2, bytes(new_root), _uki(b"2.0"))
    published = repo.publish(b2)
    assert published["path"] == f"{PRODUCT}/stable/{b2.name}"
    with serve(repo.path) as base:
        conf = _configure(capsys, repo, dev, base)
        assert conf["tuf"]["metadata_url"] == f"{base}/metadata" and conf["keyring"] is True
        check = _ok(capsys, "update", "check", str(dev))
        assert check["status"] == "available"
        assert check["target"]["version"] == "2.0" and check["target"]["svn"] == 2
        assert check["target"]["sha256"] == hashlib.sha256(b2.read_bytes()).hexdigest()
        assert check["running"] == {"version": "1.0", "svn": 1}
        assert main(["update", "check", str(dev)]) == 0  # the text a person reads
        text = capsys.readouterr().out
        assert "running 1.0 (svn 1, fuses 1)" in text and f"would install {PRODUCT}/stable/" in text
        done = _ok(capsys, "update", "install", str(dev))
        assert done["tuf_target"] == f"{PRODUCT}/stable/{b2.name}"
        assert (done["slot"], done["version"], done["svn"]) == ("b", "2.0", 2)
        assert done["blocks_downloaded"] <= 2  # the changed block (and no more)
        pending = _ok(capsys, "update", "check", str(dev))
        assert pending["status"] == "awaiting-reboot" and pending["target"]["version"] == "2.0"
        assert _ok(capsys, "update", "install", str(dev))["installed"] is None
        boot = _ok(capsys, "update", "reboot", str(dev))
        assert (boot["slot"], boot["trial"]) == ("b", True)
        settled = _ok(capsys, "update", "settle", str(dev))
        assert settled["action"] == "committed", settled
        assert FileFuseBank(dev / "fuses").counter() == 2
        again = _ok(capsys, "update", "check", str(dev))
        assert again["status"] == "up-to-date" and again["target"] is None
        assert main(["update", "check", str(dev)]) == 0
        assert "nothing to install: up to date" in capsys.readouterr().out
        nothing = _ok(capsys, "update", "install", str(dev))
        assert nothing["installed"] is None

        # a newer version with a lower SVN: TUF never picks it; given by hand, refused
        b3 = repo.build("3.0", 1, bytes(new_root[::-1]), _uki(b"3.0"))
        repo.publish(b3)
        low = _ok(capsys, "update", "check", str(dev))
        assert low["status"] == "up-to-date" and low["target"] is None, low
        [why] = [r["reason"] for r in low["refused"] if r["path"].endswith(b3.name)]
        assert "security version 1" in why and "below the device's 2" in why
        code, _, err = _run(capsys, "update", "install", str(dev), f"{base}/targets/"
                            f"{PRODUCT}/stable/{repo.stored(b3).name}")  # fmt: skip
        assert code == 2 and "RollbackError" in err and "fuse counter 2" in err, err
        assert FileFuseBank(dev / "fuses").counter() == 2
        status = _ok(capsys, "update", "status", str(dev))
        assert "3.0" not in json.dumps(status)


def test_tuf_attacks_through_the_cli(
    world: tuple[Repo, Path, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, dev, base_root = world
    b2 = repo.build("2.0", 2, base_root[::-1], _uki(b"2.0"))
    repo.publish(b2)
    b4 = repo.build("4.0", 4, base_root[BLOCK:] + base_root[:BLOCK], _uki(b"4.0"))
    stored2 = repo.stored(b2)
    with serve(repo.path) as base:
        _configure(capsys, repo, dev, base)
        # arbitrary software: the URL of the signed target serves another signed bundle
        genuine = stored2.read_bytes()
        stored2.write_bytes(b4.read_bytes())
        code, data, err = _run(capsys, "update", "install", str(dev))
        assert code == 2 and data["error"]["kind"] == "MixAndMatchError", err
        assert "does not match TUF target" in err, err
        # one flipped payload bit: the bundle's own verity tree names the block
        tampered = bytearray(genuine)
        tampered[3 * BLOCK + 17] ^= 0x01
        stored2.write_bytes(bytes(tampered))
        code, data, err = _run(capsys, "update", "install", str(dev))
        assert code == 2 and data["error"]["kind"] == "DigestMismatchError", err
        assert data["error"]["block"] == 3 and "payload block 3" in err, err
        stored2.write_bytes(genuine)
        # target hash mismatch: the server (holding the release and online keys) signs a
        # target whose SHA-256 is not the bundle's; the genuine bundle, whose signature,
        # tree, length, version and verity hash all pass, is served at that name
        tuf = TufRepository(repo.path)
        path = f"{PRODUCT}/stable/{b2.name}"
        md = tuf.next_version(PRODUCT, dt.datetime.now(dt.UTC))
        md.signed.targets[path].hashes["sha256"] = "ab" * 32
        tuf.commit(PRODUCT, md, [_signer(repo.release_key)])
        now = dt.datetime.now(dt.UTC)
        renew(tuf, _signer(repo.snap), _signer(repo.ts), now)
        (stored2.parent / f"{'ab' * 32}.{b2.name}").write_bytes(genuine)
        assert _ok(capsys, "update", "check", str(dev))["target"]["sha256"] == "ab" * 32
        code, data, err = _run(capsys, "update", "install", str(dev))
        assert code == 2 and data["error"]["kind"] == "DigestMismatchError", err
        assert data["error"]["area"] == "target" and "arbitrary software" in err, err
        assert f"says {'ab' * 32}" in err and "not activated" in err, err
        # indefinite freeze: a timestamp that expired (re-signed two days in the past)
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        renew_timestamp(tuf, _signer(repo.ts), past, force=True)
        for command in ("check", "install"):
            code, data, err = _run(capsys, "update", command, str(dev))
            assert code == 2 and data["error"]["kind"] == "ExpiredError", (command, err)
            assert "freeze" in err and "timestamp" in err, err
        status = _ok(capsys, "update", "status", str(dev))
    # nothing was activated by any attack
    assert FileFuseBank(dev / "fuses").counter() == 1
    slot_b = status["slots"]["b"]
    assert slot_b["state"] == "installing" and slot_b["entries"] == [], slot_b
    assert status["booted"]["slot"] == "a"

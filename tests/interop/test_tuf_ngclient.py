"""A plain python-tuf ngclient (its own urllib3 fetcher, no bastion code) reads our repository.

bastion writes the repository (``bastion tuf init``, ``tuf delegate``, ``release build``
with release fields, ``release publish``, ``tuf rotate``); it is served over loopback
HTTP by ``http.server``; the client path is only ``tuf.ngclient.Updater``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from tests.bundlekit import release_keys
from tests.conftest import need_tool
from tests.tufkit import serve
from tuf.ngclient import Updater

from bastion.cli.main import main
from bastion.trust.keys import generate_private_key, write_private_key

pytestmark = pytest.mark.interop


def _key(folder: Path, name: str, algorithm: str = "ed25519") -> str:
    path = folder / f"{name}.pem"
    write_private_key(path, generate_private_key(algorithm))
    return f"file:{path}"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict | list)
    return data if isinstance(data, dict) else {"list": data}


def test_plain_ngclient_refreshes_and_downloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_tool("mksquashfs")
    keys = tmp_path / "keys"
    keys.mkdir()
    r1, r2 = _key(keys, "root1"), _key(keys, "root2", "ecdsa-p256")
    tg, snap, ts, rel = (_key(keys, n) for n in ("targets", "snapshot", "timestamp", "release"))
    repo = tmp_path / "repo"
    _run(capsys, "tuf", "init", str(repo), "--root-key", r1, "--root-key", r2,
         "--root-threshold", "2", "--targets-key", tg, "--snapshot-key", snap,
         "--timestamp-key", ts)  # fmt: skip
    _run(capsys, "tuf", "delegate", str(repo), "--product", "edge", "--key", rel,
         "--targets-key", tg, "--snapshot-key", snap, "--timestamp-key", ts)  # fmt: skip
    ca, cert, bkey = release_keys().write(tmp_path)
    rootimg = tmp_path / "root.img"
    rootimg.write_bytes(os.urandom(64_000))
    bundle = tmp_path / "edge-2026.12.1.raucb"
    _run(capsys, "release", "build", "--root", str(rootimg), "--compatible", "bastion-edge",
         "--version", "2026.12.1", "--key", f"file:{bkey}", "--cert", str(cert),
         "--chain", str(ca), "--product", "edge", "--svn", "7", "--hardware", "hw-a",
         "--hardware", "hw-b", "--golden-pcr", f"11={'ab' * 32}", "-o", str(bundle))  # fmt: skip
    published = _run(capsys, "release", "publish", str(bundle), "--repo", str(repo),
                     "--channel", "stable", "--keyring", str(ca), "--key", rel,
                     "--snapshot-key", snap, "--timestamp-key", ts)  # fmt: skip
    assert published["snapshot_timestamp"]
    # a root rotation the device must follow: a new timestamp key
    new_ts = _key(keys, "timestamp2")
    _run(capsys, "tuf", "rotate", str(repo), "--role", "timestamp", "--add-key", new_ts,
         "--remove-key", _keyid(repo, "timestamp"), "--root-key", r1, "--root-key", r2,
         "--timestamp-key", new_ts)  # fmt: skip

    root_v1 = (repo / "metadata" / "1.root.json").read_bytes()
    with serve(repo) as base:
        device = tmp_path / "device"
        device.mkdir()
        updater = Updater(
            str(device),
            f"{base}/metadata/",
            str(tmp_path / "downloads"),
            f"{base}/targets/",
            bootstrap=root_v1,
        )
        updater.refresh()
        info = updater.get_targetinfo("edge/stable/edge-2026.12.1.raucb")
        assert info is not None
        (tmp_path / "downloads").mkdir()
        path = updater.download_target(info)
    assert Path(path).read_bytes() == bundle.read_bytes()
    custom = info.custom
    assert custom["version"] == "2026.12.1"
    assert custom["svn"] == 7
    assert custom["hardware"] == ["hw-a", "hw-b"]
    assert custom["golden_pcrs"] == {"11": "ab" * 32}
    assert custom["verity"]["hash"] and custom["verity"]["size"] > 0
    assert json.loads((device / "root.json").read_bytes())["signed"]["version"] == 2


def _keyid(repo: Path, role: str) -> str:
    root = json.loads((repo / "metadata" / "root.json").read_bytes())
    [keyid] = root["signed"]["roles"][role]["keyids"]
    return str(keyid)


def test_rauc_accepts_the_release_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ``[meta.bastion]`` group ``release build`` writes is one RAUC 1.8 reads past."""
    need_tool("mksquashfs")
    rauc = need_tool("rauc")
    ca, cert, bkey = release_keys().write(tmp_path)
    rootimg = tmp_path / "root.img"
    rootimg.write_bytes(os.urandom(64_000))
    bundle = tmp_path / "b.raucb"
    _run(capsys, "release", "build", "--root", str(rootimg), "--compatible", "bastion-edge",
         "--version", "1.0", "--key", f"file:{bkey}", "--cert", str(cert), "--product",
         "edge", "--svn", "3", "--hardware", "hw-a", "--min-base-version", "0.9",
         "-o", str(bundle))  # fmt: skip
    done = subprocess.run([rauc, "info", "--keyring", str(ca), str(bundle)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "bastion-edge" in done.stdout

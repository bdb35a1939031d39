"""``bastion tuf`` and ``release publish|list|show``: threshold signing, guarded rotation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.bundlekit import release_keys, synthetic_bundle

from bastion.cli.main import main
from bastion.trust.keys import generate_private_key, public_key_to_pem, write_private_key

KEYS = release_keys()
META = "\n[meta.bastion]\nproduct=edge\nsvn=4\nhardware=hw1,hw2\nmin-base-version=1.0\n"


def _key(folder: Path, name: str) -> str:
    path = folder / f"{name}.pem"
    key = generate_private_key("ed25519")
    write_private_key(path, key)
    (folder / f"{name}.pub.pem").write_bytes(public_key_to_pem(key.public_key()))
    return f"file:{path}"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    try:
        data = json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        data = out
    return code, data, err


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    keys = tmp_path / "keys"
    keys.mkdir()
    k = {n: _key(keys, n) for n in ("r1", "r2", "tg", "snap", "ts", "rel", "ts2")}
    k["repo"] = str(tmp_path / "repo")
    k["keys"] = str(keys)
    code, data, err = _run(capsys, "tuf", "init", k["repo"], "--root-key", k["r1"],
                           "--root-key", f"pub:{keys / 'r2.pub.pem'}", "--root-threshold", "2",
                           "--targets-key", k["tg"], "--snapshot-key", k["snap"],
                           "--timestamp-key", k["ts"], "--json")  # fmt: skip
    assert code == 0, err
    assert data["published"] is False  # one of two root holders has signed
    code, data, err = _run(capsys, "tuf", "sign", k["repo"], "root", "--key", k["r2"], "--json")
    assert code == 0, err
    assert data["written"]["published"] is True
    code, data, err = _run(capsys, "tuf", "sign", k["repo"], "targets", "--key", k["tg"],
                           "--snapshot-key", k["snap"], "--timestamp-key", k["ts"],
                           "--json")  # fmt: skip
    assert code == 0, err
    code, _, err = _run(capsys, "tuf", "delegate", k["repo"], "--product", "edge", "--key",
                        k["rel"], "--targets-key", k["tg"], "--snapshot-key", k["snap"],
                        "--timestamp-key", k["ts"])  # fmt: skip
    assert code == 0, err
    return k


def test_publish_list_show(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, _, _ = KEYS.write(tmp_path)
    bundle = tmp_path / "edge-1.2.3.raucb"
    bundle.write_bytes(synthetic_bundle(KEYS, 40, manifest_edit=META))
    code, data, err = _run(capsys, "release", "publish", str(bundle), "--repo", env["repo"],
                           "--channel", "beta", "--keyring", str(ca), "--key", env["rel"],
                           "--snapshot-key", env["snap"], "--timestamp-key", env["ts"],
                           "--json")  # fmt: skip
    assert code == 0, err
    assert data["path"] == "edge/beta/edge-1.2.3.raucb"
    assert data["custom"]["hardware"] == ["hw1", "hw2"]
    code, data, err = _run(capsys, "release", "list", "--repo", env["repo"], "--json")
    assert code == 0, err
    assert [(r["version"], r["svn"], r["channel"]) for r in data] == [("1.2.3", 4, "beta")]
    assert data[0]["min_base_version"] == "1.0"
    code, data, err = _run(capsys, "release", "show", "edge/beta/edge-1.2.3.raucb",
                           "--repo", env["repo"])  # fmt: skip
    assert code == 0, err
    assert "svn: 4" in data
    code, _, err = _run(capsys, "release", "show", "edge/beta/nope", "--repo", env["repo"])
    assert code == 5


def test_publish_refuses_unverified_or_fieldless_bundles(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, _, _ = KEYS.write(tmp_path)
    other = tmp_path / "o"
    other.mkdir()
    other_ca, _, _ = release_keys("other").write(other)
    bundle = tmp_path / "b.raucb"
    bundle.write_bytes(synthetic_bundle(KEYS, 40, manifest_edit=META))
    code, _, err = _run(capsys, "release", "publish", str(bundle), "--repo", env["repo"],
                        "--channel", "beta", "--keyring", str(other_ca),
                        "--key", env["rel"])  # fmt: skip
    assert code == 2, err
    bare = tmp_path / "bare.raucb"
    bare.write_bytes(synthetic_bundle(KEYS, 40))
    code, _, err = _run(capsys, "release", "publish", str(bare), "--repo", env["repo"],
                        "--channel", "beta", "--keyring", str(ca), "--key", env["rel"])  # fmt: skip
    assert code == 9
    assert "no product" in err
    code, _, err = _run(capsys, "release", "publish", str(bundle), "--repo", env["repo"],
                        "--channel", "beta", "--keyring", str(ca), "--key", env["rel"],
                        "--svn", "9")  # fmt: skip
    assert code == 9
    assert "the signed manifest says 4" in err


def test_rotation_dry_run_and_brick_guard(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root = json.loads((Path(env["repo"]) / "metadata" / "root.json").read_bytes())
    [old_ts] = root["signed"]["roles"]["timestamp"]["keyids"]
    base = ["tuf", "rotate", env["repo"], "--role", "timestamp", "--add-key", env["ts2"],
            "--remove-key", old_ts[:12], "--root-key", env["r1"],
            "--root-key", env["r2"]]  # fmt: skip
    # without the new timestamp key the current timestamp (old key) would be refused
    code, data, err = _run(capsys, *base, "--dry-run", "--json")
    assert code == 0, err
    assert data["ok"] is False
    [device] = data["devices"]
    assert device["trusted_root"] == 1 and device["final_root"] == 2
    refused = [s for s in device["steps"] if not s["accepted"]]
    assert refused[0]["what"] == "timestamp"
    code, _, err = _run(capsys, *base)
    assert code == 2
    assert "would stop updates on devices trusting root v1" in err
    assert not (Path(env["repo"]) / "metadata" / "2.root.json").exists()
    # with it, every device (trusting v1) accepts v2 and the re-signed timestamp
    code, data, err = _run(capsys, *base, "--timestamp-key", env["ts2"], "--dry-run", "--json")
    assert code == 0, err
    assert data["ok"] is True
    assert not (Path(env["repo"]) / "metadata" / "2.root.json").exists()
    code, data, err = _run(capsys, *base, "--timestamp-key", env["ts2"], "--json")
    assert code == 0, err
    assert (Path(env["repo"]) / "metadata" / "2.root.json").exists()
    code, data, err = _run(capsys, "tuf", "status", env["repo"], "--json")
    assert code == 0, err
    assert {r["role"]: r["version"] for r in data["roles"]}["root"] == 2
    # the old timestamp key can no longer renew
    code, _, err = _run(capsys, "tuf", "renew", env["repo"], "--snapshot-key", env["snap"],
                        "--timestamp-key", env["ts"], "--force")  # fmt: skip
    assert code == 2
    assert "is not a timestamp key of root v2" in err


def test_root_rotation_needs_both_thresholds(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    new = _key(Path(env["keys"]), "r3")
    code, data, err = _run(capsys, "tuf", "rotate", env["repo"], "--role", "root",
                           "--add-key", new, "--root-key", env["r1"], "--json")  # fmt: skip
    assert code == 0, err
    assert data["written"]["published"] is False  # 1 of 2 old signatures: staged
    code, data, err = _run(capsys, "tuf", "sign", env["repo"], "root", "--key", env["r2"],
                           "--json")  # fmt: skip
    assert code == 0, err
    assert data["written"]["published"] is True
    assert data["ok"] is True


def test_bump_extends_an_offline_role(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, data, err = _run(capsys, "tuf", "sign", env["repo"], "edge", "--bump", "--key",
                           env["rel"], "--snapshot-key", env["snap"], "--timestamp-key",
                           env["ts"], "--json")  # fmt: skip
    assert code == 0, err
    assert data["written"]["published"] is True and data["ok"] is True
    bumped = data["written"]["version"]
    assert bumped == 2  # v1 was the empty role `tuf delegate` made
    code, data, err = _run(capsys, "tuf", "status", env["repo"], "--json")
    edge = next(r for r in data["roles"] if r["role"] == "edge")
    assert edge["version"] == bumped
    code, _, err = _run(capsys, "tuf", "sign", env["repo"], "timestamp", "--bump", "--key",
                        env["ts"])  # fmt: skip
    assert code == 9
    assert "tuf renew" in err


def test_show_with_keyring_prints_the_bundles_golden_values(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.attestkit import boot_events, golden_of

    from bastion.trust.golden import golden_digest, sign_golden

    ca, _, _ = KEYS.write(tmp_path)
    statement = sign_golden(golden_of(boot_events(), svn=4, version="1.2.3"), KEYS.signer())
    bundle = tmp_path / "edge-1.2.3.raucb"
    bundle.write_bytes(synthetic_bundle(KEYS, 40, manifest_edit=META, golden=statement))
    code, _, err = _run(capsys, "release", "publish", str(bundle), "--repo", env["repo"],
                        "--channel", "beta", "--keyring", str(ca), "--key", env["rel"],
                        "--snapshot-key", env["snap"], "--timestamp-key", env["ts"])  # fmt: skip
    assert code == 0, err
    path = "edge/beta/edge-1.2.3.raucb"
    code, data, err = _run(capsys, "release", "show", path, "--repo", env["repo"],
                           "--keyring", str(ca), "--json")  # fmt: skip
    assert code == 0, err
    assert data["golden"]["sha256"] == golden_digest(statement)
    assert data["golden"]["security_version"] == 4
    code, data, err = _run(capsys, "release", "show", path, "--repo", env["repo"],
                           "--keyring", str(ca))  # fmt: skip
    assert code == 0 and "golden values" in data and "version 1.2.3" in data, err
    # without --keyring the bundle is not opened
    code, data, err = _run(capsys, "release", "show", path, "--repo", env["repo"], "--json")
    assert code == 0 and "golden" not in data, err

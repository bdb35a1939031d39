"""The attestation CLIs end to end against a real server (uvicorn on a free port).

``bastion keys init`` -> ``image build`` -> ``image golden`` (signed golden values) ->
``fleet attestation --product-key`` -> ``fleet golden set --image-statement`` ->
``device create/boot`` (sim, software TPM) -> ``device provision`` -> ``device attest``
-> config allowed; a statement signed by another product's key is refused; a device
whose posture breaks the policy fails (exit 2) and is refused config.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.bootkit import KERNEL, make_tree
from tests.conftest import need_tool

from bastion.cli.main import main
from bastion.device.platform.sim import SimPlatform
from bastion.device.provision import DeviceIdentity

from .devicekit import FleetWorld, serve_on_loopback, shared_world

pytestmark = pytest.mark.integration


@pytest.fixture  # one world per test: the image formats each set up the fleet afresh
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetWorld, str]]:
    with (
        shared_world("sqlite", tmp_path_factory.mktemp("attcli")) as world,
        serve_on_loopback(world.client.app) as url,
    ):
        yield world, url


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("pcrs", ["sha256:0,4,7,9,11", None])  # None: the fleet default
def test_golden_set_attest_and_gate(  # type: ignore[no-untyped-def]
    served, tmp_path: Path, monkeypatch, capsys, pcrs: str | None
) -> None:
    need_tool("mkfs.ext4")
    world, url = served
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.setenv("BASTION_TOKEN", world.headers["admin"]["Authorization"].split()[1])
    keys, other = tmp_path / "keys", tmp_path / "other-keys"
    assert main(["keys", "init", str(keys)]) == 0
    assert main(["keys", "init", str(other)]) == 0
    (tmp_path / "vmlinuz").write_bytes(KERNEL)
    disk = tmp_path / "disk.img"
    assert main([
        "image", "build",
        "--rootfs", str(make_tree(tmp_path / "tree")), "--kernel",
        str(tmp_path / "vmlinuz"), "--version", "1.0", "--security-version", "2",
        "--keys", str(keys), "--data-size", "24", "-o", str(disk),
    ]) == 0  # fmt: skip
    golden = tmp_path / "golden.sig"
    code, out, err = _run(capsys, "image", "golden", str(disk), "--keys", str(keys), "-o",
                          str(golden), "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["image"]["security_version"] == 2
    forged = tmp_path / "forged.sig"
    # the same values signed with another product's image key: refused by the server
    from bastion.trust.keyset import KeySet
    from bastion.trust.verdict import open_golden, sign_golden

    values = open_golden(golden.read_bytes(), [KeySet.load(str(keys)).verifier("image")])
    forged.write_bytes(sign_golden(values, KeySet.load(str(other)).signer("image")))

    fleet = world.fleet_id
    product = str(keys / "image.pub.pem")
    code, out, err = _run(capsys, "fleet", "attestation", fleet, "--server", url,
                          "--product-key", product, "--svn-floor", "1",
                          *(["--pcrs", pcrs] if pcrs else []))  # fmt: skip
    assert code == 0, err
    assert "SVN floor 1" in out and "not enforced" in out
    code, _, err = _run(capsys, "fleet", "golden", "set", fleet, "--server", url,
                        "--image-statement", str(forged))  # fmt: skip
    assert code != 0 and "signature" in err.lower()
    code, out, err = _run(capsys, "fleet", "golden", "set", fleet, "--server", url,
                          "--image-statement", str(golden))  # fmt: skip
    assert code == 0 and "accepted" in out, err
    code, out, _ = _run(capsys, "fleet", "golden", "list", fleet, "--server", url)
    assert "1.0" in out

    dev = tmp_path / "dev"
    assert main(["device", "create", str(dev), "--image", str(disk), "--keys", str(keys)]) == 0
    assert main(["device", "boot", str(dev)]) == 0
    key_file = tmp_path / "pk"
    key_file.write_text(world.create_key() + "\n")
    code, _, err = _run(capsys, "device", "provision", str(dev), "--server", url,
                        "--provisioning-key", str(key_file))  # fmt: skip
    assert code == 0, err
    identity = DeviceIdentity.load(dev)
    with SimPlatform(dev).attached_tpm() as tpm:
        headers = {"Authorization": f"Bearer {identity.api_key(tpm)}"}
    config = f"{url}/v1/device/config"
    refused = httpx.get(config, headers=headers)
    assert refused.status_code == 403 and refused.json()["error"] == "attestation_required"
    from bastion.errors import AttestationRequiredError
    from bastion.server.client import ApiClient

    with (
        ApiClient(url, headers["Authorization"].split()[1]) as client,
        pytest.raises(AttestationRequiredError, match="never attested"),
    ):
        client.call("GET", "/v1/device/config")

    posture = tmp_path / "posture.json"
    posture.write_text(json.dumps({"selinux": "enforcing"}))
    code, out, err = _run(capsys, "device", "attest", str(dev), "--fleet", fleet, "--posture",
                          str(posture), "--json")  # fmt: skip
    assert code == 0, (out, err)
    assert json.loads(out)["ok"] is True
    assert httpx.get(config, headers=headers).status_code == 200

    # the fleet now demands enforcing SELinux; the device reports permissive
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"require_selinux": "enforcing"}))
    assert main(["fleet", "attestation", fleet, "--server", url, "--posture-policy",
                 str(policy)]) == 0  # fmt: skip
    posture.write_text(json.dumps({"selinux": "permissive"}))
    code, out, err = _run(capsys, "device", "attest", str(dev), "--posture", str(posture))
    assert code == 2 and "posture.selinux.permissive" in out, (out, err)
    assert httpx.get(config, headers=headers).status_code == 403
    code, out, _ = _run(capsys, "device", "verdicts", identity.device_id, "--fleet", fleet,
                        "--server", url)  # fmt: skip
    assert code == 0
    assert (
        out.splitlines()[0].split()[2] == "FAIL" and "PASS" in out.splitlines()[1]
    )  # id, at, verdict

    # posture collected from a /proc + /sys tree (--posture-root), default the running system
    root = tmp_path / "root"
    (root / "sys/fs/selinux").mkdir(parents=True)
    (root / "sys/fs/selinux/enforce").write_bytes(b"1")
    code, out, err = _run(capsys, "device", "attest", str(dev), "--posture-root", str(root),
                          "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["ok"] is True, (out, err)
    assert httpx.get(config, headers=headers).status_code == 200
    (root / "sys/fs/selinux/enforce").unlink()  # SELinux state unknown: fails closed
    code, out, err = _run(capsys, "device", "attest", str(dev), "--posture-root", str(root))
    assert code == 2 and "posture.selinux.unknown" in out, (out, err)
    assert httpx.get(config, headers=headers).status_code == 403
    from bastion.device.posture import FileTree, collect_posture

    here = collect_posture(FileTree("/"))["selinux"]
    code, out, err = _run(capsys, "device", "attest", str(dev), "--json")
    failures = [f["id"] for f in json.loads(out)["failures"]]
    assert (code, failures) == (
        (0, []) if here == "enforcing" else (2, [f"posture.selinux.{here}"])
    )

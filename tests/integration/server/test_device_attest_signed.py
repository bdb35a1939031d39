"""``bastion device attest`` against a server that takes only signed device requests.

The device is provisioned through the CLI (software TPM in DEV) against a real server
(uvicorn on loopback) started with ``require_signed_device_requests``; ``device attest``
signs its challenge and evidence requests in the TPM (RFC 9421, ADR 0032) like the
agent, so the server issues a challenge, judges the quote and stores the verdict. The
same device's API key (what ``device attest`` used before) is refused there with 401.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.attestkit import boot_events, extend

from bastion.cli._device_fleet import _device_tpm
from bastion.cli.main import main
from bastion.device.attest import CHALLENGE_PATH
from bastion.device.provision import DeviceIdentity
from bastion.errors import AuthError
from bastion.io.http import HttpClient

from .devicekit import FleetWorld, serve_on_loopback, shared_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def signed_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetWorld, str]]:
    folder = tmp_path_factory.mktemp("attestsigned")
    with (
        shared_world("sqlite", folder, require_signed_device_requests=True) as world,
        serve_on_loopback(world.client.app) as url,
    ):
        yield world, url


def test_device_attest_signs_its_requests(  # type: ignore[no-untyped-def]
    signed_only, tmp_path: Path, monkeypatch, capsys
) -> None:
    world, url = signed_only
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    key_file = tmp_path / "pk"
    key_file.write_text(world.create_key() + "\n")
    dev = tmp_path / "dev"
    argv = ["device", "provision", str(dev), "--server", url, "--provisioning-key", str(key_file)]
    assert main(argv) == 0, capsys.readouterr().err
    identity = DeviceIdentity.load(dev)
    with _device_tpm(dev, None) as tpm:
        log = extend(tpm, boot_events())
        # the API key the command used before: refused by this server
        with (
            HttpClient(url) as http,
            pytest.raises(AuthError, match="only signed device requests"),
        ):
            http.call_object("POST", CHALLENGE_PATH, {}, token=identity.api_key(tpm))
    (tmp_path / "eventlog.bin").write_bytes(log)  # the boot those PCRs measured
    posture = tmp_path / "posture.json"
    posture.write_text(json.dumps({"aslr": 2}))
    capsys.readouterr()
    log_file = tmp_path / "eventlog.bin"
    code = main(
        ["device", "attest", str(dev), "--server", url, "--eventlog", str(log_file),
         "--posture", str(posture), "--json"]
    )  # fmt: skip
    out = capsys.readouterr()
    verdict = json.loads(out.out)
    assert code == (0 if verdict["ok"] else 2), out.err
    assert verdict["id"] and "unauthenticated" not in out.err
    # the server judged the quote: the verdict is in the device's history
    history = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{identity.device_id}/attestations",
        headers=world.headers["viewer"],
    )
    assert history.status_code == 200
    assert [v["id"] for v in history.json()] == [verdict["id"]]
    ids = {f["id"] for f in verdict["failures"]}
    assert not any(i.startswith("quote.") for i in ids), ids  # quote and nonce verified

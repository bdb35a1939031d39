"""Attestation of a sim device after a real boot of a real bastion image.

The image is built once; a device with a software TPM and one with swtpm each boot it
(the boot chain measures into the TPM and writes the event log); the device's TPM
quotes; the verifier judges that evidence against the golden values derived from the
signed image (``bastion image golden``'s code) and signed with the image key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.bootkit import make_tree, product_keys, spec_for, trust_of
from tests.conftest import need_tool

from bastion.build import image as img
from bastion.build.golden import golden_values
from bastion.device import boot as chain
from bastion.device.attest import build_evidence, sim_eventlog
from bastion.device.boot_create import create_device
from bastion.device.platform.sim import SimPlatform
from bastion.errors import SignatureError
from bastion.storage.disk_image import DiskImage
from bastion.trust import measure
from bastion.trust.image import predict_pcrs
from bastion.trust.signer import Verifier
from bastion.trust.verdict import (
    AttestationPolicy,
    PosturePolicy,
    evidence_result,
    open_golden,
    sign_golden,
)

pytestmark = pytest.mark.integration
SEL = measure.seal_selection()
POSTURE = {"secure_boot": True, "verity": "verified"}
POLICY = AttestationPolicy(SEL, 1, PosturePolicy(require_secure_boot=True, require_verity=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, img.BuiltImage]:
    need_tool("mkfs.ext4")
    root = tmp_path_factory.mktemp("attest-img")
    tree = make_tree(root / "tree")
    keys = product_keys()
    one = img.build_image(spec_for(tree), keys, root / "disk.img")
    two = img.build_image(spec_for(tree, kernel=b"another kernel" * 64), keys, root / "two.img")
    return {"one": one, "two": two}


LAST: dict[str, object] = {}


def _attest(dev: Path, golden: list[bytes], nonce: bytes = b"\x01" * 32) -> object:
    keys = product_keys()
    with SimPlatform(dev).attached_tpm() as tpm:
        ak = tpm.create_ak()
        ev = build_evidence(tpm, ak, nonce, SEL, sim_eventlog(dev), POSTURE)
    LAST.update(evidence=ev, ak=ak.public)
    return evidence_result(
        ev.to_bytes(),
        nonce=nonce,
        ak_public=ak.public,
        golden=golden,
        product_keys=[Verifier.of(keys.image.public_key())],
        policy=POLICY,
    )


@pytest.mark.parametrize("tpm", ["software", "swtpm"])
def test_booted_device_passes_against_its_signed_image(
    built: dict[str, img.BuiltImage], tmp_path: Path, tpm: str
) -> None:
    if tpm == "swtpm":
        need_tool("swtpm")
    keys = product_keys()
    dev = tmp_path / "dev"
    create_device(dev, built["one"].path, trust_of(keys), keys.platform_root, tpm=tpm)
    assert chain.boot(dev).reached is chain.Stage.RUNNING
    golden_one = sign_golden(golden_values(built["one"].path, trust_of(keys)), keys.image)
    verdict = _attest(dev, [golden_one])
    assert verdict.ok, verdict.failures  # type: ignore[attr-defined]
    _checkquote_agrees(tmp_path, b"\x01" * 32)
    # judged against another image's golden values (same root, another kernel)
    golden_two = sign_golden(golden_values(built["two"].path, trust_of(keys)), keys.image)
    verdict = _attest(dev, [golden_two])
    assert set(verdict.failure_ids) == {  # type: ignore[attr-defined]
        "pcr.mismatch.11",
        "component.kernel.mismatch",
    }


def test_golden_values_name_every_measured_component(built: dict[str, img.BuiltImage]) -> None:
    keys = product_keys()
    golden = golden_values(built["one"].path, trust_of(keys))
    assert set(golden.components) >= {
        "kernel",
        "cmdline",
        "initrd",
        "verity-root",
        "secure-boot-authority",
        "bootloader",
        "svn",
    }
    assert golden.pcrs == {
        i: v for i, v in predict_pcrs(DiskImage(built["one"].path)).items() if i in SEL.indexes
    }
    statement = sign_golden(golden, keys.image)
    assert open_golden(statement, [Verifier.of(keys.image.public_key())]) == golden
    with pytest.raises(SignatureError):
        open_golden(statement, [Verifier.of(product_keys(1).image.public_key())])


def _checkquote_agrees(work: Path, nonce: bytes) -> None:
    """The reference tool accepts the same quote, and refuses it for another nonce."""
    import subprocess

    from bastion.formats.tpm2 import Alg, PcrsFile
    from bastion.tpm.quote import public_pem

    tool = need_tool("tpm2_checkquote")
    ev = LAST["evidence"]
    (work / "q.msg").write_bytes(ev.quote)  # type: ignore[attr-defined]
    (work / "q.sig").write_bytes(ev.signature)  # type: ignore[attr-defined]
    (work / "ak.pem").write_bytes(public_pem(LAST["ak"]))  # type: ignore[arg-type]
    pcrs = PcrsFile.from_values(Alg.SHA256, dict(ev.pcrs))  # type: ignore[attr-defined]
    (work / "pcrs.bin").write_bytes(pcrs.to_bytes())
    for qualifier, want in ((nonce, 0), (b"\x02" * 32, 1)):
        run = subprocess.run(
            [tool, "-u", "ak.pem", "-m", "q.msg", "-s", "q.sig", "-f", "pcrs.bin", "-g",
             "sha256", "-q", qualifier.hex()],
            cwd=work, capture_output=True, check=False,
        )  # fmt: skip
        assert (run.returncode != 0) == bool(want), run.stderr

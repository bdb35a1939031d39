"""Attestation of a sim device after a real boot of the product disk.

The disk (``image build``: signed systemd-boot and UKI, verity root) is built once; a
device with a software TPM and one with swtpm each boot it through the EFI chain
(firmware, systemd-boot and stub measure into the TPM and write the event log; the
initrd phases follow in the userspace log); the device's TPM quotes PCRs 0, 4, 7, 9 and
11; the verifier judges that evidence against the golden values derived from the signed
image (``bastion image golden``'s code) and signed with the image key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.bootkit import product_keys, trust_of
from tests.conftest import need_tool
from tests.simefikit import INITRD, KERNEL, SbKeys, make_root, need_efi_tools, sb_keys

from bastion.build.efi_image import BuiltEfiImage, EfiImageKeys, build_efi_image
from bastion.build.fs import FsType
from bastion.build.golden import golden_values_efi
from bastion.build.image import ImageSpec
from bastion.device.attest import build_evidence, sim_eventlog
from bastion.device.boot.efi_chain import EfiBootChain, EfiStage
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.errors import SignatureError
from bastion.tpm.base import PcrSelection
from bastion.trust.golden import GoldenValues
from bastion.trust.image import predict_efi_pcrs
from bastion.trust.signer import Verifier
from bastion.trust.verdict import (
    AttestationPolicy,
    PosturePolicy,
    evidence_result,
    open_golden,
    sign_golden,
)

pytestmark = pytest.mark.integration
SEL = PcrSelection.parse("sha256:0,4,7,9,11")
POSTURE = {"secure_boot": True, "verity": "verified"}
POLICY = AttestationPolicy(SEL, 1, PosturePolicy(require_secure_boot=True, require_verity=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltEfiImage]:
    need_efi_tools()
    root = tmp_path_factory.mktemp("attest-img")
    tree = make_root(root / "tree")
    keys = EfiImageKeys(product_keys().image, sb_keys().db, sb_keys().pcr)

    def build(kernel: bytes, out: str) -> BuiltEfiImage:
        spec = ImageSpec(
            rootfs=tree,
            kernel=kernel,
            initrd=INITRD,
            version="1",
            security_version=1,
            fs=FsType.EROFS,
            data_size=24 * 1024 * 1024,
        )
        return build_efi_image(spec, keys, root / out)

    return {"one": build(KERNEL, "disk.img"), "two": build(b"another kernel" * 64, "two.img")}


def _golden(image: BuiltEfiImage, sb: SbKeys) -> GoldenValues:
    return golden_values_efi(
        image.path,
        trust_of(product_keys()),
        loader=image.loader,
        uki=image.uki,
        variables=sb.variables(),
    )


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
    built: dict[str, BuiltEfiImage], tmp_path: Path, tpm: str
) -> None:
    if tpm == "swtpm":
        need_tool("swtpm")
    keys, sb = product_keys(), sb_keys()
    dev = tmp_path / "dev"
    create_efi_device(dev, built["one"].path, sb.variables(), tpm=tpm, trust=trust_of(keys))
    assert EfiBootChain(SimPlatform(dev)).run().reached is EfiStage.RUNNING
    golden_one = sign_golden(_golden(built["one"], sb), keys.image)
    verdict = _attest(dev, [golden_one])
    assert verdict.ok, verdict.failures  # type: ignore[attr-defined]
    _checkquote_agrees(tmp_path, b"\x01" * 32)
    # judged against another image's golden values (same root, another kernel): the UKI's
    # Authenticode hash (PCR 4), its sections (11) and its .pcrsig in the initrd (9) differ
    golden_two = sign_golden(_golden(built["two"], sb), keys.image)
    verdict = _attest(dev, [golden_two])
    assert set(verdict.failure_ids) == {  # type: ignore[attr-defined]
        "pcr.mismatch.4",
        "pcr.mismatch.9",
        "pcr.mismatch.11",
        "component.kernel.mismatch",
    }


def test_golden_values_name_every_measured_component(built: dict[str, BuiltEfiImage]) -> None:
    keys, sb = product_keys(), sb_keys()
    one = built["one"]
    golden = _golden(one, sb)
    assert set(golden.components) >= {"kernel", "cmdline", "initrd", "os-release"}
    assert golden.pcrs == predict_efi_pcrs(one.loader, one.uki, sb.variables())
    assert set(golden.pcrs) == set(SEL.indexes)
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

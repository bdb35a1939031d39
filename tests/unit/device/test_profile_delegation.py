"""Item 16 at the device: ``create_efi_device`` and the sim firmware accept a profile
signed by the key the platform root delegated profile signing to, and nothing else
(negative table)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from tests.bootkit import product_keys, trust_of
from tests.simefikit import build_product, need_efi_tools, sb_keys

from bastion.device.boot.efi_chain import EfiBootChain, EfiBootReport
from bastion.device.boot_create import create_efi_device, sign_profile
from bastion.device.platform.sim import SimPlatform
from bastion.device.profile import DELEGATION_FILE, make_profile
from bastion.errors import ConfigError, SignatureError, TamperError
from bastion.trust import delegation as dl
from bastion.trust.image import ImageTrust
from bastion.trust.signer import Signer, SoftwareSigner

KEYS = product_keys()
ROOT = KEYS.platform_root
assert isinstance(ROOT, SoftwareSigner)
DELEGATION = dl.sign_delegation(ROOT, "profile", KEYS.boot.public_key())
STRANGER = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_efi_tools()
    return build_product(tmp_path_factory.mktemp("deleg"), sb_keys(), KEYS.image)


def create_device(
    dev: Path, image: Path, trust: ImageTrust, signer: Signer, *, profile_delegation: bytes | None
) -> None:
    create_efi_device(
        dev,
        image,
        sb_keys().variables(),
        trust=trust,
        profile_signer=signer,
        profile_delegation=profile_delegation,
    )


def _boot(dev: Path) -> EfiBootReport:
    return EfiBootChain(SimPlatform(dev)).run()


def test_delegated_key_creates_a_device_that_boots(image: Path, tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    create_device(dev, image, trust_of(KEYS), KEYS.boot, profile_delegation=DELEGATION)
    assert (dev / DELEGATION_FILE).read_bytes() == DELEGATION
    assert _boot(dev).reached == "running"


CREATE_CASES: list[tuple[str, object, bytes | None, type[Exception], str]] = [
    ("boot key without a delegation", KEYS.boot, None, ConfigError, "not the trusted platform"),
    ("a stranger with the boot key's delegation", STRANGER, DELEGATION, ConfigError,
     "names key"),
    ("a stranger delegating to itself", STRANGER,
     dl.sign_delegation(STRANGER, "profile", STRANGER.public_key()), SignatureError,
     "not signed by the platform root"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "signer", "grant", "error", "words"), CREATE_CASES, ids=[c[0] for c in CREATE_CASES]
)
def test_create_refuses(
    image: Path,
    tmp_path: Path,
    case: str,
    signer: SoftwareSigner,
    grant: bytes | None,
    error: type[Exception],
    words: str,
) -> None:
    with pytest.raises(error, match=words):
        create_device(tmp_path / "d", image, trust_of(KEYS), signer, profile_delegation=grant)
    assert not (tmp_path / "d").exists()


def _stranger_profile(dev: Path) -> None:  # signed by a key nobody delegated to
    sign_profile(dev, make_profile("halt", ("verity",), serial=2), STRANGER)


def _forged_delegation(dev: Path) -> None:  # a delegation the fused root did not sign
    (dev / DELEGATION_FILE).write_bytes(
        dl.sign_delegation(STRANGER, "profile", KEYS.boot.public_key())
    )


def _delegation_removed(dev: Path) -> None:  # the boot key's profile, without its grant
    (dev / DELEGATION_FILE).unlink()


def _stranger_delegated(dev: Path) -> None:  # the stranger's own grant, by the stranger
    (dev / DELEGATION_FILE).write_bytes(
        dl.sign_delegation(STRANGER, "profile", STRANGER.public_key())
    )
    _stranger_profile(dev)


ROM_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("profile by an undelegated key", _stranger_profile, "security profile refused"),
    ("delegation by another root", _forged_delegation, "profile delegation: not signed"),
    ("delegation removed", _delegation_removed, "security profile refused"),
    ("a stranger delegating to itself", _stranger_delegated, "profile delegation: not signed"),
]


@pytest.mark.parametrize(("case", "tamper", "words"), ROM_CASES, ids=[c[0] for c in ROM_CASES])
def test_rom_refuses(
    image: Path, tmp_path: Path, case: str, tamper: Callable[[Path], None], words: str
) -> None:
    dev = tmp_path / "dev"
    create_device(dev, image, trust_of(KEYS), KEYS.boot, profile_delegation=DELEGATION)
    tamper(dev)
    with pytest.raises(TamperError, match=words) as exc:
        _boot(dev)
    assert str(exc.value).startswith("firmware: ")

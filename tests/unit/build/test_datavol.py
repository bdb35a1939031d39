"""The VM data volume: LUKS2 made on the host, its signed-PCR-11 token sealed on a swtpm
state folder that a later power-on of the same TPM unlocks only with a matching .pcrsig."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.conftest import need_tool

from bastion.build import datavol
from bastion.errors import BastionError, ConfigError
from bastion.storage.luks2_io import FileRange
from bastion.storage.luks2_volume import Luks2Volume
from bastion.storage.sealed import Tpm2Token, unlock_with_token
from bastion.tpm.swtpm import Swtpm
from bastion.tpm.tss import TssTpm
from bastion.trust.keys import public_key_to_pem
from bastion.trust.pcr11 import pcrsig_json, sign_pcr11
from bastion.trust.signer import SignatureScheme, SoftwareSigner


def _signer() -> SoftwareSigner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256)


def _unlock(path: Path, state: Path, pcrsig: bytes) -> int:
    with FileRange(path) as storage, Swtpm.start(state) as swtpm:
        volume = Luks2Volume.open(storage)
        tpm = TssTpm(swtpm.uri)
        try:
            return unlock_with_token(volume, tpm, pcr_signature=pcrsig)
        finally:
            tpm.close()


def test_token_unlocks_on_the_same_tpm_state_only_with_a_matching_pcrsig(
    tmp_path: Path,
) -> None:
    for tool in ("swtpm", "swtpm_setup"):
        need_tool(tool)
    signer = _signer()
    pem = public_key_to_pem(signer.public_key())
    data = datavol.build_data_volume(tmp_path / "data.luks", tmp_path / "tpm", pem, b"recover")
    assert (data.tpm_state / "tpm2-00.permall").is_file()
    assert data.enrollment.pubkey_pcrs == (11,) and data.enrollment.pcrs == ()
    with FileRange(data.path) as storage:
        volume = Luks2Volume.open(storage)
        assert volume.uuid == data.uuid and volume.label == datavol.DATA_LABEL
        token = Tpm2Token.from_token(volume.tokens[data.enrollment.token])
        assert token.pubkey == pem and token.pubkey_pcrs == (11,)
        assert volume.unlock_passphrase(b"recover") == 0  # the recovery keyslot
    # a fresh power-on of that TPM: PCR 11 is all zeros, the value of no sections at all
    good = pcrsig_json(sign_pcr11({}, signer, ("",)))
    assert _unlock(data.path, data.tpm_state, good) == data.enrollment.keyslot
    # signed by the right key for other sections; or for these, by another key
    stale = pcrsig_json(sign_pcr11({".linux": b"another kernel"}, signer, ("",)))
    foreign = pcrsig_json(sign_pcr11({}, _signer(), ("",)))
    for bad in (stale, foreign):
        with pytest.raises(BastionError):
            _unlock(data.path, data.tpm_state, bad)


@pytest.mark.parametrize(
    ("size", "recovery", "match"),
    [
        (16 * datavol.MiB, b"r", "at least 20 MiB"),
        (32 * datavol.MiB + 512, b"r", "whole number of MiB"),
        (32 * datavol.MiB, b"", "recovery passphrase"),
    ],
    ids=["too small", "not whole MiB", "no recovery"],
)
def test_format_refusals(tmp_path: Path, size: int, recovery: bytes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        datavol.format_data_volume(tmp_path / "d.luks", recovery, size=size)
    assert not (tmp_path / "d.luks").exists()

"""PCR arithmetic and policy digests against values from tpm2-tools and the TCG specs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.formats.tpm2 import u32
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.tpm.pcr import (
    EK_POLICY,
    TPM_RH_ENDORSEMENT,
    auth_value_trim,
    empty_policy,
    extend,
    pcr_digest,
    policy_auth_value,
    policy_command_code,
    policy_nv,
    policy_or,
    policy_pcr,
    policy_secret,
    replay,
    reset_value,
    sealing_policy,
    selection_bytes,
)

VEC = Path(__file__).resolve().parents[2] / "vectors" / "tpm"
SEL = PcrSelection.parse("sha256:0,7,23")


def _vector_pcrs() -> dict[int, bytes]:
    raw = (VEC / "pcr_0_7_23.bin").read_bytes()
    return {0: raw[:32], 7: raw[32:64], 23: raw[64:96]}


def test_replay_matches_swtpm_pcr23() -> None:
    events = [(23, hashlib.sha256(f"bastion-vector-{i}".encode()).digest()) for i in (1, 2)]
    assert replay(events)[23] == _vector_pcrs()[23]


def test_extend_definition() -> None:
    d = hashlib.sha256(b"m").digest()
    assert extend(bytes(32), d) == hashlib.sha256(bytes(32) + d).digest()
    assert extend(bytes(20), bytes(20), HashAlg.SHA1) == hashlib.sha1(bytes(40)).digest()


def test_reset_values() -> None:
    assert reset_value(0) == bytes(32)
    assert reset_value(17) == b"\xff" * 32 and reset_value(22) == b"\xff" * 32
    assert reset_value(23) == bytes(32)
    assert replay([(17, bytes(32))])[17] == hashlib.sha256(b"\xff" * 32 + bytes(32)).digest()


def test_policy_pcr_matches_tpm2_createpolicy() -> None:
    expected = (VEC / "policy_pcr_0_7_23.bin").read_bytes()
    assert policy_pcr(SEL, _vector_pcrs()) == expected
    assert sealing_policy(SEL, _vector_pcrs()) == expected


def test_selection_bytes() -> None:
    assert selection_bytes(SEL) == bytes.fromhex("00000001000b03810080")


def test_well_known_digests() -> None:
    # PolicyAuthValue from the empty policy (widely published constant)
    assert policy_auth_value() == bytes.fromhex(
        "8fcd2169ab92694e0c633f1ab772842b8241bbc20288981fc7ac1eddc1fddb0e"
    )
    # TCG EK Credential Profile: PolicySecret(TPM_RH_ENDORSEMENT)
    assert (
        bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
        == EK_POLICY
    )
    assert policy_secret(u32(TPM_RH_ENDORSEMENT)) == EK_POLICY


def test_sealing_policy_with_auth_value_is_chained() -> None:
    pcrs = _vector_pcrs()
    assert sealing_policy(SEL, pcrs, with_auth_value=True) == policy_auth_value(
        policy_pcr(SEL, pcrs)
    )


def test_policy_or_and_command_code_definitions() -> None:
    a, b = policy_auth_value(), EK_POLICY
    assert policy_or([a, b]) == hashlib.sha256(bytes(32) + u32(0x171) + a + b).digest()
    assert policy_or([a, b]) != policy_or([b, a])
    assert (
        policy_command_code(0x153) == hashlib.sha256(bytes(32) + u32(0x16C) + u32(0x153)).digest()
    )


def test_policy_nv_definition() -> None:
    name = b"\x00\x0b" + bytes(32)
    args = hashlib.sha256(b"\x01" + b"\x00\x00" + b"\x00\x00").digest()
    assert policy_nv(name, b"\x01") == hashlib.sha256(bytes(32) + u32(0x149) + args + name).digest()


def test_pcr_digest_uses_index_order() -> None:
    vals = {i: bytes([i]) * 32 for i in (0, 7, 23)}
    assert pcr_digest(SEL, vals) == hashlib.sha256(vals[0] + vals[7] + vals[23]).digest()


@pytest.mark.parametrize(
    ("case", "call"),
    [
        ("extend short digest", lambda: extend(bytes(32), bytes(31))),
        ("extend wrong bank size", lambda: extend(bytes(20), bytes(20))),
        ("replay bad index", lambda: replay([(24, bytes(32))])),
        ("missing PCR value", lambda: pcr_digest(SEL, {0: bytes(32), 7: bytes(32)})),
        ("wrong value size", lambda: policy_pcr(SEL, {0: bytes(32), 7: bytes(32), 23: bytes(20)})),
        ("short start policy", lambda: policy_auth_value(bytes(20))),
        ("or with one branch", lambda: policy_or([EK_POLICY])),
        ("or with nine branches", lambda: policy_or([EK_POLICY] * 9)),
        ("or with short branch", lambda: policy_or([EK_POLICY, bytes(5)])),
    ],
)
def test_bad_input_is_config_error(case: str, call: object) -> None:
    assert callable(call)
    with pytest.raises(ConfigError):
        call()


def test_auth_value_trim_and_empty_policy() -> None:
    assert auth_value_trim(b"pin\0\0") == b"pin"
    assert auth_value_trim(b"\0\0") == b""
    assert empty_policy(HashAlg.SHA1) == bytes(20)

"""Hypothesis: every TPM 2.0 unmarshal function takes arbitrary bytes to an object or a
FormatError, and anything it accepts re-marshals to the same bytes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats.tpm2 import (
    HASH_SIZES,
    ST_ATTEST_CERTIFY,
    ST_ATTEST_QUOTE,
    Alg,
    Attest,
    CertifyInfo,
    ClockInfo,
    CredentialFile,
    Curve,
    EccParms,
    EccPoint,
    EncryptedSecret,
    IdObject,
    KeyedHashParms,
    PcrSelect,
    PcrSelectionList,
    PcrsFile,
    Private,
    Public,
    QuoteInfo,
    RsaParms,
    Scheme,
    Sensitive,
    Signature,
    SymDef,
    VerifiedTicket,
)

VEC = Path(__file__).resolve().parents[1] / "vectors" / "tpm"

# (parser, re-marshal is identity on accepted input)
PARSERS: list[tuple[Any, bool]] = [
    (Public.parse, True),
    (Public.from_tpmt, False),
    (Sensitive.parse, True),
    (Private.parse, True),
    (PcrSelectionList.parse, True),
    (Attest.parse, True),
    (Signature.parse, True),
    (IdObject.parse, True),
    (EncryptedSecret.parse, True),
    (CredentialFile.parse, True),
    (PcrsFile.parse, False),
    (VerifiedTicket.parse, True),
]
SEEDS = [
    (VEC / n).read_bytes()
    for n in (
        "ek.pub",
        "ak.tpm2b_public",
        "quote.msg",
        "quote.sig",
        "quote.pcrs",
        "credential.blob",
    )
]


def _check(data: bytes) -> None:
    for parse, identity in PARSERS:
        try:
            obj = parse(data)
        except FormatError:
            continue
        if identity:
            assert obj.to_bytes() == data, parse


@given(st.binary(max_size=700))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 700),
)
def test_mutated_tool_output(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    _check(bytes(data[: max(cut, len(data) // 2)]))
    _check(bytes(data))


hashes = st.sampled_from(sorted(HASH_SIZES))
small = st.binary(max_size=64)
schemes = st.sampled_from(
    [Scheme(), Scheme(Alg.ECDSA, Alg.SHA256), Scheme(Alg.ECDAA, Alg.SHA384, 3)]
)
syms = st.sampled_from([SymDef(), SymDef(Alg.AES, 128, Alg.CFB), SymDef(Alg.AES, 256, Alg.CTR)])
publics = st.one_of(
    st.builds(
        Public,
        st.just(Alg.ECC),
        hashes,
        st.integers(0, 2**32 - 1),
        small,
        st.builds(EccParms, syms, schemes, st.sampled_from(list(Curve)), st.just(Scheme())),
        st.builds(EccPoint, small, small),
    ),
    st.builds(
        Public,
        st.just(Alg.RSA),
        hashes,
        st.integers(0, 2**32 - 1),
        small,
        st.builds(
            RsaParms,
            syms,
            st.sampled_from([Scheme(), Scheme(Alg.RSASSA, Alg.SHA1), Scheme(Alg.RSAES)]),
            st.sampled_from([1024, 2048, 4096]),
            st.integers(0, 2**32 - 1),
        ),
        st.binary(max_size=512),
    ),
    st.builds(
        Public,
        st.just(Alg.KEYEDHASH),
        hashes,
        st.integers(0, 2**32 - 1),
        small,
        st.builds(KeyedHashParms, st.sampled_from([Scheme(), Scheme(Alg.HMAC, Alg.SHA512)])),
        small,
    ),
)


@given(publics)
def test_public_round_trip(pub: Public) -> None:
    assert Public.parse(pub.to_bytes()) == pub


selections = st.builds(
    PcrSelectionList,
    st.lists(st.builds(PcrSelect, hashes, st.binary(max_size=4)), max_size=4).map(tuple),
)
attests = st.builds(
    Attest,
    st.sampled_from([ST_ATTEST_QUOTE, ST_ATTEST_CERTIFY]),
    small,
    small,
    st.builds(
        ClockInfo,
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.booleans(),
    ),
    st.integers(0, 2**64 - 1),
    st.one_of(st.builds(QuoteInfo, selections, small), st.builds(CertifyInfo, small, small)),
).filter(lambda a: isinstance(a.attested, QuoteInfo) == (a.type == ST_ATTEST_QUOTE))


@given(attests)
def test_attest_round_trip(att: Attest) -> None:
    assert Attest.parse(att.to_bytes()) == att


@given(st.sampled_from([Alg.ECDSA, Alg.SM2]), hashes, small, small)
def test_signature_round_trip(alg: int, h: int, r: bytes, s: bytes) -> None:
    sig = Signature(alg, h, r=r, s=s)
    assert Signature.parse(sig.to_bytes()) == sig


@given(st.sampled_from([Alg.SHA1, Alg.SHA256]), st.sets(st.integers(0, 23), min_size=1))
def test_pcrs_file_round_trip(h: int, indexes: set[int]) -> None:
    values = {i: bytes([i]) * HASH_SIZES[h] for i in indexes}
    pf = PcrsFile.from_values(h, values)
    assert PcrsFile.parse(pf.to_bytes()) == pf
    assert pf.bank_values() == {h: values}


@given(small, st.binary(min_size=1, max_size=100), st.binary(max_size=256))
def test_credential_round_trip(mac: bytes, enc: bytes, secret: bytes) -> None:
    obj = IdObject(mac, enc)
    assert IdObject.parse(obj.to_bytes()) == obj
    cf = CredentialFile(obj.to_bytes(), EncryptedSecret(secret).to_bytes())
    assert CredentialFile.parse(cf.to_bytes()) == cf


@given(st.binary(max_size=400))
def test_software_tpm_state_file_is_decoded_or_refused(data: bytes) -> None:
    from bastion.errors import TpmError
    from bastion.tpm._software_state import State

    with contextlib.suppress(TpmError):
        State.from_json(data, "fuzz")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
        max_leaves=10,
    )
)
def test_software_tpm_state_json_shapes(doc: object) -> None:
    import json

    from bastion.errors import TpmError
    from bastion.tpm._software_state import State

    for candidate in (doc, {"format": "bastion-software-tpm", "version": 1, "seeds": doc}):
        with contextlib.suppress(TpmError):
            State.from_json(json.dumps(candidate).encode(), "fuzz")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=3),
    max_leaves=8,
)


@given(
    st.sampled_from(
        [
            "seeds",
            "ek_private",
            "pcrs",
            "nv",
            "counter_max",
            "fuse_memory",
            "reset_count",
            "restart_count",
            "clock_ms",
            "clock_at",
            "format",
            "version",
        ]
    ),
    _JSON,
)
def test_software_tpm_state_with_one_bad_field(key: str, value: object) -> None:
    import json

    from bastion.errors import TpmError
    from bastion.tpm._software_state import State

    doc = json.loads(State.fresh(0.0).to_json())
    doc[key] = value
    with contextlib.suppress(TpmError):
        State.from_json(json.dumps(doc).encode(), "fuzz")

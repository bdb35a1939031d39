"""The attestation verifier (trust/verdict.py): a real software-TPM quote over a sim boot's
measurements, and the negative table: every attack named in the issue gives its own
failure id, and every failure is collected (not only the first)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.attestkit import SEL, boot_events, extend, golden_of

from bastion.device.attest import build_evidence
from bastion.errors import FormatError, VerificationError
from bastion.formats import eventlog as el
from bastion.io.clock import FixedClock
from bastion.tpm.base import PcrSelection, TpmKey
from bastion.tpm.software import SoftwareTpm
from bastion.trust.envelope import Envelope
from bastion.trust.keys import KeyAlgorithm, generate_private_key
from bastion.trust.signer import SoftwareSigner, Verifier
from bastion.trust.verdict import (
    GOLDEN_PAYLOAD_TYPE,
    AttestationPolicy,
    ClockState,
    Evidence,
    PosturePolicy,
    Verdict,
    components_of,
    evidence_result,
    parse_evidence,
    sign_golden,
    verify_evidence,
)

PRODUCT = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
OTHER = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
GOOD_POSTURE = {
    "selinux": "enforcing",
    "randomize_va_space": 2,
    "lockdown": "integrity",
    "secure_boot": True,
    "module_sig_enforce": True,
    "verity": "verified",
    "listening_ports": [22],
    "cmdline": "quiet roothash=00",
}
STRICT = PosturePolicy(
    require_selinux="enforcing",
    min_aslr=2,
    require_lockdown="integrity",
    require_secure_boot=True,
    require_module_sig_enforce=True,
    require_verity=True,
    allowed_ports=(22,),
    forbidden_cmdline=("init=", "selinux=0"),
)


@dataclasses.dataclass
class Device:
    tpm: SoftwareTpm
    ak: TpmKey
    log: bytes
    state: Path


def booted(tmp_path: Path, events: list[el.Event], name: str = "tpm") -> Device:
    tpm = SoftwareTpm(
        tmp_path / name / "state.json", clock=FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    )
    for ev in events:
        tpm.pcr_extend(ev.pcr, {SEL.bank: ev.digest(el.ALG_SHA256)})
    ak = tpm.create_ak()
    log = el.EventLog(el.SpecIdEvent(), tuple(events)).to_bytes()
    return Device(tpm, ak, log, tmp_path / name / "state.json")


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return booted(tmp_path, boot_events())


GOLDEN = sign_golden(golden_of(boot_events()), PRODUCT)


def judge(
    dev: Device,
    *,
    nonce: bytes = b"n" * 32,
    quote_nonce: bytes | None = None,
    ak: bytes | None = None,
    golden: tuple[bytes, ...] = (GOLDEN,),
    floor: int = 0,
    posture: dict[str, Any] | None = None,
    policy: PosturePolicy = STRICT,
    previous: ClockState | None = None,
    log: bytes | None = None,
    quoting_ak: TpmKey | None = None,
    others: tuple[bytes, ...] = (),
) -> Verdict:
    ev = build_evidence(
        dev.tpm,
        quoting_ak or dev.ak,
        quote_nonce if quote_nonce is not None else nonce,
        SEL,
        log if log is not None else dev.log,
        GOOD_POSTURE if posture is None else posture,
    )
    return evidence_result(
        ev.to_bytes(),
        nonce=nonce,
        ak_public=dev.ak.public if ak is None else ak,
        golden=golden,
        product_keys=[Verifier.of(PRODUCT.public_key())],
        policy=AttestationPolicy(SEL, floor, policy),
        previous=previous,
        others=others,
    )


def test_real_software_tpm_quote_passes(device: Device) -> None:
    verdict = judge(device)
    assert verdict.ok, verdict.failures
    assert verdict.release == "1.0"
    assert verdict.security_version == 3
    assert verdict.clock is not None


def test_verify_evidence_raises_naming_every_failure(device: Device) -> None:
    ev = build_evidence(device.tpm, device.ak, b"old", SEL, device.log, {"selinux": "permissive"})
    with pytest.raises(VerificationError, match=r"quote\.nonce.*posture\.selinux\.permissive"):
        verify_evidence(
            ev,
            nonce=b"new",
            ak_public=device.ak.public,
            golden=[GOLDEN],
            product_keys=[Verifier.of(PRODUCT.public_key())],
            policy=AttestationPolicy(SEL, 0, STRICT),
        )


# --- the negative table -------------------------------------------------------------------------


def _replayed(dev: Device, tmp_path: Path) -> Verdict:
    """A quote answering an old nonce, replayed against a fresh challenge."""
    return judge(dev, nonce=b"fresh-nonce-0001", quote_nonce=b"old-nonce-000001")


def _other_tpm(dev: Device, tmp_path: Path) -> Verdict:
    """Same boot on another TPM: its AK quotes, the device's enrolled AK is expected."""
    thief = booted(tmp_path, boot_events(), "thief")
    return judge(thief, ak=dev.ak.public)


def _edited_log(dev: Device, tmp_path: Path) -> Verdict:
    """The device booted another kernel; the log is edited to show the golden events."""
    evil = booted(tmp_path, boot_events(kernel=b"evil kernel"), "evil")
    return judge(evil, log=dev.log)


def _unsigned_golden(dev: Device, tmp_path: Path) -> Verdict:
    """Golden values from an image the product key did not sign."""
    forged = sign_golden(golden_of(boot_events()), OTHER)
    bare = Envelope(GOLDEN_PAYLOAD_TYPE, golden_of(boot_events()).statement(), ()).to_bytes()
    return judge(dev, golden=(forged, bare))


def _svn_floor(dev: Device, tmp_path: Path) -> Verdict:
    return judge(dev, floor=4)


def _reset_backwards(dev: Device, tmp_path: Path) -> Verdict:
    """The TPM state is rolled back to before a reset the server already saw."""
    saved = dev.state.with_name("saved.json")
    shutil.copy2(dev.state, saved)
    dev.tpm.power_cycle()
    extend(dev.tpm, boot_events())
    later = judge(dev)
    assert later.ok and later.clock is not None
    shutil.copy2(saved, dev.state)
    return judge(dev, previous=later.clock)


def _selinux_permissive(dev: Device, tmp_path: Path) -> Verdict:
    return judge(dev, posture=GOOD_POSTURE | {"selinux": "permissive"})


def _pcr_mismatch(dev: Device, tmp_path: Path) -> Verdict:
    """A truthful log of another kernel (another UKI): PCRs 4 and 11 and the kernel
    component differ."""
    other = booted(tmp_path, boot_events(kernel=b"kernel v2"), "v2")
    return judge(other)


def _no_golden(dev: Device, tmp_path: Path) -> Verdict:
    return judge(dev, golden=())


V2_EVENTS = boot_events(kernel=b"kernel v2", svn=5)
V2 = sign_golden(golden_of(V2_EVENTS, svn=5, version="2.0"), PRODUCT)


def _unexpected_release(dev: Device, tmp_path: Path) -> Verdict:
    """The device boots release 1.0, signed and of the fleet, but it should run 2.0."""
    return judge(dev, golden=(V2,), others=(GOLDEN,))


def _unexpected_release_nothing_expected(dev: Device, tmp_path: Path) -> Verdict:
    """Nothing is expected of the device, and it boots one of the fleet's releases."""
    return judge(dev, golden=(), others=(GOLDEN,))


def _unexpected_release_below_floor(dev: Device, tmp_path: Path) -> Verdict:
    """An old release it left: unexpected, and its SVN is judged too."""
    return judge(dev, golden=(V2,), others=(GOLDEN,), floor=4)


def _forged_other_release(dev: Device, tmp_path: Path) -> Verdict:
    """A statement of "another release" no product key signed proves nothing: the device
    is judged against what it should run."""
    return judge(dev, golden=(V2,), others=(sign_golden(golden_of(boot_events()), OTHER),))


def _not_enrolled_ak(dev: Device, tmp_path: Path) -> Verdict:
    return evidence_result(
        build_evidence(dev.tpm, dev.ak, b"n", SEL, dev.log, GOOD_POSTURE),
        nonce=b"n",
        ak_public=None,
        golden=[GOLDEN],
        product_keys=[Verifier.of(PRODUCT.public_key())],
        policy=AttestationPolicy(SEL, 0, STRICT),
    )


def _clock_backwards(dev: Device, tmp_path: Path) -> Verdict:
    first = judge(dev)
    assert first.clock is not None
    ahead = ClockState(
        first.clock.clock + 10_000, first.clock.reset_count, first.clock.restart_count
    )
    return judge(dev, previous=ahead)


def _posture_everything(dev: Device, tmp_path: Path) -> Verdict:
    bad = {
        "selinux": "disabled",
        "randomize_va_space": 0,
        "lockdown": "none",
        "secure_boot": False,
        "module_sig_enforce": False,
        "verity": "off",
        "listening_ports": [22, 23],
        "cmdline": "quiet init=/bin/sh",
    }
    return judge(dev, posture=bad)


NEGATIVE: list[tuple[str, Callable[[Device, Path], Verdict], set[str]]] = [
    ("replayed quote (old nonce)", _replayed, {"quote.nonce"}),
    ("quote by another TPM's AK", _other_tpm, {"ak.unbound", "quote.signature"}),
    (
        "event log edited to match golden values, PCRs differ",
        _edited_log,
        {"eventlog.replay", "pcr.mismatch.4", "pcr.mismatch.11"},
    ),
    (
        "golden values from an unsigned image",
        _unsigned_golden,
        {"golden.unsigned", "release.unknown"},
    ),
    ("SVN below the floor", _svn_floor, {"svn.below_floor"}),
    ("TPM reset counter going backwards", _reset_backwards, {"tpm.reset.backwards"}),
    (
        "SELinux permissive under an enforcing policy",
        _selinux_permissive,
        {"posture.selinux.permissive"},
    ),
    (
        "another kernel, truthful log",
        _pcr_mismatch,
        {"pcr.mismatch.4", "pcr.mismatch.11", "component.kernel.mismatch"},
    ),
    ("no golden values at all", _no_golden, {"release.unknown"}),
    ("a signed release it should not run", _unexpected_release, {"release.unexpected"}),
    (
        "a signed release, nothing expected of the device",
        _unexpected_release_nothing_expected,
        {"release.unexpected"},
    ),
    (
        "a release it left, below the floor",
        _unexpected_release_below_floor,
        {"release.unexpected", "svn.below_floor"},
    ),
    (
        "another release's statement not signed by a product key",
        _forged_other_release,
        {
            "pcr.mismatch.4",
            "pcr.mismatch.11",
            "component.kernel.mismatch",
            "component.os-release.mismatch",
        },
    ),
    ("no AK recorded at enrolment", _not_enrolled_ak, {"ak.unbound"}),
    ("TPM clock going backwards", _clock_backwards, {"tpm.clock.backwards"}),
    (
        "every posture feature violated",
        _posture_everything,
        {
            "posture.selinux.disabled",
            "posture.aslr.weak",
            "posture.lockdown.weak",
            "posture.secure_boot.off",
            "posture.module_sig.off",
            "posture.verity.off",
            "posture.ports.unexpected",
            "posture.cmdline.forbidden",
        },
    ),
]


@pytest.mark.parametrize(("name", "attack", "expected"), NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_negative_table(
    device: Device,
    tmp_path: Path,
    name: str,
    attack: Callable[[Device, Path], Verdict],
    expected: set[str],
) -> None:
    verdict = attack(device, tmp_path)
    assert not verdict.ok, name
    assert set(verdict.failure_ids) == expected, (name, verdict.failures)


def test_every_failure_is_collected(device: Device) -> None:
    """An old nonce, SVN below floor and permissive SELinux: three ids, not one."""
    verdict = judge(
        device,
        nonce=b"fresh",
        quote_nonce=b"stale",
        floor=9,
        posture=GOOD_POSTURE | {"selinux": "permissive"},
    )
    assert set(verdict.failure_ids) == {
        "quote.nonce",
        "svn.below_floor",
        "posture.selinux.permissive",
    }


def test_posture_policy_is_opt_in(device: Device) -> None:
    verdict = judge(device, posture={}, policy=PosturePolicy())
    assert verdict.ok, verdict.failures


def test_missing_posture_fact_fails_under_policy(device: Device) -> None:
    verdict = judge(device, posture={k: v for k, v in GOOD_POSTURE.items() if k != "selinux"})
    assert verdict.failure_ids == ("posture.selinux.missing",)


def test_golden_picks_the_matching_release(tmp_path: Path) -> None:
    v2_events = boot_events(kernel=b"kernel v2", svn=5)
    dev = booted(tmp_path, v2_events)
    v2 = sign_golden(golden_of(v2_events, svn=5, version="2.0"), PRODUCT)
    verdict = judge(dev, golden=(GOLDEN, v2), floor=5)
    assert verdict.ok, verdict.failures
    assert verdict.release == "2.0"


def test_expected_release_passes_beside_other_releases(tmp_path: Path) -> None:
    """The device runs 2.0, which it should; the fleet's 1.0 is only another release."""
    dev = booted(tmp_path, V2_EVENTS)
    verdict = judge(dev, golden=(V2,), others=(GOLDEN,), floor=5)
    assert verdict.ok, verdict.failures
    assert verdict.release == "2.0"


def test_unexpected_release_is_named(device: Device) -> None:
    verdict = judge(device, golden=(V2,), others=(GOLDEN,))
    assert verdict.release == "1.0" and verdict.security_version == 3
    detail = verdict.failures[0].detail
    assert "boots release 1.0" in detail and "should run 2.0" in detail


def test_posture_policy_json_round_trip_and_refusals() -> None:
    assert PosturePolicy.from_json(STRICT.to_json()) == STRICT
    for bad in (
        {"require_selinux": "sometimes"},
        {"unknown": 1},
        {"min_aslr": 7},
        {"require_secure_boot": "yes"},
        {"allowed_ports": [0]},
        {"forbidden_cmdline": [""]},
        [],
    ):
        with pytest.raises(FormatError):
            PosturePolicy.from_json(bad)


# --- the evidence parser ------------------------------------------------------------------------


def test_evidence_round_trip(device: Device) -> None:
    ev = build_evidence(device.tpm, device.ak, b"n", SEL, device.log, GOOD_POSTURE)
    again = parse_evidence(ev.to_bytes())
    assert again.to_bytes() == ev.to_bytes()
    assert isinstance(again, Evidence)


def test_evidence_refusals(device: Device) -> None:
    good = build_evidence(device.tpm, device.ak, b"n", SEL, device.log, GOOD_POSTURE).to_json()
    for change in (
        {"format": "other"},
        {"bank": "md5"},
        {"pcrs": {"24": "00" * 32}},
        {"pcrs": {"0": "00"}},
        {"quote": "not base64!"},
        {"posture": {"x": {"nested": 1}}},
        {"posture": {"ports": [70000]}},
        {"extra": 1},
    ):
        import json

        with pytest.raises(FormatError):
            parse_evidence(json.dumps(good | change).encode())
    verdict = evidence_result(
        b"{}",
        nonce=b"",
        ak_public=device.ak.public,
        golden=[],
        product_keys=[],
        policy=AttestationPolicy(SEL),
    )
    assert verdict.failure_ids == ("evidence.format",)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_evidence_parser_arbitrary_bytes(data: bytes) -> None:
    try:
        parsed = parse_evidence(data)
    except FormatError:
        return
    assert isinstance(parsed, Evidence)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["format", "ak_public", "quote", "signature", "bank",
                                        "pcrs", "eventlog", "posture"]), _JSONISH))  # fmt: skip
def test_evidence_parser_arbitrary_documents(doc: dict[str, Any]) -> None:
    import json

    try:
        parsed = parse_evidence(json.dumps(doc).encode())
    except FormatError:
        return
    assert isinstance(parsed, Evidence)


def test_selection_is_the_fleet_one() -> None:
    assert PcrSelection.parse("sha256:0,4,7,9,11") == SEL


_FACT = (
    st.booleans()
    | st.integers(min_value=-(2**31), max_value=2**31 - 1)
    | st.text(max_size=32)
    | st.lists(st.integers(min_value=0, max_value=65535), max_size=8)
)


@settings(max_examples=100, deadline=None)
@given(
    ak=st.binary(max_size=64),
    quote=st.binary(max_size=64),
    sig=st.binary(max_size=64),
    pcrs=st.dictionaries(st.integers(0, 23), st.binary(min_size=32, max_size=32), max_size=24),
    log=st.binary(max_size=256),
    posture=st.dictionaries(st.text(max_size=16), _FACT, max_size=8),
)
def test_evidence_round_trip_property(
    ak: bytes,
    quote: bytes,
    sig: bytes,
    pcrs: dict[int, bytes],
    log: bytes,
    posture: dict[str, Any],
) -> None:
    from bastion.tpm.base import HashAlg

    ev = Evidence(ak, quote, sig, HashAlg.SHA256, pcrs, log, posture)
    again = parse_evidence(ev.to_bytes())
    assert again.to_bytes() == ev.to_bytes()
    assert (again.ak_public, again.quote, again.signature, dict(again.pcrs), again.eventlog) == (
        ak,
        quote,
        sig,
        pcrs,
        log,
    )


def test_unmatched_release_names_no_release_and_no_svn(tmp_path: Path) -> None:
    """Another kernel matches no golden set: the PCR and component failures say so; the
    SVN of a release the device does not run is not judged, and no release is named."""
    other = booted(tmp_path, boot_events(kernel=b"kernel v9"), "v9")
    verdict = judge(other, floor=99)
    # another kernel is another UKI: its Authenticode digest (PCR 4) and sections (PCR 11)
    assert set(verdict.failure_ids) == {
        "pcr.mismatch.4",
        "pcr.mismatch.11",
        "component.kernel.mismatch",
    }
    assert verdict.release is None and verdict.security_version is None


def test_components_outside_the_quoted_pcrs_are_not_trusted(device: Device) -> None:
    """A fleet quoting PCRs 0,4,7,9 only: the UKI's components (PCR 11) are neither
    proven nor refused, whatever the log claims."""
    sel = PcrSelection.parse("sha256:0,4,7,9")
    ev = build_evidence(device.tpm, device.ak, b"n", sel, device.log, {})
    verdict = evidence_result(
        ev,
        nonce=b"n",
        ak_public=device.ak.public,
        golden=[GOLDEN],
        product_keys=[Verifier.of(PRODUCT.public_key())],
        policy=AttestationPolicy(sel),
    )
    assert verdict.ok, verdict.failures
    evil = el.parse(device.log)
    forged = [
        e if e.pcr != 11 else el.Event(e.pcr, e.event_type, ((el.ALG_SHA256, bytes(32)),), e.data)
        for e in evil.events
    ]
    log = el.EventLog(evil.spec, tuple(forged)).to_bytes()
    ev = build_evidence(device.tpm, device.ak, b"n", sel, log, {})
    verdict = evidence_result(
        ev,
        nonce=b"n",
        ak_public=device.ak.public,
        golden=[GOLDEN],
        product_keys=[Verifier.of(PRODUCT.public_key())],
        policy=AttestationPolicy(sel),
    )
    assert verdict.ok, verdict.failures  # PCR 11 events are not evidence here
    assert components_of(forged, sel.indexes)[0] == {}
    assert set(components_of(forged)[0]) == {"kernel", "os-release", "cmdline", "initrd",
                                             "section-pcrpkey"}  # fmt: skip


# --- the verifier's memos -----------------------------------------------------------------------


def test_memo_is_bounded_by_entries_and_bytes() -> None:
    from bastion.trust.verdict import _Memo

    memo = _Memo[str, int](entries=2, budget=10)
    memo.put("a", 1, 4)
    memo.put("b", 2, 4)
    assert (memo.get("a"), memo.get("b")) == (1, 2)
    memo.put("c", 3, 4)  # a third entry: starts over
    assert (memo.get("a"), memo.get("b"), memo.get("c")) == (None, None, 3)
    memo.put("d", 4, 7)  # 4 + 7 bytes > 10: starts over
    assert (memo.get("c"), memo.get("d")) == (None, 4)
    memo.put("e", 5, 11)  # larger than the whole budget: never kept
    assert memo.get("e") is None


def test_decoded_log_memo_hits_only_the_same_text(device: Device) -> None:
    """Two logs sharing the memo's fingerprint (same length, same sampled spans) are told
    apart by the whole text: each verdict replays its own log."""
    import base64
    import json

    from bastion.trust.verdict import _fingerprint

    good = build_evidence(device.tpm, device.ak, b"n" * 32, SEL, device.log, GOOD_POSTURE)
    text = base64.b64encode(device.log).decode()
    # flip a bit of a measured digest (a quoted PCR's event) outside the sampled spans
    log = el.parse(device.log)
    spans = [(0, 64), (len(text) // 2, len(text) // 2 + 64), (len(text) - 64, len(text))]
    edited = ""
    for ev in log.events:
        at = device.log.find(ev.digest(el.ALG_SHA256))
        if ev.pcr not in SEL.indexes or at < 0:
            continue
        lo, hi = at * 4 // 3 - 4, (at + 1) * 4 // 3 + 4
        if all(hi <= a or lo >= b for a, b in spans):
            flipped = bytearray(device.log)
            flipped[at] ^= 1
            edited = base64.b64encode(bytes(flipped)).decode()
            break
    assert _fingerprint(edited) == _fingerprint(text) and edited != text
    for log_text, ok in ((text, True), (edited, False), (text, True)):
        doc = good.to_json() | {"eventlog": log_text}
        verdict = evidence_result(
            json.dumps(doc).encode(),
            nonce=b"n" * 32,
            ak_public=device.ak.public,
            golden=[GOLDEN],
            product_keys=[Verifier.of(PRODUCT.public_key())],
            policy=AttestationPolicy(SEL, 0, STRICT),
        )
        assert verdict.ok is ok, verdict.failure_ids
        if not ok:
            assert set(verdict.failure_ids) & {"eventlog.format", "eventlog.replay"}


def _log_of(events: list[el.Event]) -> bytes:
    return el.EventLog(el.SpecIdEvent(), tuple(events)).to_bytes()


#: a StartupLocality event after PCR 0 was extended: the log parses, its replay fails
_BAD_EVENT = el.Event(
    pcr=0,
    event_type=el.EventType.EV_NO_ACTION,
    digests=((el.ALG_SHA256, bytes(32)),),
    data=b"StartupLocality\0\3",
)
#: (name, inputs of the warm judgement, the same with ONE input of the memo key changed)
_GOOD_LOG = _log_of(boot_events())
_GOOD_PCRS = {i: v for i, v in el.replay(boot_events()).items() if i in SEL.indexes}
_JUDGEMENT_KEY_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("statements", {}, {"statements": (V2,)}),
    ("statement-order", {"pcrs": _GOOD_PCRS | {7: b"\1" * 32}}, {"statements": (V2, GOLDEN)}),
    ("others", {"statements": (V2,)}, {"others": (GOLDEN,)}),
    ("product-keys", {}, {"product_keys": [Verifier.of(OTHER.public_key())]}),
    (
        "selection",
        {"pcrs": _GOOD_PCRS | {11: bytes(32)}},
        {"policy": AttestationPolicy(PcrSelection.parse("sha256:0,4,7,9"), 0, STRICT)},
    ),
    ("svn-floor", {}, {"policy": AttestationPolicy(SEL, 4, STRICT)}),
    ("pcrs", {}, {"pcrs": _GOOD_PCRS | {7: b"\1" * 32}}),
    ("pcr-added", {"pcrs": {i: v for i, v in _GOOD_PCRS.items() if i != 11}}, {"pcrs": _GOOD_PCRS}),
    ("eventlog", {}, {"log": _log_of(boot_events(kernel=b"evil kernel"))}),
    # the replay comparison: the same golden judgement, but the log replays to other PCRs
    (
        "eventlog-replay",
        {"statements": (), "others": ()},
        {"log": _log_of(boot_events(kernel=b"evil kernel"))},
    ),
    ("unreplayable-log", {}, {"log": _log_of([*boot_events(), _BAD_EVENT])}),
]


@pytest.mark.parametrize(
    ("name", "before", "change"), _JUDGEMENT_KEY_CASES, ids=[c[0] for c in _JUDGEMENT_KEY_CASES]
)
def test_judgement_memo_key_holds_every_input(
    name: str, before: dict[str, Any], change: dict[str, Any]
) -> None:
    """Same input, same output: with the judgement of ``before`` memoized, changing one
    input of the key gives what judging afresh gives, which differs from the memoized
    judgement (the memo never answers for an input it was not given)."""
    from bastion.trust.verdict import _judge, _judgement, _log_facts, clear_caches

    def args(over: dict[str, Any]) -> dict[str, Any]:
        full: dict[str, Any] = {
            "statements": (GOLDEN,),
            "others": (),
            "product_keys": [Verifier.of(PRODUCT.public_key())],
            "policy": AttestationPolicy(SEL, 0, STRICT),
            "pcrs": _GOOD_PCRS,
            "log": _GOOD_LOG,
        } | over
        return full

    def memoized(a: dict[str, Any]) -> Any:
        ev = Evidence(b"", b"", b"", SEL.bank, dict(a["pcrs"]), a["log"])
        facts = _log_facts(a["log"], a["policy"].selection)
        rest = {k: v for k, v in a.items() if k not in ("pcrs", "log")}
        return _judgement(evidence=ev, facts=facts, **rest)

    def afresh(a: dict[str, Any]) -> Any:
        facts = _log_facts(a["log"], a["policy"].selection)
        return _judge(
            a["statements"],
            a["others"],
            a["product_keys"],
            a["policy"],
            pcrs=a["pcrs"],
            facts=facts,
        )

    clear_caches()
    warm = memoized(args(before))
    assert memoized(args(before)) is warm, "the second judgement is a memo hit"
    assert warm == afresh(args(before))
    changed = memoized(args(before | change))
    assert changed == afresh(args(before | change)), name
    assert changed != warm, name
    assert memoized(args(before)) is warm  # the earlier entry still answers for its input


def test_judgement_memo_refuses_nothing_unhashable(device: Device) -> None:
    """Reported PCRs in a caller's mutable buffers cannot key the memo: the judgement is
    computed, the same as for bytes."""
    good = build_evidence(device.tpm, device.ak, b"n" * 32, SEL, device.log, GOOD_POSTURE)
    kwargs: dict[str, Any] = {
        "nonce": b"n" * 32,
        "ak_public": device.ak.public,
        "golden": [GOLDEN],
        "product_keys": [Verifier.of(PRODUCT.public_key())],
        "policy": AttestationPolicy(SEL, 0, STRICT),
    }
    edited = {i: bytearray(v) for i, v in good.pcrs.items()}
    edited[7][0] ^= 1
    as_bytes = {i: bytes(v) for i, v in edited.items()}
    one = evidence_result(dataclasses.replace(good, pcrs=edited), **kwargs)
    two = evidence_result(dataclasses.replace(good, pcrs=as_bytes), **kwargs)
    assert one == two and "pcr.mismatch.7" in one.failure_ids

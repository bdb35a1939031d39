"""The attestation verifier: evidence and golden values in, a :class:`Verdict` out. Pure.

A device answers a fresh server nonce with *evidence* (:class:`Evidence`, JSON on the
wire, :func:`parse_evidence`): a TPM2_Quote and its signature by the device's AK, the
PCR values it read, its TCG event log, and a *posture* (facts it reports about the
running system). :func:`evidence_result` checks everything and collects every failure
(docs/attestation.md lists the ids); :func:`verify_evidence` raises instead.

Checks, each adding failures with a stable id and never stopping the others:

1. ``ak.unbound``: the evidence's AK is not the AK the server recorded at enrolment
   (the one credential activation bound to the device's EK), or none was recorded;
   the quote is always checked with the *recorded* AK.
2. ``quote.signature``, ``quote.format``, ``quote.type``, ``quote.nonce``,
   ``quote.pcr-selection``, ``quote.pcr-digest`` (:func:`bastion.tpm.quote.quote_result`):
   the reported PCR values are the quoted ones only if the quote's pcrDigest covers them.
3. ``eventlog.format`` / ``eventlog.replay``: the event log replayed (sha256 bank) must
   give exactly the reported PCR values on every selected PCR the log touches.
4. golden values from signed statements only (:func:`open_golden`, signed by a product
   key): ``golden.unsigned`` for a statement no trusted key signed (its values are then
   not used), ``release.unknown`` when no signed golden set is available;
   ``pcr.mismatch.N`` for each selected PCR differing from the golden value, and
   ``component.<name>.mismatch|missing|unexpected`` for each measured component of the
   event log (kernel, command line, initrd, verity root hash, Secure Boot authority, ...).
5. ``svn.below_floor``: the golden release's security version is below the fleet floor.
6. ``tpm.reset.backwards``, ``tpm.restart.backwards``, ``tpm.clock.backwards``: the
   quote's clock info against the last accepted quote (:class:`ClockState`).
7. ``posture.<feature>.<problem>`` from :class:`PosturePolicy`, opt-in per feature.

Golden values and their signed statement live in :mod:`bastion.trust.golden`, the
posture policy in :mod:`bastion.trust.posture`; this module re-exports both.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bastion import limits
from bastion.errors import BastionError, FormatError, LimitError, VerificationError
from bastion.formats import eventlog as el
from bastion.formats import strict_json
from bastion.formats.tpm2 import Attest
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.tpm.quote import AkPublic, load_public, quote_result
from bastion.trust.golden import (
    GOLDEN_PAYLOAD_TYPE,
    GoldenValues,
    component_pcr,
    components_of,
    golden_digest,
    golden_from_json,
    open_golden,
    sign_golden,
)
from bastion.trust.posture import PosturePolicy, check_posture
from bastion.trust.signer import Verifier

__all__ = [
    "EVIDENCE_FORMAT",
    "GOLDEN_PAYLOAD_TYPE",
    "AttestationPolicy",
    "ClockState",
    "Evidence",
    "Failure",
    "GoldenValues",
    "PosturePolicy",
    "Verdict",
    "clear_caches",
    "component_pcr",
    "components_of",
    "evidence_from_json",
    "evidence_result",
    "golden_digest",
    "golden_from_json",
    "open_golden",
    "parse_evidence",
    "sign_golden",
    "verify_evidence",
]

EVIDENCE_FORMAT = "bastion-evidence/1"


# --- evidence -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a device sends: quote, signature, AK, reported PCRs, event log, posture."""

    ak_public: bytes
    quote: bytes
    signature: bytes
    bank: HashAlg
    pcrs: Mapping[int, bytes]
    eventlog: bytes
    posture: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EVIDENCE_FORMAT,
            "ak_public": _b64(self.ak_public),
            "quote": _b64(self.quote),
            "signature": _b64(self.signature),
            "bank": self.bank.value,
            "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
            "eventlog": _b64(self.eventlog),
            "posture": dict(self.posture),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"evidence: {what} must be a base64 string")
    if len(value) > (limit + 2) // 3 * 4:
        raise LimitError(f"evidence: {what} is longer than {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"evidence: {what} is not base64: {exc}") from exc


def _posture_value(name: str, value: Any) -> Any:
    if isinstance(value, bool | int):
        if not isinstance(value, bool) and not -(2**31) <= value < 2**31:
            raise FormatError(f"evidence: posture {name} is out of range")
        return value
    if isinstance(value, str):
        if len(value) > limits.ATTEST_POSTURE_MAX_STRING:
            raise LimitError(
                f"evidence: posture {name} is longer than {limits.ATTEST_POSTURE_MAX_STRING}"
            )
        return value
    if isinstance(value, list):
        if len(value) > limits.ATTEST_POSTURE_MAX_LIST:
            raise LimitError(
                f"evidence: posture {name} has more than {limits.ATTEST_POSTURE_MAX_LIST} items"
            )
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise FormatError(f"evidence: posture {name} must be a list of integers")
        if not all(0 <= v <= 65535 for v in value):
            raise FormatError(f"evidence: posture {name} holds a value outside 0..65535")
        return tuple(value)
    raise FormatError(f"evidence: posture {name} must be a string, integer, boolean or list")


def evidence_from_json(doc: Any) -> Evidence:
    """Evidence from an already-parsed JSON object (FormatError / LimitError if bad)."""
    if not isinstance(doc, dict):
        raise FormatError("evidence must be a JSON object")
    expected = {"format", "ak_public", "quote", "signature", "bank", "pcrs", "eventlog", "posture"}
    if set(doc) != expected:
        raise FormatError(
            f"evidence fields {sorted(doc)} are not {sorted(expected)}"
            if set(doc) - expected
            else f"evidence lacks {sorted(expected - set(doc))}"
        )
    if doc["format"] != EVIDENCE_FORMAT:
        raise FormatError(f"evidence format {doc['format']!r} is not {EVIDENCE_FORMAT!r}")
    try:
        bank = HashAlg(doc["bank"])
    except ValueError:
        raise FormatError(f"evidence: unknown PCR bank {doc['bank']!r}") from None
    raw_pcrs = doc["pcrs"]
    if not isinstance(raw_pcrs, dict) or len(raw_pcrs) > el.PCR_COUNT:
        raise FormatError("evidence: pcrs must be an object of at most 24 PCRs")
    pcrs: dict[int, bytes] = {}
    for key, value in raw_pcrs.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) <= 2 and int(key) < 24):
            raise FormatError(f"evidence: PCR index {key!r} is not 0..23")
        if not isinstance(value, str) or len(value) != 2 * bank.digest_size:
            raise FormatError(f"evidence: PCR {key} is not {bank.digest_size} bytes of hex")
        try:
            pcrs[int(key)] = bytes.fromhex(value)
        except ValueError:
            raise FormatError(f"evidence: PCR {key} is not hex") from None
    posture = doc["posture"]
    if not isinstance(posture, dict):
        raise FormatError("evidence: posture must be an object")
    if len(posture) > limits.ATTEST_POSTURE_MAX_KEYS:
        raise LimitError(
            f"evidence: posture has {len(posture)} facts, limit is {limits.ATTEST_POSTURE_MAX_KEYS}"
        )
    facts = {str(k): _posture_value(str(k), v) for k, v in posture.items()}
    return Evidence(
        ak_public=_unb64(doc["ak_public"], "ak_public", limits.ATTEST_TPM_OBJECT_MAX_SIZE),
        quote=_unb64(doc["quote"], "quote", limits.ATTEST_TPM_OBJECT_MAX_SIZE),
        signature=_unb64(doc["signature"], "signature", limits.ATTEST_TPM_OBJECT_MAX_SIZE),
        bank=bank,
        pcrs=pcrs,
        eventlog=_unb64(doc["eventlog"], "eventlog", limits.ATTEST_EVENTLOG_MAX_SIZE),
        posture=facts,
    )


def parse_evidence(data: bytes) -> Evidence:
    """Parse wire evidence (strict JSON, bounded): :class:`Evidence` or FormatError."""
    doc = strict_json.loads(data, what="evidence", max_size=limits.ATTEST_EVIDENCE_MAX_SIZE)
    return evidence_from_json(doc)


# --- policy and results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockState:
    """The TPM clock info of an accepted quote: what the next quote may not go below."""

    clock: int
    reset_count: int
    restart_count: int


@dataclass(frozen=True, slots=True)
class AttestationPolicy:
    """The fleet's attestation settings the verifier needs."""

    selection: PcrSelection
    svn_floor: int = 0
    posture: PosturePolicy = field(default_factory=PosturePolicy)


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed check: a stable id (``pcr.mismatch.7``) and a one-line explanation."""

    id: str
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one attestation: every failure, and the facts worth keeping."""

    failures: tuple[Failure, ...]
    clock: ClockState | None = None
    release: str | None = None
    security_version: int | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failure_ids(self) -> tuple[str, ...]:
        return tuple(f.id for f in self.failures)


# --- the verifier -------------------------------------------------------------------------------


def _check_ak(fail: Any, evidence_ak: bytes, recorded: AkPublic | None) -> AkPublic:
    if recorded is None:
        fail("ak.unbound", "the device has no AK recorded at enrolment")
        return evidence_ak
    if isinstance(recorded, bytes) and hmac.compare_digest(recorded, evidence_ak):
        return recorded  # the same TPM2B_PUBLIC bytes: the same key
    try:
        same = _spki(load_public(recorded)) == _spki(load_public(evidence_ak))
    except BastionError as exc:
        fail("ak.unbound", f"the evidence's AK cannot be read: {exc}")
        return recorded
    if not same:
        fail("ak.unbound", "the quote's AK is not the AK bound to this device's EK at enrolment")
    return recorded


def _spki(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _behind(now: int, previous: int) -> bool:
    """Whether a 32-bit counter went backwards. TPMs obfuscate resetCount/restartCount
    for keys outside the endorsement hierarchy by adding a per-key constant modulo 2^32,
    so they are compared as serial numbers (RFC 1982), not as integers."""
    return now != previous and (now - previous) % 2**32 >= 2**31


def _check_clock(
    fail: Any, attest: Attest | None, previous: ClockState | None
) -> ClockState | None:
    if attest is None:
        return None
    info = attest.clock_info
    now = ClockState(info.clock, info.reset_count, info.restart_count)
    if previous is None:
        return now
    if _behind(now.reset_count, previous.reset_count):
        fail(
            "tpm.reset.backwards",
            f"TPM resetCount {now.reset_count} is below the last accepted {previous.reset_count}",
        )
    elif now.reset_count == previous.reset_count:
        if _behind(now.restart_count, previous.restart_count):
            fail(
                "tpm.restart.backwards",
                f"TPM restartCount {now.restart_count} is below the last accepted "
                f"{previous.restart_count} (same resetCount)",
            )
        elif now.clock < previous.clock:
            fail(
                "tpm.clock.backwards",
                f"TPM clock {now.clock} ms is below the last accepted {previous.clock} ms "
                "(same resetCount)",
            )
    return now


@dataclass(frozen=True, slots=True)
class _LogFacts:
    """What the verifier needs from one event log: replayed PCRs (or why not) and the
    measured components."""

    replayed: Mapping[int, bytes] | None
    replay_error: str | None
    components: Mapping[str, bytes]
    duplicates: tuple[str, ...]


#: event log bytes -> facts. Devices booting one image write byte-identical logs and a
#: device re-attests with the same log until it reboots; parsing and replaying bytes is
#: a pure function, so it is done once per distinct log (bounded; malformed logs are not
#: kept)
_LOG_CACHE: dict[tuple[bytes, PcrSelection], _LogFacts] = {}
_LOG_CACHE_MAX = 1024


def _log_facts(data: bytes, selection: PcrSelection) -> _LogFacts:
    key = (data, selection)
    alg_id = selection.bank.alg_id
    found = _LOG_CACHE.get(key)
    if found is not None:
        return found
    log = el.parse(data)
    try:
        replayed: Mapping[int, bytes] | None = el.replay(log.events, alg_id)
        error = None
    except FormatError as exc:
        replayed, error = None, str(exc)
    # only components in quoted PCRs: an event in a PCR outside the selection is unproven
    components, dupes = components_of(log.events, selection.indexes)
    facts = _LogFacts(replayed, error, components, tuple(dupes))
    if len(_LOG_CACHE) >= _LOG_CACHE_MAX:
        _LOG_CACHE.clear()
    _LOG_CACHE[key] = facts
    return facts


def clear_caches() -> None:
    """Forget memoized golden statements and event logs (benchmarks, tests)."""
    _LOG_CACHE.clear()
    _GOLDEN_CACHE.clear()


def _check_log(fail: Any, ev: Evidence, selection: PcrSelection) -> _LogFacts | None:
    try:
        facts = _log_facts(ev.eventlog, selection)
    except FormatError as exc:
        fail("eventlog.format", f"event log: {exc}")
        return None
    if facts.replayed is None:
        fail("eventlog.replay", f"event log cannot be replayed: {facts.replay_error}")
        return facts
    zero = bytes(selection.bank.digest_size)
    bad = [
        i
        for i in selection.indexes
        if i in ev.pcrs and not hmac.compare_digest(facts.replayed.get(i, zero), ev.pcrs[i])
    ]
    if bad:
        fail(
            "eventlog.replay",
            f"replaying the event log does not give the quoted PCR(s) {bad}: the log "
            "is not the one the TPM measured",
        )
    return facts


#: verified golden statements: (statement, trusted key ids) -> values. A fleet judges
#: every device against the same few statements; the signature check of immutable bytes
#: with the same keys gives the same answer, so it is done once (failures are not kept)
_GOLDEN_CACHE: dict[tuple[bytes, tuple[str, ...]], GoldenValues] = {}
_GOLDEN_CACHE_MAX = 256


def _open_golden_cached(statement: bytes, product_keys: Sequence[Verifier]) -> GoldenValues:
    key = (statement, tuple(sorted(v.key_id for v in product_keys)))
    found = _GOLDEN_CACHE.get(key)
    if found is None:
        found = open_golden(statement, product_keys)
        if len(_GOLDEN_CACHE) >= _GOLDEN_CACHE_MAX:
            _GOLDEN_CACHE.clear()
        _GOLDEN_CACHE[key] = found
    return found


def _pick_golden(
    fail: Any,
    statements: Sequence[bytes],
    product_keys: Sequence[Verifier],
    pcrs: Mapping[int, bytes],
) -> tuple[GoldenValues | None, bool]:
    verified: list[GoldenValues] = []
    for n, statement in enumerate(statements):
        try:
            verified.append(_open_golden_cached(statement, product_keys))
        except BastionError as exc:
            fail("golden.unsigned", f"golden statement {n} is not signed by a product key: {exc}")
    if not verified:
        fail("release.unknown", "no signed golden values: the device's release cannot be judged")
        return None, False
    # the statement whose PCRs this device shows; else the first listed (the fleet's
    # newest), to name what differs from it
    for golden in verified:
        if all(pcrs.get(i) == v for i, v in golden.pcrs.items()):
            return golden, True
    return verified[0], False


def _check_golden(
    fail: Any,
    golden: GoldenValues,
    selection: PcrSelection,
    pcrs: Mapping[int, bytes],
    facts: _LogFacts | None,
) -> None:
    for i in selection.indexes:
        want = golden.pcrs.get(i)
        if want is None:
            continue
        got = pcrs.get(i)
        if got is None or not hmac.compare_digest(got, want):
            fail(
                f"pcr.mismatch.{i}",
                f"PCR {i} is {got.hex() if got else '(missing)'}, release {golden.version} "
                f"expects {want.hex()}",
            )
    if facts is None:
        return
    found, dupes = facts.components, facts.duplicates
    for name in sorted(set(dupes)):
        fail(f"component.{name}.duplicate", f"the event log measures {name} more than once")
    quoted = set(selection.indexes)
    for name, want in sorted(golden.components.items()):
        if component_pcr(name) not in quoted:
            continue  # the fleet does not quote that PCR: nothing proves it either way
        got = found.get(name)
        if got is None:
            fail(f"component.{name}.missing", f"the event log does not measure {name}")
        elif not hmac.compare_digest(got, want):
            fail(
                f"component.{name}.mismatch",
                f"{name} measured {got.hex()}, release {golden.version} has {want.hex()}",
            )
    for name in sorted(set(found) - set(golden.components)):
        fail(f"component.{name}.unexpected", f"{name} is measured but not in the release")


def evidence_result(
    evidence: Evidence | bytes,
    *,
    nonce: bytes,
    ak_public: AkPublic | None,
    golden: Sequence[bytes],
    product_keys: Sequence[Verifier],
    policy: AttestationPolicy,
    previous: ClockState | None = None,
) -> Verdict:
    """Run every check (module docstring) and return the :class:`Verdict`; never raises
    for bad evidence (``evidence.format`` is a failure too)."""
    failures: list[Failure] = []

    def fail(ident: str, detail: str) -> None:
        failures.append(Failure(ident, detail))

    if isinstance(evidence, bytes):
        try:
            evidence = parse_evidence(evidence)
        except FormatError as exc:
            fail("evidence.format", str(exc))
            return Verdict(tuple(failures))
    selection = policy.selection
    if selection.bank is not HashAlg.SHA256 or evidence.bank is not selection.bank:
        fail("quote.pcr-selection", f"evidence bank {evidence.bank}, policy {selection}")
    ak = _check_ak(fail, evidence.ak_public, ak_public)
    quoted = quote_result(evidence.quote, evidence.signature, ak, nonce, selection, evidence.pcrs)
    for qf in quoted.failures:
        fail("quote.pcr-digest" if qf.id == "quote.pcr-values" else qf.id, str(qf.error))
    clock = _check_clock(fail, quoted.attest, previous)
    facts = _check_log(fail, evidence, selection)
    chosen, matched = _pick_golden(fail, golden, product_keys, evidence.pcrs)
    if chosen is not None:
        _check_golden(fail, chosen, selection, evidence.pcrs, facts)
        # the security version is the matched release's (a mismatch already failed)
        if matched and chosen.security_version < policy.svn_floor:
            fail(
                "svn.below_floor",
                f"release {chosen.version} has security version {chosen.security_version}, "
                f"the fleet floor is {policy.svn_floor}",
            )
    check_posture(fail, evidence.posture, policy.posture)
    return Verdict(
        tuple(failures),
        clock,
        chosen.version if chosen and matched else None,
        chosen.security_version if chosen and matched else None,
    )


def verify_evidence(
    evidence: Evidence | bytes,
    *,
    nonce: bytes,
    ak_public: AkPublic | None,
    golden: Sequence[bytes],
    product_keys: Sequence[Verifier],
    policy: AttestationPolicy,
    previous: ClockState | None = None,
) -> Verdict:
    """Like :func:`evidence_result`, but raise VerificationError naming every failure."""
    verdict = evidence_result(
        evidence,
        nonce=nonce,
        ak_public=ak_public,
        golden=golden,
        product_keys=product_keys,
        policy=policy,
        previous=previous,
    )
    if not verdict.ok:
        raise VerificationError(
            "attestation failed: "
            + ", ".join(verdict.failure_ids)
            + f" ({verdict.failures[0].detail})"
        )
    return verdict

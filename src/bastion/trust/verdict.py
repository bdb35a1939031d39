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
   not used), ``release.unknown`` when no signed golden set is available.
   ``golden`` are the statements of what the device *should* run (the release its
   rollout wave or fleet target gives it, the one its last signed update report
   names, the fleet's own accepted sets; ADR 0037), ``others`` those of the fleet's
   other releases: a device whose PCRs equal another release's golden values fails
   ``release.unexpected`` (a signed image it was never given, or has left), and is
   then judged against that release's components;
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
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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
_EVIDENCE_FIELDS = frozenset(
    {"format", "ak_public", "quote", "signature", "bank", "pcrs", "eventlog", "posture"}
)

#: evidence "bank" -> HashAlg (a table: the enum's lookup by value is slow per verdict)
_BANKS = {alg.value: alg for alg in HashAlg}

#: evidence PCR names -> index, for the names a device sends (others go the long way)
_PCR_NAMES = {str(i): i for i in range(el.PCR_COUNT)}

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Memo(Generic[_K, _V]):
    """A bounded memo of a pure function's results: at most ``entries`` results and
    ``budget`` bytes of input; when either would be exceeded it starts over empty (no
    bookkeeping on a hit). Callers keep only results of inputs that were accepted, and
    key them by the exact input, so a hit returns what computing again would."""

    __slots__ = ("_budget", "_data", "_entries", "_lock", "_used")

    def __init__(self, entries: int, budget: int) -> None:
        self._data: dict[_K, _V] = {}
        self._entries, self._budget, self._used = entries, budget, 0
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        return self._data.get(key)

    def put(self, key: _K, value: _V, size: int) -> None:
        if size > self._budget:
            return
        with self._lock:
            if len(self._data) >= self._entries or self._used + size > self._budget:
                self._data.clear()
                self._used = 0
            self._data[key] = value
            self._used += size

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._used = 0


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
        # strict mode refuses what b64decode(validate=True) refuses (characters outside
        # the alphabet, bad or misplaced padding) without its regular-expression pass
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"evidence: {what} is not base64: {exc}") from exc


def _posture_value(name: str, value: Any) -> Any:
    kind = type(value)  # JSON gives exact types: the common ones first, by identity
    if kind is str and len(value) <= limits.ATTEST_POSTURE_MAX_STRING:
        return value
    if kind is bool or (kind is int and -(2**31) <= value < 2**31):
        return value
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


#: the event log's base64 text -> (that text, its bytes). A fleet on one image sends
#: byte-identical logs and a device re-attests with the same log until it reboots;
#: decoding 10 KB of base64 costs a tenth of a verdict, so each distinct (valid) text is
#: decoded once. Looked up by a cheap fingerprint (hashing the whole text costs a third
#: of decoding it), then the whole text is compared: a hit is exactly the same text, a
#: fingerprint shared by two texts is only a miss
_LOG_TEXT = _Memo[tuple[int, str, str, str], tuple[str, bytes]](
    limits.ATTEST_MEMO_MAX_ENTRIES, limits.ATTEST_MEMO_MAX_BYTES
)


def _fingerprint(text: str) -> tuple[int, str, str, str]:
    mid = len(text) // 2
    return len(text), text[:64], text[mid : mid + 64], text[-64:]


def _eventlog_bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        return _unb64(value, "eventlog", limits.ATTEST_EVENTLOG_MAX_SIZE)  # raises
    key = _fingerprint(value)
    found = _LOG_TEXT.get(key)
    if found is not None and found[0] == value:
        return found[1]
    data = _unb64(value, "eventlog", limits.ATTEST_EVENTLOG_MAX_SIZE)
    _LOG_TEXT.put(key, (value, data), len(value) + len(data))
    return data


def evidence_from_json(doc: Any) -> Evidence:
    """Evidence from an already-parsed JSON object (FormatError / LimitError if bad)."""
    if not isinstance(doc, dict):
        raise FormatError("evidence must be a JSON object")
    expected = _EVIDENCE_FIELDS
    if doc.keys() != expected:
        raise FormatError(
            f"evidence fields {sorted(doc)} are not {sorted(expected)}"
            if set(doc) - expected
            else f"evidence lacks {sorted(expected - set(doc))}"
        )
    if doc["format"] != EVIDENCE_FORMAT:
        raise FormatError(f"evidence format {doc['format']!r} is not {EVIDENCE_FORMAT!r}")
    bank = _BANKS.get(doc["bank"]) if isinstance(doc["bank"], str) else None
    if bank is None:
        raise FormatError(f"evidence: unknown PCR bank {doc['bank']!r}")
    raw_pcrs = doc["pcrs"]
    if not isinstance(raw_pcrs, dict) or len(raw_pcrs) > el.PCR_COUNT:
        raise FormatError("evidence: pcrs must be an object of at most 24 PCRs")
    pcrs: dict[int, bytes] = {}
    hex_size = 2 * bank.digest_size
    for key, value in raw_pcrs.items():
        index = _PCR_NAMES.get(key) if type(key) is str else None
        if index is None:  # not "0".."23": what else int() reads as 0..23 ("07")
            if not (isinstance(key, str) and key.isdigit() and len(key) <= 2 and int(key) < 24):
                raise FormatError(f"evidence: PCR index {key!r} is not 0..23")
            index = int(key)
        if not isinstance(value, str) or len(value) != hex_size:
            raise FormatError(f"evidence: PCR {key} is not {bank.digest_size} bytes of hex")
        try:
            pcrs[index] = bytes.fromhex(value)
        except ValueError:
            raise FormatError(f"evidence: PCR {key} is not hex") from None
    posture = doc["posture"]
    if not isinstance(posture, dict):
        raise FormatError("evidence: posture must be an object")
    if len(posture) > limits.ATTEST_POSTURE_MAX_KEYS:
        raise LimitError(
            f"evidence: posture has {len(posture)} facts, limit is {limits.ATTEST_POSTURE_MAX_KEYS}"
        )
    facts = {k: _posture_value(k, v) for k, v in posture.items() if type(k) is str}
    if len(facts) != len(posture):  # keys other than str (a caller's dict, not JSON)
        facts = {str(k): _posture_value(str(k), v) for k, v in posture.items()}
    return Evidence(
        ak_public=_unb64(doc["ak_public"], "ak_public", limits.ATTEST_TPM_OBJECT_MAX_SIZE),
        quote=_unb64(doc["quote"], "quote", limits.ATTEST_TPM_OBJECT_MAX_SIZE),
        signature=_unb64(doc["signature"], "signature", limits.ATTEST_TPM_OBJECT_MAX_SIZE),
        bank=bank,
        pcrs=pcrs,
        eventlog=_eventlog_bytes(doc["eventlog"]),
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
_LOG_CACHE = _Memo[tuple[bytes, PcrSelection], _LogFacts](
    limits.ATTEST_MEMO_MAX_ENTRIES, limits.ATTEST_MEMO_MAX_BYTES
)


def _log_facts(data: bytes, selection: PcrSelection) -> _LogFacts:
    key = (data, selection)
    found = _LOG_CACHE.get(key)
    if found is not None:
        return found
    alg_id = selection.bank.alg_id
    log = el.parse(data)
    try:
        replayed: Mapping[int, bytes] | None = el.replay(log.events, alg_id)
        error = None
    except FormatError as exc:
        replayed, error = None, str(exc)
    # only components in quoted PCRs: an event in a PCR outside the selection is unproven
    components, dupes = components_of(log.events, selection.indexes)
    facts = _LogFacts(replayed, error, components, tuple(dupes))
    _LOG_CACHE.put(key, facts, len(data))
    return facts


def clear_caches() -> None:
    """Forget memoized golden statements, event logs and judgements (benchmarks, tests)."""
    _LOG_TEXT.clear()
    _LOG_CACHE.clear()
    _GOLDEN_CACHE.clear()
    _JUDGEMENTS.clear()


def _read_log(fail: Any, ev: Evidence, selection: PcrSelection) -> _LogFacts | None:
    try:
        return _log_facts(ev.eventlog, selection)
    except FormatError as exc:
        fail("eventlog.format", f"event log: {exc}")
        return None


def _check_replay(
    fail: Any, facts: _LogFacts, selection: PcrSelection, pcrs: Mapping[int, bytes]
) -> None:
    if facts.replayed is None:
        fail("eventlog.replay", f"event log cannot be replayed: {facts.replay_error}")
        return
    zero = bytes(selection.bank.digest_size)
    bad = [
        i
        for i in selection.indexes
        if i in pcrs and not hmac.compare_digest(facts.replayed.get(i, zero), pcrs[i])
    ]
    if bad:
        fail(
            "eventlog.replay",
            f"replaying the event log does not give the quoted PCR(s) {bad}: the log "
            "is not the one the TPM measured",
        )


#: verified golden statements: (statement, trusted key ids) -> values. A fleet judges
#: every device against the same few statements; the signature check of immutable bytes
#: with the same keys gives the same answer, so it is done once (failures are not kept)
_GOLDEN_CACHE = _Memo[tuple[bytes, tuple[str, ...]], GoldenValues](
    256, limits.ATTEST_MEMO_MAX_BYTES
)


def _open_golden_cached(statement: bytes, product_keys: Sequence[Verifier]) -> GoldenValues:
    key = (statement, tuple(sorted(v.key_id for v in product_keys)))
    found = _GOLDEN_CACHE.get(key)
    if found is None:
        found = open_golden(statement, product_keys)
        _GOLDEN_CACHE.put(key, found, len(statement))
    return found


def _shows(golden: GoldenValues, pcrs: Mapping[int, bytes]) -> bool:
    """Whether the reported PCRs are exactly the golden ones (every golden PCR)."""
    return all(pcrs.get(i) == v for i, v in golden.pcrs.items())


def _pick_golden(
    fail: Any,
    statements: Sequence[bytes],
    others: Sequence[bytes],
    product_keys: Sequence[Verifier],
    pcrs: Mapping[int, bytes],
) -> tuple[GoldenValues | None, bool]:
    verified: list[GoldenValues] = []
    for n, statement in enumerate(statements):
        try:
            verified.append(_open_golden_cached(statement, product_keys))
        except BastionError as exc:
            fail("golden.unsigned", f"golden statement {n} is not signed by a product key: {exc}")
    # the statement whose PCRs this device shows; else the first listed (what it should
    # run first), to name what differs from it
    for golden in verified:
        if _shows(golden, pcrs):
            return golden, True
    for statement in others:
        try:
            other = _open_golden_cached(statement, product_keys)
        except BastionError:
            continue  # a release it should not run either way: its values prove nothing
        if other.pcrs and _shows(other, pcrs):
            expected = sorted({g.version for g in verified})
            fail(
                "release.unexpected",
                f"the device boots release {other.version}, a signed image it should not run "
                f"(it should run {', '.join(expected) if expected else 'no known release'})",
            )
            return other, True
    if not verified:
        fail("release.unknown", "no signed golden values: the device's release cannot be judged")
        return None, False
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


@dataclass(frozen=True, slots=True)
class _Judgement:
    """The part of a verdict :func:`_judge` decides (log replay against the reported
    PCRs, golden values, SVN): its failures, in order, and the matched release."""

    failures: tuple[Failure, ...]
    release: str | None
    security_version: int | None


def _judge(
    statements: Sequence[bytes],
    others: Sequence[bytes],
    product_keys: Sequence[Verifier],
    policy: AttestationPolicy,
    *,
    pcrs: Mapping[int, bytes],
    facts: _LogFacts | None,
) -> _Judgement:
    """Compare the replayed log with the reported PCRs, pick the golden release, compare
    PCRs and components with it, check the SVN floor: a function of its arguments only
    (no nonce, signature, AK, clock or history)."""
    failures: list[Failure] = []

    def fail(ident: str, detail: str) -> None:
        failures.append(Failure(ident, detail))

    if facts is not None:
        _check_replay(fail, facts, policy.selection, pcrs)
    chosen, matched = _pick_golden(fail, statements, others, product_keys, pcrs)
    if chosen is not None:
        _check_golden(fail, chosen, policy.selection, pcrs, facts)
        # the security version is the matched release's (a mismatch already failed)
        if matched and chosen.security_version < policy.svn_floor:
            fail(
                "svn.below_floor",
                f"release {chosen.version} has security version {chosen.security_version}, "
                f"the fleet floor is {policy.svn_floor}",
            )
    if chosen is not None and matched:
        return _Judgement(tuple(failures), chosen.version, chosen.security_version)
    return _Judgement(tuple(failures), None, None)


#: (statements, other releases' statements, trusted key ids, selection, SVN floor,
#: reported PCRs, event log bytes) -> judgement. A fleet on one image sends the same
#: PCRs and log against the same statements: the judgement is computed once. The key
#: holds every input of :func:`_judge` (the log's facts are a function of the log bytes
#: and the selection); logs that do not parse are not kept
_JUDGEMENTS = _Memo[tuple[Any, ...], _Judgement](
    limits.ATTEST_MEMO_MAX_ENTRIES, limits.ATTEST_MEMO_MAX_BYTES
)


def _judgement(
    statements: Sequence[bytes],
    others: Sequence[bytes],
    product_keys: Sequence[Verifier],
    policy: AttestationPolicy,
    *,
    evidence: Evidence,
    facts: _LogFacts | None,
) -> _Judgement:
    pcrs = evidence.pcrs
    if facts is None:  # the log did not parse: not kept
        return _judge(statements, others, product_keys, policy, pcrs=pcrs, facts=facts)
    key = (
        tuple(statements),
        tuple(others),
        tuple(sorted(v.key_id for v in product_keys)),
        policy.selection,
        policy.svn_floor,
        tuple(pcrs.items()),
        evidence.eventlog,
    )
    try:
        found = _JUDGEMENTS.get(key)
    except TypeError:  # an unhashable input (a caller's own mapping or buffer): no memo
        return _judge(statements, others, product_keys, policy, pcrs=pcrs, facts=facts)
    if found is None:
        found = _judge(statements, others, product_keys, policy, pcrs=pcrs, facts=facts)
        size = len(evidence.eventlog) + sum(map(len, statements)) + sum(map(len, others))
        _JUDGEMENTS.put(key, found, size + 64 * len(pcrs))
    return found


def evidence_result(
    evidence: Evidence | bytes,
    *,
    nonce: bytes,
    ak_public: AkPublic | None,
    golden: Sequence[bytes],
    product_keys: Sequence[Verifier],
    policy: AttestationPolicy,
    previous: ClockState | None = None,
    others: Sequence[bytes] = (),
) -> Verdict:
    """Run every check (module docstring) and return the :class:`Verdict`; never raises
    for bad evidence (``evidence.format`` is a failure too). ``golden``: statements of
    what the device should run, first what it should run first; ``others``: the
    fleet's other releases (``release.unexpected`` when the device runs one)."""
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
    facts = _read_log(fail, evidence, selection)
    judged = _judgement(golden, others, product_keys, policy, evidence=evidence, facts=facts)
    failures.extend(judged.failures)
    check_posture(fail, evidence.posture, policy.posture)
    return Verdict(tuple(failures), clock, judged.release, judged.security_version)


def verify_evidence(
    evidence: Evidence | bytes,
    *,
    nonce: bytes,
    ak_public: AkPublic | None,
    golden: Sequence[bytes],
    product_keys: Sequence[Verifier],
    policy: AttestationPolicy,
    previous: ClockState | None = None,
    others: Sequence[bytes] = (),
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
        others=others,
    )
    if not verdict.ok:
        raise VerificationError(
            "attestation failed: "
            + ", ".join(verdict.failure_ids)
            + f" ({verdict.failures[0].detail})"
        )
    return verdict

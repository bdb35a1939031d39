"""TPM 2.0 structures bastion exchanges with TPMs and tpm2-tools, as byte-exact codecs.

Marshalling follows TPM 2.0 Part 2 (big-endian, TPM2B = u16 size + bytes, unions
selected by the preceding algorithm/type). Covered: TPMT_PUBLIC / TPM2B_PUBLIC (RSA,
ECC, KEYEDHASH, SYMCIPHER), object Names, TPM2B_SENSITIVE, TPMS_ATTEST (quote and
certify), TPML_PCR_SELECTION, TPMT_SIGNATURE, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET,
TPM2B_PRIVATE (opaque), and two tpm2-tools files: the PCR file ``tpm2_quote -o`` writes
(:class:`PcrsFile`) and the ``tpm2_makecredential`` output (:class:`CredentialFile`).

Every class has ``parse(bytes)`` (the whole buffer, nothing left over) and
``to_bytes()``; every length is bounded by :mod:`bastion.limits`; anything malformed
raises :class:`~bastion.errors.FormatError`. Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from bastion import limits
from bastion.errors import FormatError, LimitError


class Alg(enum.IntEnum):
    """TPM_ALG_ID values bastion reads or writes (Part 2, table 9)."""

    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    MGF1 = 0x0007
    KEYEDHASH = 0x0008
    XOR = 0x000A
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    SM2 = 0x001B
    ECSCHNORR = 0x001C
    ECMQV = 0x001D
    KDF1_SP800_56A = 0x0020
    KDF2 = 0x0021
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CTR = 0x0040
    OFB = 0x0041
    CBC = 0x0042
    CFB = 0x0043
    ECB = 0x0044


#: digest sizes of the hash algorithms (TPMU_HA)
HASH_SIZES: dict[int, int] = {Alg.SHA1: 20, Alg.SHA256: 32, Alg.SHA384: 48, Alg.SHA512: 64}
HASH_NAMES: dict[int, str] = {
    Alg.SHA1: "sha1",
    Alg.SHA256: "sha256",
    Alg.SHA384: "sha384",
    Alg.SHA512: "sha512",
}


class Curve(enum.IntEnum):
    """TPM_ECC_CURVE values with their coordinate sizes."""

    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005


ECC_COORD_SIZES: dict[int, int] = {Curve.NIST_P256: 32, Curve.NIST_P384: 48, Curve.NIST_P521: 66}


class ObjectAttr(enum.IntFlag):
    """TPMA_OBJECT bits."""

    FIXED_TPM = 0x00000002
    ST_CLEAR = 0x00000004
    FIXED_PARENT = 0x00000010
    SENSITIVE_DATA_ORIGIN = 0x00000020
    USER_WITH_AUTH = 0x00000040
    ADMIN_WITH_POLICY = 0x00000080
    NO_DA = 0x00000400
    ENCRYPTED_DUPLICATION = 0x00000800
    RESTRICTED = 0x00010000
    DECRYPT = 0x00020000
    SIGN_ENCRYPT = 0x00040000


TPM_GENERATED_VALUE = 0xFF544347
ST_ATTEST_CERTIFY = 0x8017
ST_ATTEST_QUOTE = 0x8018
ST_VERIFIED = 0x8022
#: hierarchy handles a ticket can name (TPMI_RH_HIERARCHY+)
TICKET_HIERARCHIES = frozenset({0x40000001, 0x40000007, 0x4000000B, 0x4000000C})
#: TPM_PCR_SELECT_MIN for a 24-PCR PC Client TPM
PCR_SELECT_MIN = 3


def hash_digest(alg: int, data: bytes) -> bytes:
    """H_alg(data) for a TPM hash algorithm id."""
    name = HASH_NAMES.get(alg)
    if name is None:
        raise FormatError(f"hash algorithm 0x{alg:04x} is not supported")
    return hashlib.new(name, data).digest()


# --- reading and writing primitives --------------------------------------------------------

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
#: TPMS_ATTEST after magic, type and the two TPM2Bs: clockInfo and firmwareVersion
_CLOCK_FIRMWARE = struct.Struct(">QIIBQ")


class Reader:
    """A bounded big-endian cursor over untrusted bytes; every shortfall is a FormatError."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise FormatError(
                f"{self.what}: truncated at offset {self.pos}: need {n} bytes, "
                f"have {len(self.data) - self.pos}"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, form: struct.Struct) -> tuple[int, ...]:
        """The fields of ``form`` at the cursor (one bounds check, one unpack)."""
        pos = self.pos
        if pos + form.size > len(self.data):
            self.take(form.size)  # raises the truncation error
        self.pos = pos + form.size
        return form.unpack_from(self.data, pos)

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:  # the commonest read: inlined rather than through unpack()
        pos = self.pos
        if pos + 2 > len(self.data):
            self.take(2)  # raises the truncation error
        self.pos = pos + 2
        value: int = _U16.unpack_from(self.data, pos)[0]
        return value

    def u32(self) -> int:
        value: int = self.unpack(_U32)[0]
        return value

    def u64(self) -> int:
        value: int = self.unpack(_U64)[0]
        return value

    def tpm2b(self, limit: int, field: str) -> bytes:
        size = self.u16()
        if size > limit:
            raise LimitError(f"{self.what}: {field} is {size} bytes, limit is {limit}")
        return self.take(size)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise FormatError(
                f"{self.what}: {len(self.data) - self.pos} trailing bytes after offset {self.pos}"
            )


def u16(v: int) -> bytes:
    return struct.pack(">H", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def tpm2b(body: bytes) -> bytes:
    """Size-prefix ``body`` (TPM2B)."""
    if len(body) > 0xFFFF:
        raise FormatError(f"TPM2B body of {len(body)} bytes does not fit a u16 size")
    return u16(len(body)) + body


def parse_tpm2b(data: bytes, what: str, limit: int = limits.TPM2B_MAX_SIZE) -> bytes:
    """The body of a whole-buffer TPM2B."""
    r = Reader(data, what)
    body = r.tpm2b(limit, "body")
    r.done()
    return body


def _hash_alg(r: Reader, field: str, *, allow_null: bool = False) -> int:
    alg = r.u16()
    if alg in HASH_SIZES or (allow_null and alg == Alg.NULL):
        return alg
    raise FormatError(f"{r.what}: {field} 0x{alg:04x} is not a supported hash algorithm")


# --- TPMT_PUBLIC -----------------------------------------------------------------------------

_SCHEMES_WITH_HASH = {
    Alg.RSASSA,
    Alg.RSAPSS,
    Alg.OAEP,
    Alg.ECDSA,
    Alg.ECDH,
    Alg.SM2,
    Alg.ECSCHNORR,
    Alg.ECMQV,
    Alg.HMAC,
    Alg.MGF1,
    Alg.KDF1_SP800_56A,
    Alg.KDF2,
    Alg.KDF1_SP800_108,
}
_RSA_SCHEMES = {Alg.NULL, Alg.RSASSA, Alg.RSAPSS, Alg.OAEP, Alg.RSAES}
_ECC_SCHEMES = {Alg.NULL, Alg.ECDSA, Alg.ECDH, Alg.ECDAA, Alg.SM2, Alg.ECSCHNORR, Alg.ECMQV}
_KEYEDHASH_SCHEMES = {Alg.NULL, Alg.HMAC, Alg.XOR}
_KDF_SCHEMES = {Alg.NULL, Alg.MGF1, Alg.KDF1_SP800_56A, Alg.KDF2, Alg.KDF1_SP800_108}
_SYM_MODES = {Alg.CTR, Alg.OFB, Alg.CBC, Alg.CFB, Alg.ECB, Alg.NULL}


@dataclass(frozen=True, slots=True)
class SymDef:
    """TPMT_SYM_DEF_OBJECT: ``algorithm`` NULL, or AES with key bits and mode."""

    algorithm: int = Alg.NULL
    key_bits: int = 0
    mode: int = 0

    def to_bytes(self) -> bytes:
        if self.algorithm == Alg.NULL:
            return u16(Alg.NULL)
        return u16(self.algorithm) + u16(self.key_bits) + u16(self.mode)

    @classmethod
    def read(cls, r: Reader) -> SymDef:
        alg = r.u16()
        if alg == Alg.NULL:
            return cls()
        if alg != Alg.AES:
            raise FormatError(f"{r.what}: symmetric algorithm 0x{alg:04x} is not supported")
        bits, mode = r.u16(), r.u16()
        if bits not in (128, 192, 256) or mode not in _SYM_MODES:
            raise FormatError(f"{r.what}: bad AES definition ({bits} bits, mode 0x{mode:04x})")
        return cls(alg, bits, mode)


@dataclass(frozen=True, slots=True)
class Scheme:
    """Any TPMT_*_SCHEME / TPMT_KDF_SCHEME: scheme, hash (NULL scheme: none), and for
    ECDAA the count, for XOR the KDF, in ``extra``."""

    scheme: int = Alg.NULL
    hash_alg: int = Alg.NULL
    extra: int = 0

    def to_bytes(self) -> bytes:
        if self.scheme == Alg.NULL:
            return u16(Alg.NULL)
        if self.scheme == Alg.RSAES:
            return u16(self.scheme)
        out = u16(self.scheme) + u16(self.hash_alg)
        if self.scheme in (Alg.ECDAA, Alg.XOR):
            out += u16(self.extra)
        return out

    @classmethod
    def read(cls, r: Reader, allowed: set[Alg], field: str) -> Scheme:
        scheme = r.u16()
        if scheme not in allowed:
            raise FormatError(f"{r.what}: {field} 0x{scheme:04x} is not allowed here")
        if scheme in (Alg.NULL, Alg.RSAES):
            return cls(scheme)
        hash_alg = _hash_alg(r, f"{field} hash")
        extra = 0
        if scheme in (Alg.ECDAA, Alg.XOR):
            extra = r.u16()
            if scheme == Alg.XOR and extra not in _KDF_SCHEMES:
                raise FormatError(f"{r.what}: XOR KDF 0x{extra:04x} is not supported")
        return cls(scheme, hash_alg, extra)


@dataclass(frozen=True, slots=True)
class RsaParms:
    """TPMS_RSA_PARMS. ``exponent`` 0 means 65537."""

    symmetric: SymDef
    scheme: Scheme
    key_bits: int
    exponent: int = 0


@dataclass(frozen=True, slots=True)
class EccParms:
    """TPMS_ECC_PARMS."""

    symmetric: SymDef
    scheme: Scheme
    curve: int
    kdf: Scheme = Scheme()


@dataclass(frozen=True, slots=True)
class KeyedHashParms:
    """TPMS_KEYEDHASH_PARMS."""

    scheme: Scheme = Scheme()


@dataclass(frozen=True, slots=True)
class SymCipherParms:
    """TPMS_SYMCIPHER_PARMS."""

    symmetric: SymDef


@dataclass(frozen=True, slots=True)
class EccPoint:
    """TPMS_ECC_POINT: big-endian coordinates."""

    x: bytes
    y: bytes

    def to_bytes(self) -> bytes:
        return tpm2b(self.x) + tpm2b(self.y)

    @classmethod
    def read(cls, r: Reader) -> EccPoint:
        x = r.tpm2b(limits.TPM_MAX_ECC_PARAM_SIZE, "ECC x")
        y = r.tpm2b(limits.TPM_MAX_ECC_PARAM_SIZE, "ECC y")
        return cls(x, y)


Parms = RsaParms | EccParms | KeyedHashParms | SymCipherParms


@dataclass(frozen=True, slots=True)
class Public:
    """TPMT_PUBLIC. ``unique`` is bytes (RSA modulus, KEYEDHASH/SYMCIPHER digest) or an
    :class:`EccPoint`. ``parse``/``to_bytes`` use the TPM2B_PUBLIC form; ``from_tpmt``/
    ``to_tpmt`` the bare TPMT_PUBLIC."""

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    parameters: Parms
    unique: bytes | EccPoint

    def to_tpmt(self) -> bytes:
        out = u16(self.type) + u16(self.name_alg) + u32(self.attributes) + tpm2b(self.auth_policy)
        p = self.parameters
        if isinstance(p, RsaParms):
            out += p.symmetric.to_bytes() + p.scheme.to_bytes() + u16(p.key_bits) + u32(p.exponent)
        elif isinstance(p, EccParms):
            out += p.symmetric.to_bytes() + p.scheme.to_bytes() + u16(p.curve) + p.kdf.to_bytes()
        elif isinstance(p, KeyedHashParms):
            out += p.scheme.to_bytes()
        else:
            out += p.symmetric.to_bytes()
        if isinstance(self.unique, EccPoint):
            out += self.unique.to_bytes()
        else:
            out += tpm2b(self.unique)
        return out

    def to_bytes(self) -> bytes:
        """TPM2B_PUBLIC."""
        return tpm2b(self.to_tpmt())

    @property
    def name(self) -> bytes:
        """The object Name: nameAlg || H_nameAlg(TPMT_PUBLIC)."""
        return u16(self.name_alg) + hash_digest(self.name_alg, self.to_tpmt())

    @classmethod
    def read(cls, r: Reader) -> Public:
        typ = r.u16()
        name_alg = _hash_alg(r, "nameAlg", allow_null=True)
        attributes = r.u32()
        auth_policy = r.tpm2b(limits.TPM_MAX_DIGEST_SIZE, "authPolicy")
        parms: Parms
        unique: bytes | EccPoint
        if typ == Alg.RSA:
            sym = SymDef.read(r)
            scheme = Scheme.read(r, _RSA_SCHEMES, "RSA scheme")
            bits = r.u16()
            if bits not in (1024, 2048, 3072, 4096) or bits > limits.TPM_MAX_RSA_BITS:
                raise FormatError(f"{r.what}: RSA key size {bits} bits is not supported")
            parms = RsaParms(sym, scheme, bits, r.u32())
            unique = r.tpm2b(limits.TPM_MAX_RSA_BITS // 8, "RSA modulus")
        elif typ == Alg.ECC:
            sym = SymDef.read(r)
            scheme = Scheme.read(r, _ECC_SCHEMES, "ECC scheme")
            curve = r.u16()
            if curve not in ECC_COORD_SIZES:
                raise FormatError(f"{r.what}: ECC curve 0x{curve:04x} is not supported")
            parms = EccParms(sym, scheme, curve, Scheme.read(r, _KDF_SCHEMES, "KDF scheme"))
            unique = EccPoint.read(r)
        elif typ == Alg.KEYEDHASH:
            parms = KeyedHashParms(Scheme.read(r, _KEYEDHASH_SCHEMES, "keyedhash scheme"))
            unique = r.tpm2b(limits.TPM_MAX_DIGEST_SIZE, "keyedhash unique")
        elif typ == Alg.SYMCIPHER:
            parms = SymCipherParms(SymDef.read(r))
            unique = r.tpm2b(limits.TPM_MAX_DIGEST_SIZE, "symcipher unique")
        else:
            raise FormatError(f"{r.what}: object type 0x{typ:04x} is not supported")
        return cls(typ, name_alg, attributes, auth_policy, parms, unique)

    @classmethod
    def from_tpmt(cls, data: bytes) -> Public:
        r = Reader(data, "TPMT_PUBLIC")
        pub = cls.read(r)
        r.done()
        return pub

    @classmethod
    def parse(cls, data: bytes) -> Public:
        """Parse a TPM2B_PUBLIC."""
        return cls.from_tpmt(parse_tpm2b(data, "TPM2B_PUBLIC"))


def object_name(tpm2b_public: bytes) -> bytes:
    """The Name of the object whose TPM2B_PUBLIC is given."""
    return Public.parse(tpm2b_public).name


# --- TPM2B_SENSITIVE, TPM2B_PRIVATE ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sensitive:
    """TPMT_SENSITIVE: the secret part of an object. ``sensitive`` is the private key
    (RSA prime p, ECC scalar) or the sealed data / HMAC key. ``parse``/``to_bytes`` use
    the TPM2B_SENSITIVE form."""

    sensitive_type: int
    auth_value: bytes
    seed_value: bytes
    sensitive: bytes

    def to_bytes(self) -> bytes:
        body = (
            u16(self.sensitive_type)
            + tpm2b(self.auth_value)
            + tpm2b(self.seed_value)
            + tpm2b(self.sensitive)
        )
        return tpm2b(body)

    @classmethod
    def parse(cls, data: bytes) -> Sensitive:
        r = Reader(parse_tpm2b(data, "TPM2B_SENSITIVE"), "TPMT_SENSITIVE")
        typ = r.u16()
        if typ not in (Alg.RSA, Alg.ECC, Alg.KEYEDHASH, Alg.SYMCIPHER):
            raise FormatError(f"TPMT_SENSITIVE: type 0x{typ:04x} is not supported")
        auth = r.tpm2b(limits.TPM_MAX_DIGEST_SIZE, "authValue")
        seed = r.tpm2b(limits.TPM_MAX_DIGEST_SIZE, "seedValue")
        sens = r.tpm2b(limits.TPM_MAX_SENSITIVE_SIZE, "sensitive")
        r.done()
        return cls(typ, auth, seed, sens)


@dataclass(frozen=True, slots=True)
class Private:
    """TPM2B_PRIVATE: opaque to everyone but the TPM that made it."""

    buffer: bytes

    def to_bytes(self) -> bytes:
        return tpm2b(self.buffer)

    @classmethod
    def parse(cls, data: bytes) -> Private:
        return cls(parse_tpm2b(data, "TPM2B_PRIVATE"))


# --- PCR selections ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PcrSelect:
    """TPMS_PCR_SELECTION: a bank and a bitmap (PCR n is bit n%8 of byte n/8)."""

    hash_alg: int
    select: bytes

    @classmethod
    def from_indexes(cls, hash_alg: int, indexes: tuple[int, ...] | list[int]) -> PcrSelect:
        size = max(PCR_SELECT_MIN, (max(indexes, default=0) // 8) + 1)
        bitmap = bytearray(size)
        for i in indexes:
            bitmap[i // 8] |= 1 << (i % 8)
        return cls(hash_alg, bytes(bitmap))

    @property
    def indexes(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.select) * 8) if self.select[i // 8] >> (i % 8) & 1)

    def to_bytes(self) -> bytes:
        return u16(self.hash_alg) + bytes([len(self.select)]) + self.select

    @classmethod
    def read(cls, r: Reader) -> PcrSelect:
        alg = _hash_alg(r, "PCR bank")
        size = r.u8()
        if size > limits.TPM_MAX_PCR_SELECT_BYTES:
            raise LimitError(
                f"{r.what}: sizeofSelect {size} exceeds {limits.TPM_MAX_PCR_SELECT_BYTES}"
            )
        return cls(alg, r.take(size))


@dataclass(frozen=True, slots=True)
class PcrSelectionList:
    """TPML_PCR_SELECTION."""

    selections: tuple[PcrSelect, ...]

    def to_bytes(self) -> bytes:
        return u32(len(self.selections)) + b"".join(s.to_bytes() for s in self.selections)

    @classmethod
    def read(cls, r: Reader) -> PcrSelectionList:
        count = r.u32()
        if count > limits.TPM_MAX_PCR_SELECTIONS:
            raise LimitError(
                f"{r.what}: {count} PCR selections, limit is {limits.TPM_MAX_PCR_SELECTIONS}"
            )
        return cls(tuple(PcrSelect.read(r) for _ in range(count)))

    @classmethod
    def parse(cls, data: bytes) -> PcrSelectionList:
        r = Reader(data, "TPML_PCR_SELECTION")
        out = cls.read(r)
        r.done()
        return out

    @classmethod
    def single(cls, hash_alg: int, indexes: tuple[int, ...] | list[int]) -> PcrSelectionList:
        return cls((PcrSelect.from_indexes(hash_alg, indexes),))


# --- TPMS_ATTEST ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockInfo:
    """TPMS_CLOCK_INFO."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool

    def to_bytes(self) -> bytes:
        return (
            u64(self.clock)
            + u32(self.reset_count)
            + u32(self.restart_count)
            + bytes([int(self.safe)])
        )

    @classmethod
    def read(cls, r: Reader) -> ClockInfo:
        clock, reset, restart, safe = r.u64(), r.u32(), r.u32(), r.u8()
        if safe > 1:
            raise FormatError(f"{r.what}: clockInfo.safe is {safe}, expected 0 or 1")
        return cls(clock, reset, restart, bool(safe))


@dataclass(frozen=True, slots=True)
class QuoteInfo:
    """TPMS_QUOTE_INFO."""

    pcr_select: PcrSelectionList
    pcr_digest: bytes

    def to_bytes(self) -> bytes:
        return self.pcr_select.to_bytes() + tpm2b(self.pcr_digest)


@dataclass(frozen=True, slots=True)
class CertifyInfo:
    """TPMS_CERTIFY_INFO."""

    name: bytes
    qualified_name: bytes

    def to_bytes(self) -> bytes:
        return tpm2b(self.name) + tpm2b(self.qualified_name)


@dataclass(frozen=True, slots=True)
class Attest:
    """TPMS_ATTEST (the bytes a TPM signs; tpm2-tools' ``quote.msg``), quote or certify."""

    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    attested: QuoteInfo | CertifyInfo
    magic: int = TPM_GENERATED_VALUE

    def to_bytes(self) -> bytes:
        return (
            u32(self.magic)
            + u16(self.type)
            + tpm2b(self.qualified_signer)
            + tpm2b(self.extra_data)
            + self.clock_info.to_bytes()
            + u64(self.firmware_version)
            + self.attested.to_bytes()
        )

    @classmethod
    def parse(cls, data: bytes) -> Attest:
        r = Reader(data, "TPMS_ATTEST")
        magic = r.u32()
        if magic != TPM_GENERATED_VALUE:
            raise FormatError(
                f"TPMS_ATTEST: magic is 0x{magic:08x}, expected 0x{TPM_GENERATED_VALUE:08x}"
            )
        typ = r.u16()
        signer = r.tpm2b(limits.TPM_MAX_NAME_SIZE, "qualifiedSigner")
        extra = r.tpm2b(limits.TPM_MAX_DIGEST_SIZE, "extraData")
        # clockInfo and firmwareVersion in one unpack (ClockInfo.read's checks)
        clock_ms, reset, restart, safe, firmware = r.unpack(_CLOCK_FIRMWARE)
        if safe > 1:
            raise FormatError(f"{r.what}: clockInfo.safe is {safe}, expected 0 or 1")
        clock = ClockInfo(clock_ms, reset, restart, bool(safe))
        attested: QuoteInfo | CertifyInfo
        if typ == ST_ATTEST_QUOTE:
            sel = PcrSelectionList.read(r)
            attested = QuoteInfo(sel, r.tpm2b(limits.TPM_MAX_DIGEST_SIZE, "pcrDigest"))
        elif typ == ST_ATTEST_CERTIFY:
            name = r.tpm2b(limits.TPM_MAX_NAME_SIZE, "name")
            attested = CertifyInfo(name, r.tpm2b(limits.TPM_MAX_NAME_SIZE, "qualifiedName"))
        else:
            raise FormatError(
                f"TPMS_ATTEST: type 0x{typ:04x} is not supported "
                f"(expected quote 0x{ST_ATTEST_QUOTE:04x} or certify 0x{ST_ATTEST_CERTIFY:04x})"
            )
        r.done()
        return cls(typ, signer, extra, clock, firmware, attested, magic)


# --- TPMT_SIGNATURE ---------------------------------------------------------------------------

_ECC_SIGS = {Alg.ECDSA, Alg.ECDAA, Alg.SM2, Alg.ECSCHNORR}
_RSA_SIGS = {Alg.RSASSA, Alg.RSAPSS}
_SIGS = frozenset(_ECC_SIGS | _RSA_SIGS | {Alg.HMAC})


@dataclass(frozen=True, slots=True)
class Signature:
    """TPMT_SIGNATURE. ECC schemes use ``r``/``s``; RSA schemes and HMAC use ``sig``;
    the NULL scheme has no fields."""

    sig_alg: int
    hash_alg: int = Alg.NULL
    r: bytes = b""
    s: bytes = b""
    sig: bytes = b""

    def to_bytes(self) -> bytes:
        if self.sig_alg == Alg.NULL:
            return u16(Alg.NULL)
        out = u16(self.sig_alg) + u16(self.hash_alg)
        if self.sig_alg in _ECC_SIGS:
            return out + tpm2b(self.r) + tpm2b(self.s)
        if self.sig_alg in _RSA_SIGS:
            return out + tpm2b(self.sig)
        return out + self.sig  # HMAC: TPMT_HA, digest size from the hash

    @classmethod
    def parse(cls, data: bytes) -> Signature:
        r = Reader(data, "TPMT_SIGNATURE")
        alg = r.u16()
        if alg == Alg.NULL:
            r.done()
            return cls(Alg.NULL)
        if alg not in _SIGS:
            raise FormatError(f"TPMT_SIGNATURE: algorithm 0x{alg:04x} is not supported")
        hash_alg = _hash_alg(r, "signature hash")
        if alg in _ECC_SIGS:
            sr = r.tpm2b(limits.TPM_MAX_ECC_PARAM_SIZE, "signatureR")
            ss = r.tpm2b(limits.TPM_MAX_ECC_PARAM_SIZE, "signatureS")
            out = cls(alg, hash_alg, r=sr, s=ss)
        elif alg in _RSA_SIGS:
            out = cls(alg, hash_alg, sig=r.tpm2b(limits.TPM_MAX_RSA_BITS // 8, "signature"))
        else:
            out = cls(alg, hash_alg, sig=r.take(HASH_SIZES[hash_alg]))
        r.done()
        return out


# --- TPMT_TK_VERIFIED ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedTicket:
    """TPMT_TK_VERIFIED: the ticket TPM2_VerifySignature returns and TPM2_PolicyAuthorize
    checks. ``hierarchy`` is the key's hierarchy (TPM_RH_NULL gives a NULL ticket with an
    empty digest); ``digest`` is the TPM's HMAC over the signed digest and the key Name."""

    hierarchy: int
    digest: bytes
    tag: int = ST_VERIFIED

    def to_bytes(self) -> bytes:
        return u16(self.tag) + u32(self.hierarchy) + tpm2b(self.digest)

    @classmethod
    def parse(cls, data: bytes) -> VerifiedTicket:
        r = Reader(data, "TPMT_TK_VERIFIED")
        tag = r.u16()
        if tag != ST_VERIFIED:
            raise FormatError(f"TPMT_TK_VERIFIED: tag 0x{tag:04x}, expected 0x{ST_VERIFIED:04x}")
        hierarchy = r.u32()
        if hierarchy not in TICKET_HIERARCHIES:
            raise FormatError(f"TPMT_TK_VERIFIED: 0x{hierarchy:08x} is not a hierarchy")
        digest = r.tpm2b(limits.TPM_MAX_DIGEST_SIZE, "ticket digest")
        r.done()
        return cls(hierarchy, digest, tag)


# --- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdObject:
    """TPM2B_ID_OBJECT: TPM2B_DIGEST integrityHMAC, then encIdentity (the rest)."""

    integrity_hmac: bytes
    enc_identity: bytes

    def to_bytes(self) -> bytes:
        return tpm2b(tpm2b(self.integrity_hmac) + self.enc_identity)

    @classmethod
    def parse(cls, data: bytes) -> IdObject:
        r = Reader(parse_tpm2b(data, "TPM2B_ID_OBJECT"), "TPMS_ID_OBJECT")
        hmac_value = r.tpm2b(limits.TPM_MAX_DIGEST_SIZE, "integrityHMAC")
        enc = r.take(len(r.data) - r.pos)
        if not enc:
            raise FormatError("TPMS_ID_OBJECT: encIdentity is empty")
        return cls(hmac_value, enc)


@dataclass(frozen=True, slots=True)
class EncryptedSecret:
    """TPM2B_ENCRYPTED_SECRET (an RSA-OAEP ciphertext or a marshalled ECC point)."""

    secret: bytes

    def to_bytes(self) -> bytes:
        return tpm2b(self.secret)

    @classmethod
    def parse(cls, data: bytes) -> EncryptedSecret:
        return cls(parse_tpm2b(data, "TPM2B_ENCRYPTED_SECRET", limits.TPM_MAX_RSA_BITS // 8))


CREDENTIAL_FILE_MAGIC = 0xBADCC0DE
CREDENTIAL_FILE_VERSION = 1


@dataclass(frozen=True, slots=True)
class CredentialFile:
    """What ``tpm2_makecredential -o`` writes and ``tpm2_activatecredential -i`` reads:
    BE32 magic 0xBADCC0DE, BE32 version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET."""

    id_object: bytes
    encrypted_secret: bytes

    def to_bytes(self) -> bytes:
        return (
            u32(CREDENTIAL_FILE_MAGIC)
            + u32(CREDENTIAL_FILE_VERSION)
            + self.id_object
            + self.encrypted_secret
        )

    @classmethod
    def parse(cls, data: bytes) -> CredentialFile:
        r = Reader(data, "tpm2-tools credential file")
        magic, version = r.u32(), r.u32()
        if magic != CREDENTIAL_FILE_MAGIC or version != CREDENTIAL_FILE_VERSION:
            raise FormatError(
                f"tpm2-tools credential file: header {magic:08x}/{version}, "
                f"expected {CREDENTIAL_FILE_MAGIC:08x}/{CREDENTIAL_FILE_VERSION}"
            )
        id_object = tpm2b(r.tpm2b(limits.TPM2B_MAX_SIZE, "TPM2B_ID_OBJECT"))
        IdObject.parse(id_object)
        secret = tpm2b(r.tpm2b(limits.TPM_MAX_RSA_BITS // 8, "TPM2B_ENCRYPTED_SECRET"))
        r.done()
        return cls(id_object, secret)


# --- the PCR file of tpm2_quote -o / tpm2_pcrread -o -F serialized ---------------------------

# tpm2-tools writes C structs in little-endian byte order: TPML_PCR_SELECTION (u32 count,
# 16 x {u16 hash, u8 sizeofSelect, u8 pcrSelect[4], pad}), u32 chunk count, then per chunk
# a TPML_DIGEST (u32 count, 8 x {u16 size, u8 buffer[64]}).
_NUM_BANKS = 16
_SEL_STRUCT = 8
_SELECT_MAX = 4
_DIGESTS_PER_CHUNK = 8
_TPM2B_DIGEST_STRUCT = 2 + 64
_TPML_DIGEST_STRUCT = 4 + _DIGESTS_PER_CHUNK * _TPM2B_DIGEST_STRUCT
_TPML_SEL_STRUCT = 4 + _NUM_BANKS * _SEL_STRUCT


@dataclass(frozen=True, slots=True)
class PcrsFile:
    """The serialized PCR file of ``tpm2_quote -o`` (read by ``tpm2_checkquote -f``).

    ``selection`` lists the banks/PCRs, ``values`` the PCR values in selection order
    (bank by bank, PCR index ascending), as the TPM returns them.
    """

    selection: PcrSelectionList
    values: tuple[bytes, ...]

    @classmethod
    def from_values(cls, hash_alg: int, values: dict[int, bytes]) -> PcrsFile:
        indexes = sorted(values)
        return cls(PcrSelectionList.single(hash_alg, indexes), tuple(values[i] for i in indexes))

    def bank_values(self) -> dict[int, dict[int, bytes]]:
        """``{hash_alg: {index: value}}``."""
        out: dict[int, dict[int, bytes]] = {}
        it = iter(self.values)
        for sel in self.selection.selections:
            out.setdefault(sel.hash_alg, {}).update({i: next(it) for i in sel.indexes})
        return out

    def to_bytes(self) -> bytes:
        sels = self.selection.selections
        if len(sels) > _NUM_BANKS or any(len(s.select) > _SELECT_MAX for s in sels):
            raise FormatError("PCR file: selection does not fit tpm2-tools' fixed structure")
        out = bytearray(struct.pack("<I", len(sels)))
        for i in range(_NUM_BANKS):
            if i < len(sels):
                s = sels[i]
                out += struct.pack("<HB", s.hash_alg, len(s.select))
                out += s.select.ljust(_SELECT_MAX, b"\0") + b"\0"
            else:
                out += bytes(_SEL_STRUCT)
        chunks = [
            self.values[i : i + _DIGESTS_PER_CHUNK]
            for i in range(0, len(self.values), _DIGESTS_PER_CHUNK)
        ]
        out += struct.pack("<I", len(chunks))
        for chunk in chunks:
            out += struct.pack("<I", len(chunk))
            for j in range(_DIGESTS_PER_CHUNK):
                value = chunk[j] if j < len(chunk) else b""
                out += struct.pack("<H", len(value)) + value.ljust(64, b"\0")
        return bytes(out)

    @classmethod
    def parse(cls, data: bytes) -> PcrsFile:
        what = "tpm2-tools PCR file"
        if len(data) < _TPML_SEL_STRUCT + 4:
            raise FormatError(f"{what}: {len(data)} bytes, need at least {_TPML_SEL_STRUCT + 4}")
        (count,) = struct.unpack_from("<I", data, 0)
        if count > _NUM_BANKS:
            raise LimitError(f"{what}: {count} banks, the structure holds {_NUM_BANKS}")
        sels = []
        for i in range(count):
            alg, size = struct.unpack_from("<HB", data, 4 + i * _SEL_STRUCT)
            if alg not in HASH_SIZES or size > _SELECT_MAX:
                raise FormatError(f"{what}: bad bank 0x{alg:04x} / sizeofSelect {size}")
            start = 4 + i * _SEL_STRUCT + 3
            sels.append(PcrSelect(alg, bytes(data[start : start + size])))
        (chunks,) = struct.unpack_from("<I", data, _TPML_SEL_STRUCT)
        if chunks > limits.TPM_MAX_PCRS_FILE_CHUNKS:
            raise LimitError(
                f"{what}: {chunks} digest lists, limit is {limits.TPM_MAX_PCRS_FILE_CHUNKS}"
            )
        expected = _TPML_SEL_STRUCT + 4 + chunks * _TPML_DIGEST_STRUCT
        if len(data) != expected:
            raise FormatError(f"{what}: {len(data)} bytes, expected {expected}")
        values: list[bytes] = []
        for c in range(chunks):
            base = _TPML_SEL_STRUCT + 4 + c * _TPML_DIGEST_STRUCT
            (n,) = struct.unpack_from("<I", data, base)
            if n > _DIGESTS_PER_CHUNK:
                raise FormatError(f"{what}: digest list {c} claims {n} digests, holds 8")
            for j in range(n):
                off = base + 4 + j * _TPM2B_DIGEST_STRUCT
                (size,) = struct.unpack_from("<H", data, off)
                if size > 64:
                    raise FormatError(f"{what}: digest of {size} bytes in list {c}")
                values.append(bytes(data[off + 2 : off + 2 + size]))
        selection = PcrSelectionList(tuple(sels))
        wanted = [
            HASH_SIZES[s.hash_alg] for s in selection.selections for _ in range(len(s.indexes))
        ]
        if [len(v) for v in values] != wanted:
            raise FormatError(
                f"{what}: {len(values)} PCR values do not match the selection ({len(wanted)} PCRs)"
            )
        return cls(selection, tuple(values))

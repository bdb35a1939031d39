"""The sim kernel's module signature check (device/boot/modules.py), as Linux's
module_sig_check decides: the negative table first, then what loads, then the initrd
lists systemd-modules-load reads."""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Callable

import pytest
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from tests.certkit import self_signed
from tests.unit.trust.conftest import make_key

from bastion.device.boot import modules
from bastion.errors import FormatError, LimitError, SignatureError
from bastion.formats import cpio, modsig
from bastion.trust.signer import PrivateKey

KEY, ROGUE_KEY = make_key("rsa-2048", 0), make_key("rsa-2048", 1)
TRUSTED = self_signed(KEY, "product modules", key_id=True)
ROGUE = self_signed(ROGUE_KEY, "someone else", key_id=True)
BODY = b"\x7fELF a kernel module " * 200


def _sign(body: bytes, key: PrivateKey, cert: x509.Certificate, *, key_id: bool = False) -> bytes:
    def sign(data: bytes) -> bytes:
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg]

    return modsig.sign_module(body, cert, sign, use_key_id=key_id)


GOOD = _sign(BODY, KEY, TRUSTED)
BY_ROGUE = _sign(BODY, ROGUE_KEY, ROGUE)
FLIPPED = bytearray(GOOD)
FLIPPED[10] ^= 1  # one bit of the module body: the signature no longer verifies
TRUNCATED_TRAILER = GOOD[:-40] + GOOD[-28:]  # the magic is there, the trailer is not


# --- refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "enforce", "words"),
    [
        (BODY, True, "Loading of unsigned module is rejected"),
        (BY_ROGUE, True, "module with unavailable key is rejected"),
        # a signature by a trusted key that does not verify is refused with or without
        # enforcement (the kernel returns the error either way)
        (bytes(FLIPPED), True, "Key was rejected by service"),
        (bytes(FLIPPED), False, "Key was rejected by service"),
        (TRUNCATED_TRAILER, False, "malformed signature"),
        (TRUNCATED_TRAILER, True, "malformed signature"),
    ],
)
def test_refused(data: bytes, enforce: bool, words: str) -> None:
    with pytest.raises(SignatureError, match=words):
        modules.check_module("m", data, [TRUSTED], enforce=enforce)


def test_no_keyring_under_enforcement_refuses_every_signed_module() -> None:
    with pytest.raises(SignatureError, match="unavailable key"):
        modules.check_module("m", GOOD, [], enforce=True)


# --- loaded -----------------------------------------------------------------------------


def test_signed_by_a_trusted_key_loads() -> None:
    for data in (GOOD, _sign(BODY, KEY, TRUSTED, key_id=True)):
        loaded = modules.check_module("m", data, [ROGUE, TRUSTED], enforce=True)
        assert loaded == modules.LoadedModule("m", "CN=product modules")


@pytest.mark.parametrize(("data", "taint"), [(BODY, "unsigned"), (BY_ROGUE, "key missing")])
def test_without_enforcement_unverified_modules_load_and_taint(data: bytes, taint: str) -> None:
    loaded = modules.check_module("m", data, [TRUSTED], enforce=False)
    assert taint in loaded.taint and loaded.signer == ""


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("quiet", False),
        ("module.sig_enforce", True),
        ("module.sig_enforce=1", True),
        ("module.sig_enforce=Y", True),
        ("module.sig_enforce=on", True),
        ("module.sig_enforce=0", False),
        ("module.sig_enforce=n", False),
        ("module.sig_enforce=1 module.sig_enforce=0", False),  # the last one wins
    ],
)
def test_enforcement_from_the_command_line(cmdline: str, expected: bool) -> None:
    params: dict[str, str] = {}
    for word in cmdline.split():
        key, _, value = word.partition("=")
        params[key] = value
    assert modules.enforced(params) is expected


# --- the initrd ---------------------------------------------------------------------------


def _initrd(*extra: cpio.CpioEntry, load: bytes = b"good\n# comment\nunsigned\nnope\n") -> bytes:
    entries = [
        cpio.CpioEntry.file("etc/modules-load.d/bastion.conf", load),
        cpio.CpioEntry.file("usr/lib/modules-load.d/00-first.conf", b"; x\nrogue\n"),
        cpio.CpioEntry.file("lib/modules/6.1.0/kernel/drivers/good.ko", GOOD),
        cpio.CpioEntry.file("lib/modules/6.1.0/kernel/drivers/unsigned.ko", BODY),
        cpio.CpioEntry.file("usr/lib/modules/6.1.0/extra/rogue.ko", BY_ROGUE),
        cpio.CpioEntry.symlink("lib/modules/6.1.0/kernel/nope.ko", "good.ko"),
        *extra,
    ]
    return cpio.archive(entries)


def test_initrd_modules_under_enforcement() -> None:
    report = modules.load_initrd_modules(_initrd(), [TRUSTED], enforce=True)
    assert [m.name for m in report.loaded] == ["good"]
    assert [name for name, _ in report.refused] == ["rogue", "unsigned"]  # 00-first.conf first
    assert report.missing == ("nope",)  # a symlink is not a module file


def test_initrd_modules_without_enforcement_taint() -> None:
    report = modules.load_initrd_modules(gzip.compress(_initrd()), [TRUSTED], enforce=False)
    assert [(m.name, bool(m.taint)) for m in report.loaded] == [
        ("rogue", True),
        ("good", False),
        ("unsigned", True),
    ]
    assert report.refused == ()


def test_initrds_the_sim_cannot_read() -> None:
    for data, words in (
        (b"\x28\xb5\x2f\xfd" + bytes(20), "zstd"),
        (b"\xfd7zXZ\0" + bytes(20), "xz"),
        (b"BZh91AY&SY" + bytes(20), "bzip2"),
        (b"070701 a placeholder", "cpio"),
        (b"\x1f\x8b" + bytes(20), "gzip"),
        (gzip.compress(_initrd()) + b"\x1f\x8b more", "after the gzip stream"),
        (lzma.compress(_initrd(), check=lzma.CHECK_CRC64), "--check=crc32"),
    ):
        with pytest.raises(FormatError, match=words):
            modules.load_initrd_modules(data, [TRUSTED], enforce=True)


@pytest.mark.parametrize(
    "pack",
    [
        lambda d: lzma.compress(d, check=lzma.CHECK_CRC32),
        lambda d: zstandard.ZstdCompressor().compress(d),
    ],
    ids=["xz", "zstd"],
)
def test_xz_and_zstd_initrds(pack: Callable[[bytes], bytes]) -> None:
    report = modules.load_initrd_modules(pack(_initrd()), [TRUSTED], enforce=True)
    assert [m.name for m in report.loaded] == ["good"]
    assert [name for name, _ in report.refused] == ["rogue", "unsigned"]


# --- compressed module files ------------------------------------------------------------------

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".ko.xz": lzma.compress,
    ".ko.zst": lambda d: zstandard.ZstdCompressor().compress(d),
    ".ko.gz": lambda d: gzip.compress(d, mtime=0),
}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_a_compressed_module_is_checked_after_decompression(suffix: str) -> None:
    for body, loaded in ((GOOD, True), (bytes(FLIPPED), False), (BODY, False)):
        initrd = cpio.archive(
            [
                cpio.CpioEntry.file("etc/modules-load.d/m.conf", b"m\n"),
                cpio.CpioEntry.file(
                    f"lib/modules/6.1.0/extra/m{suffix}", COMPRESSORS[suffix](body)
                ),
            ]
        )
        report = modules.load_initrd_modules(initrd, [TRUSTED], enforce=True)
        assert [m.name for m in report.loaded] == (["m"] if loaded else [])
        assert [n for n, _ in report.refused] == ([] if loaded else ["m"])
        assert report.missing == ()


REFUSED_FILES = [
    ("xz suffix, gzip content", "m.ko.xz", gzip.compress(GOOD), "not an xz stream"),
    ("zstd suffix, plain module", "m.ko.zst", GOOD, "not a zstd stream"),
    ("truncated xz", "m.ko.xz", lzma.compress(BODY[:500])[:-9], "truncated"),
    ("zstd bomb", "m.ko.zst", zstandard.ZstdCompressor().compress(bytes(2000)), "more than"),
]


@pytest.mark.parametrize(
    ("name", "data", "words"), [r[1:] for r in REFUSED_FILES], ids=[r[0] for r in REFUSED_FILES]
)
def test_compressed_modules_that_do_not_decompress_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, data: bytes, words: str
) -> None:
    monkeypatch.setattr(modules, "KERNEL_MODULE_MAX_SIZE", 1000)
    initrd = cpio.archive(
        [
            cpio.CpioEntry.file("etc/modules-load.d/m.conf", b"m\n"),
            cpio.CpioEntry.file(f"lib/modules/6.1.0/extra/{name}", data),
        ]
    )
    report = modules.load_initrd_modules(initrd, [TRUSTED], enforce=False)
    assert report.loaded == () and report.missing == ()
    ((refused, reason),) = report.refused
    assert refused == "m" and words in reason, reason


def test_a_plain_module_file_is_preferred_over_a_compressed_one() -> None:
    initrd = cpio.archive(
        [
            cpio.CpioEntry.file("etc/modules-load.d/m.conf", b"m\n"),
            cpio.CpioEntry.file("lib/modules/6.1.0/extra/m.ko.xz", lzma.compress(BODY)),
            cpio.CpioEntry.file("lib/modules/6.1.0/extra/m.ko", GOOD),
        ]
    )
    report = modules.load_initrd_modules(initrd, [TRUSTED], enforce=True)
    assert [m.name for m in report.loaded] == ["m"]


def test_initrd_bomb_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modules, "INITRD_MAX_SIZE", 1000)
    with pytest.raises(LimitError):
        modules.unpack_initrd(gzip.compress(bytes(100_000)))

"""The sim kernel reads what the reference tools compress (ADR 0039, amendment
2026-12-07): a module signed by the kernel's ``sign-file``, compressed as kbuild does
(``xz --check=crc32 --lzma2=dict=1MiB``, ``zstd``, ``gzip -n``), in an initrd compressed
by ``zstd``, ``xz --check=crc32`` (the kernel's documented flags) and ``gzip -n``, is
found, decompressed and its signature checked; bastion's own zstd initrd
(``build/initrd.compress``) too. The other direction: what bastion decompresses equals
what ``zstd -dc``, ``xz -dc`` and ``gzip -dc`` print, and a stream the tools refuse as
truncated bastion refuses too."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from tests.conftest import need_tool
from tests.interop.conftest import sign_file_tool

from bastion.build import initrd as build_initrd
from bastion.device.boot import modules
from bastion.errors import FormatError
from bastion.formats import compressed, cpio

pytestmark = pytest.mark.interop

#: how kbuild compresses modules (scripts/Makefile.modinst) and the kernel docs an initrd
MODULE_TOOLS = {
    ".ko.xz": ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-c"],
    ".ko.zst": ["zstd", "-q", "-c", "-T0"],
    ".ko.gz": ["gzip", "-n", "-c", "-9"],
}
INITRD_TOOLS = {
    "zstd": ["zstd", "-q", "-c", "-19"],
    "xz": ["xz", "--check=crc32", "-c"],
    "gzip": ["gzip", "-n", "-c"],
}


def _run(argv: list[str], data: bytes) -> bytes:
    tool = need_tool(argv[0])
    return subprocess.run([tool, *argv[1:]], input=data, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def signed(material: tuple[Path, Any, x509.Certificate]) -> tuple[bytes, x509.Certificate]:
    """A module signed by the kernel's sign-file (the key and certificate of
    test_modsig_signfile.py), and its certificate."""
    folder, _key, cert = material
    (folder / "m.ko").write_bytes(b"\x7fELF" + os.urandom(50_000))
    subprocess.run(
        [sign_file_tool(), "sha256", str(folder / "key.pem"), str(folder / "cert.der"),
         str(folder / "m.ko"), str(folder / "signed.ko")],
        check=True,
    )  # fmt: skip
    return (folder / "signed.ko").read_bytes(), cert


def _initrd(module_name: str, module: bytes) -> bytes:
    return cpio.archive(
        [
            cpio.CpioEntry.file("etc/modules-load.d/product.conf", b"product-driver\n"),
            cpio.CpioEntry.file(f"usr/lib/modules/6.1.0/extra/{module_name}", module),
        ]
    )


@pytest.mark.parametrize("initrd_kind", sorted(INITRD_TOOLS))
@pytest.mark.parametrize("suffix", sorted(MODULE_TOOLS))
def test_tool_compressed_initrd_and_module_load_and_verify(
    signed: tuple[bytes, x509.Certificate], initrd_kind: str, suffix: str
) -> None:
    module, cert = signed
    packed = _run(MODULE_TOOLS[suffix], module)
    initrd = _run(INITRD_TOOLS[initrd_kind], _initrd(f"product_driver{suffix}", packed))
    report = modules.load_initrd_modules(initrd, [cert], enforce=True)
    assert [(m.name, m.signer) for m in report.loaded] == [
        ("product-driver", cert.subject.rfc4514_string())
    ]
    assert report.refused == () and report.missing == ()
    # the same module with one bit flipped inside the compressed payload's content
    tampered = bytearray(module)
    tampered[100] ^= 1
    initrd = _run(
        INITRD_TOOLS[initrd_kind],
        _initrd(f"product_driver{suffix}", _run(MODULE_TOOLS[suffix], bytes(tampered))),
    )
    report = modules.load_initrd_modules(initrd, [cert], enforce=True)
    assert report.loaded == () and [n for n, _ in report.refused] == ["product-driver"]


def test_bastions_own_zstd_initrd(signed: tuple[bytes, x509.Certificate]) -> None:
    module, cert = signed
    need_tool("zstd")
    initrd = build_initrd.compress(_initrd("product_driver.ko", module), "zstd")
    assert compressed.kind_of(initrd) == "zstd"
    report = modules.load_initrd_modules(initrd, [cert], enforce=True)
    assert [m.name for m in report.loaded] == ["product-driver"]


@pytest.mark.parametrize("kind", sorted(INITRD_TOOLS))
@pytest.mark.parametrize("size", [0, 1, 70_000, 3_000_000])
def test_bastion_reads_what_the_tool_reads(kind: str, size: int, tmp_path: Path) -> None:
    data = os.urandom(size // 2) + bytes(size - size // 2)
    stream = _run(INITRD_TOOLS[kind], data)
    assert _run([kind, "-dc"], stream) == data
    assert compressed.decompress(stream, limit=size, what="x") == data
    # cut short: both the tool and bastion refuse it
    cut = stream[: len(stream) - 3]
    tool = subprocess.run([need_tool(kind), "-dc"], input=cut, capture_output=True, check=False)
    assert tool.returncode != 0
    with pytest.raises(FormatError):
        compressed.decompress(cut, limit=size, what="x")

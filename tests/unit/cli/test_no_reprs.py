"""Item 23: no Python representation ever reaches the user.

Runs the main paths of every offline command, in text and in ``--json`` mode, plus a
failure of each kind, and scans what they print: text must not contain ``None``,
``True``/``False``, ``b'...'``, ``{'...'``, ``['...'``, ``[]``/``{}``, ``<... object at
0x...>``, ``PosixPath(...)`` or a dataclass repr; in JSON every string is scanned the
same way. Every failure is one line on stderr (and the JSON error object with --json).
(Server-backed commands are covered in tests/integration/server/test_cli_no_reprs.py.)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.bootkit import INITRD, KERNEL, make_tree
from tests.conftest import need_tool
from tests.pebuild import make_pe

from bastion.cli.main import main
from bastion.storage import disk_image as di

REPR = re.compile(
    r"\bNone\b|\bTrue\b|\bFalse\b|\bb'|\bb\"|\{'|\['|\[\]|\{\}|\(\)|"
    r"<[\w.]+ object at 0x|\b(?:Posix)?Path\(|\b[A-Z]\w+\(\w+="
)
CHEAP = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
MODES = ("text", "json")


@dataclass
class Ran:
    argv: list[str]
    code: int
    out: str
    err: str

    @property
    def json(self) -> bool:
        return "--json" in self.argv


def _strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _strings(value)


def _csr(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def _script(d: Path) -> tuple[list[list[str]], list[tuple[list[str], int]]]:
    """(commands that must succeed, (failing command, exit code)) for one folder."""
    keys, disk, dev, tpm = d / "keys", d / "disk.img", d / "dev", f"software:{d / 'tpm.state'}"
    (d / "vmlinuz").write_bytes(KERNEL)
    (d / "initrd").write_bytes(INITRD)
    (d / "data.bin").write_bytes(bytes(range(256)) * 64)
    (d / "pass").write_bytes(b"pass phrase")
    (d / "pass2").write_bytes(b"second phrase")
    (d / "payload").write_bytes(b"hello\n")
    (d / "mod.ko").write_bytes(b"\x7fELF module " * 64)
    (d / "stub.efi").write_bytes(make_pe(spare_headers=8))
    (d / "kernel.efi").write_bytes(make_pe())
    with open(d / "v.img", "wb") as handle:
        handle.truncate(4 << 20)
    make_tree(d / "tree")
    _csr(d / "dev.csr")
    h = hashlib.sha256(b"root key").hexdigest()
    q = d / "q"
    quote = ["--msg", str(q / "quote.msg"), "--sig", str(q / "quote.sig"),
             "--pcrs-file", str(q / "pcrs.bin"), "--pcrs", "sha256:0,7"]  # fmt: skip
    luks = ["luks", "format", str(d / "v.img"), "--key-file", str(d / "pass"), *CHEAP,
            "--sector-size", "512", "--luks2-metadata-size", "32k", "--data-offset", "2m",
            "--batch-mode"]  # fmt: skip
    ok = [
        ["keys", "init", str(keys), "--product", "acme"],
        ["keys", "show", str(keys)],
        ["keys", "generate", "ed25519", "-o", str(d / "k.pem")],
        ["keys", "id", str(d / "k.pem")],
        ["keys", "id", str(d / "k.pub.pem")],
        ["image", "build",
        "--rootfs", str(d / "tree"), "--kernel", str(d / "vmlinuz"),
         "--initrd", str(d / "initrd"), "--cmdline", "console=ttyS0", "--version", "1.0",
         "--security-version", "1", "--keys", str(keys), "--data-size", "24", "-o", str(disk)],
        ["image", "inspect", str(disk)],
        ["image", "verify", "--quick", str(disk), "--keys", str(keys)],
        ["image", "pcrs", "--keys", str(keys), str(disk)],
        ["device", "create", str(dev), "--image", str(disk), "--keys", str(keys)],
        ["device", "inspect", str(dev)],  # never booted: no last boot yet
        ["device", "boot", str(dev)],
        ["device", "boot", str(dev)],
        ["device", "inspect", str(dev)],
        ["device", "eventlog", "--check", str(dev)],
        ["verity", "format", str(d / "data.bin"), str(d / "hash.bin"),
         "--root-hash-file", str(d / "root.txt")],
        ["verity", "dump", str(d / "hash.bin")],
        luks,
        ["luks", "dump", str(d / "v.img")],
        ["luks", "repair", str(d / "v.img"), "--batch-mode"],
        ["luks", "open-test", str(d / "v.img"), "--key-file", str(d / "pass")],
        ["luks", "add-key", str(d / "v.img"), str(d / "pass2"), "--key-file", str(d / "pass"),
         *CHEAP],
        ["luks", "remove-key", str(d / "v.img"), "--key-file", str(d / "pass2")],
        ["luks", "enroll-tpm", str(d / "v.img"), "--tpm", tpm, "--key-file", str(d / "pass")],
        ["luks", "token-export", str(d / "v.img"), "--token-id", "0"],
        ["luks", "open-test", str(d / "v.img"), "--token-only", "--tpm", tpm],
        ["luks", "dump", str(d / "v.img")],
        ["luks", "lock", str(d / "v.img"), "--tpm", tpm],
        ["tpm", "pcrs", "--tpm", tpm],
        ["tpm", "extend", "16", "--data", "x", "--tpm", tpm],
        ["tpm", "quote", "--nonce", "c0ffee", "--pcrs", "sha256:0,7", "--out", str(q),
         "--tpm", tpm],
        ["tpm", "verify-quote", "--ak", str(q / "ak.pem"), *quote, "--nonce", "c0ffee"],
        ["tpm", "reset", "--tpm", tpm],
        ["fuses", "show", "--fuses", str(d / "fuses.bin")],
        ["fuses", "burn", h, "--fuses", str(d / "fuses.bin")],
        ["fuses", "blow", "3", "--fuses", str(d / "fuses.bin")],
        ["fuses", "show", "--fuses", str(d / "fuses.bin")],
        ["module", "sign", "--key", str(keys / "module.key.pem"), "--cert",
         str(keys / "module.crt.pem"), str(d / "mod.ko"), "-o", str(d / "mod.signed.ko")],
        ["module", "verify", "--cert", str(keys / "module.crt.pem"), str(d / "mod.signed.ko")],
        ["sign", "--key", f"file:{keys / 'image.key.pem'}", "--type", "text/plain",
         str(d / "payload"), "-o", str(d / "env.json")],
        ["verify", "--key", str(keys / "image.pub.pem"), "--type", "text/plain",
         str(d / "env.json")],
        ["uki", "build", "--stub", str(d / "stub.efi"), "--linux", str(d / "kernel.efi"),
         "--cmdline", str(d / "payload"), "--pcr-key", str(keys / "verity.key.pem"),
         "-o", str(d / "uki.efi")],
        ["uki", "sign", "--key", str(keys / "verity.key.pem"), "--cert",
         str(keys / "verity.crt.pem"), str(d / "uki.efi")],
        ["uki", "verify", "--db", str(keys / "verity.crt.pem"), "--pcr-pubkey",
         str(keys / "verity.pub.pem"), str(d / "uki.efi")],
        ["uki", "pcrs", str(d / "uki.efi")],
        ["pki", "issue", "--keyset", str(keys), "--csr", str(d / "dev.csr"), "--device-id",
         "dev-1", "-o", str(d / "dev.crt")],
        ["pki", "verify", "--root", str(keys / "fleet-root-ca.crt.pem"), "--untrusted",
         str(keys / "fleet-ca.crt.pem"), str(d / "dev.crt")],
        ["pki", "revoke", "--state", str(d / "state.json"), "--cert", str(d / "dev.crt")],
        ["pki", "crl", "--keyset", str(keys), "--state", str(d / "state.json"),
         "-o", str(d / "crl.pem")],
    ]  # fmt: skip
    bad = [
        (["keys", "show", str(d / "nowhere")], 5),
        (["keys", "init", str(keys)], 6),
        (["image", "inspect", str(d / "payload")], 3),
        (["image", "build",
        "--rootfs", str(d / "tree"), "--kernel", str(d / "vmlinuz"),
          "--version", "1", "--security-version", "1", "--keys", str(keys),
          "--cmdline", "roothash=00", "-o", str(d / "x.img")], 9),
        (["image", "verify", str(disk), "--keys", str(d / "nowhere")], 5),
        (["verify", "--key", str(keys / "boot.pub.pem"), "--type", "text/plain",
          str(d / "env.json")], 2),
        (["luks", "open-test", str(d / "v.img"), "--key-file", str(d / "pass2")], 4),
        (["fuses", "burn", hashlib.sha256(b"x").hexdigest(), "--fuses", str(d / "fuses.bin")], 6),
        (["tpm", "verify-quote", "--ak", str(q / "ak.pem"), *quote, "--nonce", "0bad"], 2),
        (["pki", "verify", "--root", str(keys / "fleet-root-ca.crt.pem"), "--untrusted",
          str(keys / "fleet-ca.crt.pem"), "--crl", str(d / "crl.pem"), str(d / "dev.crt")], 2),
        (["device", "eventlog", str(d / "nodev")], 5),
        (["uki", "verify", "--db", str(keys / "module.crt.pem"), str(d / "uki.efi")], 2),
    ]  # fmt: skip
    return ok, bad


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Ran]:
    need_tool("mkfs.ext4")
    mp = pytest.MonkeyPatch()
    done: list[Ran] = []
    try:
        for mode in MODES:
            d = tmp_path_factory.mktemp(mode)
            mp.setenv("BASTION_HOME", str(d / "home"))
            ok, bad = _script(d)
            extra = ["--json"] if mode == "json" else []
            for argv in ok:
                done.append(_run([*argv, *extra], 0))
                if argv[:2] == ["verity", "format"]:
                    root = (d / "root.txt").read_text().strip()
                    cmd = ["verity", "verify", str(d / "data.bin"), str(d / "hash.bin"), root]
                    done.append(_run([*cmd, *extra], 0))
            # a tampered kernel in the UKI: the firmware refuses it, naming the stage
            disk = d / "dev" / "disk.img"
            part = di.read_layout(disk).find("esp")
            raw = disk.read_bytes()[part.offset : part.offset + part.size]
            at = part.offset + raw.index(KERNEL[:16]) + 2
            with open(disk, "r+b") as handle:
                handle.seek(at)
                handle.write(bytes([raw[at - part.offset] ^ 1]))
            bad.append((["device", "boot", str(d / "dev")], 2))
            for argv, code in bad:
                done.append(_run([*argv, *extra], code))
            shutil.rmtree(d / "tree")
    finally:
        mp.undo()
    return done


def _run(argv: list[str], expected: int) -> Ran:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    ran = Ran(argv, code, out.getvalue(), err.getvalue())
    assert code == expected, (argv, code, ran.err)
    return ran


def test_every_command_ran(runs: list[Ran]) -> None:
    commands = {" ".join(r.argv[:2]) for r in runs}
    for group in ("keys init", "image build", "device boot", "luks enroll-tpm", "tpm quote",
                  "fuses blow", "module sign", "pki crl", "verity verify", "uki sign"):  # fmt: skip
        assert group in commands
    assert {r.json for r in runs} == {True, False}


def test_text_output_has_no_python_reprs(runs: list[Ran]) -> None:
    found = [
        (" ".join(r.argv[:3]), m.group(0), line)
        for r in runs
        if not r.json
        for line in (r.out + r.err).splitlines()
        for m in [REPR.search(line)]
        if m
    ]
    assert not found, found


def test_json_output_is_one_document_without_reprs(runs: list[Ran]) -> None:
    found = []
    for r in runs:
        if not r.json:
            continue
        doc = json.loads(r.out)  # exactly one JSON document, success or failure
        found += [(" ".join(r.argv[:3]), s) for s in _strings(doc) if REPR.search(s)]
        found += [(" ".join(r.argv[:3]), line) for line in r.err.splitlines() if REPR.search(line)]
    assert not found, found


def test_failures_are_one_line_and_a_json_error_object(runs: list[Ran]) -> None:
    failures = [r for r in runs if r.code != 0]
    assert len(failures) == 2 * 13  # the 12 of _script and a tampered boot, in each mode
    for r in failures:
        lines = [line for line in r.err.splitlines() if not line.startswith("bastion: warning:")]
        assert len(lines) == 1 and lines[0].startswith("bastion: "), (r.argv, r.err)
        if r.json:
            error = json.loads(r.out)["error"]
            assert error["code"] == r.code and error["message"] in lines[0], (r.argv, error)
        else:
            assert r.out == "", (r.argv, r.out)


def test_errors_name_the_file(runs: list[Ran]) -> None:
    """A failure about a file names it (the folder, the image, the envelope, ...)."""
    # not about one file: a reserved --cmdline word, a quote's nonce
    skip = (["image", "build"], ["tpm", "verify-quote"])
    for r in runs:
        if r.code == 0 or r.argv[:2] in skip:
            continue
        paths = [a for a in r.argv if "/" in a and not a.startswith("sha256")]
        assert any(p in r.err or Path(p).name in r.err for p in paths), (r.argv, r.err)

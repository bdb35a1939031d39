"""``bastion luks``: flags as cryptsetup names them, --json output, one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.cli.main import main

MiB = 1 << 20
CHEAP = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def volume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(4 * MiB)
    key = tmp_path / "key"
    key.write_bytes(b"pass phrase")
    code, out, _ = run(
        capsys,
        "luks",
        "format",
        str(img),
        "--key-file",
        str(key),
        *CHEAP,
        "--sector-size",
        "512",
        "--luks2-metadata-size",
        "32k",
        "--data-offset",
        "2m",
        "--json",
    )
    assert code == 0
    desc = json.loads(out)
    assert desc["metadata_size"] == 32768
    assert desc["segment"]["sector_size"] == 512
    return img, key


def test_dump_volume_key(volume: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    img, key = volume
    code, out, _ = run(capsys, "luks", "dump", str(img), "--json")
    assert code == 0
    assert "volume_key" not in json.loads(out)
    code, out, _ = run(
        capsys, "luks", "dump", str(img), "--dump-volume-key", "--key-file", str(key), "--json"
    )
    assert code == 0
    assert len(bytes.fromhex(json.loads(out)["volume_key"])) == 64
    code, out, _ = run(capsys, "luks", "dump", str(img))
    assert "Keyslots:" in out


def test_add_remove_open(
    volume: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    img, key = volume
    new = tmp_path / "new"
    new.write_bytes(b"another")
    code, out, _ = run(
        capsys, "luks", "add-key", str(img), str(new), "--key-file", str(key), *CHEAP, "--json"
    )
    assert (code, json.loads(out)) == (0, {"keyslot": 1})
    code, out, _ = run(
        capsys, "luks", "add-key", str(img), "--key-file", str(key), "--recovery-key", "--json"
    )
    rec = json.loads(out)
    assert code == 0 and len(rec["recovery_key"]) == 71
    rk = tmp_path / "rk"
    rk.write_text(rec["recovery_key"].upper() + "\n")
    code, out, _ = run(
        capsys, "luks", "open-test", str(img), "--recovery-key-file", str(rk), "--json"
    )
    assert json.loads(out)["keyslot"] == rec["keyslot"]
    code, _, _ = run(capsys, "luks", "remove-key", str(img), "--key-file", str(new))
    assert code == 0
    code, _, err = run(capsys, "luks", "open-test", str(img), "--key-file", str(new))
    assert code == 4
    assert err.count("\n") == 1 and "no LUKS2 keyslot" in err
    code, out, _ = run(capsys, "luks", "token-export", str(img), "--token-id", "0", "--json")
    assert json.loads(out)["type"] == "systemd-recovery"


def test_token_import_and_repair(
    volume: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    img, _ = volume
    tok = tmp_path / "t.json"
    tok.write_text(json.dumps({"type": "x", "keyslots": ["0"], "v": 1}))
    code, out, _ = run(
        capsys,
        "luks",
        "token-import",
        str(img),
        "--json-file",
        str(tok),
        "--token-id",
        "2",
        "--json",
    )
    assert (code, json.loads(out)) == (0, {"token": 2})
    data = bytearray(img.read_bytes())
    data[100] ^= 1
    img.write_bytes(bytes(data))
    code, out, _ = run(capsys, "luks", "repair", str(img), "--json")
    assert json.loads(out)["repaired"] == "primary"
    code, out, _ = run(capsys, "luks", "repair", str(img), "--json")
    assert json.loads(out)["repaired"] is None


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--luks2-metadata-size", "5000"], 9, "metadata-size"),
        (["--pbkdf-force-iterations", "10"], 9, "minimum"),
        (["--pbkdf-memory", "1"], 9, "pbkdf-memory"),
    ],
)
def test_format_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(4 * MiB)
    key = tmp_path / "k"
    key.write_bytes(b"k")
    args = [
        "luks",
        "format",
        str(img),
        "--key-file",
        str(key),
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--data-offset",
        "2m",
        *argv,
    ]
    got, _, err = run(capsys, *args)
    assert got == code
    assert message in err and err.count("\n") == 1


def test_not_luks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "zero.img"
    img.write_bytes(bytes(MiB))
    code, _, err = run(capsys, "luks", "dump", str(img))
    assert code == 3 and "both header copies" in err
    code, _, err = run(capsys, "luks", "dump", str(tmp_path / "missing"))
    assert code == 5


def test_enroll_tpm_open_and_lock(
    volume: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    img, key = volume
    tpm = f"software:{tmp_path / 'tpm.state'}"
    code, out, err = run(
        capsys,
        "luks",
        "enroll-tpm",
        str(img),
        "--key-file",
        str(key),
        "--tpm",
        tpm,
        "--tpm2-pcrs",
        "7+15",
        "--json",
    )
    assert code == 0, err
    enrolled = json.loads(out)
    assert enrolled["pcrs"] == [7, 15]
    code, out, _ = run(
        capsys, "luks", "open-test", str(img), "--token-only", "--tpm", tpm, "--json"
    )
    assert (code, json.loads(out)["keyslot"]) == (0, enrolled["keyslot"])
    code, _, _ = run(capsys, "luks", "lock", str(img), "--tpm", tpm)
    assert code == 0
    code, _, err = run(capsys, "luks", "open-test", str(img), "--token-only", "--tpm", tpm)
    assert code == 2 and "changed" in err and err.count("\n") == 1


# --- format and repair ask before overwriting (cryptsetup's YES dialog) ------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def _format_argv(img: Path, key: Path, *extra: str) -> list[str]:
    return ["luks", "format", str(img), "--key-file", str(key), *CHEAP, "--sector-size", "512",
            "--data-offset", "2m", "--json", *extra]  # fmt: skip


def _blank(tmp_path: Path, name: str) -> Path:
    img = tmp_path / name
    with img.open("wb") as f:
        f.truncate(4 * MiB)
    return img


def _mkfs(tool: str, *args: str) -> Callable[[Path], None]:
    def make(img: Path) -> None:
        subprocess.run([need_tool(tool), *args, str(img)], capture_output=True, check=True)

    return make


def _lvm2_label(img: Path) -> None:
    with img.open("r+b") as f:
        f.seek(512)
        f.write(b"LABELONE" + bytes(16) + b"LVM2 001")


def _luks2(img: Path) -> None:
    key = img.with_suffix(".key")
    key.write_bytes(b"old")
    assert main(_format_argv(img, key)) == 0


EXISTING = [
    ("LUKS2 header", _luks2),
    ("ext4", _mkfs("mkfs.ext4", "-q", "-F")),
    ("swap", _mkfs("mkswap")),
    ("LVM2_member", _lvm2_label),
]


@pytest.mark.parametrize(("name", "make"), EXISTING, ids=[n for n, _ in EXISTING])
def test_format_refuses_to_overwrite_without_a_terminal(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    make: Callable[[Path], None],
) -> None:
    img, key = _blank(tmp_path, "v.img"), tmp_path / "key"
    key.write_bytes(b"new")
    make(img)
    capsys.readouterr()
    before = img.read_bytes()
    monkeypatch.setattr("sys.stdin", _Pipe(""))
    code, _, err = run(capsys, *_format_argv(img, key))
    assert code == 9
    assert name in err
    assert "--batch-mode" in err
    assert img.read_bytes() == before
    code, out, _ = run(capsys, *_format_argv(img, key, "--batch-mode"))
    assert code == 0
    assert json.loads(out)["uuid"]


@pytest.mark.parametrize(("answer", "code"), [("YES\n", 0), ("yes\n", 9), ("\n", 9), ("", 9)])
def test_format_over_luks_asks_yes_on_a_terminal(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    code: int,
) -> None:
    img, key = _blank(tmp_path, "v.img"), tmp_path / "key"
    key.write_bytes(b"new")
    _luks2(img)
    capsys.readouterr()
    before = img.read_bytes()
    monkeypatch.setattr("sys.stdin", _Terminal(answer))
    got, _, err = run(capsys, *_format_argv(img, key))
    assert got == code
    assert "Type 'yes' in capital letters" in err
    assert (img.read_bytes() == before) is (code != 0)


def test_format_of_a_blank_device_does_not_ask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    img, key = _blank(tmp_path, "v.img"), tmp_path / "key"
    key.write_bytes(b"new")
    monkeypatch.setattr("sys.stdin", _Pipe(""))
    code, _, err = run(capsys, *_format_argv(img, key))
    assert code == 0
    assert "capital letters" not in err


def test_repair_over_a_foreign_signature_needs_confirmation(
    volume: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    img, key = volume
    _lvm2_label(img)  # breaks the primary header checksum
    monkeypatch.setattr("sys.stdin", _Pipe(""))
    code, _, err = run(capsys, "luks", "open-test", str(img), "--key-file", str(key))
    assert code == 3
    assert "signatures: LVM2_member" in err
    code, _, err = run(capsys, "luks", "repair", str(img))
    assert code == 9
    assert "--batch-mode" in err
    code, out, _ = run(capsys, "luks", "repair", str(img), "--batch-mode", "--json")
    assert code == 0
    assert json.loads(out)["repaired"] == "primary"
    code, _, _ = run(capsys, "luks", "open-test", str(img), "--key-file", str(key))
    assert code == 0


def _pcrsig(tmp_path: Path, pcr11: bytes, name: str) -> Path:
    """A .pcrsig by test key 3 for PCR 11 = ``pcr11`` (as systemd-measure writes it)."""
    from tests.unit.trust.conftest import make_key

    from bastion.trust.pcr11 import PcrSignature, pcr11_policy, pcrsig_json
    from bastion.trust.pcr11 import public_key_fingerprint as fp
    from bastion.trust.signer import SignatureScheme, SoftwareSigner

    signer = SoftwareSigner(make_key("rsa-2048", 3), SignatureScheme.RSA_PKCS1V15_SHA256)
    policy = pcr11_policy(pcr11)
    entry = PcrSignature("", pcr11, policy, fp(signer.public_key()), signer.sign(policy))  # type: ignore[arg-type]
    path = tmp_path / name
    path.write_bytes(pcrsig_json([entry]))
    return path


def test_enroll_tpm_signed_and_open_with_signature(
    volume: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from tests.unit.trust.conftest import make_key

    img, key = volume
    tpm = f"software:{tmp_path / 'tpm.state'}"
    pub = tmp_path / "pcr.pub.pem"
    pub.write_bytes(
        make_key("rsa-2048", 3)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    good = _pcrsig(tmp_path, bytes(32), "good.json")  # PCR 11 of a fresh TPM
    stale = _pcrsig(tmp_path, b"\x11" * 32, "stale.json")
    base = ["luks", "enroll-tpm", str(img), "--key-file", str(key), "--tpm", tpm, "--json"]
    code, _, err = run(capsys, *base, "--signature", str(good))
    assert code == 9 and "--public-key" in err  # ConfigError: a signature alone is no policy
    code, out, err = run(capsys, *base, "--public-key", str(pub), "--signature", str(good))
    assert code == 0, err
    enrolled = json.loads(out)
    assert (enrolled["pubkey_pcrs"], enrolled["pcrs"]) == ([11], [7])
    code, out, err = run(
        capsys,
        *base,
        "--tpm2-public-key",
        str(pub),
        "--tpm2-public-key-pcrs",
        "11",
        "--tpm2-pcrs",
        "",
    )
    assert code == 0, err
    assert json.loads(out)["pcrs"] == []
    open_test = ["luks", "open-test", str(img), "--token-only", "--tpm", tpm]
    code, out, err = run(
        capsys, *open_test, "--token-id", str(enrolled["token"]), "--signature", str(good), "--json"
    )
    assert (code, json.loads(out)["keyslot"]) == (0, enrolled["keyslot"]), err
    code, _, err = run(
        capsys, *open_test, "--token-id", str(enrolled["token"]), "--signature", str(stale)
    )
    assert code == 2 and "PCR 11 = " + "00" * 32 in err and err.count("\n") == 1
    code, _, err = run(capsys, *open_test, "--token-id", str(enrolled["token"]))
    assert code == 2 and "give the .pcrsig" in err

"""``bastion tpm`` and ``bastion fuses`` through main(): output, files, exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import need_tss

from bastion.cli.main import main


@pytest.fixture(params=["software", "tss"])
def tpm_uri(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A TPM URI per backend, with nothing holding a connection to it."""
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    if request.param == "software":
        yield f"software:{tmp_path / 'tpm.state'}"
        return
    need_tss()
    from bastion.tpm.swtpm import Swtpm

    with Swtpm.start(tmp_path / "swtpm") as sw:
        yield sw.uri


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_pcrs_json(tpm_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tpm", "pcrs", "--tpm", tpm_uri, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["bank"] == "sha256" and len(doc["pcrs"]) == 24
    assert doc["pcrs"]["0"] == "00" * 32 and doc["pcrs"]["17"] == "ff" * 32


def test_extend_data_and_digest(tpm_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tpm", "extend", "7", "--data", "hello", "--tpm", tpm_uri, "--json")
    assert code == 0
    first = hashlib.sha256(bytes(32) + hashlib.sha256(b"hello").digest()).digest()
    assert json.loads(out)["value"] == first.hex()
    digest = hashlib.sha256(b"x").hexdigest()
    code, out, _ = run(capsys, "tpm", "extend", "7", "--digest", digest, "--tpm", tpm_uri)
    assert code == 0
    assert out.split()[-1] == hashlib.sha256(first + bytes.fromhex(digest)).hexdigest()
    code, out, _ = run(capsys, "tpm", "pcrs", "--pcrs", "sha256:7", "--tpm", tpm_uri)
    assert out.split()[-1] == hashlib.sha256(first + bytes.fromhex(digest)).hexdigest()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "a", "--digest", "00" * 32], "exactly one"),
        ([], "exactly one"),
        (["--digest", "zz"], "not hex"),
        (["--digest", "00" * 31], "31 bytes"),
    ],
)
def test_extend_bad_input(
    tpm_uri: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run(capsys, "tpm", "extend", "7", *args, "--tpm", tpm_uri)
    assert code == 9
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_quote_and_verify(tpm_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "q"
    code, out, _ = run(
        capsys,
        "tpm",
        "quote",
        "--nonce",
        "c0ffee",
        "--pcrs",
        "sha256:0,1,7",
        "--out",
        str(out_dir),
        "--tpm",
        tpm_uri,
        "--json",
    )
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "ak.pem",
        "ak.pub",
        "pcrs.bin",
        "quote.msg",
        "quote.sig",
    ]
    ak_pem = (out_dir / "ak.pem").read_bytes()
    assert ak_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    # a second quote uses the same AK
    code, _, _ = run(
        capsys,
        "tpm",
        "quote",
        "--nonce",
        "c0ffee",
        "--pcrs",
        "sha256:0,1,7",
        "--out",
        str(out_dir),
        "--tpm",
        tpm_uri,
    )
    assert code == 0 and (out_dir / "ak.pem").read_bytes() == ak_pem
    files = [
        "--msg",
        str(out_dir / "quote.msg"),
        "--sig",
        str(out_dir / "quote.sig"),
        "--pcrs-file",
        str(out_dir / "pcrs.bin"),
    ]
    for ak in ("ak.pem", "ak.pub"):
        code, out, err = run(
            capsys,
            "tpm",
            "verify-quote",
            "--ak",
            str(out_dir / ak),
            *files,
            "--nonce",
            "c0ffee",
            "--json",
        )
        assert code == 0, err
        assert json.loads(out)["ok"] is True


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("wrong-nonce", 2, "nonce"),
        ("tampered-msg", 2, "SignatureError"),
        ("tampered-pcrs", 2, "pcrDigest"),
        ("truncated-sig", 3, "FormatError"),
        ("other-selection", 9, "expected sha256:0,7"),
        ("missing-file", 5, "does not exist"),
    ],
)
def test_verify_quote_negative(
    tpm_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    code: int,
    message: str,
) -> None:
    q = tmp_path / "q"
    assert (
        run(
            capsys,
            "tpm",
            "quote",
            "--nonce",
            "01",
            "--pcrs",
            "sha256:0,1,7",
            "--out",
            str(q),
            "--tpm",
            tpm_uri,
        )[0]
        == 0
    )
    nonce, extra = "01", []
    if case == "wrong-nonce":
        nonce = "02"
    elif case == "tampered-msg":
        data = bytearray((q / "quote.msg").read_bytes())
        data[-5] ^= 1
        (q / "quote.msg").write_bytes(bytes(data))
    elif case == "tampered-pcrs":
        data = bytearray((q / "pcrs.bin").read_bytes())
        data[132 + 4 + 4 + 2] ^= 1  # selection struct, chunk count, TPML count, size: 1st value
        (q / "pcrs.bin").write_bytes(bytes(data))
    elif case == "truncated-sig":
        (q / "quote.sig").write_bytes((q / "quote.sig").read_bytes()[:-3])
    elif case == "other-selection":
        extra = ["--pcrs", "sha256:0,7"]
    else:
        (q / "quote.sig").unlink()
    got, _, err = run(
        capsys,
        "tpm",
        "verify-quote",
        "--ak",
        str(q / "ak.pem"),
        "--msg",
        str(q / "quote.msg"),
        "--sig",
        str(q / "quote.sig"),
        "--pcrs-file",
        str(q / "pcrs.bin"),
        "--nonce",
        nonce,
        *extra,
    )
    assert got == code, err
    assert message in err and "Traceback" not in err


def test_reset(tpm_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tpm", "extend", "23", "--data", "x", "--tpm", tpm_uri)[0] == 0
    code, _, err = run(capsys, "tpm", "reset", "--tpm", tpm_uri)
    if tpm_uri.startswith("swtpm:"):
        assert code == 9 and "only the software TPM" in err
        return
    assert code == 0
    _, out, _ = run(capsys, "tpm", "pcrs", "--pcrs", "sha256:23", "--tpm", tpm_uri)
    assert out.split()[-1] == "00" * 32


@pytest.mark.parametrize("uri", ["bogus", "swtpm:port=x", "device:/dev/sda", "file:/tmp/x"])
def test_bad_tpm_uri(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tpm", "pcrs", "--tpm", uri)
    assert code == 9 and err.startswith("bastion: ConfigError") and "Traceback" not in err


# --- fuses ---------------------------------------------------------------------------------------

H1 = hashlib.sha256(b"root key").hexdigest()
H2 = hashlib.sha256(b"other root key").hexdigest()


@pytest.fixture(params=["file", "tpm"])
def fuse_args(request: pytest.FixtureRequest, tmp_path: Path, tpm_uri: str) -> list[str]:
    if request.param == "file":
        return ["--fuses", str(tmp_path / "fuses.bin")]
    return ["--tpm", tpm_uri]


def test_fuses_flow(fuse_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "fuses", "show", *fuse_args, "--json")
    assert code == 0 and json.loads(out)["key_hash"] is None and json.loads(out)["counter"] == 0
    assert run(capsys, "fuses", "burn", H1, *fuse_args)[0] == 0
    assert run(capsys, "fuses", "blow", "3", *fuse_args)[0] == 0
    code, out, _ = run(capsys, "fuses", "show", *fuse_args, "--json")
    assert json.loads(out)["key_hash"] == H1 and json.loads(out)["counter"] == 3
    # the negative table, through the CLI
    for argv, exit_code, message in [
        (["burn", H2], 6, "already burned"),
        (["blow", "2"], 2, "RollbackError"),
        (["blow", "65"], 9, "out of range"),
        (["burn", "abc"], 9, "64 hex digits"),
    ]:
        code, _, err = run(capsys, "fuses", *argv, *fuse_args)
        assert code == exit_code and message in err, (argv, err)
    code, out, _ = run(capsys, "fuses", "show", *fuse_args)
    assert H1 in out and "counter:  3" in out


def test_fuses_both_backends_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "fuses", "show", "--fuses", str(tmp_path / "f"), "--tpm", "swtpm:port=1"
    )
    assert code == 9 and "not both" in err


def test_fuses_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    assert run(capsys, "fuses", "blow", "1")[0] == 0
    assert (tmp_path / "home" / "fuses.bin").stat().st_size == 48


# --- the AK file ---------------------------------------------------------------------------------


@settings(max_examples=50)
@given(st.binary(max_size=300))
def test_load_key_is_total(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    from bastion.cli.tpm import load_key
    from bastion.errors import FormatError

    path = tmp_path_factory.mktemp("k") / "ak.json"
    path.write_bytes(data)
    with pytest.raises(FormatError):
        load_key(path)


@settings(max_examples=50)
@given(st.binary(min_size=0, max_size=200), st.binary(min_size=0, max_size=200))
def test_key_file_round_trip(
    tmp_path_factory: pytest.TempPathFactory, public: bytes, private: bytes
) -> None:
    from bastion.cli.tpm import load_key, save_key
    from bastion.errors import FormatError
    from bastion.formats.tpm2 import object_name, tpm2b
    from bastion.tpm.base import TpmKey

    path = tmp_path_factory.mktemp("k") / "ak.json"
    key = TpmKey(public=tpm2b(public), private=tpm2b(private), name=b"")
    save_key(path, key)
    try:
        name = object_name(key.public)
    except FormatError:
        with pytest.raises(FormatError):
            load_key(path)
        return
    assert load_key(path) == TpmKey(key.public, key.private, name)

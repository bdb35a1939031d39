"""The TPM URI: one spelling everywhere, ConfigError naming the forms on anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import need_tss

from bastion.errors import ConfigError
from bastion.tpm.uri import TpmKind, TpmUri, bastion_state_dir, open_tpm, parse_tpm_uri


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "software:/var/lib/b/tpm.state",
            TpmUri(TpmKind.SOFTWARE, path=Path("/var/lib/b/tpm.state")),
        ),
        ("software:rel/t.state", TpmUri(TpmKind.SOFTWARE, path=Path("rel/t.state"))),
        ("swtpm:host=127.0.0.1,port=2321", TpmUri(TpmKind.SWTPM, host="127.0.0.1", port=2321)),
        ("swtpm:port=2321,host=localhost", TpmUri(TpmKind.SWTPM, host="localhost", port=2321)),
        ("swtpm:port=40000", TpmUri(TpmKind.SWTPM, host="127.0.0.1", port=40000)),
        ("device:/dev/tpmrm0", TpmUri(TpmKind.DEVICE, path=Path("/dev/tpmrm0"))),
        ("device:/dev/tpm1", TpmUri(TpmKind.DEVICE, path=Path("/dev/tpm1"))),
        ("  device:/dev/tpmrm0 ", TpmUri(TpmKind.DEVICE, path=Path("/dev/tpmrm0"))),
    ],
)
def test_accepted_forms(spec: str, expected: TpmUri) -> None:
    assert parse_tpm_uri(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "software:",
        "file:/x",
        "tpm",
        "swtpm:",
        "swtpm:host=127.0.0.1",
        "swtpm:host=127.0.0.1,port=0",
        "swtpm:host=127.0.0.1,port=65535",
        "swtpm:host=127.0.0.1,port=abc",
        "swtpm:host=127.0.0.1,port=1,port=2",
        "swtpm:host=a b,port=1",
        "swtpm:host=h,port=1,extra=2",
        "swtpm:2321",
        "mssim:host=127.0.0.1,port=2321",
        "device:/dev/sda",
        "device:/dev/tpmrm0;rm -rf /",
        "device:tpmrm0",
    ],
)
def test_refused_forms_name_the_accepted_ones(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tpm_uri(spec)
    assert spec.strip().split(":")[0] in str(info.value) or "expected" in str(info.value)


@pytest.mark.parametrize("spec", ["unknown:x", "nothing"])
def test_unknown_backend_message(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"software:PATH, swtpm:host=H,port=P or device:"):
        parse_tpm_uri(spec)


def test_tcti_and_str_round_trip() -> None:
    for spec in ("swtpm:host=127.0.0.1,port=2321", "device:/dev/tpmrm0", "software:/x/t.state"):
        assert str(parse_tpm_uri(spec)) == spec
    assert parse_tpm_uri("swtpm:port=5").tcti == "swtpm:host=127.0.0.1,port=5"
    with pytest.raises(ConfigError):
        _ = parse_tpm_uri("software:/x").tcti


def test_default_is_software_in_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_tpm_uri(None, default_state_dir=tmp_path).path == tmp_path / "tpm.state"
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    assert parse_tpm_uri("").path == tmp_path / "home" / "tpm.state"
    assert bastion_state_dir() == tmp_path / "home"
    monkeypatch.delenv("BASTION_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert bastion_state_dir() == tmp_path / "xdg" / "bastion"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert bastion_state_dir() == tmp_path / "h" / ".local" / "state" / "bastion"


def test_open_swtpm_that_is_not_there_is_a_tpm_error() -> None:
    need_tss()
    from bastion.errors import TpmError
    from bastion.tpm.swtpm import free_port_pair

    port, _ = free_port_pair()
    with pytest.raises(TpmError, match="cannot open TPM"):
        open_tpm(f"swtpm:host=127.0.0.1,port={port}")


def test_open_swtpm(swtpm) -> None:  # type: ignore[no-untyped-def]
    from bastion.tpm.base import PcrSelection, Tpm

    tpm = open_tpm(swtpm.uri)
    try:
        assert isinstance(tpm, Tpm)
        assert tpm.pcr_read(PcrSelection.parse("sha256:0")) == {0: bytes(32)}
    finally:
        tpm.close()


@given(st.text(max_size=80))
def test_parse_is_total(text: str) -> None:
    try:
        uri = parse_tpm_uri(text)
    except ConfigError:
        return
    assert isinstance(uri, TpmUri)
    if text.strip():
        assert parse_tpm_uri(str(uri)) == uri


def test_missing_device_is_named() -> None:
    from bastion.errors import NotFoundError

    missing = next(p for p in (f"/dev/tpmrm{i}" for i in range(200, 256)) if not Path(p).exists())
    with pytest.raises(NotFoundError, match=f"TPM device {missing} does not exist"):
        open_tpm(f"device:{missing}")

"""OVMF variable stores with the product keys enrolled, checked by virt-firmware's reader."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.conftest import IN_CI, need_module

from bastion.build.ovmf import DEBIAN_OVMF_VARS, enrol_from_keyset, enrol_ovmf_vars
from bastion.errors import ConfigError, FormatError
from bastion.formats import efivars as ev
from bastion.trust import secureboot as sb
from bastion.trust.keys import KeyAlgorithm
from bastion.trust.keyset import KeySet, create_keyset

pytestmark = pytest.mark.interop

WHEN = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


def _need_ovmf() -> Path:
    need_module("virt.firmware", "virt-firmware")
    if not DEBIAN_OVMF_VARS.is_file():
        message = f"{DEBIAN_OVMF_VARS} is missing (Debian package 'ovmf')"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return DEBIAN_OVMF_VARS


def _virt_fw_vars() -> str:
    path = shutil.which("virt-fw-vars") or str(Path(sys.executable).parent / "virt-fw-vars")
    assert Path(path).exists(), "virt-fw-vars comes with the virt-firmware package"
    return path


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    folder = tmp_path_factory.mktemp("ovmfks") / "keys"
    return create_keyset(folder, product="acme", rsa_algorithm=KeyAlgorithm.RSA_2048)


def _certs(keyset: KeySet) -> dict[str, x509.Certificate]:
    return {v: keyset.certificate(role) for v, role in sb.ROLES.items()}


def test_enrolled_store_lists_exactly_our_certificates(
    keyset: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need_ovmf()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # QEMU is not needed to make or read a store
    assert shutil.which("qemu-system-x86_64") is None
    out = tmp_path / "OVMF_VARS_4M.bastion.fd"
    store = enrol_from_keyset(keyset, out, timestamp=WHEN)
    monkeypatch.undo()
    assert out.stat().st_size == DEBIAN_OVMF_VARS.stat().st_size
    assert store.secure_boot_enable and not store.custom_mode
    from virt.firmware.varstore.edk2 import Edk2VarStore

    varlist = Edk2VarStore(str(out)).get_varlist()
    certs = _certs(keyset)
    owner = sb.owner_guid(certs["PK"])
    for name in ("PK", "KEK", "db"):
        var = varlist[name]
        assert str(var.guid) == str(ev.SECURE_BOOT_VARIABLES[name])
        assert var.attr == ev.AUTHENTICATED_ATTRIBUTES
        assert var.time == WHEN
        got = [(str(s["guid"]), bytes(s["data"])) for sl in var.sigdb for s in sl]
        assert got == [(str(owner), certs[name].public_bytes(serialization.Encoding.DER))]
    dbx = ev.parse_signature_lists(bytes(varlist["dbx"].data))
    assert [sl.signature_type for sl in dbx] == [ev.EFI_CERT_SHA256_GUID]
    assert varlist["SecureBootEnable"].data == b"\x01" and varlist["CustomMode"].data == b"\x00"
    # the command-line reader lists exactly the three certificates
    r = subprocess.run(
        [_virt_fw_vars(), "--input", str(out), "--print", "--verbose"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    text = r.stdout.decode() + r.stderr.decode()
    subjects = re.findall(r"subject (.+)", text)
    assert sorted(subjects) == sorted(f"CN=acme Secure Boot {v}" for v in ("PK", "KEK", "db"))
    assert (
        "SecureBootEnable    : bool: ON"
        in subprocess.run(
            [_virt_fw_vars(), "--input", str(out), "--print"], capture_output=True, check=True
        ).stdout.decode()
    )


def test_same_variables_as_virt_fw_vars_enrolment(keyset: KeySet, tmp_path: Path) -> None:
    _need_ovmf()
    certs = _certs(keyset)
    owner = sb.owner_guid(certs["PK"])
    for name, cert in certs.items():
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ref = tmp_path / "ref.fd"
    subprocess.run(
        [_virt_fw_vars(), "-i", str(DEBIAN_OVMF_VARS), "-o", str(ref),
         "--set-pk", str(owner), str(tmp_path / "PK.pem"),
         "--add-kek", str(owner), str(tmp_path / "KEK.pem"),
         "--add-db", str(owner), str(tmp_path / "db.pem"), "--sb"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    ours = enrol_from_keyset(keyset, tmp_path / "ours.fd", timestamp=WHEN)
    from bastion.build.ovmf import read_secureboot_store

    theirs = read_secureboot_store(ref)
    for name in ("PK", "KEK", "db"):
        assert ours.variable(name) == theirs.variable(name)
    assert theirs.secure_boot_enable and ours.secure_boot_enable


def test_refusals(keyset: KeySet, tmp_path: Path) -> None:
    _need_ovmf()
    certs = _certs(keyset)
    owner = sb.owner_guid(certs["PK"])
    esl = {v: ev.encode_signature_lists([sb.certificate_list(owner, c)]) for v, c in certs.items()}
    base = {"kek": esl["KEK"], "db": esl["db"], "owner": owner, "timestamp": WHEN}
    with pytest.raises(ConfigError, match="exactly one"):
        enrol_ovmf_vars(tmp_path / "a.fd", pk=esl["PK"] + esl["KEK"], **base)  # type: ignore[arg-type]
    bad_kek = ev.encode_signature_lists([ev.SignatureList.sha256(owner, [bytes(32)])])
    with pytest.raises(ConfigError, match=r"X\.509"):
        enrol_ovmf_vars(tmp_path / "b.fd", pk=esl["PK"], **{**base, "kek": bad_kek})  # type: ignore[arg-type]
    not_a_store = tmp_path / "junk.fd"
    not_a_store.write_bytes(b"\xff" * 4096)
    with pytest.raises(FormatError, match="edk2"):
        enrol_ovmf_vars(tmp_path / "c.fd", pk=esl["PK"], template=not_a_store, **base)  # type: ignore[arg-type]
    assert not (tmp_path / "c.fd").exists()


def test_cli_writes_the_store(
    keyset: KeySet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _need_ovmf()
    import json

    from bastion.build.ovmf import read_secureboot_store
    from bastion.cli.main import main

    out = tmp_path / "sb"
    code = main(["keys", "secureboot", str(keyset.folder), "-o", str(out), "--ovmf-vars", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)["secureboot"]
    store = read_secureboot_store(doc["ovmf_vars"])
    assert store.db == (out / "db.esl").read_bytes() and store.pk == (out / "PK.esl").read_bytes()


def test_pcr7_predicted_from_the_enrolled_store(keyset: KeySet, tmp_path: Path) -> None:
    """PCR 7 from the store virt-firmware reads back; tpm2_eventlog parses our events and
    replays the same value. A real OVMF boot's event log remains the final proof."""
    _need_ovmf()
    from tests.conftest import need_tool

    from bastion.build.ovmf import read_secureboot_store
    from bastion.formats import eventlog as el
    from bastion.trust import pcr7

    enrol_from_keyset(keyset, tmp_path / "vars.fd", timestamp=WHEN)
    store = read_secureboot_store(tmp_path / "vars.fd")
    state = pcr7.state_for_boot(
        pk=store.pk,
        kek=store.kek,
        db=store.db,
        dbx=store.dbx,
        secure_boot=store.secure_boot_enable,
        boot_signer=keyset.certificate("secureboot-db"),
    )
    value = pcr7.predict(state)
    log = tmp_path / "pcr7.log"
    log.write_bytes(el.EventLog(el.SpecIdEvent(), tuple(pcr7.events(state))).to_bytes())
    r = subprocess.run(
        [need_tool("tpm2_eventlog"), str(log)], capture_output=True, check=True, timeout=60
    )
    text = r.stdout.decode()
    names = re.findall(r"UnicodeName: (\S+)", text)
    assert names == ["SecureBoot", "PK", "KEK", "db", "dbx", "db"]
    assert text.count("EV_EFI_VARIABLE_DRIVER_CONFIG") == 5
    assert "EV_EFI_VARIABLE_AUTHORITY" in text and "EV_SEPARATOR" in text
    assert re.search(r"7\s*: 0x" + value.hex(), text, re.IGNORECASE)

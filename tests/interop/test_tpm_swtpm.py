"""bastion's TPM bytes against swtpm and tpm2-tools, both directions.

* ``bastion tpm quote`` output (software TPM and swtpm) accepted by ``tpm2_checkquote``;
  a quote made by ``tpm2_quote`` verified by ``bastion.tpm.quote.verify_quote``.
* credentials: bastion's ``make_credential`` activated by ``tpm2_activatecredential``
  in swtpm; ``tpm2_makecredential -T none`` (offline) activated by both backends.
* the PolicyPCR digest of a sealed object equals ``tpm2_createpolicy --policy-pcr``'s;
  an object sealed by TssTpm is unsealed by ``tpm2_unseal``.
* ``ek_public`` equals ``tpm2_createek -G rsa``; the software EK has the same template.
* the swtpm launcher: ports, PID, restart, reaping.

A TssTpm is closed before a tool runs, so one client at a time uses swtpm's three
object slots (the tools leave objects loaded until ``tpm2_flushcontext``).
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from tests.conftest import TpmRig, need_tool, need_tss

from bastion.cli.main import main
from bastion.errors import BackendError
from bastion.formats.tpm2 import CredentialFile, PcrsFile, Public
from bastion.io.runner import CommandResult, CommandRunner
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.tpm.quote import make_credential, verify_quote
from bastion.tpm.swtpm import Swtpm, pid_alive, port_accepts

pytestmark = pytest.mark.interop

SEL = PcrSelection.parse("sha256:0,7,23")


def tools(sw: Swtpm, *argv: str, check: bool = True) -> CommandResult:
    need_tool(argv[0], "tpm2-tools")
    return CommandRunner(env={"TPM2TOOLS_TCTI": sw.uri, "TSS2_LOG": "all+none"}).run(
        list(argv), check=check
    )


def flush(sw: Swtpm) -> None:
    for flag in ("-t", "-l", "-s"):
        tools(sw, "tpm2_flushcontext", flag)


def tss(sw: Swtpm):  # type: ignore[no-untyped-def]
    from bastion.tpm.tss import TssTpm

    return TssTpm(sw.uri)


# --- quotes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["software", "tss"])
def test_cli_quote_accepted_by_tpm2_checkquote(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkquote = need_tool("tpm2_checkquote")
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    if backend == "tss":
        need_tss()
        sw = Swtpm.start(tmp_path / "sw")
        uri = sw.uri
    else:
        sw, uri = None, f"software:{tmp_path / 'tpm.state'}"
    try:
        assert main(["tpm", "extend", "7", "--data", "shim", "--tpm", uri]) == 0
        out = tmp_path / "q"
        args = ["--nonce", "0badc0de", "--pcrs", "sha256:0,1,7", "--out", str(out), "--tpm", uri]
        assert main(["tpm", "quote", *args]) == 0
        argv = [
            checkquote,
            "-u",
            str(out / "ak.pem"),
            "-m",
            str(out / "quote.msg"),
            "-s",
            str(out / "quote.sig"),
            "-f",
            str(out / "pcrs.bin"),
            "-g",
            "sha256",
        ]
        CommandRunner().run([*argv, "-q", "0badc0de"])
        bad = CommandRunner().run([*argv, "-q", "0badc0df"], check=False)
        assert bad.returncode != 0
        # tampered PCR values are refused by the reference tool too
        data = bytearray((out / "pcrs.bin").read_bytes())
        data[142] ^= 1
        (out / "pcrs.bin").write_bytes(bytes(data))
        assert CommandRunner().run([*argv, "-q", "0badc0de"], check=False).returncode != 0
    finally:
        if sw is not None:
            sw.stop()


def test_tpm2_quote_verified_by_bastion(swtpm: Swtpm, tmp_path: Path) -> None:
    d = tmp_path
    tools(swtpm, "tpm2_pcrextend", f"7:sha256={hashlib.sha256(b'x').hexdigest()}")
    tools(swtpm, "tpm2_createek", "-c", str(d / "ek.ctx"), "-G", "rsa", "-u", str(d / "ek.pub"))
    tools(
        swtpm,
        "tpm2_createak",
        "-C",
        str(d / "ek.ctx"),
        "-c",
        str(d / "ak.ctx"),
        "-G",
        "ecc",
        "-g",
        "sha256",
        "-s",
        "ecdsa",
        "-u",
        str(d / "ak.pub"),
        "-n",
        str(d / "ak.name"),
    )
    flush(swtpm)
    tools(
        swtpm,
        "tpm2_quote",
        "-c",
        str(d / "ak.ctx"),
        "-l",
        str(SEL),
        "-q",
        "abcdef",
        "-m",
        str(d / "q.msg"),
        "-s",
        str(d / "q.sig"),
        "-o",
        str(d / "q.pcrs"),
        "-g",
        "sha256",
    )
    flush(swtpm)
    pcrs = PcrsFile.parse((d / "q.pcrs").read_bytes())
    values = pcrs.bank_values()[HashAlg.SHA256.alg_id]
    msg, sig, ak = (
        (d / "q.msg").read_bytes(),
        (d / "q.sig").read_bytes(),
        (d / "ak.pub").read_bytes(),
    )
    verify_quote(msg, sig, ak, bytes.fromhex("abcdef"), SEL, values)
    tpm = tss(swtpm)
    try:
        assert tpm.pcr_read(SEL) == values
    finally:
        tpm.close()


# --- credentials ----------------------------------------------------------------------------


def test_bastion_credential_activates_with_tpm2_tools(swtpm: Swtpm, tmp_path: Path) -> None:
    d = tmp_path
    tools(swtpm, "tpm2_createek", "-c", str(d / "ek.ctx"), "-G", "rsa", "-u", str(d / "ek.pub"))
    tools(
        swtpm,
        "tpm2_createak",
        "-C",
        str(d / "ek.ctx"),
        "-c",
        str(d / "ak.ctx"),
        "-G",
        "ecc",
        "-g",
        "sha256",
        "-s",
        "ecdsa",
        "-u",
        str(d / "ak.pub"),
        "-n",
        str(d / "ak.name"),
    )
    flush(swtpm)
    blob, secret = make_credential(
        (d / "ek.pub").read_bytes(), (d / "ak.name").read_bytes(), b"bastion challenge"
    )
    (d / "cred.bin").write_bytes(CredentialFile(blob, secret).to_bytes())
    tools(swtpm, "tpm2_startauthsession", "--policy-session", "-S", str(d / "s.ctx"))
    tools(swtpm, "tpm2_policysecret", "-S", str(d / "s.ctx"), "-c", "e")
    tools(
        swtpm,
        "tpm2_activatecredential",
        "-c",
        str(d / "ak.ctx"),
        "-C",
        str(d / "ek.ctx"),
        "-i",
        str(d / "cred.bin"),
        "-o",
        str(d / "out.bin"),
        "-P",
        f"session:{d / 's.ctx'}",
    )
    assert (d / "out.bin").read_bytes() == b"bastion challenge"


@pytest.mark.parametrize("backend", ["software", "tss"])
def test_tpm2_makecredential_offline_activates(backend: str, tmp_path: Path) -> None:
    need_tool("tpm2_makecredential")
    if backend == "tss":
        need_tss()
    rig = TpmRig(backend, tmp_path)
    try:
        ak = rig.tpm.create_ak()
        (tmp_path / "ek.pub").write_bytes(rig.tpm.ek_public())
        CommandRunner(env={"TSS2_LOG": "all+none"}).run(
            [
                "tpm2_makecredential",
                "-T",
                "none",
                "-u",
                str(tmp_path / "ek.pub"),
                "-s",
                "-",
                "-n",
                ak.name.hex(),
                "-o",
                str(tmp_path / "cred.bin"),
            ],
            input=b"tools challenge",
        )
        cred = CredentialFile.parse((tmp_path / "cred.bin").read_bytes())
        got = rig.tpm.activate_credential(ak, cred.id_object, cred.encrypted_secret)
        assert got == b"tools challenge"
    finally:
        rig.close()


# --- policies and sealing ---------------------------------------------------------------------


def test_policy_pcr_digest_matches_tpm2_createpolicy(swtpm: Swtpm, tmp_path: Path) -> None:
    tools(swtpm, "tpm2_pcrextend", f"23:sha256={hashlib.sha256(b'boot').hexdigest()}")
    tpm = tss(swtpm)
    try:
        sealed = tpm.seal(b"key", SEL)
    finally:
        tpm.close()
    tools(swtpm, "tpm2_createpolicy", "--policy-pcr", "-l", str(SEL), "-L", str(tmp_path / "p"))
    flush(swtpm)
    assert Public.parse(sealed.public).auth_policy == (tmp_path / "p").read_bytes()


def test_sealed_by_tss_unsealed_by_tpm2_tools(swtpm: Swtpm, tmp_path: Path) -> None:
    d = tmp_path
    tpm = tss(swtpm)
    try:
        sealed = tpm.seal(b"disk key from bastion", SEL)
    finally:
        tpm.close()
    (d / "seal.pub").write_bytes(sealed.public)
    (d / "seal.priv").write_bytes(sealed.private)
    # systemd's legacy SRK template, spelled for tpm2-tools
    tools(
        swtpm,
        "tpm2_createprimary",
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc256:aes128cfb",
        "-a",
        "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth",
        "-c",
        str(d / "srk.ctx"),
        "-Q",
    )
    tools(
        swtpm,
        "tpm2_load",
        "-C",
        str(d / "srk.ctx"),
        "-u",
        str(d / "seal.pub"),
        "-r",
        str(d / "seal.priv"),
        "-c",
        str(d / "seal.ctx"),
        "-Q",
    )
    flush(swtpm)
    out = tools(swtpm, "tpm2_unseal", "-c", str(d / "seal.ctx"), "-p", f"pcr:{SEL}")
    assert out.stdout == b"disk key from bastion"
    flush(swtpm)
    tools(swtpm, "tpm2_pcrextend", f"7:sha256={hashlib.sha256(b'evil').hexdigest()}")
    refused = tools(
        swtpm, "tpm2_unseal", "-c", str(d / "seal.ctx"), "-p", f"pcr:{SEL}", check=False
    )
    assert refused.returncode != 0


def test_wrong_auth_values_lead_to_da_lockout(swtpm: Swtpm) -> None:
    """Sealed objects are DA-protected (systemd's template has no noDA): a real TPM
    locks out after a few wrong PINs, and the error says so."""
    from bastion.errors import PolicyError, TpmError

    tpm = tss(swtpm)
    try:
        sealed = tpm.seal(b"k", SEL, auth_value=b"right pin")
        with pytest.raises(PolicyError):
            tpm.unseal(sealed, SEL, auth_value=b"wrong pin")
        with pytest.raises(TpmError, match="dictionary-attack lockout"):
            for _ in range(10):
                with pytest.raises(PolicyError):
                    tpm.unseal(sealed, SEL, auth_value=b"wrong pin")
    finally:
        tpm.close()


# --- the EK -------------------------------------------------------------------------------------


def test_ek_public_matches_tpm2_createek(swtpm: Swtpm, tmp_path: Path) -> None:
    tools(
        swtpm,
        "tpm2_createek",
        "-c",
        str(tmp_path / "ek.ctx"),
        "-G",
        "rsa",
        "-u",
        str(tmp_path / "ek.pub"),
    )
    flush(swtpm)
    tpm = tss(swtpm)
    try:
        assert tpm.ek_public() == (tmp_path / "ek.pub").read_bytes()
    finally:
        tpm.close()


def test_software_ek_has_the_tcg_template(swtpm: Swtpm, tmp_path: Path) -> None:
    from dataclasses import replace

    from bastion.tpm.software import SoftwareTpm

    tools(
        swtpm,
        "tpm2_createek",
        "-c",
        str(tmp_path / "ek.ctx"),
        "-G",
        "rsa",
        "-u",
        str(tmp_path / "ek.pub"),
    )
    flush(swtpm)
    real = Public.parse((tmp_path / "ek.pub").read_bytes())
    soft_tpm = SoftwareTpm(tmp_path / "soft.state")
    try:
        soft = Public.parse(soft_tpm.ek_public())
    finally:
        soft_tpm.close()
    assert soft.unique != real.unique
    assert replace(soft, unique=real.unique) == real


# --- the launcher -------------------------------------------------------------------------------


def test_swtpm_launcher_lifecycle(tmp_path: Path) -> None:
    need_tool("swtpm")
    sw = Swtpm.start(tmp_path / "state")
    pid, port = sw.pid, sw.port
    assert sw.running and pid_alive(pid) and port_accepts(port) and port_accepts(port + 1)
    assert sw.uri == f"swtpm:host=127.0.0.1,port={port}"
    assert (tmp_path / "state" / "swtpm.pid").read_text().strip() == str(pid)
    assert (tmp_path / "state").is_absolute() or sw.state_dir.is_absolute()
    sw.restart()
    assert sw.pid != pid and sw.running
    new_pid = sw.pid
    sw.stop()
    sw.stop()  # idempotent
    assert not sw.running
    # stopped by PID and reaped: no process, not even a zombie
    assert not pid_alive(pid) and not pid_alive(new_pid)
    assert not Path(f"/proc/{new_pid}").exists()
    with pytest.raises(BackendError):
        _ = sw.pid


def test_swtpm_restart_keeps_nv_and_finds_new_ports_if_taken(tmp_path: Path) -> None:
    need_tss()
    sw = Swtpm.start(tmp_path / "state")
    try:
        tpm = tss(sw)
        tpm.nv_define_counter(0x01500200)
        value = tpm.nv_increment(0x01500200)
        tpm.close()
        old_port = sw.port
        sw.stop()
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", old_port))
        blocker.listen(1)
        try:
            sw.restart()
        finally:
            blocker.close()
        assert sw.port != old_port and sw.running
        tpm = tss(sw)
        assert tpm.nv_read_counter(0x01500200) == value
        tpm.close()
    finally:
        sw.stop()


def test_relative_state_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_tss()
    monkeypatch.chdir(tmp_path)
    with Swtpm.start(Path("rel")) as sw:
        assert sw.state_dir == tmp_path / "rel"
        tpm = tss(sw)
        try:
            tpm.nv_define_bits(0x01500300)  # a write: fails if swtpm got a relative path
            tpm.nv_set_bits(0x01500300, 1)
            assert tpm.nv_read_bits(0x01500300) == 1
        finally:
            tpm.close()
    assert os.listdir(tmp_path / "rel")


def test_swtpm_volatile_state_resumes_pcrs_and_power_on_resets_them(tmp_path: Path) -> None:
    """save_volatile + start(resume=True) keeps the PCRs a boot measured; a plain start
    (a power-on) and restart() reset them."""
    need_tss()
    from bastion.tpm.tss import TssTpm

    sel = PcrSelection(HashAlg.SHA256, (16,))
    digest = {HashAlg.SHA256: hashlib.sha256(b"measured").digest()}
    with Swtpm.start(tmp_path / "sw") as sw:
        tpm = TssTpm(sw.uri)
        tpm.pcr_extend(16, digest)
        measured = tpm.pcr_read(sel)[16]
        tpm.close()
        sw.save_volatile()
    assert measured != bytes(32)
    with Swtpm.start(tmp_path / "sw", resume=True) as sw:
        tpm = TssTpm(sw.uri)
        assert tpm.pcr_read(sel)[16] == measured
        tpm.close()
        sw.save_volatile()
        sw.restart()
        tpm = TssTpm(sw.uri)
        assert tpm.pcr_read(sel)[16] == bytes(32)
        tpm.close()
    with Swtpm.start(tmp_path / "sw") as sw:
        tpm = TssTpm(sw.uri)
        assert tpm.pcr_read(sel)[16] == bytes(32)
        tpm.close()
    with pytest.raises(BackendError, match="not running"):
        sw.save_volatile()

"""systemd interop: systemd-cryptenroll tokens unlock in bastion; bastion tokens are
decoded by cryptsetup's systemd plugin and unseal with tpm2-tools by the same PCR policy;
recovery keys work both ways. Everything runs on a private swtpm.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need_tool

from bastion.errors import PolicyError
from bastion.storage.luks2_volume import FileRange, Luks2Volume
from bastion.storage.recovery import enroll_recovery_key, unlock_recovery_key
from bastion.storage.sealed import Tpm2Token, enroll_tpm, unlock_with_token
from bastion.tpm import pcr as pcrmath
from bastion.tpm.base import HashAlg, PcrSelection

pytestmark = pytest.mark.interop
MiB = 1 << 20
CS_PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def run(argv: list[str], *, env: dict[str, str] | None = None, input: bytes | None = None) -> bytes:
    proc = subprocess.run(
        argv, env={**os.environ, **(env or {})}, input=input, capture_output=True, check=False
    )
    assert proc.returncode == 0, f"{argv} -> {proc.returncode}: {proc.stderr.decode()}"
    return proc.stdout


def cryptsetup_volume(tmp_path: Path) -> tuple[Path, bytes]:
    cs = need_tool("cryptsetup")
    tmp_path.mkdir(parents=True, exist_ok=True)
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(20 * MiB)
    key = tmp_path / "pw"
    key.write_bytes(b"pw")
    run(
        [
            cs,
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            *CS_PBKDF2,
            "--key-file",
            str(key),
            str(img),
        ]
    )
    out = run(
        [cs, "luksDump", "--batch-mode", "--dump-volume-key", "--key-file", str(key), str(img)]
    )
    vk = bytes.fromhex("".join(re.findall(r"\b[0-9a-f]{2}\b", out.decode().split("MK dump:")[1])))
    return img, vk


def test_systemd_cryptenroll_token_unlocks_in_bastion(tmp_path: Path, swtpm: Any) -> None:
    enroll = need_tool("systemd-cryptenroll")
    from bastion.tpm.tss import TssTpm

    img, vk = cryptsetup_volume(tmp_path)
    tpm = TssTpm(swtpm.uri)
    try:
        tpm.pcr_extend(7, {HashAlg.SHA256: hashlib.sha256(b"secure boot db").digest()})
        run(
            [enroll, f"--tpm2-device={swtpm.uri}", "--tpm2-pcrs=7+15", str(img)],
            env={"PASSWORD": "pw"},
        )
        vol = Luks2Volume.open(FileRange(img))
        ((token_id, token),) = ((n, t) for n, t in vol.tokens.items() if t.type == "systemd-tpm2")
        parsed = Tpm2Token.from_token(token)
        sel = PcrSelection(HashAlg.SHA256, (7, 15))
        assert parsed.policy_hash == pcrmath.sealing_policy(sel, tpm.pcr_read(sel))
        assert unlock_with_token(vol, tpm) == parsed.keyslot
        assert vol.volume_key == vk
        tpm.pcr_extend(7, {HashAlg.SHA256: hashlib.sha256(b"evil db").digest()})
        with pytest.raises(PolicyError):
            unlock_with_token(Luks2Volume.open(FileRange(img)), tpm, token_id=token_id)
    finally:
        tpm.close()


def test_bastion_token_in_cryptsetup_and_tpm2_tools(tmp_path: Path, swtpm: Any) -> None:
    cs = need_tool("cryptsetup")
    tools = {
        n: need_tool(n, "tpm2-tools")
        for n in (
            "tpm2_createprimary",
            "tpm2_load",
            "tpm2_startauthsession",
            "tpm2_policypcr",
            "tpm2_unseal",
            "tpm2_flushcontext",
        )
    }
    from bastion.tpm.tss import TssTpm

    img, vk = cryptsetup_volume(tmp_path)
    vol = Luks2Volume.open(FileRange(img))
    vol.unlock_passphrase(b"pw")
    assert vol.volume_key == vk
    tpm = TssTpm(swtpm.uri)
    try:
        tpm.pcr_extend(7, {HashAlg.SHA256: hashlib.sha256(b"secure boot db").digest()})
        res = enroll_tpm(vol, tpm)
    finally:
        tpm.close()
    dump = run([cs, "luksDump", str(img)]).decode()
    assert "systemd-tpm2" in dump
    assert re.search(r"tpm2-hash-pcrs:\s+7\+15", dump)
    assert re.search(r"tpm2-primary-alg:\s+ecc", dump)
    hex_in_dump = "".join(dump.split("tpm2-policy-hash:")[1].split("tpm2-pin")[0].split())
    assert hex_in_dump == res.policy_hash.hex()
    # unseal with tpm2-tools: systemd's legacy ECC primary, then a PolicyPCR session
    sealed = Tpm2Token.from_token(vol.tokens[res.token]).sealed
    (tmp_path / "seal.pub").write_bytes(sealed.public)
    (tmp_path / "seal.priv").write_bytes(sealed.private)
    env = {"TPM2TOOLS_TCTI": swtpm.uri, "TSS2_LOG": "all+none"}
    d = str(tmp_path)
    run(
        [
            tools["tpm2_createprimary"],
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc256:null:aes128cfb",
            "-a",
            "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth",
            "-c",
            f"{d}/primary.ctx",
            "-Q",
        ],
        env=env,
    )
    run(
        [
            tools["tpm2_load"],
            "-C",
            f"{d}/primary.ctx",
            "-u",
            f"{d}/seal.pub",
            "-r",
            f"{d}/seal.priv",
            "-c",
            f"{d}/seal.ctx",
            "-Q",
        ],
        env=env,
    )
    run([tools["tpm2_flushcontext"], "-t"], env=env)
    run([tools["tpm2_startauthsession"], "--policy-session", "-S", f"{d}/s.ctx"], env=env)
    run([tools["tpm2_policypcr"], "-S", f"{d}/s.ctx", "-l", "sha256:7,15"], env=env)
    secret = run([tools["tpm2_unseal"], "-c", f"{d}/seal.ctx", "-p", f"session:{d}/s.ctx"], env=env)
    run([tools["tpm2_flushcontext"], f"{d}/s.ctx"], env=env)
    run([tools["tpm2_flushcontext"], "-t"], env=env)
    assert len(secret) == 32
    run(
        [
            cs,
            "open",
            "--test-passphrase",
            "--key-slot",
            str(res.keyslot),
            "--key-file",
            "-",
            str(img),
        ],
        input=base64.b64encode(secret),
    )


def test_recovery_keys_both_ways(tmp_path: Path) -> None:
    enroll = need_tool("systemd-cryptenroll")
    cs = need_tool("cryptsetup")
    img, vk = cryptsetup_volume(tmp_path)
    out = run([enroll, "--recovery-key", str(img)], env={"PASSWORD": "pw"}).decode()
    key = re.search(r"([cbdefghijklnrtuv]{8}-){7}[cbdefghijklnrtuv]{8}", out)
    assert key is not None
    vol = Luks2Volume.open(FileRange(img))
    assert any(t.type == "systemd-recovery" for t in vol.tokens.values())
    unlock_recovery_key(vol, key.group(0))
    assert vol.volume_key == vk
    mine = enroll_recovery_key(vol)
    run([cs, "open", "--test-passphrase", "--key-file", "-", str(img)], input=mine.key.encode())
    vol2 = Luks2Volume.open(FileRange(img))
    assert unlock_recovery_key(vol2, mine.key) == mine.keyslot


def test_systemd_plugin_validates_bastion_token(tmp_path: Path) -> None:
    """cryptsetup's systemd-tpm2 plugin accepts a bastion token on import, and rejects a
    broken one (so the acceptance is a real validation)."""
    import json

    from bastion.tpm.software import SoftwareTpm

    cs = need_tool("cryptsetup")
    img, _ = cryptsetup_volume(tmp_path)
    vol = Luks2Volume.open(FileRange(img))
    vol.unlock_passphrase(b"pw")
    res = enroll_tpm(vol, SoftwareTpm(tmp_path / "tpm.state"))
    token = vol.tokens[res.token].to_json()
    other, _ = cryptsetup_volume(tmp_path / "other")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(token | {"keyslots": ["0"]}))
    run([cs, "token", "import", "--json-file", str(good), str(other)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(token | {"keyslots": ["0"], "tpm2-pcr-bank": "bogus"}))
    proc = subprocess.run(
        [cs, "token", "import", "--json-file", str(bad), str(other)],
        capture_output=True,
        check=False,
    )
    assert proc.returncode != 0
    imported = Luks2Volume.open(FileRange(other)).tokens
    assert [t.to_json() for t in imported.values()] == [token | {"keyslots": ["0"]}]

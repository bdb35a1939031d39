"""Signed PCR policies (TPM2_PolicyAuthorize) both ways with systemd 252, on a private swtpm.

* systemd-cryptenroll ``--tpm2-public-key --tpm2-public-key-pcrs=11 --tpm2-pcrs=`` makes
  a token that bastion unlocks with a bastion-made ``.pcrsig`` for the current PCR 11,
  and refuses in every other case (the negative table).
* bastion's ``enroll_tpm_signed`` makes a token that cryptsetup's systemd-tpm2 token
  plugin opens with ``systemd-measure sign``'s ``.pcrsig``. The plugin is driven through
  libcryptsetup's ``crypt_activate_by_token_pin`` with no device name (what ``cryptsetup
  open --test-passphrase`` does) and the plugin parameters systemd-cryptsetup passes (TPM
  device, signature path). ``cryptsetup open --token-only`` itself cannot reach swtpm:
  the 252 plugin only looks for /sys/class/tpmrm devices and refuses TCTI strings from
  there (``driver name '/dev/swtpm' not valid``).

The "device" boots a UKI: PCR 11 is extended with the stub's measurements of the
sections and then ``enter-initrd`` (systemd-pcrphase), and the authority signs only
that phase, so ``leave-initrd`` locks the volume.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tests.conftest import need_tool
from tests.interop.test_luks2_systemd import cryptsetup_volume, run
from tests.unit.trust.conftest import make_key

from bastion.errors import PolicyError, SignatureError
from bastion.formats.luks2 import Token
from bastion.io.runner import find_tool
from bastion.storage import signed_policy
from bastion.storage.luks2_volume import FileRange, Luks2Volume
from bastion.storage.sealed import Tpm2Token, enroll_tpm_signed, unlock_with_token
from bastion.tpm import pcr as pcrmath
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.trust.pcr11 import measurements, pcrsig_json, predict_pcr11, sign_pcr11
from bastion.trust.signer import SignatureScheme, SoftwareSigner

pytestmark = pytest.mark.interop

SECTIONS = {".linux": b"MZ kernel 6.1", ".osrel": b"ID=bastion\n", ".cmdline": b"ro quiet\0"}
OTHER_SECTIONS = {**SECTIONS, ".cmdline": b"ro quiet init=/bin/sh\0"}
PHASE = "enter-initrd"
PCR11 = PcrSelection(HashAlg.SHA256, (11,))
#: systemd 252's token fields for a signed policy, in its order (tpm2_make_luks2_json)
SYSTEMD_252_FIELDS = [
    "type",
    "keyslots",
    "tpm2-blob",
    "tpm2-pcrs",
    "tpm2-pcr-bank",
    "tpm2-primary-alg",
    "tpm2-policy-hash",
    "tpm2-pin",
    "tpm2_pubkey_pcrs",
    "tpm2_pubkey",
]


def pem(n: int) -> bytes:
    return (
        make_key("rsa-2048", n)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def bastion_pcrsig(n: int, sections: dict[str, bytes] = SECTIONS) -> bytes:
    signer = SoftwareSigner(make_key("rsa-2048", n), SignatureScheme.RSA_PKCS1V15_SHA256)
    return pcrsig_json(sign_pcr11(sections, signer, phases=(PHASE,)))


def boot(tpm: Any, sections: dict[str, bytes] = SECTIONS) -> bytes:
    """What systemd-stub and systemd-pcrphase extend into PCR 11; returns the value."""
    for digest in measurements(sections):
        tpm.pcr_extend(11, {HashAlg.SHA256: digest})
    tpm.pcr_extend(11, {HashAlg.SHA256: hashlib.sha256(PHASE.encode()).digest()})
    value: bytes = tpm.pcr_read(PCR11)[11]
    assert value == predict_pcr11(sections, PHASE)
    return value


def systemd_enroll(tmp_path: Path, uri: str) -> tuple[Path, bytes, int]:
    """A LUKS2 image with a systemd-cryptenroll signed-policy token (key 3)."""
    enroll = need_tool("systemd-cryptenroll")
    img, vk = cryptsetup_volume(tmp_path)
    (tmp_path / "pub.pem").write_bytes(pem(3))
    run(
        [
            enroll,
            f"--tpm2-device={uri}",
            f"--tpm2-public-key={tmp_path / 'pub.pem'}",
            "--tpm2-public-key-pcrs=11",
            "--tpm2-pcrs=",
            str(img),
        ],
        env={"PASSWORD": "pw"},
    )
    vol = Luks2Volume.open(FileRange(img))
    ((token_id, _),) = ((n, t) for n, t in vol.tokens.items() if t.type == "systemd-tpm2")
    return img, vk, token_id


def test_systemd_token_unlocks_in_bastion(tmp_path: Path, swtpm: Any) -> None:
    from bastion.tpm.tss import TssTpm

    tpm = TssTpm(swtpm.uri)
    try:
        boot(tpm)
        img, vk, token_id = systemd_enroll(tmp_path, swtpm.uri)
        vol = Luks2Volume.open(FileRange(img))
        raw = vol.tokens[token_id].to_json()
        assert list(raw) == SYSTEMD_252_FIELDS
        token = Tpm2Token.from_token(vol.tokens[token_id])
        assert (token.pcrs, token.pubkey_pcrs, token.pubkey) == ((), (11,), pem(3))
        # systemd's policy digest is bastion's offline PolicyAuthorize computation
        name = signed_policy.key_name(signed_policy.load_public_key(pem(3)))
        assert token.policy_hash == pcrmath.authorized_sealing_policy(name)
        assert token.to_token().to_json() == raw  # round trip, field order included
        assert unlock_with_token(vol, tpm, pcr_signature=bastion_pcrsig(3)) == token.keyslot
        assert vol.volume_key == vk
    finally:
        tpm.close()


def _tamper(img: Path, token_id: int, **fields: Any) -> None:
    vol = Luks2Volume.open(FileRange(img, writable=True))
    raw = vol.tokens[token_id].to_json() | fields
    vol.remove_token(token_id)
    vol.add_token(Token.from_json(raw, "tampered"), token_id=token_id)


NEGATIVE = {
    "stale-pcrsig": (PolicyError, "no .pcrsig entry signs the current PCR state: PCR 11 = "),
    "other-key-pcrsig": (SignatureError, "no signature by the token's key"),
    "forged-entry": (SignatureError, "TPM2_VerifySignature: the signature does not verify"),
    "phase-change": (PolicyError, "no .pcrsig entry signs the current PCR state: PCR 11 = "),
    "tampered-pubkey": (PolicyError, "PolicyAuthorize by its tpm2_pubkey gives"),
    "tampered-pubkey-and-hash": (PolicyError, "TPM refused unseal"),
    "missing-pcrsig": (PolicyError, "bound to a signed policy for PCR 11: give the .pcrsig"),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_systemd_token_refused(tmp_path: Path, swtpm: Any, case: str) -> None:
    from bastion.tpm.tss import TssTpm

    error, message = NEGATIVE[case]
    tpm = TssTpm(swtpm.uri)
    try:
        value = boot(tpm)
        img, _, token_id = systemd_enroll(tmp_path, swtpm.uri)
        pcrsig: bytes | None = bastion_pcrsig(3)
        if case == "stale-pcrsig":
            pcrsig = bastion_pcrsig(3, OTHER_SECTIONS)
            message += value.hex()  # the message names PCR 11's current value
        elif case == "other-key-pcrsig":
            pcrsig = bastion_pcrsig(4)
        elif case == "forged-entry":  # right fingerprint and policy, another key's signature
            doc = json.loads(bastion_pcrsig(3))
            doc["sha256"][0]["sig"] = json.loads(bastion_pcrsig(4))["sha256"][0]["sig"]
            pcrsig = json.dumps(doc).encode()
        elif case == "phase-change":
            vol = Luks2Volume.open(FileRange(img))
            unlock_with_token(vol, tpm, pcr_signature=pcrsig)  # works in the initrd...
            tpm.pcr_extend(11, {HashAlg.SHA256: hashlib.sha256(b"leave-initrd").digest()})
            message += tpm.pcr_read(PCR11)[11].hex()  # ...and names the new value after it
            assert tpm.pcr_read(PCR11)[11] != value
        elif case.startswith("tampered-pubkey"):
            # the attacker swaps in their own key and signs the current PCR 11 with it
            fields: dict[str, Any] = {"tpm2_pubkey": base64.b64encode(pem(4)).decode()}
            if case == "tampered-pubkey-and-hash":
                name = signed_policy.key_name(signed_policy.load_public_key(pem(4)))
                fields["tpm2-policy-hash"] = pcrmath.authorized_sealing_policy(name).hex()
            _tamper(img, token_id, **fields)
            pcrsig = bastion_pcrsig(4)
        else:
            pcrsig = None
        vol = Luks2Volume.open(FileRange(img))
        with pytest.raises(error, match=re.escape(message)):
            unlock_with_token(vol, tpm, token_id=token_id, pcr_signature=pcrsig)
    finally:
        tpm.close()


# --- bastion enrols, systemd's token plugin unlocks ---------------------------------------

_PLUGIN_DRIVER = r"""
import ctypes, sys
lib = ctypes.CDLL("libcryptsetup.so.12")
class Params(ctypes.Structure):  # systemd 252 src/shared/tpm2-util.h
    _fields_ = [("search_pcr_mask", ctypes.c_uint32), ("device", ctypes.c_char_p),
                ("signature_path", ctypes.c_char_p)]
lib.crypt_activate_by_token_pin.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
    ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_uint32]
cd = ctypes.c_void_p()
if lib.crypt_init(ctypes.byref(cd), sys.argv[1].encode()) or lib.crypt_load(cd, b"LUKS2", None):
    sys.exit("cannot load the LUKS2 header")
params = Params(0xFFFFFFFF, sys.argv[2].encode(), sys.argv[3].encode())
# name NULL: check only, no device-mapper (cryptsetup open --test-passphrase); any token
rc = lib.crypt_activate_by_token_pin(cd, None, b"systemd-tpm2", -1, None, 0,
                                     ctypes.byref(params), 0)
print(rc)
"""


def flush_sessions(uri: str) -> None:
    """Flush every session and transient object: systemd 252 leaves its sessions loaded
    when an unlock fails, which a kernel resource manager (/dev/tpmrm0) cleans up per
    connection but a bare swtpm keeps, until "out of memory for session contexts"."""
    tool = need_tool("tpm2_flushcontext", "tpm2-tools")
    for what in ("-t", "-l", "-s"):
        run([tool, what], env={"TPM2TOOLS_TCTI": uri, "TSS2_LOG": "all+none"})


def plugin_open(img: Path, uri: str, signature: Path) -> tuple[int, str]:
    """(keyslot or libcryptsetup's -errno, the plugin's log) of cryptsetup's systemd-tpm2
    token plugin opening ``img`` with TPM ``uri`` and ``signature``."""
    need_tool("cryptsetup")
    flush_sessions(uri)
    plugin = Path("/usr/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-systemd-tpm2.so")
    if not plugin.exists():
        need_tool("libcryptsetup-token-systemd-tpm2.so", "systemd-cryptsetup")
    proc = subprocess.run(
        [sys.executable, "-c", _PLUGIN_DRIVER, str(img), uri, str(signature)],
        capture_output=True,
        check=True,
        env={**os.environ, "TSS2_LOG": "all+none"},
    )
    return int(proc.stdout.decode().split()[-1]), proc.stderr.decode()


def measure_sign(tmp_path: Path, uri: str, n: int, sections: dict[str, bytes]) -> Path:
    """``systemd-measure sign --phase=enter-initrd`` by key ``n``: systemd's own .pcrsig."""
    from bastion.trust.keys import private_key_to_pem

    tool = find_tool("systemd-measure", ("/usr/lib/systemd",)) or need_tool("systemd-measure")
    folder = tmp_path / f"measure-{n}-{len(sections['.cmdline'])}"
    folder.mkdir()
    (folder / "key.pem").write_bytes(private_key_to_pem(make_key("rsa-2048", n)))
    (folder / "pub.pem").write_bytes(pem(n))
    args = []
    for name, content in sections.items():
        (folder / name[1:]).write_bytes(content)
        args.append(f"--{name[1:]}={folder / name[1:]}")
    out = run(
        [
            tool,
            "sign",
            "--bank=sha256",
            f"--phase={PHASE}",
            f"--private-key={folder / 'key.pem'}",
            f"--public-key={folder / 'pub.pem'}",
            *args,
        ],
        env={"SYSTEMD_TPM2_DEVICE": uri},
    )
    (folder / "tpm2-pcr-signature.json").write_bytes(out)
    return folder / "tpm2-pcr-signature.json"


def test_bastion_token_opens_with_systemd_plugin(tmp_path: Path, swtpm: Any) -> None:
    from bastion.tpm.tss import TssTpm

    cs = need_tool("cryptsetup")
    img, vk = cryptsetup_volume(tmp_path)
    good = measure_sign(tmp_path, swtpm.uri, 3, SECTIONS)
    assert good.read_bytes() == bastion_pcrsig(3)  # systemd's .pcrsig = bastion's
    vol = Luks2Volume.open(FileRange(img, writable=True))
    vol.unlock_passphrase(b"pw")
    tpm = TssTpm(swtpm.uri)
    try:
        boot(tpm)
        res = enroll_tpm_signed(vol, tpm, pem(3), pcr_signature=good.read_bytes())
    finally:
        tpm.close()
    raw = vol.tokens[res.token].to_json()
    assert list(raw) == SYSTEMD_252_FIELDS
    assert raw["tpm2_pubkey"] == base64.b64encode(pem(3)).decode()
    dump = run([cs, "luksDump", str(img)]).decode()
    # bound to signed PCR 11 and, by default as in systemd 252, to PCR 7's value
    assert "tpm2-pubkey-pcrs: 11" in dump and "tpm2-hash-pcrs:   7" in dump

    assert plugin_open(img, swtpm.uri, good) == (res.keyslot, "")
    tpm = TssTpm(swtpm.uri)
    try:  # and bastion opens its own token with systemd's .pcrsig
        check = Luks2Volume.open(FileRange(img))
        assert unlock_with_token(check, tpm, pcr_signature=good.read_bytes()) == res.keyslot
        assert check.volume_key == vk
    finally:
        tpm.close()
    no_entry = (-errno.ENXIO, "Couldn't find signature for this PCR bank, PCR index and public key")
    stale = measure_sign(tmp_path, swtpm.uri, 3, OTHER_SECTIONS)
    rc, log = plugin_open(img, swtpm.uri, stale)
    assert (rc, log.strip()) == (no_entry[0], no_entry[1] + ".")
    other_key = measure_sign(tmp_path, swtpm.uri, 4, SECTIONS)
    rc, log = plugin_open(img, swtpm.uri, other_key)
    assert (rc, log.strip()) == (no_entry[0], no_entry[1] + ".")
    assert plugin_open(img, swtpm.uri, tmp_path / "absent.json")[0] == -errno.ENOENT
    # the phase changes: systemd refuses the same .pcrsig from now on, bastion too
    tpm = TssTpm(swtpm.uri)
    try:
        tpm.pcr_extend(11, {HashAlg.SHA256: hashlib.sha256(b"leave-initrd").digest()})
    finally:
        tpm.close()
    rc, log = plugin_open(img, swtpm.uri, good)
    assert (rc, log.strip()) == (no_entry[0], no_entry[1] + ".")


def test_bastion_token_refused_by_plugin_when_pubkey_tampered(tmp_path: Path, swtpm: Any) -> None:
    from bastion.tpm.tss import TssTpm

    img, _ = cryptsetup_volume(tmp_path)
    vol = Luks2Volume.open(FileRange(img, writable=True))
    vol.unlock_passphrase(b"pw")
    tpm = TssTpm(swtpm.uri)
    try:
        boot(tpm)
        res = enroll_tpm_signed(vol, tpm, pem(3))
        _tamper(img, res.token, tpm2_pubkey=base64.b64encode(pem(4)).decode())
        with pytest.raises(PolicyError, match="tpm2_pubkey"):
            unlock_with_token(
                Luks2Volume.open(FileRange(img)), tpm, pcr_signature=bastion_pcrsig(4)
            )
    finally:
        tpm.close()
    attacker = measure_sign(tmp_path, swtpm.uri, 4, SECTIONS)
    rc, log = plugin_open(img, swtpm.uri, attacker)
    assert rc == -errno.ENOENT  # libcryptsetup maps the plugin's refusal to "no token"
    assert "Current policy digest does not match stored policy digest" in log


def test_bastion_token_bound_to_pcr7_too(tmp_path: Path, swtpm: Any) -> None:
    """The default literal PCR 7 (Secure Boot state): a valid .pcrsig is not enough once
    PCR 7 changed, for bastion and for systemd's plugin alike."""
    from bastion.tpm.tss import TssTpm

    img, _ = cryptsetup_volume(tmp_path)
    good = measure_sign(tmp_path, swtpm.uri, 3, SECTIONS)
    vol = Luks2Volume.open(FileRange(img, writable=True))
    vol.unlock_passphrase(b"pw")
    tpm = TssTpm(swtpm.uri)
    try:
        boot(tpm)
        res = enroll_tpm_signed(vol, tpm, pem(3))
        assert Tpm2Token.from_token(vol.tokens[res.token]).pcrs == (7,)
        tpm.pcr_extend(7, {HashAlg.SHA256: hashlib.sha256(b"Secure Boot off").digest()})
        with pytest.raises(PolicyError, match="tpm2_pubkey and PCRs 7 gives"):
            unlock_with_token(
                Luks2Volume.open(FileRange(img)), tpm, pcr_signature=good.read_bytes()
            )
    finally:
        tpm.close()
    rc, log = plugin_open(img, swtpm.uri, good)
    assert rc == -errno.ENOENT
    assert "Current policy digest does not match stored policy digest" in log

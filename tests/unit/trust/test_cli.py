"""The trust command groups end to end: keys, sign/verify, module, pki."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.cli.main import main

VEC = Path(__file__).resolve().parents[2] / "vectors" / "modsig"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "keys"
    assert main(["keys", "init", str(folder), "--product", "acme"]) == 0
    return folder


def test_keys_init_output_and_refusal(keyset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "show", str(keyset), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["keep_offline"] == [
        "platform-root.key.pem",
        "fleet-root-ca.key.pem",
        "secureboot-pk.key.pem",
        "secureboot-kek.key.pem",
    ]
    assert {k["algorithm"] for k in doc["keys"]} == {
        "ed25519",
        "rsa-3072",
        "ecdsa-p256",
        "rsa-2048",
    }
    code, out, _ = run(capsys, "keys", "show", str(keyset))
    assert "KEEP OFFLINE" in out and "platform root hash" in out
    code, _, err = run(capsys, "keys", "init", str(keyset))
    assert code == 6 and "refusing to overwrite" in err and "Traceback" not in err


def test_sign_append_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, alg in (("a", "ed25519"), ("b", "ecdsa-p256")):
        assert run(capsys, "keys", "generate", alg, "-o", str(tmp_path / f"{name}.key.pem"))[0] == 0
    payload = tmp_path / "payload.json"
    payload.write_bytes(b'{"version": 3}')
    env = tmp_path / "env.json"
    t = "application/vnd.bastion.release+json"
    assert (
        run(
            capsys,
            "sign",
            "--key",
            f"file:{tmp_path / 'a.key.pem'}",
            "--type",
            t,
            str(payload),
            "-o",
            str(env),
        )[0]
        == 0
    )
    keys = ["--key", str(tmp_path / "a.pub.pem"), "--key", str(tmp_path / "b.pub.pem")]
    code, _, err = run(capsys, "verify", *keys, "--threshold", "2", "--type", t, str(env))
    assert code == 2 and "1 of 2" in err and err.count("\n") == 1
    assert (
        run(
            capsys,
            "sign",
            "--key",
            str(tmp_path / "b.key.pem"),
            "--type",
            t,
            str(payload),
            "-o",
            str(env),
            "--append",
        )[0]
        == 0
    )
    code, out, _ = run(
        capsys,
        "verify",
        *keys,
        "--threshold",
        "2",
        "--type",
        t,
        str(env),
        "-o",
        str(tmp_path / "out"),
        "--json",
    )
    assert code == 0 and json.loads(out)["ok"] is True
    assert (tmp_path / "out").read_bytes() == payload.read_bytes()
    code, _, err = run(capsys, "verify", *keys, "--type", "other/type", str(env))
    assert code == 2 and "payload type" in err
    other = tmp_path / "other.json"
    other.write_bytes(b"{}")
    code, _, err = run(
        capsys,
        "sign",
        "--key",
        str(tmp_path / "b.key.pem"),
        "--type",
        t,
        str(other),
        "-o",
        str(env),
        "--append",
    )
    assert code == 6
    (tmp_path / "bad.json").write_bytes(b"{not json")
    code, _, err = run(capsys, "verify", *keys, "--type", t, str(tmp_path / "bad.json"))
    assert code == 3 and "Traceback" not in err
    code, out, _ = run(capsys, "keys", "id", str(tmp_path / "a.pub.pem"))
    assert code == 0 and len(out.strip()) == 64


def test_module_sign_verify_matches_sign_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = tmp_path / "m.ko"
    shutil.copy(VEC / "module.ko", module)
    code, _, _ = run(
        capsys,
        "module",
        "sign",
        "--key",
        str(VEC / "test-key.pem"),
        "--cert",
        str(VEC / "test-cert.pem"),
        "--hash",
        "sha384",
        str(module),
    )
    assert code == 0
    assert module.read_bytes() == (VEC / "module.sha384.ko").read_bytes()
    code, out, _ = run(
        capsys, "module", "verify", "--cert", str(VEC / "test-cert.der"), str(module), "--json"
    )
    assert code == 0 and json.loads(out)["hash"] == "sha384"
    data = bytearray(module.read_bytes())
    data[100] ^= 1
    module.write_bytes(bytes(data))
    code, _, err = run(
        capsys, "module", "verify", "--cert", str(VEC / "test-cert.der"), str(module)
    )
    assert code == 2 and err.startswith("bastion: SignatureError")
    code, _, err = run(
        capsys,
        "module",
        "sign",
        "--key",
        str(VEC / "test-key.pem"),
        "--cert",
        str(VEC / "test-cert.pem"),
        str(VEC / "module.sha256.ko"),
        "-o",
        str(tmp_path / "x"),
    )
    assert code == 6


def test_pki_issue_revoke_crl_verify(
    keyset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "d.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    code, out, err = run(
        capsys,
        "pki",
        "issue",
        "--keyset",
        str(keyset),
        "--csr",
        str(tmp_path / "d.csr"),
        "--device-id",
        "dev-7",
        "-o",
        str(tmp_path / "d.pem"),
        "--json",
    )
    assert code == 0, err
    serial = json.loads(out)["serial"]
    code, _, err = run(
        capsys,
        "pki",
        "issue",
        "--keyset",
        str(keyset),
        "--csr",
        str(tmp_path / "d.csr"),
        "--dns",
        "fleet.acme.test",
        "-o",
        str(tmp_path / "s.pem"),
    )
    assert code == 0, err
    state = tmp_path / "state.json"
    assert (
        run(
            capsys,
            "pki",
            "crl",
            "--keyset",
            str(keyset),
            "--state",
            str(state),
            "-o",
            str(tmp_path / "crl0.pem"),
        )[0]
        == 0
    )
    chain = [
        "--root",
        str(keyset / "fleet-root-ca.crt.pem"),
        "--untrusted",
        str(keyset / "fleet-ca.crt.pem"),
    ]
    code, out, err = run(
        capsys,
        "pki",
        "verify",
        *chain,
        "--crl",
        str(tmp_path / "crl0.pem"),
        str(tmp_path / "d.pem"),
    )
    assert code == 0, err
    code, _, err = run(
        capsys,
        "pki",
        "verify",
        *chain,
        "--usage",
        "server",
        "--server-name",
        "fleet.acme.test",
        str(tmp_path / "s.pem"),
    )
    assert code == 0, err
    code, _, err = run(capsys, "pki", "verify", *chain, str(tmp_path / "s.pem"))
    assert code == 2 and "client authentication" in err
    assert (
        run(
            capsys,
            "pki",
            "revoke",
            "--state",
            str(state),
            "--serial",
            serial,
            "--reason",
            "key_compromise",
        )[0]
        == 0
    )
    code, out, _ = run(
        capsys,
        "pki",
        "crl",
        "--keyset",
        str(keyset),
        "--state",
        str(state),
        "-o",
        str(tmp_path / "crl1.pem"),
        "--json",
    )
    assert code == 0 and json.loads(out)["crl_number"] == 2
    code, _, err = run(
        capsys,
        "pki",
        "verify",
        *chain,
        "--crl",
        str(tmp_path / "crl1.pem"),
        str(tmp_path / "d.pem"),
    )
    assert code == 2 and "RevokedError" in err
    both = [str(tmp_path / "d.pem"), str(tmp_path / "s.pem")]
    code, out, err = run(capsys, "pki", "verify", *chain, *both)
    assert code == 2 and f"{both[0]}: OK" in out and "1 of 2" in err
    code, _, err = run(
        capsys,
        "pki",
        "issue",
        "--csr",
        str(tmp_path / "d.csr"),
        "--device-id",
        "x",
        "-o",
        str(tmp_path / "e.pem"),
    )
    assert code == 9 and "--keyset" in err


def test_keys_generate_tpm_and_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tpm = f"software:{tmp_path / 'tpm.state'}"
    code, out, err = run(
        capsys,
        "keys",
        "generate",
        "ecdsa-p256",
        "--tpm",
        tpm,
        "-o",
        str(tmp_path / "boot.tpmkey"),
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["uri"] == f"tpm:{tpm}#{tmp_path / 'boot.tpmkey'}"
    (tmp_path / "p").write_bytes(b"payload")
    code, _, err = run(
        capsys,
        "sign",
        "--key",
        doc["uri"],
        "--type",
        "t/x",
        str(tmp_path / "p"),
        "-o",
        str(tmp_path / "e.json"),
    )
    assert code == 0, err
    code, _, err = run(
        capsys, "verify", "--key", doc["public_key"], "--type", "t/x", str(tmp_path / "e.json")
    )
    assert code == 0, err
    code, _, err = run(
        capsys, "keys", "generate", "ed25519", "--tpm", tpm, "-o", str(tmp_path / "x.tpmkey")
    )
    assert code == 9 and "TPM keys" in err

"""``bastion keys``: make the product key set, generate single keys, show key ids.

``keys init DIR`` creates every key a product needs (see
:mod:`bastion.trust.keyset`), prints what it made and which files must be moved to
offline storage, and refuses to touch an existing set. Passphrases come from an
environment variable (``--passphrase-env``), never from argv.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.cli._common import (
    TPM_HELP,
    add_json_flag,
    add_passphrase_flag,
    emit,
    passphrase_source,
)
from bastion.errors import ConfigError, ConflictError
from bastion.formats.efivars import EfiTime
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import KEY_FILE_MAX_SIZE
from bastion.trust.keys import (
    KeyAlgorithm,
    create_tpm_key,
    generate_private_key,
    load_private_key_pem,
    load_public_key,
    private_key_to_pem,
    public_key_to_pem,
)
from bastion.trust.keyset import KeySet, create_keyset
from bastion.trust.secureboot import Enrolment, write_enrolment
from bastion.trust.signer import describe_key, key_id


def _passphrase(env: str | None) -> bytes | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"--passphrase-env {env}: the variable is not set or empty")
    return value.encode()


def _summary(ks: KeySet) -> dict[str, Any]:
    return {
        "folder": str(ks.folder),
        "product": ks.product,
        "platform_root_hash": ks.platform_root_hash().hex(),
        "keys": [e.to_json() for e in ks.entries],
        "keep_offline": ks.offline_files(),
        "statements": ks.statements,
    }


def _text(ks: KeySet, verb: str) -> str:
    lines = [f"{verb} key set for {ks.product!r} in {ks.folder}:"]
    lines.append(f"  {'name':<14} {'algorithm':<11} {'lives':<8} key id")
    for e in ks.entries:
        cert = f"  + {e.certificate}" if e.certificate else ""
        lines.append(f"  {e.name:<14} {e.algorithm:<11} {e.location:<8} {e.key_id[:16]}...{cert}")
    if any(e.role.startswith("secureboot-") for e in ks.entries):
        lines.append(
            "Secure Boot: secureboot-pk and secureboot-kek are OFFLINE keys (they only sign "
            "firmware key updates); secureboot-db is the online key that signs boot artefacts"
        )
    lines.append(f"platform root hash (fuse this into devices): {ks.platform_root_hash().hex()}")
    lines.append(
        "KEEP OFFLINE (move to offline storage, then delete here): "
        + ", ".join(str(ks.folder / f) for f in ks.offline_files())
    )
    if ks.statements:
        lines.append(
            "signed by the platform root for builds and devices (so they never need it): "
            + ", ".join(ks.statements.values())
        )
    return "\n".join(lines)


def _init(args: argparse.Namespace) -> int:
    secret = _passphrase(args.passphrase_env)
    ks = create_keyset(args.dir, product=args.product, passphrase=secret)
    source = (lambda: secret) if secret is not None else None
    enrolment = _write_secureboot(args.dir, source, os.path.join(args.dir, "secureboot"), None, [])
    summary = _summary(ks)
    summary["secureboot"] = _secureboot_summary(enrolment, os.path.join(args.dir, "secureboot"))
    emit(args, _text(ks, "created") + "\n" + _secureboot_text(enrolment, summary), summary)
    return 0


def _write_secureboot(
    folder: str,
    passphrase: Callable[[], bytes] | None,
    out: str,
    when: str | None,
    dbx: list[str],
) -> Enrolment:
    import datetime as dt

    keyset = KeySet.load(folder, passphrase=passphrase)
    try:
        moment = dt.datetime.fromisoformat(when) if when else dt.datetime.now(dt.UTC)
        hashes = [bytes.fromhex(h) for h in dbx]
    except ValueError as exc:
        raise ConfigError(f"bad --timestamp or --dbx-hash: {exc}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return write_enrolment(keyset, out, EfiTime.from_datetime(moment), dbx_hashes=hashes)


def _secureboot_summary(enrolment: Enrolment, out: str) -> dict[str, Any]:
    return {
        "folder": out,
        "owner_guid": str(enrolment.owner),
        "timestamp": str(enrolment.timestamp),
        "files": sorted(enrolment.files),
    }


def _secureboot_text(enrolment: Enrolment, summary: dict[str, Any]) -> str:
    info = summary["secureboot"]
    return (
        f"Secure Boot enrolment files in {info['folder']} (owner GUID {info['owner_guid']}, "
        f"timestamp {info['timestamp']}): {' '.join(info['files'])}"
    )


def _secureboot(args: argparse.Namespace) -> int:
    source = passphrase_source(args, f"the Secure Boot PK and KEK keys in {args.dir}")
    enrolment = _write_secureboot(args.dir, source, args.output, args.timestamp, args.dbx_hash)
    summary = {"secureboot": _secureboot_summary(enrolment, args.output)}
    text = _secureboot_text(enrolment, summary)
    if args.ovmf_vars:
        from bastion.build.ovmf import DEBIAN_OVMF_VARS, enrol_from_keyset

        keyset = KeySet.load(args.dir)  # public certificates only
        out = os.path.join(args.output, "OVMF_VARS_4M.secboot.fd")
        store = enrol_from_keyset(
            keyset,
            out,
            timestamp=enrolment.timestamp.to_datetime(),
            template=args.ovmf_template or DEBIAN_OVMF_VARS,
        )
        summary["secureboot"]["ovmf_vars"] = out
        text += f"\nOVMF variable store with PK/KEK/db enrolled, Secure Boot on: {out}"
        if not store.secure_boot_enable:  # pragma: no cover - enrol_ovmf_vars sets it
            raise ConfigError(f"{out}: SecureBootEnable is not set")
    emit(args, text, summary)
    return 0


def _show(args: argparse.Namespace) -> int:
    ks = KeySet.load(args.dir)
    emit(args, _text(ks, "loaded"), _summary(ks))
    return 0


def _generate(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists():
        raise ConflictError(f"{out} exists: refusing to overwrite a key")
    stem = out.name
    for suffix in (".pem", ".tpmkey", ".key"):
        stem = stem.removesuffix(suffix)
    pub = out.with_name(stem + ".pub.pem")
    if args.tpm is not None:
        from bastion.tpm.uri import open_tpm

        tpm = open_tpm(args.tpm)
        try:
            public = create_tpm_key(tpm, args.algorithm, out).public_key()
        finally:
            tpm.close()
        uri = f"tpm:{args.tpm}#{out}"
    else:
        key = generate_private_key(KeyAlgorithm(args.algorithm))
        atomic_write(out, private_key_to_pem(key, _passphrase(args.passphrase_env)), 0o600)
        public = key.public_key()
        uri = f"file:{out}"
    atomic_write(pub, public_key_to_pem(public), 0o644)
    kid = key_id(public)
    emit(
        args,
        f"wrote {out} and {pub}\nkey id {kid}\nkey URI {uri}",
        {
            "private_key": str(out),
            "public_key": str(pub),
            "key_id": kid,
            "algorithm": args.algorithm,
            "uri": uri,
        },
    )
    return 0


def _id(args: argparse.Namespace) -> int:
    data = read_bounded(args.file, KEY_FILE_MAX_SIZE, "key file")
    if b"PRIVATE KEY" in data:
        source = passphrase_source(args, args.file) if b"ENCRYPTED" in data else None
        public = load_private_key_pem(
            data, source() if source else None, what=args.file
        ).public_key()
    else:
        public = load_public_key(data, what=args.file)
    kid = key_id(public)
    emit(args, kid, {"key_id": kid, "algorithm": describe_key(public)})
    return 0


def register(subparsers: Any) -> None:
    """Add the ``keys`` group."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "keys", help="make and inspect signing keys"
    )
    sub = parser.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)

    p = sub.add_parser("init", help="create the whole key set of a product in DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--product", default="bastion", help="product name used in certificate subjects")
    p.add_argument("--passphrase-env", metavar="VAR", help="encrypt private keys with $VAR")
    add_json_flag(p)
    p.set_defaults(func=_init)

    p = sub.add_parser(
        "secureboot",
        help="write PK/KEK/db (.esl .auth .cer) enrolment files from a key set "
        "(needs the offline PK and KEK keys)",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for the files")
    p.add_argument(
        "--timestamp", metavar="ISO8601", help="EFI_TIME of the updates (default: now, UTC)"
    )
    p.add_argument(
        "--dbx-hash",
        action="append",
        default=[],
        metavar="HEX",
        help="SHA-256 to forbid in dbx (writes dbx.esl and dbx.auth); repeatable",
    )
    p.add_argument(
        "--ovmf-vars",
        action="store_true",
        help="also write OUT/OVMF_VARS_4M.secboot.fd: OVMF's empty store with the keys enrolled",
    )
    p.add_argument(
        "--ovmf-template",
        metavar="FILE",
        help="the empty OVMF store to copy (default /usr/share/OVMF/OVMF_VARS_4M.fd)",
    )
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_secureboot)

    p = sub.add_parser("show", help="list a key set and check it")
    p.add_argument("dir", metavar="DIR")
    add_json_flag(p)
    p.set_defaults(func=_show)

    p = sub.add_parser(
        "generate", help="generate one private key (PEM PKCS#8, 0600) or a TPM key (--tpm)"
    )
    p.add_argument("algorithm", choices=[a.value for a in KeyAlgorithm])
    p.add_argument("-o", "--output", required=True, metavar="KEY.pem|KEY.tpmkey")
    p.add_argument(
        "--tpm", metavar="URI", help="create a non-exportable key in this TPM (" + TPM_HELP + ")"
    )
    p.add_argument("--passphrase-env", metavar="VAR", help="encrypt the key with $VAR")
    add_json_flag(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser("id", help="print the key id (sha256 of the SPKI) of a key or certificate")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--passphrase-env", metavar="VAR", help="passphrase of an encrypted key")
    add_json_flag(p)
    p.set_defaults(func=_id)

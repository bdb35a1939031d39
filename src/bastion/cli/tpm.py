"""``bastion tpm``: read and extend PCRs, quote, verify a quote, power-cycle the software TPM.

Every subcommand takes ``--tpm URI`` (software:PATH, swtpm:host=H,port=P,
device:/dev/tpmrm0; default: the software TPM in the default state folder).

``bastion tpm quote --nonce HEX --pcrs sha256:0,1,7 --out DIR`` writes the files
``tpm2_checkquote -u ak.pem -m quote.msg -s quote.sig -f pcrs.bin -g sha256 -q HEX``
reads: ``quote.msg`` (TPMS_ATTEST), ``quote.sig`` (TPMT_SIGNATURE), ``ak.pem``
(SubjectPublicKeyInfo), ``ak.pub`` (TPM2B_PUBLIC) and ``pcrs.bin`` (the PCR values in
``tpm2_quote -o`` form). The AK is created once and kept (public and TPM-wrapped
private part, useless on any other TPM) in an AK file: next to the software TPM's
state file, or in the bastion state folder named after the TPM URI, or ``--ak-file``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.cli._common import add_json_flag, add_tpm_flag, emit
from bastion.errors import ConfigError, FormatError, NotFoundError
from bastion.formats import strict_json
from bastion.formats.tpm2 import PcrsFile, object_name, parse_tpm2b
from bastion.io.files import atomic_write, read_bounded
from bastion.tpm.base import PCR_COUNT, HashAlg, PcrSelection, Tpm, TpmKey
from bastion.tpm.uri import TpmKind, bastion_state_dir, open_tpm, parse_tpm_uri

ALL_PCRS = "sha256:" + ",".join(str(i) for i in range(PCR_COUNT))
AK_FILE_FORMAT = "bastion-tpmkey/1"
_HEX_RE = re.compile(r"^(?:[0-9a-fA-F]{2})*$")


def parse_hex(text: str, what: str, *, max_size: int | None = None) -> bytes:
    """Hex text to bytes; ConfigError naming ``what`` on anything else."""
    value = text.strip().removeprefix("0x")
    if not _HEX_RE.match(value):
        raise ConfigError(f"{what} {text!r} is not hex (expected an even number of 0-9a-f)")
    data = bytes.fromhex(value)
    if max_size is not None and len(data) > max_size:
        raise ConfigError(f"{what} is {len(data)} bytes, at most {max_size}")
    return data


# --- the AK file -----------------------------------------------------------------------------


def default_ak_file(tpm_uri: str | None) -> Path:
    """Where the AK of the TPM named by ``tpm_uri`` is kept by default."""
    uri = parse_tpm_uri(tpm_uri)
    if uri.kind is TpmKind.SOFTWARE:
        assert uri.path is not None
        return uri.path.with_name(uri.path.name + ".ak.json")
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", str(uri)).strip("-")
    return bastion_state_dir() / f"ak-{slug}.json"


def save_key(path: Path, key: TpmKey) -> None:
    """Write a TPM-wrapped key as JSON (public and private are the TPM's TPM2B bytes)."""
    doc = {"format": AK_FILE_FORMAT, "public": key.public.hex(), "private": key.private.hex()}
    atomic_write(path, json.dumps(doc, indent=2).encode() + b"\n", mode=0o600)


def load_key(path: Path) -> TpmKey:
    """Read a key file written by :func:`save_key` (FormatError on anything else)."""
    what = f"TPM key file {str(path)!r}"
    data = read_bounded(path, limits.KEY_FILE_MAX_SIZE, what)
    try:
        doc = strict_json.loads_object(data, what=what)
        if doc.get("format") != AK_FILE_FORMAT:
            raise FormatError(f"{what}: format is {doc.get('format')!r}, expected {AK_FILE_FORMAT}")
        public, private = bytes.fromhex(doc["public"]), bytes.fromhex(doc["private"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"{what} is not a bastion TPM key file: {exc}") from exc
    parse_tpm2b(public, "TPM2B_PUBLIC")
    parse_tpm2b(private, "TPM2B_PRIVATE")
    return TpmKey(public=public, private=private, name=object_name(public))


def ensure_ak(tpm: Tpm, path: Path) -> TpmKey:
    """The AK kept at ``path``, created (and saved) on first use."""
    try:
        return load_key(path)
    except NotFoundError:
        pass
    ak = tpm.create_ak()
    save_key(path, ak)
    return ak


# --- handlers ----------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Tpm:
    return open_tpm(args.tpm)


def cmd_pcrs(args: argparse.Namespace) -> int:
    selection = PcrSelection.parse(args.pcrs)
    tpm = _open(args)
    try:
        values = tpm.pcr_read(selection)
    finally:
        tpm.close()
    text = "\n".join(f"{selection.bank}:{i:<2} {values[i].hex()}" for i in sorted(values))
    emit(
        args,
        text,
        {"bank": str(selection.bank), "pcrs": {str(i): v.hex() for i, v in values.items()}},
    )
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    bank = HashAlg(args.bank)
    if (args.data is None) == (args.digest is None):
        raise ConfigError("give exactly one of --data TEXT or --digest HEX")
    if args.data is not None:
        digest = hashlib.new(bank.value, args.data.encode()).digest()
    else:
        digest = parse_hex(args.digest, "--digest")
        if len(digest) != bank.digest_size:
            raise ConfigError(
                f"--digest is {len(digest)} bytes, a {bank} digest is {bank.digest_size}"
            )
    selection = PcrSelection(bank, (args.pcr,))
    tpm = _open(args)
    try:
        tpm.pcr_extend(args.pcr, {bank: digest})
        value = tpm.pcr_read(selection)[args.pcr]
    finally:
        tpm.close()
    emit(
        args,
        f"{bank}:{args.pcr} {value.hex()}",
        {"bank": str(bank), "pcr": args.pcr, "digest": digest.hex(), "value": value.hex()},
    )
    return 0


def cmd_quote(args: argparse.Namespace) -> int:
    from bastion.tpm.quote import public_pem

    nonce = parse_hex(args.nonce, "--nonce", max_size=limits.TPM_MAX_NONCE_SIZE)
    selection = PcrSelection.parse(args.pcrs)
    ak_file = Path(args.ak_file) if args.ak_file else default_ak_file(args.tpm)
    out = Path(args.out)
    tpm = _open(args)
    try:
        ak = ensure_ak(tpm, ak_file)
        quote = tpm.quote(ak, nonce, selection)
        values = tpm.pcr_read(selection)
    finally:
        tpm.close()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "quote.msg", quote.attest)
    atomic_write(out / "quote.sig", quote.signature)
    atomic_write(out / "ak.pem", public_pem(ak.public))
    atomic_write(out / "ak.pub", ak.public)
    atomic_write(out / "pcrs.bin", PcrsFile.from_values(selection.bank.alg_id, values).to_bytes())
    files = ["quote.msg", "quote.sig", "ak.pem", "ak.pub", "pcrs.bin"]
    emit(
        args,
        f"quote over {selection} written to {out} ({', '.join(files)}); AK {ak_file}",
        {
            "out": str(out),
            "files": files,
            "ak_file": str(ak_file),
            "ak_name": ak.name.hex(),
            "nonce": nonce.hex(),
            "selection": str(selection),
            "pcrs": {str(i): v.hex() for i, v in values.items()},
        },
    )
    return 0


def cmd_verify_quote(args: argparse.Namespace) -> int:
    from bastion.tpm.quote import verify_quote

    nonce = parse_hex(args.nonce, "--nonce", max_size=limits.TPM_MAX_NONCE_SIZE)
    ak = read_bounded(args.ak, limits.KEY_FILE_MAX_SIZE, "AK public key")
    attest = read_bounded(args.msg, limits.TPM2B_MAX_SIZE, "quote message")
    signature = read_bounded(args.sig, limits.TPM2B_MAX_SIZE, "quote signature")
    pcrs = PcrsFile.parse(read_bounded(args.pcrs_file, 64 * limits.KiB, "PCR file"))
    banks = pcrs.bank_values()
    if len(banks) != 1:
        raise FormatError(f"PCR file {args.pcrs_file} covers {len(banks)} banks, expected 1")
    ((alg, values),) = banks.items()
    selection = PcrSelection(_bank(alg), tuple(sorted(values)))
    if args.pcrs is not None and PcrSelection.parse(args.pcrs) != selection:
        raise ConfigError(f"PCR file covers {selection}, expected {args.pcrs}")
    parsed = verify_quote(attest, signature, ak, nonce, selection, values)
    result: dict[str, Any] = {
        "ok": True,
        "selection": str(selection),
        "nonce": nonce.hex(),
        "clock": parsed.clock_info.clock,
        "reset_count": parsed.clock_info.reset_count,
        "restart_count": parsed.clock_info.restart_count,
        "pcrs": {str(i): v.hex() for i, v in values.items()},
    }
    emit(args, f"quote verified: {selection}, nonce {nonce.hex()}", result)
    return 0


def _bank(alg: int) -> HashAlg:
    for bank in HashAlg:
        if bank.alg_id == alg:
            return bank
    raise FormatError(f"PCR bank 0x{alg:04x} is not one bastion knows")


def cmd_reset(args: argparse.Namespace) -> int:
    uri = parse_tpm_uri(args.tpm)
    if uri.kind is not TpmKind.SOFTWARE:
        raise ConfigError(
            f"TPM {uri}: only the software TPM can be power-cycled by bastion "
            "(restart swtpm, or reboot the device)"
        )
    tpm = _open(args)
    try:
        tpm.power_cycle()  # type: ignore[attr-defined]
    finally:
        tpm.close()
    emit(args, f"software TPM {uri.path} power-cycled: PCRs reset, NV kept", {"reset": str(uri)})
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tpm`` command group."""
    group = subparsers.add_parser("tpm", help="TPM: PCRs, quotes, attestation keys")
    sub = group.add_subparsers(dest="tpm_command", metavar="SUBCOMMAND")
    group.set_defaults(func=lambda _args: _usage(group))

    p = sub.add_parser("pcrs", help="read PCR values")
    p.add_argument("--pcrs", default=ALL_PCRS, help="selection, e.g. sha256:0,1,7 (default: all)")
    add_tpm_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_pcrs)

    p = sub.add_parser("extend", help="extend a PCR with a digest or the hash of some text")
    p.add_argument("pcr", type=_pcr_index, help="PCR index 0..23")
    p.add_argument("--data", help="text whose hash is extended")
    p.add_argument("--digest", help="digest to extend (hex)")
    p.add_argument("--bank", default="sha256", choices=[b.value for b in HashAlg])
    add_tpm_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_extend)

    p = sub.add_parser("quote", help="quote PCRs into files tpm2_checkquote accepts")
    p.add_argument("--nonce", required=True, help="qualifying data (hex)")
    p.add_argument("--pcrs", required=True, help="selection, e.g. sha256:0,1,7")
    p.add_argument("--out", required=True, help="folder for quote.msg, quote.sig, ak.pem, pcrs.bin")
    p.add_argument("--ak-file", help="where the AK is kept (default: next to the TPM state)")
    add_tpm_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_quote)

    p = sub.add_parser("verify-quote", help="verify a quote (no TPM needed)")
    p.add_argument("--ak", required=True, help="AK public key: PEM or TPM2B_PUBLIC file")
    p.add_argument("--msg", required=True, help="quote.msg (TPMS_ATTEST)")
    p.add_argument("--sig", required=True, help="quote.sig (TPMT_SIGNATURE)")
    p.add_argument("--pcrs-file", required=True, help="pcrs.bin (tpm2_quote -o form)")
    p.add_argument("--nonce", required=True, help="the nonce the quote must carry (hex)")
    p.add_argument("--pcrs", help="require exactly this selection, e.g. sha256:0,1,7")
    add_json_flag(p)
    p.set_defaults(func=cmd_verify_quote)

    p = sub.add_parser("reset", help="power-cycle the software TPM (PCRs reset, NV kept)")
    add_tpm_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_reset)


def _pcr_index(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < PCR_COUNT:
        raise argparse.ArgumentTypeError(f"PCR index {text!r}: expected 0..{PCR_COUNT - 1}")
    return int(text)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2

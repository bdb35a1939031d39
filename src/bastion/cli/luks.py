"""``bastion luks``: LUKS2 volumes with cryptsetup's flag names.

``format``, ``dump`` (``--dump-volume-key``), ``open-test``, ``add-key`` (also
``--recovery-key``), ``remove-key``, ``repair``, ``token-import``/``token-export``, and
``enroll-tpm`` (a ``systemd-tpm2`` token sealed through ``--tpm``; with ``--public-key``
to a signed PCR policy, which ``open-test --token-only --signature`` unlocks). DEVICE is a file or a
block device; ``--offset``/``--size`` select a byte range inside a disk image.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bastion import limits
from bastion.cli._common import add_json_flag, add_tpm_flag, emit
from bastion.errors import AuthError, ConfigError, FormatError
from bastion.formats import strict_json
from bastion.formats.luks2 import AnyKdf, KdfType
from bastion.formats.signatures import PROBE_SIZE
from bastion.formats.signatures import probe as probe_signatures
from bastion.io.files import read_bounded
from bastion.storage.luks2_volume import (
    DEFAULT_ITER_TIME_MS,
    DEFAULT_METADATA_SIZE,
    FileRange,
    KdfSpec,
    Luks2Volume,
    existing_content,
    read_header,
)
from bastion.storage.recovery import enroll_recovery_key, unlock_recovery_key
from bastion.tpm.uri import open_tpm


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return int(t[:-1]) * units[t[-1]]
        return int(t)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 16384, 64k, 1m)") from exc


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", metavar="DEVICE", help="file or block device")
    p.add_argument("--offset", type=_size, default=0, help="byte offset of the volume in DEVICE")
    p.add_argument("--size", type=_size, default=None, help="byte size of the volume in DEVICE")
    add_json_flag(p)


def _batch_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-q",
        "--batch-mode",
        action="store_true",
        help="do not ask before overwriting a LUKS header, filesystem or other signature",
    )


def _kdf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pbkdf", choices=[k.value for k in KdfType], default="argon2id")
    p.add_argument("--pbkdf-force-iterations", type=int, default=None, metavar="N")
    p.add_argument("--pbkdf-memory", type=int, default=None, metavar="KIB")
    p.add_argument("--pbkdf-parallel", type=int, default=None, metavar="N")
    p.add_argument("--iter-time", type=int, default=DEFAULT_ITER_TIME_MS, metavar="MS")
    p.add_argument("--hash", default="sha256", help="PBKDF2 hash")


def _kdf(args: argparse.Namespace) -> KdfSpec:
    if args.pbkdf_memory is not None and not 32 <= args.pbkdf_memory <= (
        limits.LUKS2_MAX_ARGON2_MEMORY_KIB
    ):
        raise ConfigError(f"--pbkdf-memory {args.pbkdf_memory}: expected 32..4194304 KiB")
    if args.pbkdf_parallel is not None and not 1 <= args.pbkdf_parallel <= 4:
        raise ConfigError(f"--pbkdf-parallel {args.pbkdf_parallel}: expected 1..4")
    if args.pbkdf_force_iterations is not None:
        low = 1000 if args.pbkdf == "pbkdf2" else 4
        if args.pbkdf_force_iterations < low:
            raise ConfigError(
                f"--pbkdf-force-iterations {args.pbkdf_force_iterations}: minimum is {low}"
            )
    return KdfSpec(
        KdfType(args.pbkdf),
        iterations=args.pbkdf_force_iterations,
        memory_kib=args.pbkdf_memory,
        cpus=args.pbkdf_parallel,
        hash=args.hash,
        iter_time_ms=args.iter_time,
    )


def _read_key(path: str, what: str = "key file") -> bytes:
    return read_bounded(path, limits.KEY_FILE_MAX_SIZE, what)


def _storage(args: argparse.Namespace, *, writable: bool = True) -> FileRange:
    return FileRange(args.device, offset=args.offset, size=args.size, writable=writable)


def _open(args: argparse.Namespace, *, writable: bool = False) -> Luks2Volume:
    return Luks2Volume.open(_storage(args, writable=writable))


def _unlock(vol: Luks2Volume, args: argparse.Namespace) -> int:
    if getattr(args, "recovery_key_file", None):
        text = _read_key(args.recovery_key_file, "recovery key file").decode("ascii", "replace")
        return unlock_recovery_key(vol, text)
    if not getattr(args, "key_file", None):
        raise ConfigError("--key-file is required to unlock the volume")
    try:
        return vol.unlock_passphrase(_read_key(args.key_file), keyslot=args.key_slot)
    except AuthError as exc:  # name the volume and the key file
        raise AuthError(f"{args.device}: {exc} (key file {args.key_file})") from exc


def _kdf_json(kdf: AnyKdf) -> dict[str, Any]:
    out = kdf.to_json()
    out.pop("salt", None)
    return out


def _describe(vol: Luks2Volume) -> dict[str, Any]:
    m = vol.metadata
    seg_id = min(m.segments)
    seg = m.segments[seg_id]
    data_size: int | None = None
    problem: str | None = None
    try:
        data_size = vol.data_size
    except FormatError as exc:
        problem = str(exc)
    bound = {k for dg in m.digests.values() if seg_id in dg.segments for k in dg.keyslots}
    return {
        "uuid": vol.uuid,
        "label": vol.label,
        "subsystem": vol.subsystem,
        "epoch": vol.seqid,
        "metadata_size": vol.header_size,
        "keyslots_size": m.config.keyslots_size,
        "header": vol.header_status,
        "segment": {
            "offset": seg.offset,
            "size": "dynamic" if seg.size is None else seg.size,
            "cipher": seg.encryption,
            "sector_size": seg.sector_size,
            "iv_tweak": seg.iv_tweak,
            "data_size": data_size,
            "type": seg.type,
            "unsupported": problem,
        },
        "keyslots": {
            str(n): {
                "key_bits": ks.key_size * 8,
                "priority": ks.priority,
                "kdf": _kdf_json(ks.kdf),
                "area_offset": ks.area_offset,
                "area_size": ks.area_size,
                "bound": n in bound,
                "unusable": ks.unusable,
            }
            for n, ks in sorted(m.keyslots.items())
        },
        "tokens": {str(n): t.to_json() for n, t in sorted(m.tokens.items())},
    }


def _text(desc: dict[str, Any]) -> str:
    lines = [
        f"UUID:          {desc['uuid']}",
        f"Label:         {desc['label'] or '(no label)'}",
        f"Epoch:         {desc['epoch']}",
        f"Metadata area: {desc['metadata_size']} [bytes]",
        f"Keyslots area: {desc['keyslots_size']} [bytes]",
        f"Header:        {desc['header']}",
        "Data segment:",
        f"  offset {desc['segment']['offset']}, {desc['segment']['cipher']}, "
        f"sector {desc['segment']['sector_size']}, {desc['segment']['data_size']} bytes",
        "Keyslots:",
    ]
    if desc["segment"]["unsupported"]:
        lines.append(f"  not usable by bastion: {desc['segment']['unsupported']}")
    for n, ks in desc["keyslots"].items():
        note = "" if ks["bound"] else " (unbound)"
        note += f" (unusable: {ks['unusable']})" if ks["unusable"] else ""
        kdf = json.dumps(ks["kdf"], sort_keys=True)
        lines.append(f"  {n}: {ks['key_bits']} bits, {kdf}{note}")
    lines.append("Tokens:")
    for n, tk in desc["tokens"].items():
        lines.append(f"  {n}: {tk['type']} (keyslots {', '.join(tk['keyslots']) or '-'})")
    if "volume_key" in desc:
        lines.append(f"Volume key:    {desc['volume_key']}")
    return "\n".join(lines)


# --- handlers -------------------------------------------------------------------------------


def _confirm(args: argparse.Namespace, found: tuple[str, ...], action: str) -> None:
    """cryptsetup's YES dialog before writing over ``found`` (skipped by --batch-mode)."""
    if not found or args.batch_mode:
        return
    what = f"{args.device} contains {', '.join(found)}"
    if not sys.stdin.isatty():
        raise ConfigError(
            f"{what}; {action} would overwrite it and there is no terminal to confirm: "
            "pass --batch-mode to overwrite"
        )
    sys.stderr.write(
        f"WARNING: {what}.\nThis will overwrite data on {args.device} irrevocably.\n"
        "Are you sure? (Type 'yes' in capital letters): "
    )
    sys.stderr.flush()
    if sys.stdin.readline().strip() != "YES":
        raise ConfigError(f"{action} of {args.device} aborted: the answer was not YES")


def _format(args: argparse.Namespace) -> int:
    passphrase = _read_key(args.key_file)
    vk = _read_key(args.volume_key_file, "volume key file") if args.volume_key_file else None
    storage = _storage(args)
    _confirm(args, existing_content(storage), "format")
    vol = Luks2Volume.format(
        storage,
        passphrase,
        kdf=_kdf(args),
        sector_size=args.sector_size,
        metadata_size=args.luks2_metadata_size,
        keyslots_size=args.luks2_keyslots_size,
        data_offset=args.data_offset,
        volume_key=vk,
        key_size=args.key_size // 8,
        label=args.label,
        subsystem=args.subsystem,
        uuid=args.uuid,
    )
    emit(args, f"formatted {args.device}: LUKS2 {vol.uuid}", _describe(vol))
    return 0


def _dump(args: argparse.Namespace) -> int:
    vol = _open(args)
    desc = _describe(vol)
    if args.dump_volume_key:
        _unlock(vol, args)
        desc["volume_key"] = vol.volume_key.hex()
    emit(args, _text(desc), desc)
    return 0


def _open_test(args: argparse.Namespace) -> int:
    vol = _open(args)
    if args.token_only:
        from bastion.storage.sealed import unlock_with_token

        signature = _read_signature(args)
        tpm = open_tpm(args.tpm)
        try:
            slot = unlock_with_token(vol, tpm, token_id=args.token_id, pcr_signature=signature)
        finally:
            tpm.close()
    else:
        slot = _unlock(vol, args)
    emit(args, f"keyslot {slot} opened {args.device}", {"keyslot": slot, "ok": True})
    return 0


def _add_key(args: argparse.Namespace) -> int:
    vol = _open(args, writable=True)
    _unlock(vol, args)
    if args.recovery_key:
        enrolled = enroll_recovery_key(vol)
        emit(
            args,
            f"recovery key (keyslot {enrolled.keyslot}); write it down now:\n{enrolled.key}",
            {"keyslot": enrolled.keyslot, "token": enrolled.token, "recovery_key": enrolled.key},
        )
        return 0
    if not args.new_key_file:
        raise ConfigError("add-key needs NEW_KEY_FILE or --recovery-key")
    slot = vol.add_keyslot(
        _read_key(args.new_key_file, "new key file"), kdf=_kdf(args), keyslot=args.new_key_slot
    )
    emit(args, f"added keyslot {slot}", {"keyslot": slot})
    return 0


def _remove_key(args: argparse.Namespace) -> int:
    vol = _open(args, writable=True)
    opened = _unlock(vol, args)
    target = args.kill_slot if args.kill_slot is not None else opened
    vol.remove_keyslot(target, allow_last=args.allow_last)
    emit(args, f"removed keyslot {target}", {"keyslot": target})
    return 0


def _repair(args: argparse.Namespace) -> int:
    storage = _storage(args)
    foreign = probe_signatures(storage.read(0, min(PROBE_SIZE, storage.size)))
    vol = Luks2Volume(storage, read_header(storage, repair=True))
    if vol.stale_copy is not None:
        _confirm(args, foreign, "repair")
    before = vol.header_status
    stale = vol.stale_copy
    if stale is not None:
        vol.repair()
    emit(
        args,
        f"{args.device}: {before}" + (f"; rewrote the {stale} copy" if stale else ""),
        {"status": before, "repaired": None if stale is None else stale.value},
    )
    return 0


def _token_import(args: argparse.Namespace) -> int:
    vol = _open(args, writable=True)
    raw = read_bounded(args.json_file, limits.JSON_MAX_SIZE, "token JSON file")
    token = strict_json.loads(raw, what=f"token JSON file {args.json_file!r}")
    n = vol.add_token(token, token_id=args.token_id)
    emit(args, f"imported token {n}", {"token": n})
    return 0


def _token_export(args: argparse.Namespace) -> int:
    vol = _open(args)
    if args.token_id not in vol.tokens:
        from bastion.errors import NotFoundError

        raise NotFoundError(f"token {args.token_id} does not exist in {args.device}")
    data = vol.tokens[args.token_id].to_json()
    emit(args, json.dumps(data, separators=(",", ":")), data)
    return 0


def _read_signature(args: argparse.Namespace) -> bytes | None:
    path = getattr(args, "signature", None)
    return read_bounded(path, limits.PCRSIG_MAX_SIZE, "PCR signature") if path else None


def _enroll_tpm(args: argparse.Namespace) -> int:
    from bastion.storage.sealed import (
        SIGNED_LITERAL_PCRS,
        enroll_tpm,
        enroll_tpm_signed,
        parse_pcr_list,
    )

    vol = _open(args, writable=True)
    _unlock(vol, args)
    signature = _read_signature(args)
    if signature is not None and not args.public_key:
        raise ConfigError("--signature checks a signed-policy enrolment: give --public-key too")
    tpm = open_tpm(args.tpm)
    try:
        if args.public_key:
            literal = (
                SIGNED_LITERAL_PCRS
                if args.tpm2_pcrs is None
                else parse_pcr_list(args.tpm2_pcrs, allow_empty=True)
            )
            if args.tpm2_pcr_bank != "sha256":
                raise ConfigError("signed PCR policies use the sha256 bank")
            result = enroll_tpm_signed(
                vol,
                tpm,
                read_bounded(args.public_key, limits.TPM2_PUBKEY_MAX_SIZE, "PCR public key"),
                pubkey_pcrs=parse_pcr_list(args.public_key_pcrs),
                pcrs=literal,
                pcr_signature=signature,
            )
        else:
            pcrs = parse_pcr_list(args.tpm2_pcrs if args.tpm2_pcrs is not None else "7+15")
            result = enroll_tpm(vol, tpm, pcrs=pcrs, bank=args.tpm2_pcr_bank)
    finally:
        tpm.close()
    signed = f", signed PCRs {'+'.join(map(str, result.pubkey_pcrs))}" if result.pubkey_pcrs else ""
    emit(
        args,
        f"TPM2 token {result.token} enrolled as keyslot {result.keyslot} "
        f"(PCRs {'+'.join(str(p) for p in result.pcrs) or 'none'}{signed})",
        {
            "keyslot": result.keyslot,
            "token": result.token,
            "pcrs": list(result.pcrs),
            "pcr_bank": result.bank.value,
            "policy_hash": result.policy_hash.hex(),
            "pubkey_pcrs": list(result.pubkey_pcrs),
        },
    )
    return 0


def _lock(args: argparse.Namespace) -> int:
    from bastion.storage.sealed import lock, lock_volume

    vol = Luks2Volume.open(_storage(args, writable=False)) if args.device else None
    uuid = vol.uuid if vol is not None else ""
    tpm = open_tpm(args.tpm)
    try:
        if vol is not None:
            lock_volume(vol, tpm, pcr=args.pcr)
        else:
            lock(tpm, pcr=args.pcr)
    finally:
        tpm.close()
    emit(
        args,
        f"extended PCR {args.pcr}: TPM tokens bound to it stay sealed until reboot",
        {"pcr": args.pcr, "volume_uuid": uuid},
    )
    return 0


# --- registration ---------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add the ``luks`` command group."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "luks", help="LUKS2 volumes (cryptsetup-compatible)"
    )
    sub = parser.add_subparsers(dest="luks_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)

    p = sub.add_parser("format", help="create a LUKS2 volume (cryptsetup luksFormat)")
    _device_args(p)
    _kdf_args(p)
    p.add_argument("--key-file", required=True, help="passphrase file for keyslot 0")
    p.add_argument("--sector-size", type=int, default=4096, choices=[512, 1024, 2048, 4096])
    p.add_argument("--luks2-metadata-size", type=_size, default=DEFAULT_METADATA_SIZE)
    p.add_argument("--luks2-keyslots-size", type=_size, default=None)
    p.add_argument("--data-offset", type=_size, default=None, help="bytes (cryptsetup: sectors)")
    p.add_argument("--key-size", type=int, default=512, choices=[256, 512], help="bits")
    p.add_argument("--volume-key-file", default=None, help="use this volume key (tests only)")
    p.add_argument("--label", default="")
    p.add_argument("--subsystem", default="")
    p.add_argument("--uuid", default=None)
    _batch_flag(p)
    p.set_defaults(func=_format)

    p = sub.add_parser("dump", help="show the header (cryptsetup luksDump)")
    _device_args(p)
    p.add_argument("--dump-volume-key", action="store_true", help="also print the volume key")
    p.add_argument("--key-file", default=None)
    p.add_argument("--recovery-key-file", default=None)
    p.add_argument("--key-slot", type=int, default=None)
    p.set_defaults(func=_dump)

    p = sub.add_parser("open-test", help="check a passphrase or token (open --test-passphrase)")
    _device_args(p)
    add_tpm_flag(p)
    p.add_argument("--key-file", default=None)
    p.add_argument("--recovery-key-file", default=None)
    p.add_argument("--key-slot", type=int, default=None)
    p.add_argument("--token-only", action="store_true", help="unlock through a systemd-tpm2 token")
    p.add_argument("--token-id", type=int, default=None)
    p.add_argument(
        "--signature",
        "--tpm2-signature",
        default=None,
        metavar="FILE",
        help="the .pcrsig (tpm2-pcr-signature.json) for a signed-policy token",
    )
    p.set_defaults(func=_open_test)

    p = sub.add_parser("add-key", help="add a keyslot (cryptsetup luksAddKey)")
    _device_args(p)
    _kdf_args(p)
    p.add_argument("new_key_file", metavar="NEW_KEY_FILE", nargs="?", default=None)
    p.add_argument("--key-file", default=None, help="an existing passphrase")
    p.add_argument("--recovery-key-file", default=None)
    p.add_argument("--key-slot", type=int, default=None, help="slot the existing passphrase opens")
    p.add_argument("--new-key-slot", type=int, default=None)
    p.add_argument("--recovery-key", action="store_true", help="generate a recovery key instead")
    p.set_defaults(func=_add_key)

    p = sub.add_parser("remove-key", help="remove a keyslot (luksRemoveKey / luksKillSlot)")
    _device_args(p)
    p.add_argument("--key-file", default=None, help="passphrase; its keyslot is removed")
    p.add_argument("--recovery-key-file", default=None)
    p.add_argument("--key-slot", type=int, default=None, help="slot the passphrase opens")
    p.add_argument("--kill-slot", type=int, default=None, help="remove this slot instead")
    p.add_argument("--allow-last", action="store_true", help="allow removing the last keyslot")
    p.set_defaults(func=_remove_key)

    p = sub.add_parser("repair", help="rewrite a damaged or stale header copy")
    _device_args(p)
    _batch_flag(p)
    p.set_defaults(func=_repair)

    p = sub.add_parser("token-import", help="store a JSON token (cryptsetup token import)")
    _device_args(p)
    p.add_argument("--json-file", required=True)
    p.add_argument("--token-id", type=int, default=None)
    p.set_defaults(func=_token_import)

    p = sub.add_parser("token-export", help="print a token's JSON (cryptsetup token export)")
    _device_args(p)
    p.add_argument("--token-id", type=int, required=True)
    p.set_defaults(func=_token_export)

    p = sub.add_parser("enroll-tpm", help="seal a new keyslot to the TPM (systemd-tpm2 token)")
    _device_args(p)
    add_tpm_flag(p)
    p.add_argument("--key-file", default=None, help="an existing passphrase")
    p.add_argument("--recovery-key-file", default=None)
    p.add_argument("--key-slot", type=int, default=None)
    p.add_argument(
        "--tpm2-pcrs",
        default=None,
        help="PCRs bound by value, e.g. 7+15 (default 7+15; 7 with --public-key; '' for none)",
    )
    p.add_argument("--tpm2-pcr-bank", default="sha256", choices=["sha1", "sha256", "sha384"])
    p.add_argument(
        "--public-key",
        "--tpm2-public-key",
        default=None,
        metavar="PEM",
        help="seal to a signed PCR policy by this RSA key (systemd-measure's signing key)",
    )
    p.add_argument(
        "--public-key-pcrs",
        "--tpm2-public-key-pcrs",
        default="11",
        metavar="PCRS",
        help="PCRs covered by the signed policy (default 11)",
    )
    p.add_argument(
        "--signature",
        "--tpm2-signature",
        default=None,
        metavar="FILE",
        help="a .pcrsig for the current PCRs: check that the enrolment unlocks now",
    )
    p.set_defaults(func=_enroll_tpm)

    p = sub.add_parser("lock", help="extend PCR 15 after unlocking: TPM tokens stay sealed")
    p.add_argument("device", metavar="DEVICE", nargs="?", default=None)
    p.add_argument("--offset", type=_size, default=0)
    p.add_argument("--size", type=_size, default=None)
    add_json_flag(p)
    add_tpm_flag(p)
    p.add_argument("--pcr", type=int, default=15)
    p.set_defaults(func=_lock)

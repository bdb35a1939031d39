"""``bastion verity``: format, verify and dump dm-verity hash trees, as veritysetup does.

Flags and output fields follow ``veritysetup`` so the two are interchangeable:
``format DATA [HASH]`` prints the header and the root hash (HASH omitted: the tree is
appended to DATA at ``--hash-offset``, default right after the data), ``verify DATA
HASH ROOT_HASH`` exits 0 only when every block verifies, ``dump HASH`` prints the
superblock. Each takes ``--json``. The work is done by
:mod:`bastion.storage.verity_reader`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import uuid as uuidlib
from typing import Any

from bastion.cli._common import add_json_flag, emit
from bastion.errors import ConfigError, FormatError, NotFoundError
from bastion.formats.verity import (
    HashAlgorithm,
    VerityParams,
    hash_start_block,
)
from bastion.io.files import atomic_write
from bastion.storage.verity_reader import format_region, read_superblock, verify_region

DEFAULT_SALT_SIZE = 32


def _hex(value: str, what: str) -> bytes:
    if value == "-":
        return b""
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not hexadecimal") from None


def _int(value: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is negative")
    return number


def _file_size(path: str, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NotFoundError(f"{what} file {path!r} does not exist") from None
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise ConfigError(f"{what} file {path!r} is a directory")
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _add_param_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hash", dest="algorithm", default="sha256", help="hash algorithm (default sha256)"
    )
    parser.add_argument("--data-block-size", type=_int, default=4096, metavar="N")
    parser.add_argument("--hash-block-size", type=_int, default=4096, metavar="N")
    parser.add_argument(
        "--format", dest="hash_format", type=int, default=1, metavar="0|1", help="hash format"
    )
    parser.add_argument("--data-blocks", type=_int, default=None, metavar="N")
    parser.add_argument("--salt", default=None, metavar="HEX", help="salt in hex, '-' for none")


def _describe(
    name: str, params: VerityParams, ident: uuidlib.UUID | None, hash_offset: int, sb: bool
) -> dict[str, Any]:
    start = hash_start_block(hash_offset, params.hash_block_size, superblock=sb)
    blocks = params.geometry().tree_blocks
    return {
        "hash_file": name,
        "uuid": str(ident) if ident else None,
        "hash_type": int(params.hash_format),
        "data_blocks": params.data_blocks,
        "data_block_size": params.data_block_size,
        "hash_blocks": blocks,
        "hash_block_size": params.hash_block_size,
        "hash_algorithm": params.algorithm.value,
        "salt": params.salt.hex() or "-",
        "hash_offset": hash_offset,
        "hash_start_block": start,
        "hash_device_size": (start + blocks) * params.hash_block_size - hash_offset,
    }


def _text(info: dict[str, Any]) -> str:
    """The header as veritysetup prints it (same labels, padding and tabs)."""
    rows = [
        ("UUID:            ", info["uuid"] or ""),
        ("Hash type:       ", info["hash_type"]),
        ("Data blocks:     ", info["data_blocks"]),
        ("Data block size: ", info["data_block_size"]),
        ("Hash blocks:     ", info["hash_blocks"]),
        ("Hash block size: ", info["hash_block_size"]),
        ("Hash algorithm:  ", info["hash_algorithm"]),
        ("Salt:            ", info["salt"]),
    ]
    if "root_hash" in info:
        rows.append(("Root hash:      ", info["root_hash"]))
    if not info["hash_offset"]:  # veritysetup prints the size only for a hash area at 0
        rows.append(("Hash device size: ", f"{info['hash_device_size']} [bytes]"))
    lines = [f"VERITY header information for {info['hash_file']}"]
    lines += [f"{label}\t{value}" for label, value in rows]
    return "\n".join(lines)


# --- format ------------------------------------------------------------------------------


def _cmd_format(args: argparse.Namespace) -> int:
    data = args.data
    hash_path = args.hash_file or data
    appended = os.path.abspath(hash_path) == os.path.abspath(data)
    if args.no_salt and args.salt is not None:
        raise ConfigError("--salt and --no-salt exclude each other")
    if args.no_salt:
        salt = b""
    elif args.salt is not None:
        salt = _hex(args.salt, "--salt")
    else:
        salt = os.urandom(DEFAULT_SALT_SIZE)
    # validate algorithm, sizes and salt before looking at the data
    params = VerityParams(
        data_blocks=1,
        algorithm=HashAlgorithm.parse(args.algorithm),
        data_block_size=args.data_block_size,
        hash_block_size=args.hash_block_size,
        salt=salt,
        hash_format=args.hash_format,
    )
    size = _file_size(data, "data")
    dbs = params.data_block_size
    if args.data_blocks is not None:
        blocks = args.data_blocks
    else:
        region = size
        if appended and args.hash_offset is not None:
            region = min(size, args.hash_offset)
        if region % dbs:
            raise FormatError(
                f"data file {data!r} is {region} bytes, not a multiple of the data block size "
                f"{dbs} (give --data-blocks N to protect only the first N blocks)"
            )
        blocks = region // dbs
    if blocks == 0:
        raise FormatError(f"data file {data!r} holds no whole {dbs}-byte block")
    params = dataclasses.replace(params, data_blocks=blocks)
    hash_offset = args.hash_offset
    if hash_offset is None:
        hash_offset = params.data_size if appended else 0
    try:
        ident = uuidlib.UUID(args.uuid) if args.uuid else uuidlib.uuid4()
    except ValueError:
        raise ConfigError(f"--uuid {args.uuid!r} is not a UUID") from None
    result = format_region(
        data,
        hash_path,
        params,
        hash_offset=hash_offset,
        uuid=ident,
        superblock=not args.no_superblock,
    )
    info = _describe(
        hash_path,
        params,
        ident if not args.no_superblock else None,
        hash_offset,
        not args.no_superblock,
    )
    info["root_hash"] = result.root_hash.hex()
    if args.root_hash_file:
        atomic_write(args.root_hash_file, result.root_hash.hex().encode())
    emit(args, _text(info), info)
    return 0


# --- verify ------------------------------------------------------------------------------


def _trusted_params(args: argparse.Namespace) -> VerityParams | None:
    if not args.no_superblock:
        return None
    if args.data_blocks is None:
        raise ConfigError("--no-superblock needs --data-blocks (and the other parameters)")
    return VerityParams(
        data_blocks=args.data_blocks,
        algorithm=HashAlgorithm.parse(args.algorithm),
        data_block_size=args.data_block_size,
        hash_block_size=args.hash_block_size,
        salt=_hex(args.salt, "--salt") if args.salt is not None else b"",
        hash_format=args.hash_format,
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    root = _hex(args.root_hash, "root hash")
    # a DigestMismatchError goes to main: with --json its error object carries the
    # area, block and level of the damage
    params = verify_region(
        args.data,
        args.hash_file,
        root,
        _trusted_params(args),
        hash_offset=args.hash_offset,
        superblock=not args.no_superblock,
    )
    info = {
        "verified": True,
        "root_hash": root.hex(),
        "data_blocks": params.data_blocks,
        "hash_algorithm": params.algorithm.value,
    }
    emit(args, f"Verified {params.data_blocks} data blocks against root hash {root.hex()}.", info)
    return 0


# --- dump --------------------------------------------------------------------------------


def _cmd_dump(args: argparse.Namespace) -> int:
    sb = read_superblock(args.hash_file, args.hash_offset)
    info = _describe(args.hash_file, sb.params, sb.uuid, args.hash_offset, True)
    emit(args, _text(info), info)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``verity`` group: format, verify, dump."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "verity", help="dm-verity hash trees (veritysetup-compatible)"
    )
    sub = parser.add_subparsers(dest="verity_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)

    fmt = sub.add_parser("format", help="build the hash tree and print the root hash")
    fmt.add_argument("data", metavar="DATA")
    fmt.add_argument("hash_file", metavar="HASH", nargs="?", default=None)
    _add_param_flags(fmt)
    fmt.add_argument("--no-salt", action="store_true", help="use an empty salt")
    fmt.add_argument("--hash-offset", type=_int, default=None, metavar="BYTES")
    fmt.add_argument("--uuid", default=None, help="superblock UUID (default: random)")
    fmt.add_argument("--no-superblock", action="store_true", help="write no superblock")
    fmt.add_argument("--root-hash-file", default=None, metavar="FILE")
    add_json_flag(fmt)
    fmt.set_defaults(func=_cmd_format)

    ver = sub.add_parser("verify", help="verify every block; exit 0 only if all verify")
    ver.add_argument("data", metavar="DATA")
    ver.add_argument("hash_file", metavar="HASH")
    ver.add_argument("root_hash", metavar="ROOT_HASH")
    ver.add_argument("--hash-offset", type=_int, default=0, metavar="BYTES")
    ver.add_argument(
        "--no-superblock", action="store_true", help="take the parameters from the flags"
    )
    _add_param_flags(ver)
    add_json_flag(ver)
    ver.set_defaults(func=_cmd_verify)

    dump = sub.add_parser("dump", help="print the superblock")
    dump.add_argument("hash_file", metavar="HASH")
    dump.add_argument("--hash-offset", type=_int, default=0, metavar="BYTES")
    add_json_flag(dump)
    dump.set_defaults(func=_cmd_dump)

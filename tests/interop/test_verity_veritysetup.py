"""bastion's dm-verity against veritysetup, both directions.

For each case: ``veritysetup format`` (randomness fixed by --uuid and --salt) and
bastion's ``format_region`` must give the same root hash and a byte-identical hash area
(superblock included); ``veritysetup verify`` must accept bastion's hash file and
bastion's ``verify_region`` must accept veritysetup's.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.errors import DigestMismatchError
from bastion.formats.verity import HashAlgorithm, HashFormat, VerityParams, VeritySuperblock
from bastion.io.runner import CommandRunner
from bastion.storage.verity_reader import VerityReader, format_region, verify_region

pytestmark = pytest.mark.interop

UUID = uuid.UUID("a60c98d2-ae9b-4865-bfcb-b4e3ace11033")
SHORT = bytes.fromhex("dadada")
LONG = bytes(range(256))
SALT32 = hashlib.sha256(b"bastion").digest()


@dataclass(frozen=True)
class Case:
    blocks: int
    alg: str = "sha256"
    fmt: int = 1
    salt: bytes = SALT32
    dbs: int = 512
    hbs: int = 512
    appended: bool = False
    parallel: bool = False

    @property
    def id(self) -> str:
        salt = {b"": "nosalt", SHORT: "short", LONG: "salt256"}.get(self.salt, "salt32")
        where = "appended" if self.appended else "separate"
        par = "-par" if self.parallel else ""
        return f"{self.blocks}x{self.dbs}-h{self.hbs}-{self.alg}-v{self.fmt}-{salt}-{where}{par}"


CASES = [
    # the block counts of the issue, at 512-byte blocks (16 digests per hash block)
    *(Case(n) for n in (1, 2, 127, 128, 129, 16385)),
    # algorithm x format x salt
    *(
        Case(129, alg, fmt, salt, 1024, 1024)
        for alg in ("sha1", "sha256", "sha512")
        for fmt in (0, 1)
        for salt in (b"", SHORT, LONG)
    ),
    # block sizes
    Case(300, dbs=4096, hbs=512),
    Case(300, dbs=512, hbs=4096),
    Case(3, dbs=65536, hbs=65536),
    Case(1000, dbs=4096, hbs=4096, alg="sha384"),
    Case(70, dbs=2048, hbs=1024, alg="sha224", fmt=0),
    # appended hash area (same file, --hash-offset, --data-blocks)
    Case(1, appended=True),
    Case(129, appended=True),
    Case(700, dbs=4096, hbs=4096, appended=True),
    Case(129, alg="sha1", fmt=0, salt=SHORT, dbs=1024, hbs=4096, appended=True),
    # larger, through the parallel path (4096 x 4 KiB = 16 MiB)
    Case(4096, dbs=4096, hbs=4096, parallel=True),
]


def _data(blocks: int, dbs: int) -> bytes:
    seed = hashlib.sha256(f"{blocks}-{dbs}".encode()).digest()
    return hashlib.shake_256(seed).digest(blocks * dbs)


def _params(case: Case) -> VerityParams:
    return VerityParams(
        data_blocks=case.blocks,
        algorithm=HashAlgorithm(case.alg),
        data_block_size=case.dbs,
        hash_block_size=case.hbs,
        salt=case.salt,
        hash_format=HashFormat(case.fmt),
    )


def _veritysetup_format(case: Case, data: Path, hash_file: Path, offset: int) -> bytes:
    tool = need_tool("veritysetup")
    argv = [
        tool, "format", str(data), str(hash_file),
        f"--hash={case.alg}", f"--format={case.fmt}",
        f"--data-block-size={case.dbs}", f"--hash-block-size={case.hbs}",
        f"--salt={case.salt.hex() or '-'}", f"--uuid={UUID}",
    ]  # fmt: skip
    if case.appended:
        argv += [f"--data-blocks={case.blocks}", f"--hash-offset={offset}"]
    out = CommandRunner().run(argv).text
    match = re.search(r"Root hash:\s*([0-9a-f]+)", out)
    assert match, out
    return bytes.fromhex(match.group(1))


def _veritysetup_verify(case: Case, data: Path, hash_file: Path, root: bytes, offset: int) -> int:
    argv = [need_tool("veritysetup"), "verify", str(data), str(hash_file), root.hex()]
    if case.appended:
        argv += [f"--hash-offset={offset}"]
    return CommandRunner().run(argv, check=False).returncode


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_same_root_and_hash_area_both_directions(case: Case, tmp_path: Path) -> None:
    need_tool("veritysetup")
    payload = _data(case.blocks, case.dbs)
    offset = len(payload) + 4096 if case.appended else 0
    ref_data, ref_hash = tmp_path / "ref.img", tmp_path / "ref.hash"
    our_data, our_hash = tmp_path / "our.img", tmp_path / "our.hash"
    ref_data.write_bytes(payload)
    our_data.write_bytes(payload)
    if case.appended:
        ref_hash, our_hash = ref_data, our_data
    root_ref = _veritysetup_format(case, ref_data, ref_hash, offset)
    params = _params(case)
    result = format_region(
        our_data,
        our_hash,
        params,
        hash_offset=offset,
        uuid=UUID,
        parallel_min_bytes=0 if case.parallel else 1 << 30,
        workers=2,
    )
    assert result.root_hash == root_ref
    assert our_hash.read_bytes() == ref_hash.read_bytes()
    assert VeritySuperblock.parse(ref_hash.read_bytes()[offset:]).params == params
    # veritysetup accepts bastion's tree; bastion accepts veritysetup's
    assert _veritysetup_verify(case, our_data, our_hash, root_ref, offset) == 0
    assert verify_region(ref_data, ref_hash, root_ref, hash_offset=offset) == params
    with VerityReader(ref_data, ref_hash, root_ref, hash_offset=offset) as reader:
        assert reader.read() == payload


@pytest.mark.parametrize(
    "case", [Case(129), Case(16385), Case(300, dbs=4096, hbs=4096)], ids=lambda c: c.id
)
def test_both_refuse_the_same_flipped_data_bit(case: Case, tmp_path: Path) -> None:
    payload = bytearray(_data(case.blocks, case.dbs))
    data, hash_file = tmp_path / "d.img", tmp_path / "h.img"
    data.write_bytes(payload)
    root = format_region(data, hash_file, _params(case), uuid=UUID).root_hash
    target = case.blocks - 1
    payload[target * case.dbs + 17] ^= 0x04
    data.write_bytes(payload)
    assert _veritysetup_verify(case, data, hash_file, root, 0) != 0
    with pytest.raises(DigestMismatchError) as info:
        verify_region(data, hash_file, root)
    assert (info.value.area, info.value.block) == ("data", target)


@pytest.mark.parametrize("vec", [(512, "sha256", 1), (4096, "sha256", 0), (1024, "sha1", 1)])
def test_cryptsetup_vectors_rederived_with_veritysetup(
    vec: tuple[int, str, int], tmp_path: Path
) -> None:
    bs, alg, fmt = vec
    case = Case(
        8 * 1024 * 1024 // bs,
        alg,
        fmt,
        bytes.fromhex("e48da609055204e89ae53b655ca2216dd983cf3cb829f34f63a297d106d53e2d"),
        bs,
        bs,
    )
    data = tmp_path / "zero.img"
    data.write_bytes(bytes(8 << 20))
    root_ref = _veritysetup_format(case, data, tmp_path / "h", 0)
    ours = format_region(data, tmp_path / "h2", _params(case), uuid=UUID).root_hash
    assert ours == root_ref


def test_cli_both_directions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bastion.cli.main import main

    tool = need_tool("veritysetup")
    data = tmp_path / "d.img"
    data.write_bytes(_data(200, 4096))
    run = CommandRunner().run
    # veritysetup formats; bastion verifies and dumps
    out = run([tool, "format", str(data), str(tmp_path / "ref"), "--salt", "abcd"]).text
    root = re.search(r"Root hash:\s*([0-9a-f]+)", out)
    assert root
    assert main(["verity", "verify", str(data), str(tmp_path / "ref"), root.group(1)]) == 0
    capsys.readouterr()
    assert main(["verity", "dump", str(tmp_path / "ref")]) == 0
    assert capsys.readouterr().out == run([tool, "dump", str(tmp_path / "ref")]).text
    # the format header is the same text, line for line
    common = ["--salt", "abcd", "--uuid", "a60c98d2-ae9b-4865-bfcb-b4e3ace11033"]
    assert main(["verity", "format", str(data), str(tmp_path / "ours"), *common]) == 0
    ours = capsys.readouterr().out.replace(str(tmp_path / "ours"), "HASH")
    theirs = run([tool, "format", str(data), str(tmp_path / "theirs"), *common]).text
    assert ours == theirs.replace(str(tmp_path / "theirs"), "HASH")
    # bastion formats (appended); veritysetup verifies
    assert main(["verity", "format", str(data), "--salt", "-", "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    offset = str(doc["hash_offset"])
    assert (
        run(
            [
                tool,
                "verify",
                str(data),
                str(data),
                str(doc["root_hash"]),
                f"--hash-offset={offset}",
            ],
            check=False,
        ).returncode
        == 0
    )

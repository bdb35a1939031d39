"""``bastion demo``: bastion's main job on embedded defaults, as a list of named steps.

Each :class:`DemoStep` gets the shared :class:`DemoContext` (a work folder and a dict
of results earlier steps left behind) and returns a :class:`StepOutcome`; a step whose
expected outcome is a refusal (a flipped bit must be caught) reports ``ok`` when the
refusal happened, naming what was refused. ``STEPS`` is the ordered list; later issues
append their steps (TPM, LUKS2, boot, provisioning, ...) to it. The command prints one
line per step (or one JSON document with ``--json``) and exits 0 only when every step
behaved as expected; the first unexpected failure stops the run.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.cli import _demo_lifecycle as life
from bastion.cli._common import add_json_flag, emit
from bastion.errors import BastionError, ConfigError, DigestMismatchError
from bastion.formats.verity import VerityParams
from bastion.storage.verity_reader import VerityReader, format_region, verify_region

#: the demo image: 4 MiB in 4 KiB blocks (two tree levels), deterministic content
IMAGE_BLOCKS = 1024
IMAGE_SEED = b"bastion demo root filesystem"
TAMPER_BLOCK = 700


@dataclass(slots=True)
class DemoContext:
    """What steps share: the work folder and results of earlier steps."""

    workdir: Path
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """One step's result: whether it behaved as expected, a short line, details for JSON."""

    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DemoStep:
    """A named step of the demo."""

    name: str
    run: Callable[[DemoContext], StepOutcome]


def _flip_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x01]))


# --- verity steps ------------------------------------------------------------------------


def step_image(ctx: DemoContext) -> StepOutcome:
    """Generate the root filesystem image (deterministic pseudo-random bytes)."""
    image = ctx.workdir / "rootfs.img"
    image.write_bytes(hashlib.shake_256(IMAGE_SEED).digest(IMAGE_BLOCKS * 4096))
    ctx.state["image"] = image
    size = image.stat().st_size
    return StepOutcome(True, f"{image.name}: {size} bytes", {"path": str(image), "size": size})


def step_verity_format(ctx: DemoContext) -> StepOutcome:
    """Build the dm-verity tree into a separate hash file."""
    params = VerityParams(
        data_blocks=IMAGE_BLOCKS, salt=hashlib.sha256(b"bastion demo salt").digest()
    )
    hash_file = ctx.workdir / "rootfs.verity"
    started = time.perf_counter()
    result = format_region(
        ctx.state["image"],
        hash_file,
        params,
        uuid=uuid.uuid5(uuid.NAMESPACE_URL, "bastion:demo"),
    )
    elapsed = time.perf_counter() - started
    ctx.state.update(hash_file=hash_file, root_hash=result.root_hash, params=params)
    levels = params.geometry().levels
    return StepOutcome(
        True,
        f"root hash {result.root_hash.hex()} ({IMAGE_BLOCKS} blocks, {levels} levels, "
        f"{elapsed * 1000:.0f} ms)",
        {"root_hash": result.root_hash.hex(), "hash_file": str(hash_file), "levels": levels},
    )


def step_verity_verify(ctx: DemoContext) -> StepOutcome:
    """Verify every block against the root hash."""
    verify_region(ctx.state["image"], ctx.state["hash_file"], ctx.state["root_hash"])
    return StepOutcome(True, f"all {IMAGE_BLOCKS} data blocks and every hash block verify")


def step_verity_read(ctx: DemoContext) -> StepOutcome:
    """Read the image lazily through the verifying reader, as a device mounts its root."""
    expected = Path(ctx.state["image"]).read_bytes()
    with VerityReader(ctx.state["image"], ctx.state["hash_file"], ctx.state["root_hash"]) as rd:
        rd.seek(TAMPER_BLOCK * 4096)
        middle = rd.read(8192)
        rd.seek(0)
        whole = rd.read()
    same = whole == expected and middle == expected[TAMPER_BLOCK * 4096 :][:8192]
    return StepOutcome(same, f"read {len(whole)} bytes through the verifying reader, all verified")


def step_verity_tamper(ctx: DemoContext) -> StepOutcome:
    """Flip one bit in a data block: verification must refuse and name the block."""
    image = Path(ctx.state["image"])
    _flip_bit(image, TAMPER_BLOCK * 4096 + 1234)
    try:
        verify_region(image, ctx.state["hash_file"], ctx.state["root_hash"])
    except DigestMismatchError as exc:
        ok = exc.area == "data" and exc.block == TAMPER_BLOCK
        return StepOutcome(ok, f"refused (expected): {exc}", {"area": exc.area, "block": exc.block})
    finally:
        _flip_bit(image, TAMPER_BLOCK * 4096 + 1234)
    return StepOutcome(False, "a flipped bit in data block 700 was NOT detected")


def step_verity_tamper_hash(ctx: DemoContext) -> StepOutcome:
    """Flip one bit in a level-0 hash block: refusal must name the hash block and level."""
    hash_file = Path(ctx.state["hash_file"])
    params: VerityParams = ctx.state["params"]
    geo = params.geometry()
    target = 1 + geo.level_offsets[0] + 3  # superblock block, top level, then level 0
    _flip_bit(hash_file, target * params.hash_block_size + 99)
    try:
        verify_region(ctx.state["image"], hash_file, ctx.state["root_hash"])
    except DigestMismatchError as exc:
        ok = (exc.area, exc.block, exc.level) == ("hash", target, 0)
        return StepOutcome(
            ok,
            f"refused (expected): {exc}",
            {"area": exc.area, "block": exc.block, "level": exc.level},
        )
    finally:
        _flip_bit(hash_file, target * params.hash_block_size + 99)
    return StepOutcome(False, f"a flipped bit in hash block {target} was NOT detected")


STEPS: list[DemoStep] = [
    DemoStep("image", step_image),
    DemoStep("verity-format", step_verity_format),
    DemoStep("verity-verify", step_verity_verify),
    DemoStep("verity-read", step_verity_read),
    DemoStep("verity-tamper-data", step_verity_tamper),
    DemoStep("verity-tamper-hash", step_verity_tamper_hash),
    DemoStep("keys-init", life.step_keys),
    DemoStep("image-build", life.step_build_image),
    DemoStep("image-pcrs", life.step_golden_pcrs),
    DemoStep("device-create", life.step_device_create),
    DemoStep("first-boot", life.step_first_boot),
    DemoStep("second-boot", life.step_second_boot),
    DemoStep("eventlog", life.step_eventlog),
    DemoStep("tpm-locked", life.step_key_locked),
    DemoStep("recovery-key", life.step_recovery_key),
    DemoStep("attest", life.step_attest),
    DemoStep("fleet", life.step_fleet),
    DemoStep("tamper-kernel", life.step_tamper_kernel),
]


def _line(step: DemoStep, outcome: StepOutcome) -> str:
    return f"[{'ok' if outcome.ok else 'FAIL'}] {step.name}: {outcome.detail}"


def run_steps(
    steps: list[DemoStep],
    ctx: DemoContext,
    progress: Callable[[DemoStep, StepOutcome], None] | None = None,
) -> list[tuple[DemoStep, StepOutcome]]:
    """Run steps in order; an unexpected error or a failed step stops the run.

    ``progress`` is called after each step, so a long demo shows its progress live.
    """
    results: list[tuple[DemoStep, StepOutcome]] = []
    for step in steps:
        try:
            outcome = step.run(ctx)
        except BastionError as exc:
            outcome = StepOutcome(False, f"unexpected {type(exc).__name__}: {exc}")
        results.append((step, outcome))
        if progress is not None:
            progress(step, outcome)
        if not outcome.ok:
            break
    return results


def _cmd_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bastion-demo-") as tmp:
        workdir = Path(args.dir) if args.dir else Path(tmp)
        if args.dir and workdir.exists() and any(workdir.iterdir()):
            raise ConfigError(f"demo folder {workdir} is not empty: give a new or empty folder")
        workdir.mkdir(parents=True, exist_ok=True)
        live = None if args.json else (lambda s, o: print(_line(s, o), flush=True))
        results = run_steps(STEPS, DemoContext(workdir), live)
    ok = len(results) == len(STEPS) and all(o.ok for _, o in results)
    lines = [] if live else [_line(s, o) for s, o in results]
    lines.append(f"demo {'passed' if ok else 'FAILED'}: {len(results)}/{len(STEPS)} steps")
    doc = {
        "ok": ok,
        "dir": args.dir,
        "steps": [{"name": s.name, "ok": o.ok, "detail": o.detail, **o.data} for s, o in results],
    }
    emit(args, "\n".join(lines), doc)
    return 0 if ok else 1


def register(subparsers: Any) -> None:
    """Add ``bastion demo``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="run bastion's main job on embedded defaults"
    )
    parser.add_argument(
        "--dir", default=None, help="keep the demo files in this folder (default: a temp folder)"
    )
    add_json_flag(parser)
    parser.set_defaults(func=_cmd_demo)

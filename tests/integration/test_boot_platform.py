"""The boot chain over the ``Platform`` protocol: nothing but the protocol is touched.

A ``RecordingPlatform`` implements exactly the methods of device/platform/base.py by
delegating to a sim device it keeps private (it has no ``disk``, ``folder`` or path): a
boot through it reaches running, so the chain needs nothing else; each stage receives
the frozen result of the one before; a disk that fails under a stage fails that stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.bootkit import make_tree, product_keys, spec_for, trust_of
from tests.conftest import need_tool

from bastion.build import image as img
from bastion.device import boot as chain
from bastion.device.boot_create import create_device
from bastion.device.platform.base import (
    ConsoleKind,
    FuseBank,
    PartitionStorage,
    Platform,
    VerifiedRoot,
)
from bastion.device.platform.sim import SimPlatform
from bastion.errors import BackendError
from bastion.formats import gpt
from bastion.formats import image as fi
from bastion.io.clock import Clock
from bastion.storage import disk_image as di
from bastion.tpm.base import Tpm
from bastion.trust import image as ti

pytestmark = pytest.mark.integration


class RecordingPlatform:
    """A Platform by delegation only; records every call and can fail one of them."""

    def __init__(self, folder: Path, *, fail: tuple[str, str] | None = None) -> None:
        self._sim = SimPlatform(folder)
        self._fail = fail
        self.calls: list[tuple[str, str]] = []
        self.lines: list[tuple[ConsoleKind, str]] = []

    def _call(self, method: str, arg: str = "") -> None:
        self.calls.append((method, arg))
        if self._fail == (method, arg):
            raise OSError(5, f"injected I/O error on {method}({arg})")

    def disk_layout(self) -> gpt.GptDisk:
        self._call("disk_layout")
        return self._sim.disk_layout()

    def repair_disk_layout(self) -> tuple[gpt.GptDisk, list[str]]:
        self._call("repair_disk_layout")
        return self._sim.repair_disk_layout()

    def read_partition(self, name: str, limit: int | None = None) -> bytes:
        self._call("read_partition", name)
        return self._sim.read_partition(name, limit)

    def write_partition(self, name: str, offset: int, data: bytes) -> None:
        self._call("write_partition", name)
        self._sim.write_partition(name, offset, data)

    def partition_storage(self, name: str) -> PartitionStorage:
        self._call("partition_storage", name)
        return self._sim.partition_storage(name)

    def verify_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> None:
        self._call("verify_root", root)
        self._sim.verify_root(root, verity, root_hash, data_size)

    def open_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> VerifiedRoot:
        self._call("open_root", root)
        return self._sim.open_root(root, verity, root_hash, data_size)

    @contextlib.contextmanager
    def power_on(self) -> Iterator[Tpm]:
        self._call("power_on")
        with self._sim.power_on() as tpm:
            yield tpm

    def fuses(self, tpm: Tpm | None = None) -> FuseBank:
        self._call("fuses")
        return self._sim.fuses(tpm)

    def efi_variable(self, name: str) -> bytes | None:
        self._call("efi_variable", name)
        return self._sim.efi_variable(name)

    def console(self, kind: ConsoleKind, message: str) -> None:
        self.lines.append((kind, message))

    @property
    def clock(self) -> Clock:
        return self._sim.clock

    def store(self, name: str, data: bytes) -> None:
        self._call("store", name)
        self._sim.store(name, data)

    def load(self, name: str) -> bytes | None:
        self._call("load", name)
        return self._sim.load(name)

    def state(self) -> dict[str, Any]:
        self._call("state")
        return self._sim.state()

    def set_state(self, **values: Any) -> None:
        self._call("set_state", ",".join(sorted(values)))
        self._sim.set_state(**values)


def _typed(platform: Platform) -> Platform:
    return platform  # mypy: RecordingPlatform is a Platform


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need_tool("mkfs.ext4")
    root = tmp_path_factory.mktemp("plat")
    tree = make_tree(root / "tree")
    built = img.build_image(spec_for(tree), product_keys(), root / "disk.img")
    dev = root / "dev"
    create_device(dev, built.path, trust_of(product_keys()), product_keys().platform_root)
    return dev, built.path


def test_boot_through_the_protocol_only(device: tuple[Path, Path]) -> None:
    dev, image = device
    plat = RecordingPlatform(dev)
    assert not hasattr(plat, "disk") and not hasattr(plat, "folder")
    report = chain.BootChain(_typed(plat), full_verify=True).run()
    assert report.reached is chain.Stage.RUNNING and report.first_boot
    # the measured values are the golden ones predicted offline from the image file
    golden = ti.predict_pcrs(di.DiskImage(image))
    assert {i: report.pcrs[i] for i in golden} == {i: v.hex() for i, v in golden.items()}
    # partitions are reached by name, and only the image's own names
    names = {p.name for p in di.read_layout(image).partitions}
    touched = {arg for method, arg in plat.calls if "partition" in method or "root" in method}
    assert touched <= names
    assert {fi.PART_BOOT, fi.PART_BOOTCTL, fi.PART_DATA, fi.sig_part("a")} <= touched
    assert ("verify_root", fi.root_part("a")) in plat.calls
    assert ("write_partition", fi.PART_BOOTCTL) in plat.calls  # tries, then "successful"
    # one marker per stage, in order, on the console
    markers = [m for kind, m in plat.lines if kind is ConsoleKind.MARKER]
    assert markers == [f"bastion: {s.value} reached" for s in chain.Stage]
    assert (ConsoleKind.NOTE, "root verified in full") in plat.lines


def test_each_stage_gets_the_frozen_result_of_the_one_before(device: tuple[Path, Path]) -> None:
    dev, _ = device
    seen: list[object] = []

    class Spy(chain.BootChain):
        def bootloader(self, firmware: chain.FirmwareResult) -> chain.LoaderResult:
            seen.append(firmware)
            return super().bootloader(firmware)

        def kernel(self, loader: chain.LoaderResult) -> chain.KernelResult:
            seen.append(loader)
            return super().kernel(loader)

        def initrd(self, kernel: chain.KernelResult, tpm: Tpm) -> chain.InitrdResult:
            seen.append(kernel)
            return super().initrd(kernel, tpm)

        def running(self, initrd: chain.InitrdResult) -> chain.RunningResult:
            seen.append(initrd)
            result = super().running(initrd)
            seen.append(result)
            return result

    report = Spy(SimPlatform(dev)).run()
    assert report.reached is chain.Stage.RUNNING
    kinds = [
        chain.FirmwareResult,
        chain.LoaderResult,
        chain.KernelResult,
        chain.InitrdResult,
        chain.RunningResult,
    ]
    assert [type(x) for x in seen] == kinds
    firmware, loader, kernel, initrd, running = seen
    assert isinstance(loader, chain.LoaderResult) and loader.firmware is firmware
    assert isinstance(kernel, chain.KernelResult) and kernel.loader is loader
    assert isinstance(initrd, chain.InitrdResult) and initrd.kernel is kernel
    assert isinstance(running, chain.RunningResult) and running.slot == loader.slot == "a"
    assert initrd.root_hash.hex() == report.root_hash and initrd.root is not None
    for result in seen:
        field = dataclasses.fields(result)[0].name  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(result, field, None)


#: a disk failing under a stage fails that stage, as a BackendError naming it
FAILURES = [
    (("repair_disk_layout", ""), "rom"),
    (("read_partition", fi.PART_BOOT), "rom"),
    (("read_partition", fi.PART_BOOTCTL), "bootloader"),
    (("read_partition", fi.sig_part("a")), "initrd"),
    (("open_root", fi.root_part("a")), "initrd"),
    (("partition_storage", fi.PART_DATA), "initrd"),
]


@pytest.mark.parametrize(("fail", "stage"), FAILURES)
def test_disk_error_fails_the_stage(
    device: tuple[Path, Path], fail: tuple[str, str], stage: str
) -> None:
    dev, _ = device
    plat = RecordingPlatform(dev, fail=fail)
    with pytest.raises(BackendError) as info:
        chain.BootChain(_typed(plat)).run()
    assert str(info.value).startswith(f"{stage}: I/O error: ")
    assert "injected I/O error" in str(info.value)
    assert fail in plat.calls
    # the event log and the report are stored even so
    assert ("store", chain.EVENTLOG_FILE) in plat.calls
    assert ("store", chain.REPORT_FILE) in plat.calls

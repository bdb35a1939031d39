"""The software TPM's persistent state: one JSON file, the "chip" of :mod:`bastion.tpm.software`.

Layout (format ``bastion-software-tpm``, version 1; every byte string is lower-case hex)::

    {"format": "bastion-software-tpm", "version": 1,
     "seeds": {"storage": hex32, "endorsement": hex32, "proof": hex32},
     "ek_private": PKCS#8 PEM or null (generated on first use),
     "pcrs": {"sha1": [24 x hex20], "sha256": [24 x hex32]},
     "nv": {"0x01500016": {"type": "counter" | "bits", "value": int or null}},
     "counter_max": int,            # highest value of any deleted counter
     "fuse_memory": {"0x...": int}, # every bit ever set in a bits index at that handle
     "reset_count": int, "restart_count": int,
     "clock_ms": int, "clock_at": float}  # TPM Clock at wall time clock_at

It is written with :func:`bastion.io.files.atomic_write` (mode 0600) under an exclusive
``flock`` on ``<state>.lock``, so concurrent processes never lose each other's updates.
A malformed file raises :class:`~bastion.errors.TpmError`: the chip is broken.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.errors import FormatError, NotFoundError, TpmError
from bastion.formats import strict_json
from bastion.io.files import atomic_write, read_bounded
from bastion.tpm.base import PCR_COUNT, HashAlg
from bastion.tpm.pcr import reset_value

FORMAT = "bastion-software-tpm"
VERSION = 1
#: PCR banks the software TPM allocates (swtpm's defaults)
BANKS = (HashAlg.SHA1, HashAlg.SHA256)
NV_TYPES = ("counter", "bits")


@dataclass(slots=True)
class NvIndex:
    """One defined NV index. ``value`` None means never written (TPMA_NV_WRITTEN clear);
    SoftwareTpm initialises indexes at definition, so it only occurs in foreign files."""

    type: str
    value: int | None = None


@dataclass(slots=True)
class State:
    """The decoded state file (mutable: it is the chip's memory)."""

    storage_seed: bytes
    endorsement_seed: bytes
    proof: bytes
    ek_private: str | None = None
    pcrs: dict[HashAlg, list[bytes]] = field(default_factory=dict)
    nv: dict[int, NvIndex] = field(default_factory=dict)
    counter_max: int = 0
    fuse_memory: dict[int, int] = field(default_factory=dict)
    reset_count: int = 0
    restart_count: int = 0
    clock_ms: int = 0
    clock_at: float = 0.0

    @classmethod
    def fresh(cls, now: float) -> State:
        st = cls(os.urandom(32), os.urandom(32), os.urandom(32), clock_at=now)
        st.reset_pcrs()
        return st

    def reset_pcrs(self) -> None:
        self.pcrs = {bank: [reset_value(i, bank) for i in range(PCR_COUNT)] for bank in BANKS}

    def clock(self, now: float) -> int:
        """TPM Clock in milliseconds: advances with wall time, never goes back."""
        return self.clock_ms + max(0, int((now - self.clock_at) * 1000))

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "seeds": {
                "storage": self.storage_seed.hex(),
                "endorsement": self.endorsement_seed.hex(),
                "proof": self.proof.hex(),
            },
            "ek_private": self.ek_private,
            "pcrs": {bank.value: [v.hex() for v in vals] for bank, vals in self.pcrs.items()},
            "nv": {f"0x{i:08x}": {"type": n.type, "value": n.value} for i, n in self.nv.items()},
            "counter_max": self.counter_max,
            "fuse_memory": {f"0x{i:08x}": v for i, v in self.fuse_memory.items()},
            "reset_count": self.reset_count,
            "restart_count": self.restart_count,
            "clock_ms": self.clock_ms,
            "clock_at": self.clock_at,
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> State:
        try:
            return cls._decode(
                strict_json.loads_object(
                    data, what="software TPM state", max_size=limits.SOFTWARE_TPM_STATE_MAX_SIZE
                )
            )
        except (FormatError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TpmError(f"software TPM state {where} is corrupt: {exc}") from exc

    @classmethod
    def _decode(cls, doc: dict[str, Any]) -> State:
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(
                f"format {doc.get('format')!r} version {doc.get('version')!r}, "
                f"expected {FORMAT!r} version {VERSION}"
            )
        seeds = doc["seeds"]
        st = cls(
            _hex(seeds["storage"], 32),
            _hex(seeds["endorsement"], 32),
            _hex(seeds["proof"], 32),
        )
        ek = doc.get("ek_private")
        if ek is not None and not isinstance(ek, str):
            raise ValueError("ek_private must be a PEM string")
        st.ek_private = ek
        for bank in BANKS:
            vals = doc["pcrs"][bank.value]
            if len(vals) != PCR_COUNT:
                raise ValueError(f"{bank} bank has {len(vals)} PCRs")
            st.pcrs[bank] = [_hex(v, bank.digest_size) for v in vals]
        for key, entry in doc["nv"].items():
            typ, value = entry["type"], entry["value"]
            if typ not in NV_TYPES or not (value is None or _is_u64(value)):
                raise ValueError(f"NV index {key}: bad entry {entry!r}")
            st.nv[int(key, 16)] = NvIndex(typ, value)
        st.fuse_memory = {int(k, 16): _u64(v) for k, v in doc["fuse_memory"].items()}
        st.counter_max = _u64(doc["counter_max"])
        st.reset_count = _u64(doc["reset_count"])
        st.restart_count = _u64(doc["restart_count"])
        st.clock_ms = _u64(doc["clock_ms"])
        st.clock_at = float(doc["clock_at"])
        if not math.isfinite(st.clock_at):
            raise ValueError(f"clock_at {st.clock_at} is not a finite time")
        return st


def _hex(value: object, size: int) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"expected a hex string, got {type(value).__name__}")
    raw = bytes.fromhex(value)
    if len(raw) != size:
        raise ValueError(f"expected {size} bytes, got {len(raw)}")
    return raw


def _is_u64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def _u64(value: object) -> int:
    if not _is_u64(value):
        raise ValueError(f"expected an unsigned 64-bit integer, got {value!r}")
    assert isinstance(value, int)
    return value


class StateFile:
    """Load, lock and save one state file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).absolute()
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> State:
        try:
            data = read_bounded(self.path, limits.SOFTWARE_TPM_STATE_MAX_SIZE, "software TPM state")
        except NotFoundError as exc:
            raise TpmError(f"software TPM state {self.path} is missing") from exc
        return State.from_json(data, str(self.path))

    def save(self, state: State) -> None:
        atomic_write(self.path, state.to_json(), mode=0o600)

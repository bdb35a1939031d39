"""KDF costs for new LUKS2 keyslots, chosen as cryptsetup chooses them.

``KdfSpec`` says which KDF and which costs are forced; unset costs are benchmarked
(argon2id by default: time cost for ``iter_time_ms`` = 2000, at least 4 passes, memory
1 GiB capped at half the RAM and shrunk when 4 passes already take longer, min(4, CPUs)
lanes; PBKDF2 iterations for ``iter_time_ms``; volume-key digest for 125 ms).
``MINIMAL_KDF`` is systemd's minimal PBKDF for high-entropy secrets.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bastion import limits
from bastion.formats import luks2_keyslot as ksc
from bastion.formats.luks2 import KdfParams, KdfType

KiB = 1024
DEFAULT_ITER_TIME_MS = 2000
DEFAULT_ARGON2_MAX_MEMORY_KIB = 1024 * 1024
DIGEST_ITER_TIME_MS = 125


@dataclass(frozen=True, slots=True)
class KdfSpec:
    """How to build a new keyslot's KDF; unset costs are benchmarked like cryptsetup."""

    type: KdfType = KdfType.ARGON2ID
    iterations: int | None = None  # pbkdf2: --pbkdf-force-iterations; argon2: time cost
    memory_kib: int | None = None  # argon2 --pbkdf-memory
    cpus: int | None = None  # argon2 --pbkdf-parallel
    hash: str = "sha256"
    iter_time_ms: int = DEFAULT_ITER_TIME_MS

    def resolve(self) -> KdfParams:
        """Concrete parameters with a fresh salt (benchmarks when a cost is unset)."""
        if self.type is KdfType.PBKDF2:
            its = self.iterations or bench_pbkdf2(self.hash, self.iter_time_ms)
            return ksc.make_kdf(KdfType.PBKDF2, iterations=max(1000, its), hash_name=self.hash)
        memory = self.memory_kib or default_argon2_memory_kib()
        cpus = self.cpus or min(limits.LUKS2_MAX_ARGON2_PARALLEL, os.cpu_count() or 1)
        t = self.iterations
        if t is None:
            t, benched = bench_argon2(self.type, memory, cpus, self.iter_time_ms)
            memory = benched if self.memory_kib is None else memory
        return ksc.make_kdf(self.type, time=t, memory_kib=memory, cpus=cpus)


#: systemd's "minimal PBKDF" for high-entropy secrets (TPM tokens, recovery keys)
MINIMAL_KDF = KdfSpec(KdfType.PBKDF2, iterations=1000, hash="sha512")


def default_argon2_memory_kib() -> int:
    """cryptsetup's default: 1 GiB, capped at half the physical RAM."""
    try:
        ram_kib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // KiB
    except (ValueError, OSError):
        return DEFAULT_ARGON2_MAX_MEMORY_KIB
    return max(32, min(DEFAULT_ARGON2_MAX_MEMORY_KIB, ram_kib // 2))


def bench_pbkdf2(hash_name: str, ms: int) -> int:
    probe = 50_000
    start = time.perf_counter()
    ksc.pbkdf2(b"bench", b"\0" * 32, probe, hash_name, 32)
    elapsed = max(time.perf_counter() - start, 1e-6)
    return min(limits.LUKS2_MAX_PBKDF2_ITERATIONS, int(probe * ms / 1000 / elapsed))


def bench_argon2(kind: KdfType, memory: int, cpus: int, ms: int) -> tuple[int, int]:
    """(time cost, memory KiB) reaching about ``ms``, as cryptsetup's benchmark settles:
    time cost at least 4; when 4 passes at ``memory`` already take longer, memory shrinks."""
    params = ksc.make_kdf(kind, time=4, memory_kib=memory, cpus=cpus)
    start = time.perf_counter()
    ksc.derive(params, b"bench", 32)
    elapsed = max(time.perf_counter() - start, 1e-6)
    target = ms / 1000
    if elapsed > target:
        return 4, max(32, int(memory * target / elapsed))
    return max(4, round(4 * target / elapsed)), memory


def digest_iterations(kdf: KdfSpec) -> int:
    if kdf.iterations is not None:  # forced costs: keep the digest cheap too
        return 1000
    return max(1000, bench_pbkdf2("sha256", DIGEST_ITER_TIME_MS))

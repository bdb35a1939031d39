"""Helpers for TUF tests: role keys, a repository with one product, a loopback file server."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bastion.build.tuf_repo import TufRepository, init_repository, renew
from bastion.trust.signer import SoftwareSigner

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def ed() -> SoftwareSigner:
    return SoftwareSigner(ed25519.Ed25519PrivateKey.generate())


def p256() -> SoftwareSigner:
    return SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Keys:
    """Every role's signers of a test repository."""

    root: list[SoftwareSigner] = field(default_factory=lambda: [ed(), p256()])
    targets: list[SoftwareSigner] = field(default_factory=lambda: [ed()])
    snapshot: SoftwareSigner = field(default_factory=ed)
    timestamp: SoftwareSigner = field(default_factory=ed)
    product: list[SoftwareSigner] = field(default_factory=lambda: [ed()])


def custom(version: str, svn: int, *, hardware: tuple[str, ...] = ("hw1",), channel: str = "stable",
           product: str = "edge", min_base: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Release custom metadata as ``release publish`` writes it (the fields pick reads)."""
    return {
        "version": version,
        "svn": svn,
        "product": product,
        "hardware": list(hardware),
        "channel": channel,
        "min_base_version": min_base,
    }


def make_repo(
    path: Path,
    keys: Keys,
    *,
    root_threshold: int = 2,
    targets_threshold: int = 1,
    now: dt.datetime = NOW,
) -> TufRepository:
    """A published repository (root, targets, snapshot, timestamp) with product ``edge``."""
    repo = init_repository(
        path,
        root_keys=keys.root,
        root_threshold=root_threshold,
        targets_keys=keys.targets,
        targets_threshold=targets_threshold,
        snapshot_key=keys.snapshot,
        timestamp_key=keys.timestamp,
        now=now,
    )
    repo.delegate("edge", keys.product, len(keys.product), keys.targets, now)
    renew(repo, keys.snapshot, keys.timestamp, now)
    return repo


def publish(
    repo: TufRepository, keys: Keys, folder: Path, name: str, meta: dict[str, Any],
    *, size: int = 5000, now: dt.datetime = NOW,
) -> Path:  # fmt: skip
    """Add a release file ``name`` with ``meta`` and re-sign snapshot and timestamp."""
    bundle = folder / name
    bundle.write_bytes(name.encode().ljust(size, b"\0"))
    repo.add_release(
        product=meta["product"], channel=meta["channel"], bundle=bundle, custom=meta,
        signers=keys.product, now=now,
    )  # fmt: skip
    renew(repo, keys.snapshot, keys.timestamp, now)
    return bundle


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` read-only over loopback HTTP on a free port; yield the base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

"""Benchmark: a device's TUF refresh with 10,000 releases, bastion's client against plain ngclient.

Usage: .venv/bin/python bench/tuf_refresh.py [--targets 10000] [--runs 5]

Builds a bastion repository (build/tuf_repo.py) whose product role lists TARGETS
releases with full custom metadata, serves it over loopback HTTP (``http.server`` in a
thread), then, in each run and from an empty device folder, times:

* **ngclient**: python-tuf's ``Updater`` with its own urllib3 fetcher: ``refresh()`` and
  ``get_targetinfo()`` of one release (which loads the product role): the reference;
* **bastion**: :class:`bastion.device.update.tuf_client.DeviceTufClient` (ngclient over
  bastion's HTTP client): ``refresh()`` (a new ngclient ``Updater``, every role, every
  release parsed into a ``ReleaseTarget``) and ``pick()``; the client object itself
  (which a device keeps between refreshes) is made before the clock starts.

Both verify the same signatures and hashes over the same bytes. Prints the median wall
time and CPU time of each and the ratio bastion/ngclient (goal <= 1.5: bastion also
parses every release's custom metadata, which ngclient leaves untouched).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import http.server
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater

from bastion.build.tuf_repo import TufRepository, init_repository, renew
from bastion.device.update.tuf_client import DeviceTufClient
from bastion.trust.signer import SoftwareSigner

GOAL = 1.5


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _key() -> SoftwareSigner:
    return SoftwareSigner(ed25519.Ed25519PrivateKey.generate())


def build(folder: Path, count: int) -> tuple[TufRepository, str]:
    now = dt.datetime.now(dt.UTC)
    root, targets, snap, ts, product = _key(), _key(), _key(), _key(), _key()
    repo = init_repository(
        folder,
        root_keys=[root],
        root_threshold=1,
        targets_keys=[targets],
        targets_threshold=1,
        snapshot_key=snap,
        timestamp_key=ts,
        now=now,
    )
    repo.delegate("edge", [product], 1, [targets], now)
    files = []
    for i in range(count):
        path = f"edge/stable/edge-{i}.raucb"
        custom = {
            "version": f"2026.{i // 100}.{i % 100}",
            "svn": i // 50,
            "product": "edge",
            "hardware": ["hw-a", "hw-b"],
            "channel": "stable",
            "min_base_version": None,
            "compatible": "bastion-edge",
            "bundle_format": "verity",
            "verity": {"hash": "ab" * 32, "salt": "cd" * 32, "size": 86016},
            "images": [
                {
                    "slotclass": "rootfs",
                    "filename": "rootfs.img",
                    "sha256": "ef" * 32,
                    "size": 268435456,
                }
            ],
        }
        sha = hashlib.sha256(path.encode()).hexdigest()
        files.append(TargetFile(300_000_000, {"sha256": sha}, path, {"custom": custom}))
    repo.add_targets("edge", files, [product], now)
    renew(repo, snap, ts, now)
    return repo, files[-1].path


def _median_run(
    func: Callable[[], None], runs: int, setup: Callable[[], None] = lambda: None
) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(runs):
        setup()
        cpu, start = _cpu(), time.perf_counter()
        func()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tuf-") as tmp:
        base_dir = Path(tmp)
        started = time.perf_counter()
        repo, probe = build(base_dir / "repo", args.targets)
        role_size = (repo.metadata_dir / f"{repo.versions('edge')[-1]}.edge.json").stat().st_size
        print(f"repository: {args.targets} releases, product role {role_size / 1e6:.1f} MB, "
              f"built in {time.perf_counter() - started:.1f} s")  # fmt: skip
        handler = functools.partial(_Quiet, directory=str(repo.path))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        root = (repo.metadata_dir / "1.root.json").read_bytes()
        counter = iter(range(10**9))

        def reference() -> None:
            device = base_dir / f"ngclient-{next(counter)}"
            device.mkdir()
            updater = Updater(
                str(device), f"{url}/metadata/", None, f"{url}/targets/", bootstrap=root
            )
            updater.refresh()
            assert updater.get_targetinfo(probe) is not None

        # a device keeps its client (and the HTTP client's TLS context) between
        # refreshes: it is made outside the timed part, each run in an empty folder
        clients: list[DeviceTufClient] = []

        def fresh_client() -> None:
            device = base_dir / f"bastion-{next(counter)}"
            clients.append(
                DeviceTufClient(
                    device, f"{url}/metadata", f"{url}/targets", None, trusted_root=root
                )
            )

        def bastion() -> None:
            client = clients[-1]
            client.refresh()
            assert len(client.releases()) == args.targets
            assert client.pick("edge", "hw-a", "stable", 0, None) is not None

        try:
            reference()  # warm both paths once
            fresh_client()
            bastion()
            ref_wall, ref_cpu = _median_run(reference, args.runs)
            our_wall, our_cpu = _median_run(bastion, args.runs, fresh_client)
        finally:
            server.shutdown()
            server.server_close()
    print(f"ngclient (reference): wall {ref_wall * 1000:8.1f} ms  cpu {ref_cpu * 1000:8.1f} ms")
    print(f"bastion client:       wall {our_wall * 1000:8.1f} ms  cpu {our_cpu * 1000:8.1f} ms")
    ratio = our_wall / ref_wall
    print(f"ratio bastion/ngclient: wall {ratio:.2f}  cpu {our_cpu / max(ref_cpu, 1e-9):.2f} "
          f"(goal <= {GOAL})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

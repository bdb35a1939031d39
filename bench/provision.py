"""Benchmark: TPM-bound enrolments per minute, and device polling latency.

Run: ``.venv/bin/python bench/provision.py [--procs 4] [--enrolments 400]
[--pollers 1000] [--poll-seconds 10] [--tpm software|swtpm] [--server-workers 1]``

What it does, all on this machine:

1. creates a server data folder (SQLite), an organisation, a fleet and one provisioning
   key with enough uses, then starts the server (uvicorn, loopback, plain HTTP) in a
   subprocess;
2. starts ``--procs`` device processes; each opens its own TPM (the pure-Python
   software TPM by default, or a private swtpm through tpm2-pytss) and creates its EK
   *before* the clock starts (that is manufacturing, not enrolment); then all of them
   enrol as fast as they can: AK + identity key in the TPM, TPM-signed CSR, certify,
   ``/v1/enroll/begin``, ActivateCredential, ``/v1/enroll/finish``, open the sealed API
   key. Each enrolment creates a new device (new AK, key, certificate, API key); the
   TPM of a process is reused across its enrolments;
3. reports enrolments per minute, the ratio to Azure DPS's per-service quota (1,000
   registrations per minute, the reference figure) and to the issue's target (10,000),
   and where the time went (device-side TPM work vs. waiting on the server);
4. polling: ``--pollers`` devices (the enrolled ones plus device rows written straight
   into the database to reach the count) poll ``GET /v1/device/target-release`` in a
   closed loop for ``--poll-seconds``; reports requests per second and p50/p99 latency.

The machine is shared with other engineers' test runs: figures are noisy; the script
prints the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

AZURE_DPS_PER_MIN = 1000
TARGET_PER_MIN = 10_000


# --- server -------------------------------------------------------------------------------------


def _settings(data_dir: Path) -> Any:
    from bastion.server.settings import ServerSettings

    return ServerSettings(
        data_dir=data_dir,
        argon2_time_cost=1,
        argon2_memory_kib=8,
        argon2_parallelism=1,
        rate_per_second=1e9,
        rate_burst=10**9,
    )


def app_factory() -> Any:
    """uvicorn --factory entry: the app on ``$BASTION_BENCH_DATA``."""
    from bastion.server.app import create_app

    return create_app(_settings(Path(os.environ["BASTION_BENCH_DATA"])))


def prepare(data_dir: Path, uses: int) -> str:
    """Migrate, make org + fleet + a provisioning key; returns the key."""
    from bastion.server.app import create_app
    from bastion.server.orgs.models import Fleet, Organisation
    from bastion.server.provisioning.service import KeySpec, create

    app = create_app(_settings(data_dir))
    ctx = app.state.ctx
    now = ctx.clock.now()
    with ctx.db.session() as session:
        org = Organisation(name="bench", created_at=now)
        session.add(org)
        session.flush()
        # a development fleet: the bench's software TPMs and swtpms have no EK certificate
        fleet = Fleet(
            org_id=org.id,
            name="bench",
            created_at=now,
            config='{"target_release": "1.0"}',
            ek_policy="any",
        )
        session.add(fleet)
        session.commit()
        token, _ = create(
            session,
            fleet_id=fleet.id,
            org_id=org.id,
            actor="bench",
            spec=KeySpec(name="bench", ttl=dt.timedelta(hours=2), max_uses=uses, rate_per_minute=0),
            now=now,
        )
    ctx.db.dispose()
    return token


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(x) for x in children.read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def collect(out: Any, procs: list[Any], timeout: float = 1800.0) -> list[Any]:
    """One result per process; SystemExit if a process died without answering."""
    import queue

    results: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise SystemExit(
                    f"a worker process failed (exit codes {[p.exitcode for p in procs]})"
                ) from None
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, BASTION_BENCH_DATA=str(data_dir))
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "provision:app_factory",
        "--factory",
        "--app-dir",
        str(Path(__file__).parent),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        str(workers),
        "--no-access-log",
    ]
    proc = subprocess.Popen(argv, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("server exited during start-up")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server did not answer /v1/health within 60 s")


# --- device processes ---------------------------------------------------------------------------


def _open_tpm(kind: str, folder: Path) -> tuple[Any, Any]:
    if kind == "software":
        from bastion.tpm.software import SoftwareTpm

        return SoftwareTpm(folder / "tpm.state"), None
    from bastion.tpm.swtpm import Swtpm
    from bastion.tpm.tss import TssTpm

    sw = Swtpm.start(folder / "swtpm")
    return TssTpm(sw.uri), sw


class TimedTpm:
    """Wraps a Tpm and adds up the seconds spent inside its methods."""

    def __init__(self, tpm: Any) -> None:
        self._tpm = tpm
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._tpm, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        return timed


def enrol_worker(
    index: int,
    url: str,
    key: str,
    count: int,
    kind: str,
    folder: str,
    barrier: Any,
    out: Any,
    want_keys: int,
) -> None:
    from bastion.device.provision import provision
    from bastion.io.http import HttpClient

    # one TPM per enrolment: the fleet refuses a second active device with the same EK
    # (a clone), so each enrolment needs its own. Manufacturing happens before the clock:
    # every EK exists before the first enrolment starts.
    made = [_open_tpm(kind, Path(folder) / f"dev-{index}-{i}") for i in range(count)]
    try:
        for tpm, _sw in made:
            tpm.ek_public()
        timed = [TimedTpm(tpm) for tpm, _sw in made]
        identities = []
        with httpx.Client(base_url=url, timeout=60) as raw:
            client = HttpClient.over(raw)
            barrier.wait(timeout=600)
            start = time.perf_counter()
            for i in range(count):
                identities.append(
                    provision(timed[i], client, provisioning_key=key, serial=f"bench-{index}-{i}")
                )
            wall = time.perf_counter() - start
        # after the clock: open the sealed API keys (one more ActivateCredential each)
        keys = [identity.api_key(made[i][0]) for i, identity in enumerate(identities[:want_keys])]
        tpm_seconds = sum(t.seconds for t in timed)
        out.put((index, count, start, start + wall, keys, tpm_seconds, wall))
    finally:
        for tpm, sw in made:
            tpm.close()
            if sw is not None:
                sw.stop()


# --- polling --------------------------------------------------------------------------------------


def add_poll_devices(data_dir: Path, n: int) -> list[str]:
    """Device rows with fresh API keys straight into the database (no TPM behind them)."""
    from bastion.server.db.engine import Database
    from bastion.server.devices.models import Device, DeviceStatus
    from bastion.server.orgs.models import Fleet
    from bastion.server.provisioning.policy import DEVICE_KEY_PREFIX, new_token, token_hash

    db = Database(_settings(data_dir).resolved_database_url())
    keys = []
    now = dt.datetime.now(dt.UTC)
    with db.session() as session:
        fleet_id = session.query(Fleet.id).first()[0]  # type: ignore[index]
        for i in range(n):
            token = new_token(DEVICE_KEY_PREFIX)
            keys.append(token)
            session.add(
                Device(
                    id=secrets.token_hex(16),
                    fleet_id=fleet_id,
                    serial=f"poll-{i}",
                    status=DeviceStatus.ACTIVE,
                    ek_hash="00" * 32,
                    key_public=b"",
                    cert_serial=secrets.token_hex(8),
                    cert_sha256=secrets.token_hex(32),
                    certificate="",
                    api_key_hash=token_hash(token),
                    api_key_prefix=token[:13],
                    created_at=now,
                )
            )
        session.commit()
    db.dispose()
    return keys


async def _poll(
    url: str, keys: list[str], seconds: float, concurrency: int, interval: float
) -> list[float]:
    import random

    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def device(key: str) -> None:
            headers = {"Authorization": f"Bearer {key}"}
            if interval:
                await asyncio.sleep(random.uniform(0, interval))
            while time.perf_counter() < stop:
                t = time.perf_counter()
                response = await client.get("/v1/device/target-release", headers=headers)
                if response.status_code != 200:
                    raise SystemExit(f"poll got HTTP {response.status_code}: {response.text}")
                done = time.perf_counter()
                latencies.append(done - t)
                if interval:
                    await asyncio.sleep(max(0.0, interval - (done - t)))

        await asyncio.gather(*(device(k) for k in keys))
    return latencies


def poll_worker(
    url: str,
    keys: list[str],
    seconds: float,
    concurrency: int,
    interval: float,
    barrier: Any,
    out: Any,
) -> None:
    barrier.wait()
    out.put(asyncio.run(_poll(url, keys, seconds, concurrency, interval)))


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=4, help="device processes")
    parser.add_argument("--enrolments", type=int, default=400, help="total enrolments")
    parser.add_argument("--pollers", type=int, default=1000, help="devices polling")
    parser.add_argument("--poll-seconds", type=float, default=30.0)
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=10.0,
        help="seconds between one device's polls (0: closed loop, as fast as possible)",
    )
    parser.add_argument("--poll-procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--tpm", choices=["software", "swtpm"], default="software")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="connections per load-generator process"
    )
    parser.add_argument("--server-workers", type=int, default=1)
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
        folder = Path(tmp)
        data_dir = folder / "server"
        key = prepare(data_dir, args.enrolments + 10)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        print(
            f"load average before: {os.getloadavg()[0]:.2f} "
            "(2-core machine shared with other test runs)"
        )
        server = start_server(data_dir, port, args.server_workers)
        try:
            per = [
                args.enrolments // args.procs + (i < args.enrolments % args.procs)
                for i in range(args.procs)
            ]
            barrier = ctx.Barrier(args.procs + 1)
            out = ctx.Queue()
            procs = [
                ctx.Process(
                    target=enrol_worker,
                    args=(
                        i,
                        url,
                        key,
                        per[i],
                        args.tpm,
                        tmp,
                        barrier,
                        out,
                        args.pollers // args.procs + 1,
                    ),
                )
                for i in range(args.procs)
            ]
            for p in procs:
                p.start()
            barrier.wait(timeout=600)
            cpu0 = cpu_seconds(server.pid)
            results = collect(out, procs)
            server_cpu = cpu_seconds(server.pid) - cpu0
            # perf_counter is CLOCK_MONOTONIC: comparable across processes on Linux
            wall = max(r[3] for r in results) - min(r[2] for r in results)
            for p in procs:
                p.join()
            done = sum(r[1] for r in results)
            per_min = done / wall * 60
            print(
                f"enrolments: {done} by {args.procs} device processes "
                f"({args.tpm} TPM) in {wall:.2f} s"
            )
            print(f"  = {per_min:,.0f} enrolments/min  ({done / wall:.1f}/s)")
            print(
                f"  ratio vs Azure DPS quota ({AZURE_DPS_PER_MIN:,}/min per service): "
                f"{per_min / AZURE_DPS_PER_MIN:.2f}x"
            )
            print(f"  ratio vs target ({TARGET_PER_MIN:,}/min): {per_min / TARGET_PER_MIN:.2f}x")

            per_enrol_ms = server_cpu / done * 1000
            print(
                f"  server CPU: {server_cpu:.1f} s for {done} enrolments = {per_enrol_ms:.1f} ms "
                f"each -> server capacity ~{60_000 / per_enrol_ms:,.0f}/min per core; the rest of "
                "the wall time is the device processes (TPM work) and CPU contention"
            )
            tpm_s, busy_s = sum(r[5] for r in results), sum(r[6] for r in results)
            print(
                f"  device side: {tpm_s:.1f} s inside TPM calls of {busy_s:.1f} s of device "
                f"process time ({tpm_s / busy_s:.0%}); the rest is HTTP round trips to the "
                "server and client-side work"
            )
            enrolled_keys = [k for r in results for k in r[4]]
            extra = max(0, args.pollers - len(enrolled_keys))
            keys = enrolled_keys[: args.pollers] + add_poll_devices(data_dir, extra)
            shares = [keys[i :: args.poll_procs] for i in range(args.poll_procs)]
            barrier = ctx.Barrier(args.poll_procs + 1)
            out = ctx.Queue()
            pollers = [
                ctx.Process(
                    target=poll_worker,
                    args=(
                        url,
                        s,
                        args.poll_seconds,
                        args.concurrency,
                        args.poll_interval,
                        barrier,
                        out,
                    ),
                )
                for s in shares
            ]
            for p in pollers:
                p.start()
            barrier.wait(timeout=600)
            t0 = time.perf_counter()
            cpu0 = cpu_seconds(server.pid)
            lat = sorted(x for chunk in collect(out, pollers) for x in chunk)
            wall = time.perf_counter() - t0
            poll_cpu = cpu_seconds(server.pid) - cpu0
            for p in pollers:
                p.join()
            if not lat:
                print(f"polling: no request completed in {wall:.1f} s (raise --poll-seconds)")
                return 0
            p50 = statistics.median(lat) * 1000
            p99 = lat[int(len(lat) * 0.99) - 1] * 1000
            print(
                f"polling: {len(keys)} devices over {args.poll_procs * args.concurrency} "
                f"connections ({len(enrolled_keys[: args.pollers])} enrolled, "
                f"{extra} written to the DB), "
                f"{len(lat)} requests in {wall:.1f} s = {len(lat) / wall:,.0f} req/s; "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )
            every = len(keys) / (len(lat) / wall)
            mode = (
                f"each device polls every {args.poll_interval:g} s"
                if args.poll_interval
                else "closed loop (latency includes waiting for a free connection)"
            )
            print(f"  {mode}; achieved one poll per device every {every:.2f} s")
            print(
                f"  server CPU: {poll_cpu / len(lat) * 1000:.2f} ms per request -> capacity "
                f"~{len(lat) / max(poll_cpu, 1e-9):,.0f} req/s per core"
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: N simulated agents on the command channel of one ``bastion server``.

Run: ``.venv/bin/python bench/agents.py [--agents 10000] [--duration 30] [--commands 200]
[--rate 20] [--agent-procs 2] [--workers 2] [--bus auto|nats]``

What it does, all on this machine (loopback, plain HTTP):

1. raises this process's open-file limit (soft to hard; as root the hard limit too) so
   the server and the agents can hold one socket per agent, and prints what it got;
2. creates a PostgreSQL database for the run (``BASTION_BENCH_PG``, default
   ``postgresql://postgres@127.0.0.1:5432/postgres``; dropped at the end), migrates it,
   and writes an organisation, a fleet, an operator with a personal API token, and
   ``--agents`` device rows. Each device has its own P-256 identity key and a
   certificate for it. The keys are **software keys** held by the bench, not TPM keys:
   the bench measures the server, and one TPM signature per agent (swtpm ~10 ms) would
   only slow the start. The server verifies every upgrade signature exactly as for a
   real agent (RFC 9421, ADR 0032);
3. starts ``bastion server`` on the database, with ``--workers`` processes when this
   server has the cross-process bus (PostgreSQL LISTEN/NOTIFY), else one process and the
   in-process bus (a second process would only hear of a command at its 15 s poll);
   with ``--bus nats`` it starts a ``nats-server`` of its own (loopback, a free port,
   stopped at the end) and the server's processes use the NATS bus instead;
   prints which bus it used;
4. starts ``--agent-procs`` processes of asyncio agents; each agent signs its upgrade and
   opens ``/v1/device/channel``, answers every command with a result and otherwise idles
   (websockets keep-alive pings, as the real agent's client does);
5. measures, with all of them connected: the server's memory per connection (RSS of the
   server processes after minus before, over N), its idle CPU over ``--duration``
   seconds (% of one core; PostgreSQL's backends for this database separately), then the
   command delivery latency: ``--commands`` commands queued by the operator through the
   API at ``--rate`` per second to random agents, timed from just before the POST to the
   agent receiving it (p50/p99; goal p99 < 1 s).

If not every agent could connect, the figures are for those that did and the script
says how many failed and why. The machine is shared with other engineers' test runs:
figures are noisy; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import queue
import random
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

GOAL_P99_SECONDS = 1.0
PG_ADMIN_URL = os.environ.get("BASTION_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO_SRC = Path(__file__).resolve().parent.parent / "src"


# --- set-up -------------------------------------------------------------------------------------


def raise_open_files(want: int) -> tuple[int, int, str]:
    """Raise RLIMIT_NOFILE towards ``want`` (hard too when allowed): (soft, hard, note)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    note = ""
    if hard < want:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except OSError:
            nr_open = hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, nr_open), min(want, nr_open)))
        except (ValueError, OSError) as exc:
            note = f"; raising the hard limit to {min(want, nr_open)} was refused ({exc})"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard, note


def pg(dbname: str | None = None) -> Any:
    import psycopg

    url = PG_ADMIN_URL if dbname is None else PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def sqlalchemy_url(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def server_env(data_dir: Path, url: str) -> dict[str, str]:
    """Settings for the server (environment): cheap hashing, no rate limit in the way."""
    return {
        "BASTION_SERVER_DATA_DIR": str(data_dir),
        "BASTION_SERVER_DATABASE_URL": url,
        "BASTION_SERVER_ARGON2_TIME_COST": "1",
        "BASTION_SERVER_ARGON2_MEMORY_KIB": "8",
        "BASTION_SERVER_ARGON2_PARALLELISM": "1",
        "BASTION_SERVER_RATE_PER_SECOND": "1000000000",
        "BASTION_SERVER_RATE_BURST": "1000000000",
    }


def device_keys(n: int) -> list[tuple[str, bytes, str]]:
    """``n`` (device id, private key DER, certificate PEM) with a bench CA's certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench device CA")])
    now = dt.datetime.now(dt.UTC)
    out = []
    for _ in range(n):
        device_id = secrets.token_hex(16)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(ca_key, hashes.SHA256())
        )
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        out.append((device_id, der, cert.public_bytes(serialization.Encoding.PEM).decode()))
    return out


def prepare(data_dir: Path, url: str, devices: list[tuple[str, bytes, str]]) -> tuple[str, str]:
    """Migrate; org, fleet, operator + token, device rows. Returns (fleet id, token)."""
    from bastion.server.app import create_app
    from bastion.server.auth import tokens
    from bastion.server.devices.models import Device, DeviceStatus
    from bastion.server.orgs.models import Fleet, FleetMember, Organisation, OrgMember
    from bastion.server.settings import ServerSettings
    from bastion.server.users.models import User, UserToken

    settings = ServerSettings(
        data_dir=data_dir,
        database_url=url,
        argon2_time_cost=1,
        argon2_memory_kib=8,
        argon2_parallelism=1,
    )
    app = create_app(settings)
    ctx = app.state.ctx
    now = ctx.clock.now()
    try:
        with ctx.db.session() as session:
            from bastion.server.users import service as users

            user: User = users.create_user(
                ctx, session, "op@bench.invalid", "bench pw 123!", "bench"
            )
            org = Organisation(name="bench", created_at=now)
            session.add(org)
            session.flush()
            fleet = Fleet(org_id=org.id, name="bench", created_at=now, ek_policy="any")
            session.add(fleet)
            session.flush()
            session.add(OrgMember(org_id=org.id, user_id=user.id, role="member"))
            session.add(FleetMember(fleet_id=fleet.id, user_id=user.id, role="operator"))
            token, digest = tokens.new_token(tokens.PAT_PREFIX)
            session.add(
                UserToken(
                    user_id=user.id,
                    kind="pat",
                    name="bench",
                    token_hash=digest,
                    hint=tokens.token_hint(token),
                    scopes="read write",
                    created_at=now,
                    expires_at=now + dt.timedelta(days=1),
                    two_factor=False,
                )
            )
            session.commit()
            fleet_id = fleet.id
            for start in range(0, len(devices), 1000):
                session.add_all(
                    Device(
                        id=device_id,
                        fleet_id=fleet_id,
                        serial=f"bench-{start + i}",
                        status=DeviceStatus.ACTIVE,
                        ek_hash="00" * 32,
                        key_public=b"",
                        cert_serial=secrets.token_hex(8),
                        cert_sha256=secrets.token_hex(32),
                        certificate=cert,
                        api_key_hash=secrets.token_hex(32),
                        api_key_prefix="bst_dev_bench",
                        created_at=now,
                    )
                    for i, (device_id, _der, cert) in enumerate(devices[start : start + 1000])
                )
                session.commit()
    finally:
        ctx.db.dispose()
    return fleet_id, token


def cross_process_bus() -> bool:
    """True when this server has a cross-process bus (the ``bus_backend`` setting)."""
    from bastion.server.settings import ServerSettings

    return "bus_backend" in ServerSettings.model_fields


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str], port: int, workers: int, log: Path
) -> subprocess.Popen[bytes]:
    """``bastion server`` in its own session; its output goes to ``log``."""
    argv = [sys.executable, "-m", "bastion.cli.main", "server", "--listen", f"127.0.0.1:{port}"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_SRC), os.environ.get("PYTHONPATH", "")) if p
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=full, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"server exited during start-up ({proc.returncode}):\n{tail}")
        time.sleep(0.2)
    stop_server(proc)
    raise SystemExit("server did not answer /v1/health within 120 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the server and its workers
            proc.wait(timeout=10)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    out = [pid]
    for p in out:
        children = Path(f"/proc/{p}/task/{p}/children")
        with contextlib.suppress(OSError):
            out += [int(x) for x in children.read_text().split()]
    return out


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process still running (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[p] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_delta(before: dict[int, float], pids: list[int]) -> float:
    """CPU seconds spent since ``before`` by the processes present both times."""
    after = cpu_by_pid(pids)
    return sum(after[p] - before[p] for p in after if p in before)


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def pg_backends(dbname: str) -> list[int]:
    """PIDs of PostgreSQL backends serving ``dbname`` (same machine)."""
    with pg() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,)
        ).fetchall()
    return [int(r[0]) for r in rows]


# --- the simulated agents -----------------------------------------------------------------------


def _raw_signature(key: Any, base: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(base, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


async def _agents(
    index: int,
    url: str,
    devices: list[tuple[str, bytes]],
    status: Any,
    stop: Any,
    concurrency: int,
) -> None:
    from cryptography.hazmat.primitives.serialization import load_der_private_key
    from websockets.asyncio.client import connect

    from bastion import limits
    from bastion.trust import httpsig

    received: dict[str, float] = {}
    errors: list[str] = []
    connected = 0
    gate = asyncio.Semaphore(concurrency)
    ws_url = "ws" + url[len("http") :] + "/v1/device/channel"
    done = asyncio.Event()

    async def agent(device_id: str, der: bytes) -> None:
        nonlocal connected
        key = load_der_private_key(der, None)
        try:
            async with gate:
                # signed when its turn comes: a signature older than the server's window
                # (300 s) is refused, as it should be
                headers = httpsig.sign_request(
                    "GET",
                    "/v1/device/channel",
                    b"",
                    key_id=device_id,
                    created=int(time.time()),
                    nonce=httpsig.request_nonce(time.time()),
                    sign=lambda base: _raw_signature(key, base),
                )
                ws = await connect(
                    ws_url,
                    additional_headers=headers,
                    max_size=limits.CHANNEL_MESSAGE_MAX_SIZE,
                    open_timeout=120,
                    close_timeout=5,
                )
        except Exception as exc:  # the bench reports every refusal, it does not retry
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        connected += 1
        try:
            async with ws:
                async for text in ws:
                    message = json.loads(text)
                    if message.get("type") == "command":
                        received[message["id"]] = time.monotonic()
                        await ws.send(
                            json.dumps(
                                {"type": "result", "id": message["id"], "ok": True, "output": "b"}
                            )
                        )
        except Exception as exc:
            if not done.is_set():
                errors.append(f"after connect: {type(exc).__name__}: {exc}"[:200])
        finally:
            if not done.is_set():
                connected -= 1

    tasks = [asyncio.ensure_future(agent(d, k)) for d, k in devices]
    last = (-1, -1)
    while not stop.is_set():
        if (connected, len(errors)) != last:
            last = (connected, len(errors))
            status.put(("progress", index, connected, len(errors), errors[:3]))
        await asyncio.sleep(0.2)
    done.set()
    status.put(("received", index, received))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def agent_process(
    index: int,
    url: str,
    devices: list[tuple[str, bytes]],
    status: Any,
    stop: Any,
    concurrency: int,
) -> None:
    asyncio.run(_agents(index, url, devices, status, stop, concurrency))


# --- the operator -------------------------------------------------------------------------------


async def _queue_commands(
    url: str, token: str, fleet_id: str, device_ids: list[str], count: int, rate: float
) -> dict[str, float]:
    queued: dict[str, float] = {}
    refused: list[str] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client:

        async def one(device_id: str) -> None:
            t0 = time.monotonic()
            answer = await client.post(
                f"/v1/fleets/{fleet_id}/devices/{device_id}/commands",
                json={"kind": "check-update", "ttl_seconds": 600},
            )
            if answer.status_code != 201:
                refused.append(f"HTTP {answer.status_code} {answer.text[:120]}")
                return
            queued[answer.json()["id"]] = t0

        tasks = []
        start = time.monotonic()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(random.choice(device_ids))))
        await asyncio.gather(*tasks)
    if refused:
        print(f"operator: {len(refused)} of {count} commands refused by the server: {refused[0]}")
    return queued


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=30.0, help="idle CPU window, seconds")
    parser.add_argument("--commands", type=int, default=200, help="commands timed")
    parser.add_argument("--rate", type=float, default=20.0, help="commands queued per second")
    parser.add_argument("--agent-procs", type=int, default=2, help="agent processes")
    parser.add_argument("--workers", type=int, default=2, help="server processes (with the bus)")
    parser.add_argument(
        "--bus",
        choices=("auto", "nats"),
        default="auto",
        help="auto: the server's default (LISTEN/NOTIFY on PostgreSQL); nats: a local nats-server",
    )
    parser.add_argument(
        "--connect-concurrency", type=int, default=10, help="upgrades in flight per agent process"
    )
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_SRC), os.environ.get("PYTHONPATH", "")) if p
    )
    sys.path.insert(0, str(REPO_SRC))

    soft, hard, note = raise_open_files(4 * args.agents + 4096)
    print(
        f"open files: soft {soft}, hard {hard} (machine: nr_open "
        f"{Path('/proc/sys/fs/nr_open').read_text().strip()}, file-max "
        f"{Path('/proc/sys/fs/file-max').read_text().strip()}{note})"
    )
    per_proc = -(-args.agents // args.agent_procs)
    if per_proc + 1024 > soft:
        print(f"warning: {per_proc} sockets per agent process is near the open-file limit {soft}")

    bus_ok = cross_process_bus()
    workers = args.workers if bus_ok else 1
    bus = (
        "PostgreSQL LISTEN/NOTIFY (cross-process)"
        if bus_ok
        else "in-process LocalBus (no cross-process bus on this branch yet: 1 worker)"
    )
    bus_env: dict[str, str] = {}
    nats_proc: subprocess.Popen[bytes] | None = None
    if args.bus == "nats":
        nats_port = free_port()
        nats_proc = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(nats_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bus_env = {
            "BASTION_SERVER_BUS_BACKEND": "nats",
            "BASTION_SERVER_NATS_URL": f"nats://127.0.0.1:{nats_port}",
        }
        bus = f"NATS (cross-process; nats-server on 127.0.0.1:{nats_port}, pid {nats_proc.pid})"
    print(f"server: bastion server, {workers} worker(s), bus: {bus}")
    shown = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("BASTION_SERVER_")
        and ("CONCURRENCY" in k or k.startswith("BASTION_SERVER_DB_"))
    }
    print(f"server settings from the environment: {shown or 'defaults'}")
    print(
        "agents: software P-256 keys for the request signatures (not TPM keys: the bench "
        "measures the server; each upgrade is still verified as a real agent's)"
    )
    dbname = f"bastion_bench_{secrets.token_hex(4)}"
    try:
        with pg() as admin:
            admin.execute(f'CREATE DATABASE "{dbname}"')
    except Exception as exc:
        raise SystemExit(f"PostgreSQL at {PG_ADMIN_URL} is needed: {exc}") from exc
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    server = None
    handle, log_name = tempfile.mkstemp(prefix="bastion-bench-server-", suffix=".log")
    os.close(handle)
    server_log = Path(log_name)
    stop = ctx.Event()
    try:
        with tempfile.TemporaryDirectory(prefix="bastion-bench-agents-") as tmp:
            data_dir = Path(tmp) / "server"
            url_db = sqlalchemy_url(dbname)
            t = time.perf_counter()
            devices = device_keys(args.agents)
            fleet_id, token = prepare(data_dir, url_db, devices)
            print(f"set-up: {args.agents} devices in {time.perf_counter() - t:.1f} s")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine, shared)")
            server = start_server(
                {**server_env(data_dir, url_db), **bus_env}, port, workers, server_log
            )
            time.sleep(1.0)
            tree = process_tree(server.pid)
            rss_before = rss_bytes(tree)

            status = ctx.Queue()
            for index in range(args.agent_procs):
                chunk = [(d, k) for d, k, _c in devices[index :: args.agent_procs]]
                p = ctx.Process(
                    target=agent_process,
                    args=(index, url, chunk, status, stop, args.connect_concurrency),
                )
                p.start()
                procs.append(p)
            t = time.perf_counter()
            latest: dict[int, tuple[int, int, list[str]]] = {}
            # a loaded 2-core host connects 15-25 agents a second; measuring while agents
            # still connect would time the connect storm, not the delivery
            deadline = time.monotonic() + max(120.0, args.agents / 8)
            settled_at = None
            while time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    item = status.get(timeout=0.5)
                    latest[item[1]] = (item[2], item[3], item[4])
                connected = sum(v[0] for v in latest.values())
                failed = sum(v[1] for v in latest.values())
                if connected + failed >= args.agents:
                    settled_at = settled_at or time.monotonic()
                    if time.monotonic() - settled_at > 2.0:
                        break
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise SystemExit("an agent process died")
            connect_seconds = time.perf_counter() - t
            connected = sum(v[0] for v in latest.values())
            failed = sum(v[1] for v in latest.values())
            print(
                f"connected: {connected} of {args.agents} agents in {connect_seconds:.1f} s "
                f"({connected / connect_seconds:.0f}/s); failed: {failed}"
            )
            for v in latest.values():
                for error in v[2]:
                    print(f"  failure: {error}")
            if connected == 0:
                raise SystemExit("no agent could connect")
            time.sleep(3.0)  # let the first reads of every channel finish
            tree = process_tree(server.pid)
            rss_after = rss_bytes(tree)
            per_connection = (rss_after - rss_before) / connected
            print(
                f"server RSS: {rss_before / 2**20:.0f} MiB before, {rss_after / 2**20:.0f} MiB "
                f"with {connected} connections: {per_connection / 1024:.1f} KiB per connection"
            )

            backends = pg_backends(dbname)
            agent_pids = [p.pid for p in procs]
            cpu0, pg0, agents0 = cpu_by_pid(tree), cpu_by_pid(backends), cpu_by_pid(agent_pids)
            time.sleep(args.duration)
            idle = cpu_delta(cpu0, tree) / args.duration
            pg_idle = cpu_delta(pg0, backends) / args.duration
            agents_idle = cpu_delta(agents0, agent_pids) / args.duration
            print(
                f"idle CPU over {args.duration:.0f} s: server {100 * idle:.1f}% of a core "
                f"({100 * idle / connected * 1000:.2f}% per 1,000 connections); PostgreSQL "
                f"backends {100 * pg_idle:.1f}%; agent processes {100 * agents_idle:.1f}%"
            )

            device_ids = [d for d, _k, _c in devices]
            queued = asyncio.run(
                _queue_commands(url, token, fleet_id, device_ids, args.commands, args.rate)
            )
            time.sleep(3.0)
            stop.set()
            received: dict[str, float] = {}
            answered = 0
            while answered < len(procs):
                item = status.get(timeout=60)
                if item[0] == "received":
                    received.update(item[2])
                    answered += 1
            latencies = [received[c] - t0 for c, t0 in queued.items() if c in received]
            missing = len(queued) - len(latencies)
            if not latencies:
                raise SystemExit("no command reached an agent")
            p50 = statistics.median(latencies)
            p99 = percentile(latencies, 0.99)
            print(
                f"command delivery: {len(latencies)} of {len(queued)} commands at "
                f"{args.rate:g}/s: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                f"max {max(latencies) * 1000:.0f} ms; not delivered within 3 s: {missing}"
            )
            print(
                f"ratio p99 / goal ({GOAL_P99_SECONDS:g} s): {p99 / GOAL_P99_SECONDS:.2f} "
                f"({'met' if p99 < GOAL_P99_SECONDS else 'MISSED'}); connections held: "
                f"{connected / args.agents:.2f} of the {args.agents} asked"
            )
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            log_lines = server_log.read_text(errors="replace").splitlines()
            problems = [line for line in log_lines if "ERROR" in line or "WARNING" in line]
            pool = sum(line.startswith("sqlalchemy.exc.TimeoutError") for line in log_lines)
            print(f"server log: {len(problems)} warnings/errors ({pool} database pool timeouts)")
            for line in problems[:5]:
                print(f"  {line[:200]}")
            return 0 if missing == 0 and failed == 0 else 1
    except BaseException:
        if server_log.exists():
            lines = server_log.read_text(errors="replace").splitlines()
            trouble = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
            if trouble:
                end = trouble[0] + 1
                while end < len(lines) and lines[end].startswith(" "):
                    end += 1
                print("server log, its first error:")
                print("\n".join(lines[max(trouble[0], end - 8) : end + 1]))
            print(f"server log kept: {server_log}")
            server_log = Path(os.devnull)  # not deleted below
        raise
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        if server is not None:
            stop_server(server)
        if nats_proc is not None:
            nats_proc.terminate()
            nats_proc.wait(timeout=10)
        with contextlib.suppress(Exception), pg() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        if server_log != Path(os.devnull):
            server_log.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())

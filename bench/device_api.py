"""Benchmark: device API requests per second on PostgreSQL, against a bare ASGI app.

Issue 13's goal: >= 2,000 device API requests/s at p99 < 50 ms on 2 cores, with
``bastion server --workers 2`` on PostgreSQL. This script:

1. creates a PostgreSQL database (dropped afterwards) and, in-process, a fleet with
   ``--devices`` devices enrolled for real (software TPM, the provisioning API); the
   fleet has golden values and each device a fresh passing verdict, so the attestation
   gate is enforced and passes (the realistic hot path);
2. starts ``bastion server --workers W`` as a separate process;
3. drives it with ``wrk`` (Debian package ``wrk``; a separate process, C, one thread)
   over the device routes a heartbeat uses, rotating through every device's API key:
   ``GET /v1/device/config`` (gated), ``GET /v1/device/target-release`` (gated),
   ``GET /v1/device`` (own record);
   it runs twice: with the device answer cache (ADR 0044; the default on PostgreSQL,
   so after the warm-up nearly every request is a kept answer) and without it (every
   request reads the database: a device's first request after a change, or after its
   answer's deadline, costs this); the goal is judged on the first;
4. measures the same wrk run against a bare Starlette app returning a fixed JSON body
   under uvicorn with the same worker count: the framework's ceiling on this machine,
   for the ratio.

Usage: .venv/bin/python bench/device_api.py [--seconds S] [--workers W] [--devices N]
       [--connections C] [--pg URL]
Prints requests/s, p50/p99 latency, non-2xx answers (must be 0), and the ratios against
the goal and the bare app. Other work on the machine (wrk shares the 2 cores) makes
absolute figures noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

GOAL_RPS = 2000.0
GOAL_P99_MS = 50.0
#: the server's source tree (BASTION_BENCH_SRC: measure another checkout, e.g. a "before")
SRC = Path(os.environ.get("BASTION_BENCH_SRC", Path(__file__).resolve().parents[1] / "src"))
ROUTES = ("/v1/device/config", "/v1/device/target-release", "/v1/device")

WRK_SCRIPT = """
local tokens = {%(tokens)s}
local paths = {%(paths)s}
local n = 0
request = function()
  n = n + 1
  local t = tokens[(n %% #tokens) + 1]
  local p = paths[(math.floor(n / #tokens) %% #paths) + 1]
  return wrk.format("GET", p, {["Authorization"] = "Bearer " .. t})
end
"""

BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def handler(request):
    return JSONResponse({"fleet_id": "0" * 32, "config": {}, "env": {}, "overridden": []})

app = Starlette(routes=[Route(p, handler) for p in %(paths)r])
"""


def bastion_http_impl() -> str:
    """The HTTP protocol ``bastion server`` runs (the bare app runs the same one)."""
    sys.path.insert(0, str(SRC))
    try:
        from bastion.server.tlsproto import http_protocol
    except ImportError:  # a checkout from before httptools (BASTION_BENCH_SRC): h11
        return "h11"
    return "httptools" if "HttpTools" in http_protocol().__name__ else "h11"  # same parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=3)


@contextmanager
def scratch(pg: str, prefix: str) -> Iterator[tuple[str, Path]]:
    """A database of its own on the PostgreSQL server of ``pg`` and a temporary folder,
    both named after ``prefix`` and removed afterwards: (database URL, folder)."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with pg_admin(pg) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise SystemExit(f"cannot create a scratch database on {pg} (--pg): {exc}") from exc
    tmp = Path(tempfile.mkdtemp(prefix=prefix.replace("_", "-") + "-"))
    try:
        yield pg.rsplit("/", 1)[0] + "/" + name, tmp
    finally:
        with pg_admin(pg) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def setup_fleet(database_url: str, data_dir: Path, devices: int) -> list[str]:
    """Enrol ``devices`` devices into a gated fleet; their API keys."""
    from fastapi.testclient import TestClient

    from bastion.device.provision import provision
    from bastion.io.http import HttpClient
    from bastion.server.app import create_app
    from bastion.server.attestation.models import AttestationVerdict, FleetGolden
    from bastion.server.orgs.models import Fleet, FleetMember, Organisation, OrgMember
    from bastion.server.settings import ServerSettings
    from bastion.server.users import service as users
    from bastion.tpm.software import SoftwareTpm

    settings = ServerSettings(
        data_dir=data_dir,
        database_url=database_url,
        argon2_time_cost=1,
        argon2_memory_kib=8,
        argon2_parallelism=1,
        webhook_worker=False,
    )
    app = create_app(settings)
    ctx = app.state.ctx
    now = ctx.clock.now()
    with ctx.db.session() as session:
        owner = users.create_user(ctx, session, "bench@example.org", "correct horse battery", "b")
        org = Organisation(name="bench", created_at=now)
        session.add(org)
        session.flush()
        fleet = Fleet(
            org_id=org.id,
            name="cams",
            created_at=now,
            ek_policy="any",
            config='{"target_release": "1.2.3", "mode": "prod"}',
        )
        session.add(fleet)
        session.flush()
        session.add(OrgMember(org_id=org.id, user_id=owner.id, role="owner"))
        session.add(FleetMember(fleet_id=fleet.id, user_id=owner.id, role="admin"))
        session.commit()
        fleet_id = fleet.id
    keys: list[str] = []
    with TestClient(app) as client:
        token = client.post(
            "/v1/auth/login",
            json={"email": "bench@example.org", "password": "correct horse battery"},
        ).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        key = client.post(
            f"/v1/fleets/{fleet_id}/provisioning-keys",
            json={"name": "bench", "max_uses": devices},
            headers=headers,
        ).json()["key"]
        for i in range(devices):
            folder = data_dir.parent / f"tpm{i}"
            folder.mkdir()
            tpm = SoftwareTpm(folder / "tpm.state")
            identity = provision(tpm, HttpClient.over(client), provisioning_key=key, serial=f"b{i}")
            keys.append(identity.api_key(tpm))
            with ctx.db.session() as session:
                session.add(
                    AttestationVerdict(
                        device_id=identity.device_id,
                        fleet_id=fleet_id,
                        at=now + dt.timedelta(days=1),
                        ok=True,
                        failures="[]",
                    )
                )
                session.commit()
    with ctx.db.session() as session:  # golden values: the gate is enforced (and passes)
        session.add(
            FleetGolden(
                fleet_id=fleet_id,
                sha256="0" * 64,
                version="1.0",
                security_version=1,
                statement=b"bench",
                added_by="bench",
                added_at=now,
            )
        )
        session.commit()
    ctx.db.dispose()
    return keys


def start(argv: list[str], env: dict[str, str], url: str, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    proc = subprocess.Popen(
        argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{argv[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    stop(proc)
    raise SystemExit(f"nothing answered on {url}")


def server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every device bench takes: ``--workers``, ``--pg``, ``--json``."""
    parser.add_argument("--workers", type=int, default=2, help="bastion server processes")
    parser.add_argument(
        "--pg",
        default=os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL URL the bench may create and drop a database on",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting for the run (docs/server.md), e.g. db_pool_size=30; repeatable",
    )


def server_env(access_log: bool = False, settings: list[str] | None = None) -> dict[str, str]:
    """The environment a bench starts ``bastion server`` with: this process's, without
    its ``BASTION_SERVER_*`` settings, running the source tree under test, with a rate
    limit no bench reaches and the access log off unless ``access_log`` (the bare app
    logs no request either), then ``settings`` (``--set NAME=VALUE``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_SERVER_")}
    env.update(
        PYTHONPATH=str(SRC),
        BASTION_SERVER_RATE_PER_SECOND="1000000",
        BASTION_SERVER_RATE_BURST="1000000",
        BASTION_SERVER_ACCESS_LOG="true" if access_log else "false",
    )
    for setting in settings or ():
        name, sep, value = setting.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set {setting!r}: give NAME=VALUE")
        env[f"BASTION_SERVER_{name.upper()}"] = value
    return env


def start_server(
    data_dir: Path, database_url: str, workers: int, env: dict[str, str], answer_cache: bool
) -> tuple[subprocess.Popen[bytes], int]:
    """``bastion server --workers W`` on a free loopback port, with the device answer
    cache (ADR 0044) on or off; the process (its own group) and the port."""
    port = free_port()
    argv = [sys.executable, "-c", "from bastion.cli.main import entry; entry()", "server"]
    argv += ["--data-dir", str(data_dir), "--database-url", database_url]
    argv += ["--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
    server = start(
        argv,
        {**env, "BASTION_SERVER_DEVICE_ANSWER_CACHE": "true" if answer_cache else "false"},
        f"http://127.0.0.1:{port}/v1/health",
        data_dir.parent / "server.log",
    )
    return server, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def group_stats(pgid: int) -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of ``/proc/PID/stat`` after the command) of every live process in
    process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ...
            yield int(entry.name), fields


def group_cpu_by_pid(pgid: int) -> dict[int, float]:
    """User + system CPU seconds of each live process in process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    return {pid: (int(f[11]) + int(f[12])) / tick for pid, f in group_stats(pgid)}


def named_cpu_by_pid(name: str) -> dict[int, float]:
    """User + system CPU seconds of each live process whose command is ``name`` (all of
    PostgreSQL's processes: ``postgres``), with those of its children that ended and
    were reaped (PostgreSQL's postmaster reaps every backend: a connection that closes
    takes its CPU time there); compare two readings pid by pid, as processes come and
    go."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, _, rest = (entry / "stat").read_text().rpartition(")")
        except OSError:
            continue
        if head.partition("(")[2] == name:
            fields = rest.split()
            found[int(entry.name)] = sum(int(f) for f in fields[11:15]) / tick
    return found


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two per-process readings: of the processes still alive, and
    all of those started in between (those that ended in between are not counted)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


#: the columns of /proc/stat's ``cpu`` line, in order
PROC_STAT_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu() -> dict[str, float]:
    """CPU seconds of the whole machine since boot by kind (``/proc/stat``: user, nice,
    system, idle, iowait, irq, softirq, steal), summed over all cores."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    tick = os.sysconf("SC_CLK_TCK")
    return {name: int(v) / tick for name, v in zip(PROC_STAT_COLUMNS, fields, strict=False)}


def machine_busy(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """% of one core the machine spent, by kind, between two :func:`machine_cpu` readings
    ``seconds`` apart (``busy``: all but idle and iowait)."""
    spent = {k: 100.0 * (after[k] - before[k]) / seconds for k in after}
    spent["busy"] = sum(v for k, v in spent.items() if k not in ("idle", "iowait"))
    return spent


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid``."""
    return sum(group_cpu_by_pid(pgid).values())


def wrk(
    url: str,
    script: Path,
    seconds: float,
    connections: int,
    pgid: int | None = None,
    script_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One wrk run (one thread) of ``script``; its figures, and the server's CPU per
    request when ``pgid`` (the server's process group) is given. A script that paces its
    requests prints a ``bastion-lag`` line (:func:`schedule_lag`): its figures are added."""
    cpu_before = group_cpu_seconds(pgid) if pgid else 0.0
    wrk_before = os.times()
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--latency",
            "-s",
            str(script),
            url,
            *(["--", *script_args] if script_args else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    text = done.stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            raise SystemExit(f"no {label} latency in wrk output:\n{text}")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    if rps is None:
        raise SystemExit(f"no Requests/sec in wrk output:\n{text}")
    served = float(rps.group(1)) * seconds
    cpu = (group_cpu_seconds(pgid) - cpu_before) if pgid else 0.0
    wrk_after = os.times()
    lag = re.search(r"^bastion-lag(.*)$", text, re.M)
    codes = re.search(r"^bastion-status(.*)$", text, re.M)
    refusal = re.search(r"^bastion-refusal (.*)$", text, re.M)
    sent = re.search(r"^bastion-sent (\d+)$", text, re.M)
    return {
        **({"sent": int(sent.group(1))} if sent else {}),
        **(schedule_lag(lag.group(1)) if lag else {}),
        **(
            {
                "statuses": {
                    c: int(n) for c, _, n in (p.partition(":") for p in codes.group(1).split())
                }
            }
            if codes
            else {}
        ),
        **({"first_refusal": refusal.group(1)[:300]} if refusal else {}),
        "wrk_cpu_seconds": (wrk_after.children_user - wrk_before.children_user)
        + (wrk_after.children_system - wrk_before.children_system),
        "rps": float(rps.group(1)),
        "requests": served,
        # server CPU (all its processes, not PostgreSQL) per request: robust on a busy host
        "cpu_ms_per_request": 1000.0 * cpu / served if served else 0.0,
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "non_2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def schedule_lag(histogram: str) -> dict[str, float]:
    """Figures of a paced wrk script's ``bastion-lag`` line: ``ms:count`` pairs, how many
    requests were sent that many whole milliseconds after their scheduled time (0: on
    time). A request sent late waited that long on the client because every connection
    was busy: in an open system it would have waited in the server's queue instead, so
    its latency as wrk records it is short by its lag (coordinated omission)."""
    counts: dict[int, int] = {}
    for pair in histogram.split():
        ms, _, count = pair.partition(":")
        counts[int(ms)] = counts.get(int(ms), 0) + int(count)
    total = sum(counts.values())
    if not total:
        return {"lag_p50_ms": 0.0, "lag_p99_ms": 0.0, "lag_max_ms": 0.0, "late_fraction": 0.0}

    def quantile(q: float) -> float:
        seen = 0
        for ms in sorted(counts):
            seen += counts[ms]
            if seen >= q * total:
                return float(ms)
        return float(max(counts))

    return {
        "lag_p50_ms": quantile(0.5),
        "lag_p99_ms": quantile(0.99),
        "lag_max_ms": float(max(counts)),
        # sent 5 ms or more after their time
        "late_fraction": sum(c for ms, c in counts.items() if ms >= 5) / total,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    server_arguments(parser)
    parser.add_argument(
        "--access-log", action="store_true", help="keep bastion's access log (off: as the bare app)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    name = f"bench_device_api_{secrets.token_hex(4)}"
    with pg_admin(args.pg) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database_url = args.pg.rsplit("/", 1)[0] + "/" + name
    tmp = Path(tempfile.mkdtemp(prefix="bench-device-api-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        keys = setup_fleet(database_url, tmp / "data", args.devices)
        script = tmp / "device.lua"
        script.write_text(
            WRK_SCRIPT
            % {
                "tokens": ", ".join(json.dumps(k) for k in keys),
                "paths": ", ".join(json.dumps(p) for p in ROUTES),
            }
        )
        env = server_env(args.access_log, args.set)
        runs: dict[str, dict[str, float]] = {}
        for cache in (True, False):
            server, port = start_server(tmp / "data", database_url, args.workers, env, cache)
            procs.append(server)
            base = f"http://127.0.0.1:{port}"
            for path in ROUTES:  # every route answers 200 for every device before we measure
                for key in keys:
                    r = httpx.get(base + path, headers={"Authorization": f"Bearer {key}"})
                    if r.status_code != 200:
                        raise SystemExit(f"{path}: {r.status_code} {r.text[:200]}")
            wrk(base, script, 2, args.connections)  # warm-up
            runs["cache" if cache else "no_cache"] = wrk(
                base, script, args.seconds, args.connections, server.pid
            )
            stop(server)
        ours, cold = runs["cache"], runs["no_cache"]
        (tmp / "bare_app.py").write_text(BARE_APP % {"paths": list(ROUTES)})
        http_impl = bastion_http_impl()
        bare_port = free_port()
        bare = start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(bare_port),
                "--workers",
                str(args.workers),
                "--log-level",
                "warning",
                "--http",
                http_impl,
            ],
            {**env, "PYTHONPATH": f"{tmp}:{SRC}"},
            f"http://127.0.0.1:{bare_port}/v1/device",
            tmp / "bare.log",
        )
        procs.append(bare)
        bare_base = f"http://127.0.0.1:{bare_port}"
        wrk(bare_base, script, 2, args.connections)
        ref = wrk(bare_base, script, args.seconds, args.connections, bare.pid)
    finally:
        for proc in procs:
            stop(proc)
        with pg_admin(args.pg) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    figures = {
        "http": bastion_http_impl(),
        "access_log": args.access_log,
        "workers": args.workers,
        "devices": args.devices,
        "connections": args.connections,
        "cores": os.cpu_count(),
        "bastion": ours,
        "bastion_no_answer_cache": cold,
        "bare_asgi": ref,
        "ratio_to_goal": ours["rps"] / GOAL_RPS,
        "ratio_to_bare": ours["rps"] / ref["rps"],
        # what the server's CPU cost alone would allow on all cores, if nothing else ran
        "projected_rps_all_cores": 1000.0 * (os.cpu_count() or 1) / ours["cpu_ms_per_request"]
        if ours["cpu_ms_per_request"]
        else 0.0,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"device API, {args.workers} workers on PostgreSQL, {os.cpu_count()} cores, wrk "
            f"-c{args.connections} over {len(ROUTES)} routes x {args.devices} devices; HTTP "
            f"parser {figures['http']} (both apps); bastion access log "
            f"{'on' if args.access_log else 'off'}; load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"  bastion, answer cache on: {ours['rps']:8.0f} req/s  p50 {ours['p50_ms']:6.1f} ms  "
            f"p99 {ours['p99_ms']:6.1f} ms  non-2xx {int(ours['non_2xx'])}  "
            f"server CPU {ours['cpu_ms_per_request']:.2f} ms/request"
        )
        print(
            f"  bastion, answer cache off (every request a miss): {cold['rps']:8.0f} req/s  "
            f"p50 {cold['p50_ms']:6.1f} ms  p99 {cold['p99_ms']:6.1f} ms  "
            f"non-2xx {int(cold['non_2xx'])}  "
            f"server CPU {cold['cpu_ms_per_request']:.2f} ms/request"
        )
        print(
            f"  bare app: {ref['rps']:8.0f} req/s  p50 {ref['p50_ms']:6.1f} ms  "
            f"p99 {ref['p99_ms']:6.1f} ms  server CPU {ref['cpu_ms_per_request']:.2f} ms/request"
        )
        print(
            f"  ratio to the goal ({GOAL_RPS:.0f}/s, p99 < {GOAL_P99_MS:.0f} ms): "
            f"{figures['ratio_to_goal']:.2f}; ratio to the bare ASGI app: "
            f"{figures['ratio_to_bare']:.2f}; server CPU alone would allow "
            f"{figures['projected_rps_all_cores']:.0f}/s on {os.cpu_count()} cores"
        )
    met = ours["rps"] >= GOAL_RPS and ours["p99_ms"] < GOAL_P99_MS and ours["non_2xx"] == 0
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the device API at the goal's rate with a fleet that calls once a minute.

Issue 13's goal is 2,000 device requests/s at p99 < 50 ms on 2 cores. ``bench/
device_api.py`` reaches it by repeating 8 devices' requests (nearly every request is a
kept answer of ADR 0044); ``bench/device_heartbeat.py`` measures CPU per request at 15
requests/s. This one sends the goal's rate as a real fleet would: ``--fleet`` devices
(40,000 by default: at 2,000 requests/s and three requests per heartbeat, each device
calls once a minute), each sending its heartbeat (``GET /v1/device``, ``/config``,
``/target-release``, in that order) once per pass over the fleet.

1. enrols ``--enrolled`` devices for real (TPM-backed provisioning, a passing verdict;
   ``device_api.setup_fleet``), then copies the first one ``--fleet`` times in SQL: each
   copy has its own id, serial, certificate digest, API key and passing verdict;
2. starts ``bastion server --workers W`` on PostgreSQL, answer cache on (the default);
3. fills: wrk walks the fleet for ``--fill`` seconds (every answer of each worker is
   made once by the full path, as after a restart);
4. measures: wrk walks on for ``--seconds``; prints requests/s, p50, p99, server CPU per
   request (all its processes; PostgreSQL and wrk excluded) and the server's memory.

wrk runs one thread and one counter: request ``k`` is device ``k // 3 mod N``'s
``HEARTBEAT[k mod 3]``, so no device is asked twice within a pass, and a pass takes
``3 N / rate`` seconds (60 s at the goal). Kept answers live 900 s (ADR 0045); a run
shorter than that sees no answer expire: in the steady state each worker makes each
answer again every 900 s, about 13 % misses for a once-a-minute device (counted from the
rules), which this run does not include.

Usage: .venv/bin/python bench/device_fleet.py [--fleet N] [--seconds S] [--fill S]
       [--workers W] [--connections C] [--pg URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_api import (
    GOAL_P99_MS,
    GOAL_RPS,
    SRC,
    group_cpu_by_pid,
    group_stats,
    scratch,
    server_arguments,
    server_env,
    setup_fleet,
    start_server,
    stop,
    wrk,
)

#: one heartbeat, in the agent's order (its record first)
HEARTBEAT = ("/v1/device", "/v1/device/config", "/v1/device/target-release")

WRK_FLEET_SCRIPT = """
local tokens = {}
for line in io.lines(%(keys)s) do tokens[#tokens + 1] = line end
local paths = {%(paths)s}
local n = -1
init = function(args)
  -- where the fill stopped: the measured run walks on from there
  n = tonumber(args[1] or "0") - 1
end
request = function()
  n = n + 1
  local t = tokens[(math.floor(n / #paths) %% #tokens) + 1]
  local p = paths[(n %% #paths) + 1]
  return wrk.format("GET", p, {["Authorization"] = "Bearer " .. t})
end
"""

#: the rows a copy takes from its original, but these (SQL over the copy ``v``)
_DEVICE_OVERRIDES = {
    "id": "v.id",
    "serial": "'copy-' || v.id",
    "cert_sha256": "v.cert",
    "api_key_hash": "v.hash",
    "last_seen_at": "NULL",
}


def copy_devices(database_url: str, count: int) -> list[str]:
    """``count`` copies of the first enrolled device and of its verdicts, each with its
    own id, serial, certificate digest and API key; the copies' API keys."""
    sys.path.insert(0, str(SRC))
    from sqlalchemy import create_engine, text

    from bastion.server.auth.tokens import new_token, token_hash
    from bastion.server.db.base import Base
    from bastion.server.provisioning.policy import DEVICE_KEY_PREFIX

    keys = [new_token(DEVICE_KEY_PREFIX)[0] for _ in range(count)]
    ids = [secrets.token_hex(16) for _ in range(count)]
    certs = [secrets.token_hex(32) for _ in range(count)]
    device_columns = [c.name for c in Base.metadata.tables["devices"].columns]
    verdict_columns = [
        c.name for c in Base.metadata.tables["attestation_verdicts"].columns if c.name != "id"
    ]
    devices_sql = (
        f"INSERT INTO devices ({', '.join(device_columns)}) SELECT "
        + ", ".join(_DEVICE_OVERRIDES.get(c, f"d.{c}") for c in device_columns)
        + " FROM devices d, unnest(CAST(:ids AS text[]), CAST(:certs AS text[]),"
        " CAST(:hashes AS text[])) AS v(id, cert, hash) WHERE d.id = :original"
    )
    verdicts_sql = (
        f"INSERT INTO attestation_verdicts ({', '.join(verdict_columns)}) SELECT "
        + ", ".join("v.id" if c == "device_id" else f"a.{c}" for c in verdict_columns)
        + " FROM attestation_verdicts a, unnest(CAST(:ids AS text[])) AS v(id)"
        " WHERE a.device_id = :original"
    )
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            original = conn.execute(
                text("SELECT id FROM devices ORDER BY created_at, id LIMIT 1")
            ).scalar_one()
            for start in range(0, count, 5000):
                chunk = slice(start, start + 5000)
                conn.execute(
                    text(devices_sql),
                    {
                        "ids": ids[chunk],
                        "certs": certs[chunk],
                        "hashes": [token_hash(k) for k in keys[chunk]],
                        "original": original,
                    },
                )
                conn.execute(text(verdicts_sql), {"ids": ids[chunk], "original": original})
            conn.execute(text("ANALYZE devices"))
            conn.execute(text("ANALYZE attestation_verdicts"))
    finally:
        engine.dispose()
    return keys


def group_rss_mib(pgid: int) -> list[float]:
    """Resident memory (MiB) of each process in group ``pgid`` (the server's parent and
    its workers), largest first."""
    page = os.sysconf("SC_PAGE_SIZE")
    return sorted((int(f[21]) * page / 2**20 for _, f in group_stats(pgid)), reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=int, default=40_000)
    parser.add_argument("--enrolled", type=int, default=4)
    parser.add_argument("--fill", type=float, default=360.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=32)
    server_arguments(parser)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    if args.fleet < 1 or args.seconds < 1 or args.fill < 0:
        raise SystemExit("--fleet and --seconds must be at least 1, --fill at least 0")
    with scratch(args.pg, "bench_device_fleet") as (database_url, tmp):
        print(f"enrolling {args.enrolled} devices ...", file=sys.stderr)
        setup_fleet(database_url, tmp / "data", args.enrolled)
        began = time.monotonic()
        keys = copy_devices(database_url, args.fleet)
        print(f"copied {len(keys)} devices in {time.monotonic() - began:.1f} s", file=sys.stderr)
        (tmp / "keys.txt").write_text("\n".join(keys) + "\n")
        script = tmp / "fleet.lua"
        script.write_text(
            WRK_FLEET_SCRIPT
            % {
                "keys": json.dumps(str(tmp / "keys.txt")),
                "paths": ", ".join(json.dumps(p) for p in HEARTBEAT),
            }
        )
        env = server_env()
        server, port = start_server(tmp / "data", database_url, args.workers, env, True)
        base = f"http://127.0.0.1:{port}"
        try:
            walked, filled = 0, {}
            if args.fill:
                print(f"filling for {args.fill:g} s ...", file=sys.stderr)
                filled = wrk(base, script, args.fill, args.connections)
                walked = int(filled["requests"])
                print(
                    f"  fill: {filled['rps']:.0f} requests/s, "
                    f"{walked / (3 * args.fleet):.1f} passes, non-2xx "
                    f"{int(filled['non_2xx'])}, p99 {filled['p99_ms']:.1f} ms",
                    file=sys.stderr,
                )
            print(f"measuring for {args.seconds:g} s ...", file=sys.stderr)
            cpu_before = group_cpu_by_pid(server.pid)
            run = wrk(base, script, args.seconds, args.connections, server.pid, (str(walked),))
            cpu_after = group_cpu_by_pid(server.pid)
            # how the load fell on the processes (the workers share one socket)
            busy = sorted(
                (
                    100.0 * (cpu_after[pid] - cpu_before.get(pid, 0.0)) / args.seconds
                    for pid in cpu_after
                ),
                reverse=True,
            )
            rss = group_rss_mib(server.pid)
        finally:
            stop(server)

    figures: dict[str, Any] = {
        "fill": filled if args.fill else None,
        "fleet": args.fleet,
        "workers": args.workers,
        "cores": os.cpu_count(),
        "connections": args.connections,
        "seconds": args.seconds,
        **run,
        "pass_seconds": 3 * args.fleet / run["rps"] if run["rps"] else 0.0,
        "server_rss_mib": rss,
        "server_cpu_percent_by_process": busy,
        "ratio_to_goal": run["rps"] / GOAL_RPS if run["p99_ms"] < GOAL_P99_MS else 0.0,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"device fleet: {args.fleet} devices, each GET /v1/device, /config, /target-release "
        f"once per pass; {args.workers} workers on PostgreSQL, {os.cpu_count()} cores, wrk "
        f"-c{args.connections} for {args.seconds:g} s after {args.fill:g} s of fill; load "
        f"average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"  {figures['rps']:.0f} requests/s, p50 {figures['p50_ms']:.1f} ms, p99 "
        f"{figures['p99_ms']:.1f} ms, non-2xx {int(figures['non_2xx'])}, server CPU "
        f"{figures['cpu_ms_per_request']:.2f} ms/request; a pass over the fleet takes "
        f"{figures['pass_seconds']:.0f} s"
    )
    if filled:
        print(
            f"  fill (from cold): {filled['rps']:.0f} requests/s over "
            f"{filled['requests'] / (3 * args.fleet):.1f} passes, p99 {filled['p99_ms']:.1f} ms, "
            f"non-2xx {int(filled['non_2xx'])}"
        )
    print("  server CPU by process (% of one core): " + ", ".join(f"{b:.0f}" for b in busy))
    print("  server memory after the run: " + ", ".join(f"{m:.0f} MiB" for m in rss))
    print(
        f"  ratio to the goal ({GOAL_RPS:.0f}/s at p99 < {GOAL_P99_MS:.0f} ms): "
        f"{figures['ratio_to_goal']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: server CPU per device request when each device calls once a minute.

``bench/device_api.py`` measures the most requests per second the device API can
serve: wrk repeats a few devices' requests, so with the answer cache of ADR 0044
nearly every request is a kept answer. Real devices call far less often. This script
measures the other end: ``--devices`` devices, each sending its heartbeat (``GET
/v1/device``, ``/v1/device/config``, ``/v1/device/target-release``, in that order) once
every ``--period`` seconds (60: the ``last_seen_at`` resolution), spread evenly over the
period, against ``bastion server --workers W`` on PostgreSQL, with the answer cache on
and then off.

It reports the server's CPU time per request (all its processes; PostgreSQL and the
load generator excluded) over every period but the first (the first fills the cache),
the server's CPU while idle for the same time (subtracted), latency, and what that CPU
cost would allow on all cores (the goal of issue 13: 2,000 requests/s on 2 cores).

Kept answers live 900 s (ADR 0045), so a run of three periods sees none expire; the
steady state, where each worker fills each answer again every 900 s, needs
``--periods 17 --only cache`` (about 17 minutes).

Usage: .venv/bin/python bench/device_heartbeat.py [--devices N] [--period S]
       [--periods K] [--workers W] [--only cache|no_cache] [--pg URL] [--json]
A run takes about 2 x (K x S + 10) seconds plus enrolment (half with ``--only``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import device_api  # the sibling bench's set-up and process helpers
from device_fleet import HEARTBEAT  # the agent's order: its record first


async def heartbeats(
    base: str, keys: list[str], period: float, periods: int, pgid: int
) -> dict[str, float]:
    """Run ``periods`` periods of every device's heartbeat; figures of all but the first."""
    assert set(HEARTBEAT) == set(device_api.ROUTES)
    latencies: list[float] = []
    failures = 0
    served = 0
    cpu_at: dict[str, float] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(key: str, measured: bool) -> None:
            nonlocal failures, served
            headers = {"Authorization": f"Bearer {key}"}
            for path in HEARTBEAT:
                began = time.perf_counter()
                answer = await client.get(path, headers=headers)
                if measured:
                    latencies.append(1000.0 * (time.perf_counter() - began))
                    served += 1
                    failures += answer.status_code != 200

        started = time.monotonic()
        tasks = []
        for n in range(periods):
            if n == 1:
                await asyncio.sleep(max(0.0, started + period - time.monotonic()))
                cpu_at["start"] = device_api.group_cpu_seconds(pgid)
                measured_from = time.monotonic()
            for i, key in enumerate(keys):
                at = started + n * period + i * period / len(keys)
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                tasks.append(asyncio.create_task(one(key, measured=n > 0)))
        await asyncio.gather(*tasks)
        cpu_at["end"] = device_api.group_cpu_seconds(pgid)
        seconds = time.monotonic() - measured_from
    latencies.sort()
    return {
        "requests": float(served),
        "seconds": seconds,
        "cpu_seconds": cpu_at["end"] - cpu_at["start"],
        "non_200": float(failures),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))],
    }


def idle_cpu(pgid: int, seconds: float) -> float:
    """The server's CPU seconds over ``seconds`` with no request."""
    before = device_api.group_cpu_seconds(pgid)
    time.sleep(seconds)
    return device_api.group_cpu_seconds(pgid) - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--period", type=float, default=60.0)
    parser.add_argument("--periods", type=int, default=3)
    parser.add_argument("--only", choices=("cache", "no_cache"), help="run the server one way only")
    device_api.server_arguments(parser)
    args = parser.parse_args()
    if args.periods < 2:
        raise SystemExit("--periods must be at least 2 (the first is not measured)")
    runs: dict[str, dict[str, float]] = {}
    with device_api.scratch(args.pg, "bench_device_heartbeat") as (database_url, tmp):
        print(f"enrolling {args.devices} devices ...", file=sys.stderr)
        keys = device_api.setup_fleet(database_url, tmp / "data", args.devices)
        env = device_api.server_env(settings=args.set)
        modes = [m for m in (True, False) if args.only in (None, "cache" if m else "no_cache")]
        for cache in modes:
            server, port = device_api.start_server(
                tmp / "data", database_url, args.workers, env, cache
            )
            try:
                label = "cache" if cache else "no_cache"
                print(f"{label}: {args.periods} periods of {args.period:g} s ...", file=sys.stderr)
                run = asyncio.run(
                    heartbeats(
                        f"http://127.0.0.1:{port}", keys, args.period, args.periods, server.pid
                    )
                )
                idle = idle_cpu(server.pid, min(run["seconds"], 30.0)) * (
                    run["seconds"] / min(run["seconds"], 30.0)
                )
                run["idle_cpu_seconds"] = idle
                work = max(0.0, run["cpu_seconds"] - idle)
                run["cpu_ms_per_request"] = 1000.0 * work / run["requests"]
                run["projected_rps_all_cores"] = (
                    1000.0 * (os.cpu_count() or 1) / run["cpu_ms_per_request"]
                    if run["cpu_ms_per_request"]
                    else 0.0
                )
                runs[label] = run
            finally:
                device_api.stop(server)
    figures: dict[str, Any] = {
        "devices": args.devices,
        "period_seconds": args.period,
        "measured_periods": args.periods - 1,
        "workers": args.workers,
        "cores": os.cpu_count(),
        **runs,
    }
    if len(runs) == 2:
        on = runs["cache"]["cpu_ms_per_request"]
        figures["cpu_ratio_off_to_on"] = runs["no_cache"]["cpu_ms_per_request"] / on if on else 0.0
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"device heartbeats: {args.devices} devices, each GET /v1/device, /config, "
        f"/target-release once every {args.period:g} s; {args.periods - 1} periods measured; "
        f"{args.workers} workers on PostgreSQL, {os.cpu_count()} cores; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for label, title in (("cache", "answer cache on "), ("no_cache", "answer cache off")):
        if label not in runs:
            continue
        r = runs[label]
        print(
            f"  {title}: {int(r['requests'])} requests, non-200 {int(r['non_200'])}, "
            f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, server CPU "
            f"{r['cpu_ms_per_request']:.2f} ms/request (idle {r['idle_cpu_seconds']:.2f} s "
            f"subtracted): would allow {r['projected_rps_all_cores']:.0f}/s on "
            f"{os.cpu_count()} cores (goal {device_api.GOAL_RPS:.0f}/s, ratio "
            f"{r['projected_rps_all_cores'] / device_api.GOAL_RPS:.2f})"
        )
    if "cpu_ratio_off_to_on" in figures:
        print(f"  CPU per request, off / on: {figures['cpu_ratio_off_to_on']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Profile: where a device API request's CPU goes, in process, on PostgreSQL or SQLite.

``bench/device_api.py`` measures the server from outside (wrk, two worker processes);
this script finds where the time goes. It enrols a gated fleet exactly as that bench
does (its ``setup_fleet``), builds the app in this process, and drives the same three
heartbeat routes straight through the ASGI interface (no sockets, no HTTP parser) from
``--concurrency`` concurrent tasks on one event loop, as uvicorn would. It prints the
process CPU time per request, its ratio to the same app's 404 for an unknown path
(middleware and routing only, measured in the same run) and, with ``--yappi`` (the
``yappi`` package, CPU clock, every thread, the worker threads included), the functions
that cost the most.

``yappi`` is not a dependency of bastion: install it apart for a profile, e.g.
``pip install --target /tmp/proftools yappi`` and ``PYTHONPATH=/tmp/proftools``.

Usage: .venv/bin/python bench/device_api_profile.py [--db postgresql|sqlite]
       [--requests N] [--concurrency C] [--devices D] [--yappi] [--top K] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("device_api_bench", HERE / "device_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def drive(app: Any, keys: list[str], routes: tuple[str, ...], n: int, c: int) -> list[int]:
    """``n`` GET requests over every (route, key) pair, ``c`` at a time; their statuses."""
    statuses: list[int] = []
    counter = iter(range(n))

    async def one(i: int) -> None:
        key = keys[i % len(keys)]
        path = routes[(i // len(keys)) % len(routes)]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"authorization", f"Bearer {key}".encode()),
            ],
            "client": ("127.0.0.1", 40000 + i % 1000),
            "server": ("127.0.0.1", 8443),
            "state": {},
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))

        await app(scope, receive, send)

    async def worker() -> None:
        for i in counter:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(c)))
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--yappi", action="store_true", help="profile with yappi (CPU clock)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--route", action="append", help="drive this path instead of the heartbeat routes"
    )
    parser.add_argument(
        "--pg",
        default=os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    bench = _bench()
    from bastion.server.app import create_app
    from bastion.server.settings import ServerSettings

    tmp = Path(tempfile.mkdtemp(prefix="bench-device-api-profile-"))
    name = f"bench_device_api_profile_{secrets.token_hex(4)}"
    database_url: str | None = None
    if args.db == "postgresql":
        with bench.pg_admin(args.pg) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        database_url = args.pg.rsplit("/", 1)[0] + "/" + name
    try:
        data = tmp / "data"
        url = database_url or f"sqlite:///{data / 'bastion.db'}"
        keys = bench.setup_fleet(url, data, args.devices)
        settings = ServerSettings(
            data_dir=data,
            database_url=database_url,
            rate_per_second=1_000_000,
            rate_burst=1_000_000,
            webhook_worker=False,
            access_log=False,
        )
        app = create_app(settings, migrate=False)
        routes = tuple(args.route or bench.ROUTES)
        asyncio.run(drive(app, keys, routes, 200, args.concurrency))  # warm-up
        if args.yappi:
            import yappi

            yappi.set_clock_type("cpu")
            yappi.start(builtins=True, profile_threads=True)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        statuses = asyncio.run(drive(app, keys, routes, args.requests, args.concurrency))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if args.yappi:
            yappi.stop()
        bad = [s for s in statuses if s != 200]
        # the reference in the same run: the same app answering 404 to an unknown path
        # (middleware, routing, error body; no authentication, no database)
        cpu1 = time.process_time()
        floor = asyncio.run(
            drive(app, keys, ("/v1/no-such-route",), args.requests, args.concurrency)
        )
        floor_ms = 1000 * (time.process_time() - cpu1) / len(floor)
        per_request = 1000 * cpu / len(statuses)
        print(
            f"{args.db}: {len(statuses)} requests, {args.concurrency} at a time, "
            f"{per_request:.2f} ms CPU per request (this process), "
            f"{len(statuses) / wall:.0f} requests/s in process, non-200: {len(bad)}; "
            f"the app's own 404 {floor_ms:.2f} ms: ratio {per_request / floor_ms:.1f}"
        )
        if args.yappi:
            stats = yappi.get_func_stats()
            for sort in ("ttot", "tsub"):
                print(f"\n--- top {args.top} by {sort} (CPU s over {len(statuses)} requests)")
                stats.sort(sort, "desc")
                for row in list(stats)[: args.top]:
                    where = f"{Path(row.module).name}:{row.lineno}"
                    print(
                        f"{row.ttot:8.3f} {row.tsub:8.3f} {row.ncall:9d}  "
                        f"{row.name[:60]:60s} {where}"
                    )
        app.state.ctx.db.dispose()
        return 1 if bad else 0
    finally:
        if database_url is not None:
            with bench.pg_admin(args.pg) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

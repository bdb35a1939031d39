"""Benchmark: the agent's own requests, signed in the TPM's profile, at the goal's rate.

The agent (``bastion agent run``) sends, once a minute per device, ``POST
/v1/device/heartbeat`` and ``GET /v1/device/config``, each signed with the device's
identity key (RFC 9421, ADR 0032). The server verifies the signature, stores its nonce
(a replay is refused by every process) and, for the heartbeat, writes what the agent
reported; on PostgreSQL both take the hot path of ADR 0048 (the device's key kept per
process, nonces and heartbeats group-committed, the config answer from the answer
cache). This bench measures that path as a fleet of agents loads it:

1. enrols one device for real (``device_api.setup_fleet``: a gated fleet with golden
   values and a passing verdict) and copies it ``--fleet`` times in SQL, each copy with
   its own id, API key, passing verdict and **P-256 identity key and certificate**; the
   keys are software keys held by the bench (a TPM signature takes about 10 ms; the
   server verifies exactly what it verifies for a real agent), and the ``agent_version``
   their heartbeats report, as a running fleet's rows hold it;
2. starts ``bastion server --workers W`` on PostgreSQL and **fills** it for ``--fill``
   seconds: threads send the fleet's cycles, each request signed as it is sent, so the
   measured runs see the keys and answers a running server keeps (each worker keeps its
   own: a device's requests reach either). ``--fill 0`` measures a cold start;
3. signs every request of the measured runs in advance (``created`` = the start of the
   signing, a fresh nonce each: the server accepts a signature up to 300 s old), device
   by device in cycle order, heartbeat then config;
4. wrk sends them in order, paced at ``--rate`` requests/s (``device_fleet.WRK_PACED``):
   ``--warmup`` seconds, then ``--seconds`` measured;
5. prints the fill's pace, requests/s, p50, p99, the schedule lag, non-2xx (a replayed
   or refused signature would show here), where the machine's CPU went (the server by
   process, PostgreSQL, wrk) and the ratio to the goal. It exits 1 on any refusal.

Usage: .venv/bin/python bench/device_signed.py [--fleet N] [--fill S] [--rate R]
       [--seconds S] [--warmup S] [--workers W] [--connections C] [--pg URL]
       [--set NAME=VALUE] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agents  # the agents bench's device keys and signatures
import device_api  # the sibling bench's set-up and process helpers
from device_fleet import (
    WRK_DONE,
    WRK_PACED,
    copy_devices,
    goal_met,
    group_rss_mib,
    machine_line,
    measured,
)


def agents_report_their_version(database_url: str) -> None:
    """Give the enrolled device (hence its copies) the ``agent_version`` the bench's
    heartbeats report, as a running fleet's rows hold it: otherwise each device's first
    heartbeat changes its row, and every process drops the device's key and answers."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE devices SET agent_version = %s", (json.loads(BODY)["agent_version"],))


#: one agent cycle, in the agent's order
CYCLE = (("POST", "/v1/device/heartbeat"), ("GET", "/v1/device/config"))

#: request ``k`` of the run is line ``k + 1`` of the file: method, path, the three
#: signature headers and the body, tab-separated (none of them holds a tab)
WRK_SIGNED_SCRIPT = """
local rate = %(rate)s
local lines = {}
for line in io.lines(%(requests)s) do lines[#lines + 1] = line end
local n = 0
init = function(args)
  n = tonumber(args[1] or "0")
end
sent = 0
request = function()
  sent = sent + 1
  n = n + 1
  -- past the end the last request goes again: a replay, refused (counted as non-2xx)
  local line = lines[n] or lines[#lines]
  local method, path, digest, input, signature, body =
    line:match("^([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t(.*)$")
  local headers = {
    ["Content-Digest"] = digest, ["Signature-Input"] = input, ["Signature"] = signature
  }
  if body == "" then
    body = nil
  else
    headers["Content-Type"] = "application/json"
  end
  return wrk.format(method, path, headers, body)
end
statuses = {}
refusal = nil
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status >= 300 and refusal == nil then refusal = status .. " " .. body end
end
"""


def device_keys(count: int) -> tuple[list[Any], list[str]]:
    """``count`` P-256 private keys and a certificate for each (``agents.device_keys``: a
    bench CA's; the server reads only the public key of the certificate it holds)."""
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    made = agents.device_keys(count)
    return [load_der_private_key(der, None) for _, der, _ in made], [pem for *_, pem in made]


#: what each heartbeat reports
BODY = json.dumps({"agent_version": "bench", "uptime_seconds": 60, "log_backlog": 0})


def signed(
    ids: list[str], keys: list[Any], k: int, created: int, sent: float | None = None
) -> tuple[str, str, dict[str, str], str]:
    """Request ``k`` of the cycle order: method, path, its signature headers, body; its
    nonce made as the agent makes it, at ``sent`` (default ``created``): the time it
    will be sent, as an agent's is the time it signs."""
    from bastion.trust import httpsig

    device = (k // len(CYCLE)) % len(ids)
    method, path = CYCLE[k % len(CYCLE)]
    payload = BODY if method == "POST" else ""
    headers = httpsig.sign_request(
        method,
        path,
        payload.encode(),
        key_id=ids[device],
        created=created,
        nonce=httpsig.request_nonce(created if sent is None else sent),
        sign=functools.partial(agents._raw_signature, keys[device]),
    )
    return method, path, dict(headers), payload


def sign_requests(
    ids: list[str], keys: list[Any], count: int, created: int, rate: float, out: Path
) -> None:
    """Write ``count`` signed requests, device after device in cycle order, to ``out``;
    each nonce made for the time the paced run will send it (``rate`` a second)."""
    sys.path.insert(0, str(device_api.SRC))
    began = time.monotonic()
    with out.open("w") as file:
        for k in range(count):
            method, path, headers, payload = signed(ids, keys, k, created, created + k / rate)
            fields = [
                method,
                path,
                headers["Content-Digest"],
                headers["Signature-Input"],
                headers["Signature"],
                payload,
            ]
            file.write("\t".join(fields) + "\n")
            if k and k % 20_000 == 0:
                print(
                    f"  signed {k} of {count} ({k / (time.monotonic() - began):.0f}/s)",
                    file=sys.stderr,
                )


def fill(
    port: int, ids: list[str], keys: list[Any], seconds: float, connections: int
) -> dict[str, Any]:
    """Send signed cycles of the fleet for ``seconds`` from ``connections`` threads, each
    request signed as it is sent (cycle order, from device 0); what was sent and refused."""
    import http.client
    import itertools
    import threading

    sys.path.insert(0, str(device_api.SRC))
    print(f"filling for {seconds:g} s (signed cycles of {len(ids)} devices) ...", file=sys.stderr)
    order = itertools.count()
    lock = threading.Lock()
    counts = {"requests": 0, "non_2xx": 0}
    first: list[str] = []
    began = time.monotonic()
    stop = began + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop:
            with lock:
                k = next(order)
            method, path, headers, payload = signed(ids, keys, k, int(time.time()), time.time())
            if payload:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload.encode() or None, headers=headers)
            answer = conn.getresponse()
            body = answer.read()
            with lock:
                counts["requests"] += 1
                if answer.status >= 300:
                    counts["non_2xx"] += 1
                    if not first:
                        first.append(f"{answer.status} {body[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - began
    return {
        **counts,
        "seconds": took,
        "rps": counts["requests"] / took,
        "cycles": counts["requests"] / (len(CYCLE) * len(ids)),
        "first_refusal": first[0] if first else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=device_api.GOAL_RPS, help="requests/s, paced")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    device_api.server_arguments(parser)
    parser.add_argument(
        "--fill",
        type=float,
        default=600.0,
        help="seconds of signed cycles before the measured runs (each signed as it is "
        "sent), so they see the keys and answers a running server keeps; 0: measure cold",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    if args.fleet < 1 or args.seconds < 1 or args.warmup < 0 or args.rate <= 0:
        raise SystemExit("--fleet, --seconds and --rate must be positive, --warmup at least 0")
    # a signature is accepted for 300 s after it was made: the run must end before that
    if args.warmup + args.seconds > 240:
        raise SystemExit("--warmup + --seconds must be at most 240 (signatures expire)")
    with device_api.scratch(args.pg, "bench_device_signed") as (database_url, tmp):
        print("enrolling a device ...", file=sys.stderr)
        device_api.setup_fleet(database_url, tmp / "data", 1)
        agents_report_their_version(database_url)
        began = time.monotonic()
        keys, certificates = device_keys(args.fleet)
        ids = copy_devices(database_url, args.fleet, certificates=certificates)[1]
        print(f"made {args.fleet} device keys in {time.monotonic() - began:.1f} s", file=sys.stderr)
        env = device_api.server_env(settings=args.set)
        server, port = device_api.start_server(tmp / "data", database_url, args.workers, env, True)
        base = f"http://127.0.0.1:{port}"
        try:
            filled = fill(port, ids, keys, args.fill, args.connections) if args.fill > 0 else {}
            count = int(args.rate * (args.warmup + args.seconds) * 1.02) + 1000
            print(f"signing {count} requests ...", file=sys.stderr)
            requests = tmp / "requests.tsv"
            sign_requests(ids, keys, count, int(time.time()), args.rate, requests)
            script = tmp / "signed.lua"
            script.write_text(
                WRK_SIGNED_SCRIPT
                % {"rate": repr(float(args.rate)), "requests": json.dumps(str(requests))}
                + WRK_PACED
                + WRK_DONE
            )
            walked = 0
            warm: dict[str, Any] = {}
            if args.warmup >= 1:
                print(f"warming up for {args.warmup:g} s ...", file=sys.stderr)
                warm = measured(
                    base, script, args.warmup, args.connections, server.pid, database_url, 0
                )
                walked = int(warm["sent"])
            print(f"measuring for {args.seconds:g} s ...", file=sys.stderr)
            run = measured(
                base, script, args.seconds, args.connections, server.pid, database_url, walked
            )
            rss = group_rss_mib(server.pid)
        finally:
            device_api.stop(server)

    met = goal_met(run, args.rate)
    figures: dict[str, Any] = {
        "fleet": args.fleet,
        "workers": args.workers,
        "cores": os.cpu_count(),
        "connections": args.connections,
        "rate": args.rate,
        "seconds": args.seconds,
        "fill": filled or None,
        "warmup": warm or None,
        "run": run,
        "server_rss_mib": rss,
        "goal_met": met if args.rate >= device_api.GOAL_RPS else None,
        # the server's CPU alone: what 2 cores would serve if nothing else ran
        "projected_rps_all_cores": 1000.0 * (os.cpu_count() or 1) / run["cpu_ms_per_request"]
        if run["cpu_ms_per_request"]
        else 0.0,
    }
    figures["ratio_to_goal"] = figures["projected_rps_all_cores"] / device_api.GOAL_RPS
    # every request is signed once with a fresh nonce: a refusal is a server or bench fault
    failed = 1 if run["non_2xx"] or (filled and filled["non_2xx"]) else 0
    if args.json:
        print(json.dumps(figures, indent=2))
        return failed
    table = run["devices_table"]
    print(
        f"device API, signed (the agent's cycle: POST /v1/device/heartbeat, GET "
        f"/v1/device/config): {args.fleet} devices, {args.workers} workers on PostgreSQL, "
        f"{os.cpu_count()} cores, wrk -c{args.connections} paced at {args.rate:.0f}/s for "
        f"{args.seconds:g} s after {args.warmup:g} s"
    )
    if filled:
        refused = f" (first: {filled['first_refusal']})" if filled["non_2xx"] else ""
        print(
            f"  fill: {filled['requests']} requests in {filled['seconds']:.0f} s "
            f"({filled['rps']:.0f}/s, {filled['cycles']:.2f} fleet cycles), non-2xx "
            f"{filled['non_2xx']}{refused}"
        )
    print(
        f"  {run['rps']:.0f} requests/s, p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} "
        f"ms, non-2xx {int(run['non_2xx'])}; schedule lag p99 {run['lag_p99_ms']:.0f} ms, "
        f"max {run['lag_max_ms']:.0f} ms, {100 * run['late_fraction']:.2f} % sent 5 ms or more late"
    )
    if run.get("statuses"):
        print(
            "  answers by status: "
            + ", ".join(f"{c} {n}" for c, n in sorted(run["statuses"].items()))
            + (f"; first refusal: {run['first_refusal']}" if run.get("first_refusal") else "")
        )
    print(
        f"  CPU, % of one core: server "
        f"{', '.join(f'{b:.0f}' for b in run['server_cpu_percent_by_process'])} "
        f"({run['cpu_ms_per_request']:.2f} ms/request), PostgreSQL "
        f"{run['postgres_cpu_percent']:.0f}, wrk {run['wrk_cpu_percent']:.0f}; machine "
        f"{machine_line(run['machine_percent'])}"
    )
    print(
        f"  devices table: {table['updates']} updates ({table['hot_updates']} HOT), "
        f"{table['autovacuums']} autovacuums, {table['autoanalyzes']} autoanalyzes"
    )
    print("  server memory after the run: " + ", ".join(f"{m:.0f} MiB" for m in rss))
    print(
        f"  server CPU alone would allow {figures['projected_rps_all_cores']:.0f} signed "
        f"requests/s on {os.cpu_count()} cores: ratio to the goal ({device_api.GOAL_RPS:.0f}/s) "
        f"{figures['ratio_to_goal']:.2f}"
        + (
            f"; at {args.rate:.0f}/s p99 < {device_api.GOAL_P99_MS:.0f} ms with its lag: "
            f"{'met' if met else 'not met'}"
        )
    )
    if failed:
        print(f"  {int(run['non_2xx'])} requests were refused: see the first refusal above")
    return failed


if __name__ == "__main__":
    sys.exit(main())

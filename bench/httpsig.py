"""Benchmark: RFC 9421 device request verifications per second per core, bastion's
canonical path against the library's general verifier (ADR 0049).

Each verification is one signed agent request as the server sees it: a ``GET
/v1/device/config`` or a ``POST /v1/device/heartbeat`` signed by its own P-256 key with a
fresh nonce (``trust/httpsig.verify_request``: find the key id, build the signature
base, check the ECDSA signature, the parameters and the time window). The reference is
the same call with the canonical path switched off, so that ``http-message-signatures``
parses and builds everything, as it did before ADR 0049; the ECDSA check alone is printed
too, as the floor of both. Requests are signed before the clock starts.

Usage: .venv/bin/python bench/httpsig.py [--seconds S] [--requests N]
Other work on the machine makes absolute figures noisy; the ratio is what to compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import secrets
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from bastion.trust import httpsig

BODY = b'{"agent_version":"1.4.0","os_version":"bastion 2026.12"}'
ROUTES = [("GET", "/v1/device/config", b""), ("POST", "/v1/device/heartbeat", BODY)]


def cpu_rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of ``fn`` per second of this process's CPU time, over about ``seconds``."""
    calls, start = 0, time.process_time()
    while (spent := time.process_time() - start) < seconds:
        for _ in range(50):
            fn()
        calls += 50
    return calls / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per figure")
    parser.add_argument("--requests", type=int, default=200, help="distinct signed requests")
    args = parser.parse_args()
    now = dt.datetime.now(dt.UTC)
    requests = []
    for i in range(args.requests):
        key = ec.generate_private_key(ec.SECP256R1())
        device = secrets.token_hex(16)

        def sign(base: bytes, key: ec.EllipticCurvePrivateKey = key) -> bytes:
            r, s = decode_dss_signature(key.sign(base, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        method, target, body = ROUTES[i % len(ROUTES)]
        headers = httpsig.sign_request(
            method,
            target,
            body,
            key_id=device,
            created=int(now.timestamp()),
            nonce=httpsig.request_nonce(now.timestamp()),
            sign=sign,
        )
        requests.append((method, target, headers, key.public_key(), device))
    cycle = itertools.cycle(requests)

    def verify() -> None:
        method, target, headers, public, device = next(cycle)
        assert httpsig.signed_key_id(headers) == device
        httpsig.verify_request(method, target, headers, public, device, now)

    assert all(httpsig.canonical_base(m, t, h) is not None for m, t, h, _, _ in requests)
    ours = cpu_rate(verify, args.seconds)
    saved = httpsig.canonical_base
    httpsig.canonical_base = lambda *_a, **_k: None  # type: ignore[assignment]
    try:
        library = cpu_rate(verify, args.seconds)
    finally:
        httpsig.canonical_base = saved  # type: ignore[assignment]

    method, target, headers, public, device = requests[0]
    base = httpsig.canonical_base(method, target, headers)
    assert base is not None
    der = encode_dss_signature(
        int.from_bytes(base.signature[:32], "big"), int.from_bytes(base.signature[32:], "big")
    )

    def ecdsa() -> None:
        public.verify(der, base.base, ec.ECDSA(hashes.SHA256()))

    floor = cpu_rate(ecdsa, args.seconds)
    print(f"{len(requests)} signed requests, {args.seconds:g} CPU seconds per figure")
    print(
        f"bastion (canonical path): {ours:,.0f} verifications/s per core, {1e6 / ours:,.0f} us each"
    )
    print(f"library (http-message-signatures): {library:,.0f}/s, {1e6 / library:,.0f} us each")
    print(f"ECDSA P-256 check alone (the floor): {floor:,.0f}/s, {1e6 / floor:,.0f} us each")
    print(f"ratio bastion / library: {ours / library:.2f}x")


if __name__ == "__main__":
    main()

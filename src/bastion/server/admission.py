"""At most N HTTP requests inside the app at once per process; the rest wait their turn.

Why (ADR 0034, amendment 2026-12-06): a sync route's request holds pooled database
connections from its dependencies to their teardown (the read session its
authentication used, its write session, for a moment a shared rate-limit lease: at most
:data:`REQUEST_CONNECTIONS_MAX`), and between those steps it waits for a worker
thread. With more requests in flight than the pool can serve, worker threads block
waiting for a connection while the connections' holders wait for a thread, and nothing
moves until the pool timeout fails requests with 500 (bench/agents.py saw 30 s pool
timeouts at 10,000 channels while commands were queued). Admitting at most as many
requests as the pool can give all their connections means no thread ever waits for one.

A waiting request costs a socket and a coroutine, nothing in the database; requests are
admitted first come, first served. WebSockets are not counted here: the device channels
bound their own database work (``channel_db_concurrency``, server/channel/hub.py).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

#: pooled connections one HTTP request may hold at once (read, write, rate-limit lease)
REQUEST_CONNECTIONS_MAX = 3
#: connections kept out of the requests' share (the webhook worker, one spare)
POOL_RESERVED = 2


def request_concurrency(pool_capacity: int, channel_slots: int) -> int:
    """How many requests one process admits at once so that every admitted request and
    every channel slot finds its connections in a pool of ``pool_capacity``."""
    free = pool_capacity - channel_slots - POOL_RESERVED
    return max(1, free // REQUEST_CONNECTIONS_MAX)


class AdmissionMiddleware:
    """Let at most ``limit`` HTTP requests run at once; later ones wait on the event loop."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"admission limit must be 1 or more, got {limit}")
        self.app = app
        self.limit = limit
        self._gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:  # one per event loop (a test may serve one app on several)
            gate = self._gates[loop] = asyncio.Semaphore(self.limit)
        return gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with self._gate():
            await self.app(scope, receive, send)

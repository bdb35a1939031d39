"""Each server process learns the fleet's device keys when it starts, not one request
at a time (ADR 0048, amendment "keys kept from the start").

The hot path verifies a signed request with the device's key kept in the answer cache
(:meth:`~bastion.server.answers.AnswerCache.known`); a device whose key the process
does not hold yet costs a worker thread, a query and a certificate parse on its first
request. After a restart every device of the fleet is such a device, in every process.
:func:`warm_keys` walks the fleet's active devices in pages of :data:`PAGE` (one query
each, in a worker thread), once the cache is online, and keeps each key under the
cache's own rule (:meth:`~bastion.server.answers.AnswerCache.keep_known`): a page is
read after a ticket is taken, so a device revoked, deleted or re-keyed while the page
was read is not kept. It keeps at most the cache's ``max_entries`` and never replaces a
key a request kept first. The app starts it when ``device_key_warmup`` is on (default)
and cancels it at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from bastion.server.agent import service

if TYPE_CHECKING:
    from bastion.server.agent.service import KnownDevice
    from bastion.server.context import AppContext

#: devices read per query
PAGE = 2_000
#: how long to wait for the answer cache to go online before giving up (seconds)
ONLINE_WAIT = 60.0

log = logging.getLogger(__name__)


def _page(ctx: AppContext, after: str, limit: int) -> tuple[list[KnownDevice], str | None]:
    with ctx.db.session(write=False, autocommit=True) as session:
        return service.known_devices(session, after, limit)


async def warm_keys(ctx: AppContext, page: int = PAGE, online_wait: float = ONLINE_WAIT) -> int:
    """Keep the signing keys of the fleet's active devices in this process's answer
    cache (module docstring); how many were kept. Returns early, having kept what it
    could, if the cache is off or goes off."""
    listener = ctx.answers
    if listener is None:
        return 0
    cache = listener.cache
    began = time.monotonic()
    while not cache.online:
        if time.monotonic() - began > online_wait:
            log.warning("device keys: the answer cache is not online; none kept at start")
            return 0
        await asyncio.sleep(0.05)
    after: str | None = ""
    kept = 0
    while after is not None and kept < cache.max_entries:
        ticket = cache.ticket()
        if ticket is None:
            break
        try:
            known, after = await run_in_threadpool(
                _page, ctx, after, min(page, cache.max_entries - kept)
            )
        except Exception as exc:  # the database is away: keys load on first use instead
            log.warning(
                "device keys: reading them at start failed after %d (%s); the rest load on "
                "first use",
                kept,
                exc,
            )
            return kept
        for device in known:
            if cache.known(device.id) is None and cache.keep_known(ticket, device.id, device):
                kept += 1
    log.info(
        "device keys: %d kept at start in %.1f s%s",
        kept,
        time.monotonic() - began,
        "" if after is None else " (the cache is full or went off: the rest on first use)",
    )
    return kept

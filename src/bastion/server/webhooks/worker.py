"""The webhook delivery worker: sends due outbox rows, retries with backoff, logs attempts.

One :class:`WebhookWorker` per server process (a daemon thread started by the app's
lifespan; :meth:`WebhookWorker.run_once` for tests and tools). Each pass:

1. picks due deliveries (``pending`` and ``next_attempt_at <= now``), oldest first;
2. **claims** each with a conditional ``UPDATE ... WHERE id = ? AND attempts = ? AND
   next_attempt_at = ?`` that moves ``next_attempt_at`` past the POST's timeout, and
   commits: of several processes scanning the same row exactly one claim succeeds, and a
   worker that dies mid-POST leaves a row that becomes due again;
3. POSTs the stored body with the signature headers (:func:`.service.sign`), a timeout
   (:data:`bastion.limits.WEBHOOK_TIMEOUT_SECONDS`), no redirects, reading at most
   :data:`bastion.limits.WEBHOOK_RESPONSE_MAX_SIZE` bytes of the answer;
4. records the outcome: a 2xx answer is ``delivered``; anything else counts an attempt
   and schedules the next after ``backoff_base * 2**(attempts-1)`` seconds (at most
   :data:`BACKOFF_MAX`, with jitter), until :data:`bastion.limits.WEBHOOK_MAX_ATTEMPTS`
   attempts make it ``failed``.

The outbound POST goes to a receiver that is not a bastion API (no bastion error
codes), so it uses httpx directly, like the OIDC provider client.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import select, update

from bastion import limits
from bastion.io.clock import Clock
from bastion.server.webhooks.models import DeliveryStatus, Webhook, WebhookDelivery
from bastion.server.webhooks.service import DELIVERY_HEADER, EVENT_HEADER, sign

if TYPE_CHECKING:
    from bastion.server.db.engine import Database
    from bastion.server.secretbox import SecretBox

BACKOFF_BASE = 5.0
BACKOFF_MAX = 3600.0
BATCH = 20

log = logging.getLogger(__name__)


class WebhookWorker:
    """Delivers webhooks from the outbox of one database."""

    def __init__(
        self,
        db: Database,
        box: SecretBox | None,
        clock: Clock,
        poll_seconds: float = 1.0,
        *,
        backoff_base: float = BACKOFF_BASE,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._db = db
        self._box = box
        self._clock = clock
        self.poll_seconds = poll_seconds
        self.backoff_base = backoff_base
        self._transport = transport
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Run passes in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=limits.WEBHOOK_TIMEOUT_SECONDS + 5)
            self._thread = None

    def wake(self) -> None:
        """Run a pass now (after an event was committed)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a database hiccup must not kill delivery for good
                log.warning("webhooks: delivery pass failed: %s", exc)
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    # --- one pass --------------------------------------------------------------------------

    def run_once(self) -> int:
        """Send every due delivery once; returns how many were attempted."""
        now = self._clock.now()
        with self._db.session(write=False) as session:
            due = list(
                session.execute(
                    select(
                        WebhookDelivery.id,
                        WebhookDelivery.attempts,
                        WebhookDelivery.next_attempt_at,
                    )
                    .where(
                        WebhookDelivery.status == DeliveryStatus.PENDING,
                        WebhookDelivery.next_attempt_at <= now,
                    )
                    .order_by(WebhookDelivery.next_attempt_at)
                    .limit(BATCH)
                )
            )
        sent = 0
        for delivery_id, attempts, due_at in due:
            if self._stop.is_set():
                break
            if due_at is not None and self._claim(delivery_id, attempts, due_at, now):
                self._deliver(delivery_id)
                sent += 1
        return sent

    def _claim(
        self, delivery_id: str, attempts: int, due_at: dt.datetime, now: dt.datetime
    ) -> bool:
        lease = now + dt.timedelta(seconds=limits.WEBHOOK_TIMEOUT_SECONDS * 3)
        with self._db.session(write=True) as session:
            result = session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    WebhookDelivery.attempts == attempts,
                    WebhookDelivery.next_attempt_at == due_at,
                )
                .values(next_attempt_at=lease)
            )
            session.commit()
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _deliver(self, delivery_id: str) -> None:
        with self._db.session(write=False) as session:
            row = session.get(WebhookDelivery, delivery_id)
            hook = session.get(Webhook, row.webhook_id) if row is not None else None
            if row is None or hook is None:
                return
            url, body, event = hook.url, row.body.encode(), row.event
            active = hook.active
            secret = self._secret(hook)
        status: int | None = None
        error: str | None = None
        if not active:
            error = "endpoint disabled"
        elif secret is None:
            error = "the server has no secret box to open the signing secret"
        else:
            status, error = self._post(url, body, event, delivery_id, secret)
        self._record(delivery_id, status, error)

    def _secret(self, hook: Webhook) -> str | None:
        if self._box is None:
            return None
        return self._box.open(hook.secret, f"webhook:{hook.id}")

    def _post(
        self, url: str, body: bytes, event: str, delivery_id: str, secret: str
    ) -> tuple[int | None, str | None]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "bastion-webhooks",
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery_id,
            **sign(secret, int(self._clock.now().timestamp()), body),
        }
        try:
            with (
                httpx.Client(
                    timeout=limits.WEBHOOK_TIMEOUT_SECONDS,
                    follow_redirects=False,
                    transport=self._transport,
                ) as client,
                client.stream("POST", url, content=body, headers=headers) as response,
            ):
                kept = b""
                for chunk in response.iter_bytes():
                    kept += chunk[: limits.WEBHOOK_RESPONSE_MAX_SIZE - len(kept)]
                    if len(kept) >= limits.WEBHOOK_RESPONSE_MAX_SIZE:
                        break
                status = response.status_code
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}: {kept.decode('utf-8', 'replace')[:500]}"

    def _record(self, delivery_id: str, status: int | None, error: str | None) -> None:
        now = self._clock.now()
        with self._db.session(write=True) as session:
            row = session.get(WebhookDelivery, delivery_id)
            if row is None:
                return
            row.attempts += 1
            row.last_attempt_at = now
            row.last_status_code = status
            row.last_error = error
            if error is None:
                row.status = DeliveryStatus.DELIVERED
                row.next_attempt_at = None
            elif row.attempts >= limits.WEBHOOK_MAX_ATTEMPTS:
                row.status = DeliveryStatus.FAILED
                row.next_attempt_at = None
            else:
                delay = min(BACKOFF_MAX, self.backoff_base * 2 ** (row.attempts - 1))
                row.next_attempt_at = now + dt.timedelta(
                    seconds=delay * (0.8 + 0.4 * random.random())
                )
            session.commit()

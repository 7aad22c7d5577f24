"""Lifecycle events on EventBridge (``appauth.authorization.*`` on the bus the template names).

Publishing comes after the transition is committed, so a failure here can never lose or undo a
rotation: failed entries are retried a few times with a short backoff, then counted
(``failed``, published as the ``EventsPublishFailed`` metric, alarmed) and logged without any
secret. The audit event in the table is the durable record either way.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from appauth.lifecycle import EVENT_SOURCE, LifecycleEvent

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

logger = logging.getLogger(__name__)

PUBLISH_ATTEMPTS = 3
RETRY_DELAY_SECONDS = 0.1


class EventBridgePublisher:
    """An :class:`~appauth.lifecycle.EventSink` writing to one event bus. Thread-safe counters."""

    def __init__(
        self,
        events: EventBridgeClient | Callable[[], EventBridgeClient],
        bus_name: str,
        *,
        attempts: int = PUBLISH_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # A factory keeps the boto3 client lazy: stores built for a look-up never create it.
        self._events = events if callable(events) else (lambda: events)
        self._bus = bus_name
        self._attempts = attempts
        self._sleep = sleep
        self._lock = threading.Lock()
        self.published = 0
        self.failed = 0

    def publish(self, event: LifecycleEvent) -> None:
        entry: PutEventsRequestEntryTypeDef = {
            "Source": EVENT_SOURCE,
            "DetailType": event.transition.detail_type,
            "Detail": json.dumps(event.detail(), separators=(",", ":")),
            "EventBusName": self._bus,
            "Resources": [],
        }
        error = "unknown"
        for attempt in range(1, self._attempts + 1):
            try:
                response = self._events().put_events(Entries=[entry])
            except (BotoCoreError, ClientError) as failure:
                error = type(failure).__name__
            else:
                if response.get("FailedEntryCount", 0) == 0:
                    with self._lock:
                        self.published += 1
                    return
                error = str(response["Entries"][0].get("ErrorCode", "failed_entry"))
            if attempt < self._attempts:
                self._sleep(RETRY_DELAY_SECONDS * 2 ** (attempt - 1))
        with self._lock:
            self.failed += 1
        logger.error(
            "Lifecycle event not published",
            extra={
                "event": event.transition.detail_type,
                "auth_app_id": event.auth_app_id,
                "version": event.version,
                "error": error,
            },
        )

    def take_counts(self) -> tuple[int, int]:
        """(published, failed) since the last call: a function reports them per invocation."""
        with self._lock:
            counts = (self.published, self.failed)
            self.published = self.failed = 0
        return counts

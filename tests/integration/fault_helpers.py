"""Helpers of the fault matrix (test_fault_matrix.py): faults the other helpers cannot plant, and
the check that nothing Alipay issued was lost, read against the simulator's record of pairs.

AWS errors are planted with ``refresh_helpers.inject`` (a wrapping client). EventBridge
accepting a call but refusing its entries is planted with a botocore ``before-call`` hook, which
answers in place of the service, so the layer sees exactly what PutEvents returns then.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from appauth import aws
from appauth.envelope import sealed_from_json
from appauth.runtime import runtime
from appauth_dev.simulator import SimulatorControl
from tests.integration.refresh_helpers import client_error, inject, stored_pair

Pair = tuple[str, str]


@dataclass
class RefusedEntries:
    """PutEvents answers 200 with every entry failed (``FailedEntryCount`` > 0), as EventBridge
    does when it throttles or fails entries without failing the call."""

    calls: int = 0

    def __call__(self, params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        self.calls += 1
        # ``params`` is the serialized request: EventBridge's JSON body holds the entries.
        entries = json.loads(params["body"])["Entries"]
        failed = [{"ErrorCode": "InternalFailure", "ErrorMessage": "injected"} for _ in entries]
        return _Http200(), {"FailedEntryCount": len(failed), "Entries": failed}


@dataclass(frozen=True)
class _Http200:
    status_code: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def refuse_event_entries() -> RefusedEntries:
    """Every PutEvents of the layer's EventBridge client (built now) fails all its entries."""
    refused = RefusedEntries()
    # botocore takes what a before-call handler returns as the response (its hooks are typed
    # as returning None).
    handler = cast("Callable[..., None]", refused)
    aws.events().meta.events.register("before-call.events.PutEvents", handler)
    return refused


EVENTBRIDGE_REFUSALS = ("call_fails", "entries_fail")


def refuse_events(how: str) -> Callable[[], int]:
    """EventBridge refusing every publish of the layer: PutEvents raises (``call_fails``), or
    answers with every entry failed (``entries_fail``). Returns a count of the PutEvents calls."""
    if how == "call_fails":
        events = inject("events")
        events.fail_always("put_events", client_error("InternalException", "PutEvents"))
        return lambda: events.calls.count("put_events")
    refused = refuse_event_entries()
    return lambda: refused.calls


def issued_pair(control: SimulatorControl, auth_app_id: str) -> Pair:
    """The pair Alipay issued last for this merchant app. Every earlier pair is superseded by a
    later one it issued for the same merchant (the simulator's record says so, checked here),
    so this is the only pair the service must hold for nothing to be lost."""
    record = control.merchant(auth_app_id)
    assert record is not None, f"Alipay never issued a pair for {auth_app_id}"
    *earlier, last = record["pairs"]
    assert all(pair["superseded_at"] is not None for pair in earlier)
    assert last["superseded_at"] is None
    return last["app_auth_token"], last["app_refresh_token"]


def assert_nothing_lost(control: SimulatorControl, *auth_app_ids: str) -> None:
    """Each merchant holds, as its current pair, the pair Alipay last issued for it."""
    for auth_app_id in auth_app_ids:
        assert stored_pair(auth_app_id) == issued_pair(control, auth_app_id), auth_app_id


def parked_pairs() -> dict[str, tuple[Pair, bool]]:
    """The pairs on the parking queue by merchant app: (pair, sealed), messages left visible."""
    rt = runtime()
    response = aws.sqs().receive_message(
        QueueUrl=rt.settings.parked_queue_url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=0,
        VisibilityTimeout=0,
    )
    found: dict[str, tuple[Pair, bool]] = {}
    for message in response.get("Messages", []):
        entry = json.loads(message["Body"])["grant"]
        app = entry["auth_app_id"]
        sealed = "sealed" in entry
        tokens = (
            rt.cipher.open(app, sealed_from_json(entry["sealed"])) if sealed else entry["tokens"]
        )
        found[app] = ((tokens["app_auth_token"], tokens["app_refresh_token"]), sealed)
    return found


@dataclass
class CapturedLogs:
    """The layer's and the handlers' log records (everything under the ``appauth`` logger and
    the Powertools service logger, which do not propagate to pytest's caplog)."""

    records: list[logging.LogRecord] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(
            record.getMessage() + json.dumps(vars(record), default=str) for record in self.records
        )


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self._into = into

    def emit(self, record: logging.LogRecord) -> None:
        self._into.append(record)


@contextmanager
def captured_logs() -> Iterator[CapturedLogs]:
    captured = CapturedLogs()
    handler = _Collect(captured.records)
    logger = logging.getLogger("appauth")  # the layer's loggers and the service logger
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)

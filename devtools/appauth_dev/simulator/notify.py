"""Asynchronous notifications Alipay POSTs to the ISV, and the outbox that delivers them.

Two kinds, with the fields, order and signing rule of the official vectors (``notifications``
in ``tests/vectors/vectors.json``); the layer's ``verify_notification`` accepts both:

- ``grant``: ``notify_type=open_app_auth_notify`` when a merchant approves the consent page
  (one per authorized app), carrying the very pair that exchanging the ``app_auth_code``
  answers. Signed over the sorted fields without ``sign`` (``sign_type`` kept, as its vector).
- ``cancellation``: ``alipay.open.auth.appauth.cancelled`` in the message-service envelope,
  signed without ``sign`` and ``sign_type`` (as its vector).

Every notification goes into the :class:`Outbox`, which POSTs it to the behaviour's
``notify_url`` (form-encoded, short timeout, synchronously, no redirects). Delivered means HTTP
200 with the body exactly ``success``; anything else leaves it pending, for
:meth:`Outbox.redeliver` or the optional retry schedule. :class:`NotificationSettings` are the
knobs: grant notifications on or off, duplicate copies, holding (for out-of-order delivery) and
tampering. Every attempt is recorded; logs carry the kind, id and HTTP status only (bodies carry
tokens and signatures).
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlencode, urlsplit

from appauth.alipay.signing import dumps_compact, parse_form, rsa_sign, sign_content

from .config import SimulatorConfig
from .corruption import wrong_key
from .state import EXPIRES_IN, RE_EXPIRES_IN, SimulatorState, TokenPair, beijing

logger = logging.getLogger("appauth_dev.simulator.notify")

CANCELLED_METHOD = "alipay.open.auth.appauth.cancelled"
GRANT_NOTIFY_TYPE = "open_app_auth_notify"
KINDS = ("grant", "cancellation")
# How a notification can be damaged after signing (see tamper()).
TAMPER_KINDS = ("biz_content", "auth_app_id", "wrong_key")
ORDERS = ("oldest", "newest")
DELIVERY_TIMEOUT = 3.0
MAX_ANSWER_CHARS = 2048
MAX_COPIES = 10
MAX_RETRY_STEPS = 20
MAX_RETRY_SECONDS = 7 * 86400
MAX_OUTBOX = 1000  # the oldest notifications are forgotten beyond this
RETRY_TICK_SECONDS = 0.2
# As Alipay sends it (see the sample event): with the space.
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
# What each kind leaves out of the signed content.
_EXCLUDED = {"grant": ("sign",), "cancellation": ("sign", "sign_type")}
_USER_ID = re.compile(r'"user_id":"([0-9]+)"')


# --- the forms ------------------------------------------------------------------------------


def grant_form(
    config: SimulatorConfig,
    *,
    pair: TokenPair,
    app_auth_code: str,
    auth_time: float,
    notify_id: str,
    now: float,
    out_biz_no: str | None = None,
) -> str:
    """The exact POST body of a signed ``open_app_auth_notify`` for one authorized app."""
    trigger_context = {"out_biz_no": out_biz_no} if out_biz_no else {}
    params = {
        "notify_id": notify_id,
        "notify_type": GRANT_NOTIFY_TYPE,
        "notify_time": beijing(now),
        "app_id": config.app_id,
        "charset": "utf-8",
        "version": "1.0",
        "sign_type": "RSA2",
        "status": "execute_auth",
        "biz_content": dumps_compact(
            {
                "notify_context": {"trigger": "auth_app", "trigger_context": trigger_context},
                "detail": {
                    "app_auth_token": pair.app_auth_token,
                    "app_refresh_token": pair.app_refresh_token,
                    "user_id": pair.user_id,
                    "auth_app_id": pair.auth_app_id,
                    "app_id": config.app_id,
                    "expires_in": EXPIRES_IN,
                    "re_expires_in": RE_EXPIRES_IN,
                    "auth_time": int(auth_time * 1000),
                    "app_auth_code": app_auth_code,
                },
                "error": {},
            }
        ),
    }
    params["sign"] = rsa_sign(
        sign_content(params, exclude=_EXCLUDED["grant"]), config.alipay_private_key
    )
    return urlencode(params, encoding="utf-8")


def cancelled_form(
    config: SimulatorConfig, *, auth_app_id: str, user_id: str, notify_id: str, now: float
) -> str:
    """The exact POST body of a signed cancellation notification."""
    params = {
        "msg_method": CANCELLED_METHOD,
        "notify_id": notify_id,
        "utc_timestamp": str(int(now * 1000)),
        "app_id": config.app_id,
        "msg_type": "sys",
        "msg_uid": user_id,
        "msg_app_id": auth_app_id,
        "version": "1.1",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "biz_content": dumps_compact(
            {
                "auth_app_id": auth_app_id,
                "user_id": user_id,
                "app_id": config.app_id,
                # The vectors' cancellation carries its own time here, in Beijing time.
                "auth_time": beijing(now),
            }
        ),
    }
    params["sign"] = rsa_sign(
        sign_content(params, exclude=_EXCLUDED["cancellation"]), config.alipay_private_key
    )
    return urlencode(params, encoding="utf-8")


def _other_digit(digit: str) -> str:
    return str((int(digit) + 1) % 10)


def tamper(form_body: str, how: str, *, kind: str, auth_app_id: str) -> str:
    """The notification changed after signing; every field keeps a plausible shape.

    - ``biz_content``: one character of ``biz_content`` (the last digit of its ``user_id``);
      the JSON stays valid.
    - ``auth_app_id``: the merchant app id changed everywhere it appears (a consistent body
      for another merchant, the forgery that matters).
    - ``wrong_key``: the genuine fields, signed with a key that is not Alipay's.
    """
    params = parse_form(form_body)
    if how == "biz_content":
        biz = params["biz_content"]
        found = _USER_ID.search(biz)
        if found is None:  # never for the two kinds built here
            raise ValueError("biz_content has no user_id to change")
        end = found.end(1)
        params["biz_content"] = biz[: end - 1] + _other_digit(biz[end - 1]) + biz[end:]
    elif how == "auth_app_id":
        forged = auth_app_id[:-1] + _other_digit(auth_app_id[-1])
        params = {
            key: value if key == "sign" else value.replace(auth_app_id, forged)
            for key, value in params.items()
        }
    elif how == "wrong_key":
        params["sign"] = rsa_sign(sign_content(params, exclude=_EXCLUDED[kind]), wrong_key())
    else:
        raise ValueError(f"unknown tampering '{how}'")
    return urlencode(params, encoding="utf-8")


# --- one POST -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    delivered: bool  # the ISV answered 200 "success", which is what Alipay counts as delivered
    status: int | None  # None: no HTTP answer at all
    answer: str | None
    error: str | None = None  # why there was no answer (never a secret: the exception's type)

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "status": self.status,
            "answer": self.answer,
            "error": self.error,
        }


def deliver(url: str, form_body: str, timeout: float = DELIVERY_TIMEOUT) -> Delivery:
    """POST the notification once; no redirects, no proxies (http.client, not urllib)."""
    parts = urlsplit(url)
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = connection_type(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request(
            "POST",
            target,
            body=form_body.encode("utf-8"),
            headers={"Content-Type": CONTENT_TYPE, "User-Agent": "Mozilla/4.0"},
        )
        response = connection.getresponse()
        answer = response.read(MAX_ANSWER_CHARS * 4).decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as error:
        return Delivery(False, None, None, type(error).__name__)
    finally:
        connection.close()
    answer = answer[:MAX_ANSWER_CHARS]
    # Alipay wants exactly the seven characters "success"; anything else is retried.
    return Delivery(response.status == 200 and answer == "success", response.status, answer)


# --- the knobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotificationSettings:
    """How notifications go out; changed at run time by tests.

    - ``grant_notifications`` (default true): approving the consent page sends the grant
      notification when a ``notify_url`` is configured.
    - ``copies`` (1..10, default 1): every delivery round POSTs the notification this many
      times (duplicate delivery).
    - ``hold`` (default false): new notifications stay in the outbox undelivered until
      :meth:`Outbox.deliver` sends them, in the order asked (out-of-order delivery).
    - ``tamper`` (null or one of :data:`TAMPER_KINDS`): new notifications are damaged after
      signing (see :func:`tamper`).
    - ``retry_schedule`` (null, default: no automatic retries, or a list of seconds on the
      simulator clock): after the Nth failed round the next is due N-th entry later (Alipay
      documents 240, 600, 600, 3600, 7200, 21600, 54000). Due retries go out when the clock is
      advanced through the control API, and from a background thread within about 0.2 s.
    """

    grant_notifications: bool = True
    copies: int = 1
    hold: bool = False
    tamper: str | None = None
    retry_schedule: tuple[float, ...] | None = None

    def updated(self, changes: Mapping[str, Any]) -> NotificationSettings:
        """A copy with ``changes`` applied; ValueError names the first bad field."""
        known = {f.name for f in fields(self)}
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown notification setting '{name}'")
            if name in ("grant_notifications", "hold") and not isinstance(value, bool):
                raise ValueError(f"'{name}' must be true or false")
            if name == "copies" and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= MAX_COPIES
            ):
                raise ValueError(f"'{name}' must be an integer, 1 to {MAX_COPIES}")
            if name == "tamper" and value is not None and value not in TAMPER_KINDS:
                raise ValueError(f"'{name}' must be null or one of {', '.join(TAMPER_KINDS)}")
            checked[name] = _schedule(value) if name == "retry_schedule" else value
        return replace(self, **checked)

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if self.retry_schedule is not None:
            values["retry_schedule"] = list(self.retry_schedule)
        return values


def _schedule(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    message = (
        f"'retry_schedule' must be null or a list of 1 to {MAX_RETRY_STEPS} numbers of seconds,"
        f" 0 to {MAX_RETRY_SECONDS}"
    )
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_RETRY_STEPS:
        raise ValueError(message)
    for step in value:
        if (
            isinstance(step, bool)
            or not isinstance(step, int | float)
            or not 0 <= step <= MAX_RETRY_SECONDS
        ):
            raise ValueError(message)
    return tuple(float(step) for step in value)


# --- the outbox -----------------------------------------------------------------------------


@dataclass
class Notification:
    id: str  # "n1", "n2", ... (the simulator's, not Alipay's notify_id)
    kind: str
    notify_id: str
    auth_app_id: str
    genuine_body: str = field(repr=False)  # as signed
    form_body: str = field(repr=False)  # as delivered (differs when tampered)
    tampered: str | None
    created_at: float
    held: bool
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivered: bool = False
    rounds: int = 0
    next_attempt_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "notify_id": self.notify_id,
            "auth_app_id": self.auth_app_id,
            "form_body": self.form_body,
            "genuine_body": self.genuine_body,
            "tampered": self.tampered,
            "created_at": self.created_at,
            "held": self.held,
            "delivered": self.delivered,
            "attempts": [dict(attempt) for attempt in self.attempts],
            "next_attempt_at": self.next_attempt_at,
        }

    def outcome(self) -> dict[str, Any]:
        """What became of it so far: the last attempt, or why there was none."""
        summary: dict[str, Any] = {
            "id": self.id,
            "notify_id": self.notify_id,
            "auth_app_id": self.auth_app_id,
            "form_body": self.form_body,
        }
        if self.attempts:
            last = self.attempts[-1]
            return {
                **summary,
                "delivered": self.delivered,
                "status": last["status"],
                "answer": last["answer"],
                "error": last["error"],
            }
        reason = "held in the outbox" if self.held else "not sent: no notify_url"
        return {**summary, "delivered": False, "status": None, "answer": None, "error": reason}


class Outbox:
    """Every notification the simulator built, with its delivery attempts (thread-safe).

    One lock guards the entries and settings; a second one serializes delivery rounds, so the
    attempts of concurrent triggers (a control call, the retry thread) never interleave and a
    control call returns only after the rounds it started are recorded.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        state: SimulatorState,
        post: Callable[[str, str], Delivery] = deliver,
    ) -> None:
        self._config = config
        self._state = state
        self._post = post
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._settings = NotificationSettings()
        self._entries: list[Notification] = []
        self._seq = 0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- settings ---------------------------------------------------------------------------

    @property
    def settings(self) -> NotificationSettings:
        with self._lock:
            return self._settings

    def update(self, changes: Mapping[str, Any]) -> NotificationSettings:
        with self._lock:
            self._settings = self._settings.updated(changes)
            settings = self._settings
        if settings.retry_schedule is not None:
            self._start_ticker()
        return settings

    def reset(self) -> None:
        """Default settings, no notifications (a round in flight finishes first)."""
        with self._send_lock, self._lock:
            self._settings = NotificationSettings()
            self._entries.clear()
            self._seq = 0

    def clear(self) -> int:
        with self._send_lock, self._lock:
            count = len(self._entries)
            self._entries.clear()
            return count

    def stop(self) -> None:
        """End the retry thread (shutdown)."""
        self._stop.set()
        ticker = self._ticker
        if ticker is not None:
            ticker.join(timeout=5)

    # --- building ---------------------------------------------------------------------------

    def post_grant(
        self, app_auth_code: str, *, out_biz_no: str | None = None
    ) -> list[dict[str, Any]]:
        """One grant notification per app the code authorized (issued pairs needed)."""
        issued = self._state.issued_pairs(app_auth_code)
        if issued is None:
            raise ValueError("the code's pairs are not issued")
        pairs, auth_time = issued
        now = self._state.clock.now()
        entries = []
        for pair in pairs:

            def build(notify_id: str, pair: TokenPair = pair) -> str:
                return grant_form(
                    self._config,
                    pair=pair,
                    app_auth_code=app_auth_code,
                    auth_time=auth_time,
                    notify_id=notify_id,
                    now=now,
                    out_biz_no=out_biz_no,
                )

            entries.append(self._add("grant", pair.auth_app_id, build, now))
        return [self._dispatch(entry) for entry in entries]

    def post_cancellation(self, auth_app_id: str) -> dict[str, Any]:
        now = self._state.clock.now()
        user_id = self._state.user_of(auth_app_id) or ""
        entry = self._add(
            "cancellation",
            auth_app_id,
            lambda notify_id: cancelled_form(
                self._config,
                auth_app_id=auth_app_id,
                user_id=user_id,
                notify_id=notify_id,
                now=now,
            ),
            now,
        )
        return self._dispatch(entry)

    def _add(
        self, kind: str, auth_app_id: str, build: Callable[[str], str], now: float
    ) -> Notification:
        notify_id = self._state.new_notify_id(now)
        genuine = build(notify_id)
        settings = self.settings
        body = genuine
        if settings.tamper is not None:
            body = tamper(genuine, settings.tamper, kind=kind, auth_app_id=auth_app_id)
        with self._lock:
            self._seq += 1
            entry = Notification(
                id=f"n{self._seq}",
                kind=kind,
                notify_id=notify_id,
                auth_app_id=auth_app_id,
                genuine_body=genuine,
                form_body=body,
                tampered=settings.tamper,
                created_at=now,
                held=settings.hold,
            )
            self._entries.append(entry)
            del self._entries[:-MAX_OUTBOX]
        return entry

    def _dispatch(self, entry: Notification) -> dict[str, Any]:
        if not entry.held:
            with self._send_lock:
                self._round(entry)
        with self._lock:
            return entry.outcome()

    # --- delivering -------------------------------------------------------------------------

    def _round(self, entry: Notification) -> None:
        """POST ``copies`` times (the send lock held); no notify_url: nothing is attempted."""
        url = self._state.behaviour.notify_url
        if url is None:
            return
        copies = self.settings.copies
        for _ in range(copies):
            delivery = self._post(url, entry.form_body)
            # The body is signed and names the merchant: log the outcome only.
            logger.info(
                "%s notification %s: delivered=%s status=%s",
                entry.kind,
                entry.id,
                delivery.delivered,
                delivery.status,
            )
            with self._lock:
                entry.attempts.append({"at": self._state.clock.now(), **delivery.as_dict()})
                entry.delivered = entry.delivered or delivery.delivered
        with self._lock:
            entry.held = False
            entry.rounds += 1
            schedule = self._settings.retry_schedule
            entry.next_attempt_at = None
            if not entry.delivered and schedule is not None and entry.rounds <= len(schedule):
                entry.next_attempt_at = entry.attempts[-1]["at"] + schedule[entry.rounds - 1]

    def _pick(
        self, ids: Sequence[str] | None, order: str, wanted: Callable[[Notification], bool]
    ) -> list[Notification]:
        if order not in ORDERS:
            raise ValueError(f"'order' must be one of {', '.join(ORDERS)}")
        with self._lock:
            if ids is None:
                chosen = [entry for entry in self._entries if wanted(entry)]
                return chosen[::-1] if order == "newest" else chosen
            by_id = {entry.id: entry for entry in self._entries}
            missing = [one for one in ids if one not in by_id]
            if missing:
                raise KeyError(missing[0])
            return [by_id[one] for one in ids]

    def _send(
        self, ids: Sequence[str] | None, order: str, wanted: Callable[[Notification], bool]
    ) -> list[dict[str, Any]]:
        with self._send_lock:
            chosen = self._pick(ids, order, wanted)
            for entry in chosen:
                self._round(entry)
        with self._lock:
            return [entry.as_dict() for entry in chosen]

    def deliver(
        self, ids: Sequence[str] | None = None, order: str = "oldest"
    ) -> list[dict[str, Any]]:
        """Send the held notifications (``ids``: exactly those, in that order); what was sent."""
        return self._send(ids, order, lambda entry: entry.held)

    def redeliver(
        self, ids: Sequence[str] | None = None, order: str = "oldest"
    ) -> list[dict[str, Any]]:
        """Retry every notification not delivered yet, held or not (``ids``: exactly those, in
        that order, even delivered ones: a duplicate on demand)."""
        return self._send(ids, order, lambda entry: not entry.delivered)

    def deliver_due(self) -> list[dict[str, Any]]:
        """Retry the notifications whose scheduled retry is due by the simulator clock."""
        now = self._state.clock.now()
        return self._send(
            None,
            "oldest",
            lambda entry: (
                not entry.delivered
                and not entry.held
                and entry.next_attempt_at is not None
                and entry.next_attempt_at <= now
            ),
        )

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [entry.as_dict() for entry in self._entries]

    # --- the retry thread -------------------------------------------------------------------

    def _start_ticker(self) -> None:
        with self._lock:
            if self._ticker is not None or self._stop.is_set():
                return
            self._ticker = threading.Thread(
                target=self._tick, name="alipay-simulator-notify-retry", daemon=True
            )
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(RETRY_TICK_SECONDS):
            if self.settings.retry_schedule is None:
                continue
            try:
                self.deliver_due()
            except Exception as error:  # never let the thread die silently
                logger.warning("notification retry failed: %s", type(error).__name__)

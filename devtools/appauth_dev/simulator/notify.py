"""Asynchronous notifications Alipay POSTs to the ISV: the cancellation message.

``alipay.open.auth.appauth.cancelled`` in the message-service envelope, with the fields, order
and signing rule of the official vectors (``notifications`` in ``tests/vectors/vectors.json``,
the same body as ``events/callback_notify_cancelled.json``): signed with the Alipay key over the
sorted fields without ``sign`` and ``sign_type``, which the layer's ``verify_notification``
accepts. Delivery is one synchronous POST with a short timeout; a failure is reported, never
raised (Alipay would retry later; the simulator leaves that to the test).
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from appauth.alipay.signing import dumps_compact, rsa_sign, sign_content

from .config import SimulatorConfig
from .state import beijing

CANCELLED_METHOD = "alipay.open.auth.appauth.cancelled"
DELIVERY_TIMEOUT = 3.0
MAX_ANSWER_CHARS = 2048
# As Alipay sends it (see the sample event): with the space.
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"


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
        sign_content(params, exclude=("sign", "sign_type")), config.alipay_private_key
    )
    return urlencode(params, encoding="utf-8")


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
    return Delivery(response.status == 200 and answer.strip() == "success", response.status, answer)

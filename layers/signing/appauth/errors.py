"""Errors of the token service: a caller's request refused, with a reason for metrics and a message safe to show."""

from __future__ import annotations

from appauth.alipay.errors import AppAuthError


class RequestError(AppAuthError):
    """A caller's request is unacceptable. ``reason`` names it for metrics; the message is safe to show."""

    http_status = 400
    reason = "bad_request"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        if reason:
            self.reason = reason
        super().__init__(message)

    def as_dict(self) -> dict[str, dict[str, str]]:
        """The JSON error body every function answers with."""
        return {"error": {"reason": self.reason, "message": str(self)}}


class InvalidRequestError(RequestError):
    """Missing, malformed or oversized parameters."""

    reason = "invalid_request"


class WrongAppError(RequestError):
    """The redirect or notification is for another ISV app."""

    reason = "wrong_app_id"


class InvalidStateError(RequestError):
    """The ``state`` is missing, forged, tampered or expired."""

    reason = "invalid_state"


class StateReplayedError(RequestError):
    """The ``state`` was already used: one authorization per issued state."""

    http_status = 409
    reason = "state_replayed"


class InvalidCodeError(RequestError):
    """Alipay refused the ``app_auth_code`` (used, expired or unknown)."""

    reason = "invalid_code"


class AlipayUnavailableError(RequestError):
    """Alipay did not answer usefully; the merchant can retry the same link later."""

    http_status = 503
    reason = "alipay_unavailable"


class ServiceBusyError(RequestError):
    """Our own AWS services (DynamoDB, SSM, KMS) are throttling or failing before anything was
    exchanged with Alipay; the same link works again once they recover."""

    http_status = 503
    reason = "service_unavailable"


class OutcomeUncertainError(RequestError):
    """The exchange may have happened at Alipay but its answer was lost.

    Alipay also delivers the pair by notification (``open_app_auth_notify``), which the notify
    endpoint stores; otherwise the merchant authorizes again.
    """

    http_status = 502
    reason = "outcome_unknown"

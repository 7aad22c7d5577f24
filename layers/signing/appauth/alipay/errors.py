"""Typed errors of the Alipay protocol. Messages say what went wrong and how to fix it, and never carry a secret."""

from __future__ import annotations

# Alipay v2 codes that mean "try again later": the request may succeed unchanged.
TRANSIENT_CODES = frozenset({"20000"})
# v3 error codes for a dead app_auth_token.
V3_DEAD_TOKEN_CODES = frozenset({"invalid-app-auth-token", "app-auth-token-expired"})
# sub_codes that are transient whatever their code (rate limits, gateway hiccups).
TRANSIENT_SUB_CODE_MARKERS = ("call-limited", "unknow-error", "system-error", "service-busy")


class AppAuthError(Exception):
    """Base of every error this package raises."""


class ConfigError(AppAuthError):
    """The service is misconfigured: a key, certificate, parameter or URL is missing or invalid."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        self.parameter = parameter
        self.message = message  # without the parameter, so it can be re-labelled
        super().__init__(f"{parameter}: {message}" if parameter else message)


class SignatureError(AppAuthError):
    """A response or notification failed verification: treat it as forged and use none of it."""


class TransportError(AppAuthError):
    """The request did not get a usable answer (connection, timeout, HTTP status, garbage body)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)

    @property
    def transient(self) -> bool:
        return True


class OutcomeUnknownError(TransportError):
    """The request may have reached Alipay, but no answer came back.

    A token exchange or refresh in this state must not be blindly resent: Alipay may have
    rotated the pair already. Reconcile (query the token) or retry with the same inputs later.
    """

    @property
    def transient(self) -> bool:
        # Not "retry freely": a resend could act twice. Callers must reconcile instead.
        return False


class AlipayError(AppAuthError):
    """Alipay answered with an error (v2 ``code != 10000`` or a v3 4xx/5xx body)."""

    def __init__(
        self,
        code: str,
        msg: str,
        *,
        sub_code: str | None = None,
        sub_msg: str | None = None,
        trace_id: str | None = None,
        http_status: int | None = None,
        signed: bool = False,
    ) -> None:
        self.code = code
        self.msg = msg
        self.sub_code = sub_code
        self.sub_msg = sub_msg
        self.trace_id = trace_id
        self.http_status = http_status
        # An unsigned error could have been forged on the wire: never act on it irreversibly
        # (e.g. mark a token revoked) without a signed confirmation.
        self.signed = signed
        detail = f"Alipay error {code} {msg}"
        if sub_code:
            detail += f" ({sub_code}: {sub_msg or ''})"
        if trace_id:
            detail += f" [trace {trace_id}]"
        super().__init__(detail)

    @property
    def transient(self) -> bool:
        """True when the same request may succeed later (service busy, rate limited, 5xx)."""
        if self.code in TRANSIENT_CODES:
            return True
        if self.http_status is not None and (self.http_status >= 500 or self.http_status == 429):
            return True
        sub = (self.sub_code or "").lower().replace("_", "-")
        return any(marker in sub for marker in TRANSIENT_SUB_CODE_MARKERS)

    @property
    def permanent(self) -> bool:
        return not self.transient

    @property
    def app_auth_token_dead(self) -> bool:
        """Alipay says the ``app_auth_token`` itself is unknown or expired (v2 ``20001
        aop.invalid-app-auth-token`` / ``aop.app-auth-token-time-out``, v3
        ``invalid-app-auth-token`` / ``app-auth-token-expired``). No official table exists for
        the token APIs: these are the codes the gateway and the v3 API use for a dead token."""
        sub = (self.sub_code or "").lower()
        if self.code == "20001":
            return "app-auth-token" in sub
        return self.code in V3_DEAD_TOKEN_CODES

    @property
    def refresh_token_refused(self) -> bool:
        """Alipay refused the refresh token (v2 ``40002 isv.refresh-token-invalid``, v3
        ``invalid-refresh-token``) or the token it belongs to. Anything else permanent (a bad
        signature, a certificate SN, a permission) is about our own setup, not the merchant's
        pair, and must never be taken for a dead grant."""
        sub = (self.sub_code or "").lower()
        if self.code == "40002":
            return "refresh-token" in sub
        return self.app_auth_token_dead or "refresh-token" in self.code


class UnexpectedResponseError(AppAuthError):
    """A verified Alipay response lacks what the API promises (e.g. a token pair)."""

"""Masking for anything secret that must be mentioned (logs, CLI output, errors)."""

from __future__ import annotations

import logging
import re


def mask(secret: str | None) -> str:
    """Enough to tell two tokens apart in a log, not enough to use one: ``2019…A89 (40)``."""
    if not secret:
        return "<empty>"
    if len(secret) < 16:
        return f"*** ({len(secret)})"
    return f"{secret[:4]}…{secret[-3:]} ({len(secret)})"


# Query parameters whose values are secrets when a library logs a URL (v3 GET requests carry the
# merchant's app_auth_token in the query string).
_SECRET_QUERY = re.compile(r"((?:app_auth_token|app_refresh_token|app_auth_code)=)([^&\s\"']+)")


def mask_query(text: str) -> str:
    """A URL or request line with the secret query values masked."""
    return _SECRET_QUERY.sub(lambda match: match.group(1) + mask(match.group(2)), text)


class SecretQueryFilter(logging.Filter):
    """Masks secret query values in urllib3's DEBUG request lines (they log every URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and "=" in arg for arg in record.args
        ):
            record.args = tuple(
                mask_query(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


# botocore's DEBUG messages whose arguments are bodies or request parameters, by logger.
BODY_MESSAGES = {
    "botocore.parsers": ("Response headers:", "Response body:"),
    "botocore.endpoint": ("Making request for",),
}


class BodyFilter(logging.Filter):
    """Keeps botocore's DEBUG lines but not the bodies they print: SSM answers hold the decrypted
    keys and state secret, KMS answers the plaintext data key, a last-resort SQS message a pair.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        prefixes = BODY_MESSAGES.get(record.name, ())
        if isinstance(record.msg, str) and record.msg.startswith(prefixes):
            record.msg = f"{record.msg.split('%', 1)[0].rstrip()} (not logged: may hold secrets)"
            record.args = None
        return True


# The filter each library logger needs.
LOG_FILTERS: dict[str, type[logging.Filter]] = {
    **dict.fromkeys(BODY_MESSAGES, BodyFilter),
    "urllib3.connectionpool": SecretQueryFilter,
}


def install_log_filters() -> None:
    """Once per process (idempotent): the filters above on the loggers that need them."""
    for name, wanted in LOG_FILTERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, wanted) for existing in logger.filters):
            logger.addFilter(wanted())

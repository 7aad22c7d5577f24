"""What other Lambdas may ask the token query function: typed, validated requests.

A request is a JSON object with an ``action``; see README, "Asking for tokens". Anything else
(unknown fields, wrong types, oversized values) is refused with ``bad_request`` before any
AWS or Alipay call. A request without ``action`` is the issue-4 shape
(``{"auth_app_id", "consistent"}``) and means ``get_token``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from appauth.alipay.ids import is_app_id
from appauth.errors import InvalidRequestError
from appauth.lifecycle import Status

MAX_REQUEST_CHARS = 4096
MAX_REQUIRED_METHODS = 20
MAX_CURSOR_CHARS = 512
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 50
METHOD_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+){1,10}$")
MAX_METHOD_CHARS = 128


class Action(StrEnum):
    GET_TOKEN = "get_token"  # noqa: S105 (an action name, not a secret)
    DESCRIBE = "describe"
    LIST = "list"
    REPORT_INVALID = "report_invalid"


@dataclass(frozen=True)
class GetToken:
    """One merchant app's token (``auth_app_id``) or every app of a merchant user
    (``user_id``). ``consistent`` skips the cache and reads the latest write."""

    auth_app_id: str | None = None
    user_id: str | None = None
    required_methods: tuple[str, ...] = ()
    consistent: bool = False


@dataclass(frozen=True)
class Describe:
    auth_app_id: str


@dataclass(frozen=True)
class ListAuthorizations:
    status: str | None = None
    cursor: str | None = None
    limit: int = DEFAULT_LIST_LIMIT


@dataclass(frozen=True)
class ReportInvalid:
    auth_app_id: str
    version: int


TokenRequest = GetToken | Describe | ListAuthorizations | ReportInvalid

_FIELDS: dict[Action, frozenset[str]] = {
    Action.GET_TOKEN: frozenset(
        {"action", "auth_app_id", "user_id", "required_methods", "consistent"}
    ),
    Action.DESCRIBE: frozenset({"action", "auth_app_id"}),
    Action.LIST: frozenset({"action", "status", "cursor", "limit"}),
    Action.REPORT_INVALID: frozenset({"action", "auth_app_id", "version"}),
}
_LEGACY_FIELDS = frozenset({"auth_app_id", "consistent"})


def parse_request(event: Any) -> TokenRequest:
    """The typed request, or :class:`InvalidRequestError` saying what is wrong (never echoing
    more than a short, printable field name back)."""
    if not isinstance(event, Mapping):
        raise InvalidRequestError('the request must be a JSON object like {"action": "get_token"}')
    try:
        size = len(json.dumps(event, ensure_ascii=False))
    except (TypeError, ValueError):
        raise InvalidRequestError("the request is not plain JSON") from None
    if size > MAX_REQUEST_CHARS:
        raise InvalidRequestError(f"the request is larger than {MAX_REQUEST_CHARS} characters")
    if "action" not in event:
        _only(event, _LEGACY_FIELDS)
        return GetToken(
            auth_app_id=_app_id(event, "auth_app_id"), consistent=_bool(event, "consistent")
        )
    raw_action = event["action"]
    try:
        action = Action(raw_action) if isinstance(raw_action, str) else None
    except ValueError:
        action = None
    if action is None:
        raise InvalidRequestError(f"action must be one of {', '.join(a.value for a in Action)}")
    _only(event, _FIELDS[action])
    if action is Action.GET_TOKEN:
        return _get_token(event)
    if action is Action.DESCRIBE:
        return Describe(_app_id(event, "auth_app_id"))
    if action is Action.LIST:
        return _list(event)
    version = event.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version < 2**53:
        raise InvalidRequestError("version must be the positive whole number get_token returned")
    return ReportInvalid(_app_id(event, "auth_app_id"), version)


def _only(event: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = [key for key in event if key not in allowed]
    if unknown:
        names = ", ".join(_printable(str(key)) for key in sorted(map(str, unknown))[:5])
        raise InvalidRequestError(f"unknown field(s): {names}")


def _printable(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "_-." else "?" for ch in name[:40])
    return cleaned + ("…" if len(name) > 40 else "")


def _app_id(event: Mapping[str, Any], name: str) -> str:
    value = event.get(name)
    if not is_app_id(value):
        raise InvalidRequestError(f"{name} must be a numeric Alipay id (1 to 32 digits)")
    return str(value)


def _bool(event: Mapping[str, Any], name: str) -> bool:
    value = event.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be true or false")
    return value


def _get_token(event: Mapping[str, Any]) -> GetToken:
    has_app, has_user = "auth_app_id" in event, "user_id" in event
    if has_app == has_user:
        raise InvalidRequestError("give exactly one of auth_app_id and user_id")
    methods = event.get("required_methods", [])
    if (
        not isinstance(methods, list)
        or len(methods) > MAX_REQUIRED_METHODS
        or not all(
            isinstance(m, str) and len(m) <= MAX_METHOD_CHARS and METHOD_NAME.match(m)
            for m in methods
        )
    ):
        raise InvalidRequestError(
            f"required_methods must be a list of at most {MAX_REQUIRED_METHODS} Alipay method "
            'names like "alipay.trade.create"'
        )
    return GetToken(
        auth_app_id=_app_id(event, "auth_app_id") if has_app else None,
        user_id=_app_id(event, "user_id") if has_user else None,
        required_methods=tuple(dict.fromkeys(methods)),
        consistent=_bool(event, "consistent"),
    )


def _list(event: Mapping[str, Any]) -> ListAuthorizations:
    status = event.get("status")
    if status is not None and (not isinstance(status, str) or status not in set(Status)):
        raise InvalidRequestError(f"status must be one of {', '.join(s.value for s in Status)}")
    cursor = event.get("cursor")
    if cursor is not None and (
        not isinstance(cursor, str)
        or not 0 < len(cursor) <= MAX_CURSOR_CHARS
        or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    ):
        raise InvalidRequestError("cursor must be the cursor a previous list answer returned")
    limit = event.get("limit", DEFAULT_LIST_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequestError(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}")
    return ListAuthorizations(status=status, cursor=cursor, limit=limit)

"""Alipay identifiers, checked without importing the signing machinery (cold starts)."""

from __future__ import annotations

import re
from typing import TypeGuard

APP_ID_PATTERN = re.compile(r"^[0-9]{1,32}$")


def is_app_id(value: object) -> TypeGuard[str]:
    """An Alipay app id (the ISV's or a merchant's ``auth_app_id``): ASCII digits only."""
    return isinstance(value, str) and APP_ID_PATTERN.fullmatch(value) is not None

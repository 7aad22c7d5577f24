"""One HTTP answer, built by the protocol modules and written by the server."""

from __future__ import annotations

from dataclasses import dataclass, field

JSON_TYPE = "application/json;charset=utf-8"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # For /simulator/stats: success, business_error, rejected, invalid_signature, ...
    outcome: str = "success"

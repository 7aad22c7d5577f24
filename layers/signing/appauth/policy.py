"""When a merchant's token pair should be refreshed.

Rotate when the refresh token has less than ``ahead_days`` left, or every ``hygiene_days``,
whichever comes first, minus a jitter derived from the merchant app id: merchants authorized
together do not refresh together, and the same grant always gets the same time (retries and
re-runs agree).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_JITTER = timedelta(hours=24)
DUE_SHARDS = 8


def _unit_hash(*parts: str) -> float:
    digest = hashlib.sha256("|".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def due_shard(auth_app_id: str) -> str:
    """The partition of the sparse ``due`` index an item lives in (spreads writes and reads)."""
    return str(int(_unit_hash("shard", auth_app_id) * DUE_SHARDS))


@dataclass(frozen=True)
class RefreshPolicy:
    ahead_days: int = 30
    hygiene_days: int = 90
    jitter_fraction: float = 0.1
    verify_days: int = 7

    def next_verify_at(self, auth_app_id: str, now: datetime) -> datetime:
        """When the verification sweep next asks Alipay about this grant: at most
        ``verify_days`` from ``now``, spread over the last tenth of the window so that merchants
        verified together (a big batch authorization) are not all verified in the same run."""
        window = timedelta(days=self.verify_days)
        spread = window * self.jitter_fraction * _unit_hash("verify", auth_app_id, now.isoformat())
        return now + window - spread

    def next_refresh_at(
        self, auth_app_id: str, issued_at: datetime, re_expires_at: datetime | None
    ) -> datetime:
        target = issued_at + timedelta(days=self.hygiene_days)
        if re_expires_at is not None:
            target = min(target, re_expires_at - timedelta(days=self.ahead_days))
        window = max(target - issued_at, timedelta(0))
        jitter = min(MAX_JITTER, window * self.jitter_fraction) * _unit_hash(
            "jitter", auth_app_id, issued_at.isoformat()
        )
        return max(issued_at, target - jitter)

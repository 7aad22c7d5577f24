"""A small typed client for the simulator's control API (``/simulator/...``), for tests and the demo.

Every method is one HTTP call; answers are the JSON the endpoint returns (see the package
docstring). A refused call raises :class:`SimulatorControlError` with the status and the
simulator's message, except :meth:`SimulatorControl.merchant`, which answers None for an
unknown app.
"""

from __future__ import annotations

from typing import Any

import requests

TIMEOUT = 10.0


class SimulatorControlError(Exception):
    """The control API refused a call (bad input, unknown id)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"simulator control API answered {status}: {message}")


class SimulatorControl:
    """``base_url`` is the simulator's root, e.g. ``RunningSimulator.url``."""

    def __init__(self, base_url: str, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session or requests.Session()

    # --- plumbing ------------------------------------------------------------------------

    def _call(
        self,
        http_method: str,
        name: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> Any:
        response = self._session.request(
            http_method,
            f"{self.base_url}/simulator/{name}",
            json=body if http_method == "POST" else None,
            params=params,
            timeout=timeout,
        )
        if response.status_code != 200:
            raise SimulatorControlError(response.status_code, _message(response))
        return response.json()

    # --- authorizations and time ---------------------------------------------------------

    def codes(self, **kw: Any) -> dict[str, Any]:
        """Mint an ``app_auth_code`` (``auth_app_id``, ``user_id``, ``batch_size`` optional;
        ``notify=True`` issues the pairs now and sends the grant notification(s), with the
        optional ``out_biz_no``)."""
        minted: dict[str, Any] = self._call("POST", "codes", kw)
        return minted

    def revoke(self, auth_app_id: str, notify: bool = False) -> dict[str, Any]:
        """The merchant cancels; with ``notify`` the signed notification is built and sent."""
        result: dict[str, Any] = self._call(
            "POST", "revoke", {"auth_app_id": auth_app_id, "notify": notify}
        )
        return result

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        clock: dict[str, Any] = self._call("POST", "clock", {"advance_seconds": seconds})
        return clock

    def merchant(self, auth_app_id: str) -> dict[str, Any] | None:
        """Everything the simulator did for one merchant app; None if it never saw it."""
        response = self._session.get(
            f"{self.base_url}/simulator/merchants/{auth_app_id}", timeout=TIMEOUT
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise SimulatorControlError(response.status_code, _message(response))
        record: dict[str, Any] = response.json()
        return record

    def behaviour(self, **kw: Any) -> dict[str, Any]:
        """Change the behaviour with ``kw`` (none: read it); the resulting behaviour."""
        behaviour: dict[str, Any] = (
            self._call("POST", "behaviour", kw) if kw else self._call("GET", "behaviour")
        )
        return behaviour

    # --- faults --------------------------------------------------------------------------

    def faults(self, **kw: Any) -> dict[str, Any]:
        """Merge ``kw`` into the random faults (none: read them); the resulting faults."""
        faults: dict[str, Any] = (
            self._call("POST", "faults", kw) if kw else self._call("GET", "faults")
        )
        return faults

    def add_rule(self, **kw: Any) -> dict[str, Any]:
        """Add a targeted fault rule; the rule with its ``id``."""
        rule: dict[str, Any] = self._call("POST", "faults/rules", kw)
        return rule

    def rules(self) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = self._call("GET", "faults/rules")
        return rules

    def clear_rules(self) -> int:
        """Remove every rule; how many there were."""
        cleared: int = self._call("DELETE", "faults/rules")["cleared"]
        return cleared

    def holds(self, wait: float | None = None, count: int = 1) -> list[dict[str, Any]]:
        """The held requests; with ``wait``, first block up to that long for ``count`` of them."""
        params = {"wait": str(wait), "count": str(count)} if wait else None
        holds: list[dict[str, Any]] = self._call(
            "GET", "holds", params=params, timeout=TIMEOUT + (wait or 0)
        )
        return holds

    def wait_for_hold(self, timeout: float = 5.0) -> dict[str, Any]:
        """The oldest held request, waiting up to ``timeout``; TimeoutError if none comes."""
        holds = self.holds(wait=timeout)
        if not holds:
            raise TimeoutError(f"no request was held within {timeout}s")
        return holds[0]

    def release(self, hold_id: str, then: str | None = None) -> dict[str, Any]:
        """Let a held request go on, normally or into the fault ``then``."""
        released: dict[str, Any] = self._call("POST", f"holds/{hold_id}/release", {"then": then})
        return released

    # --- notifications ------------------------------------------------------------------

    def notifications(self) -> list[dict[str, Any]]:
        """Every notification in the outbox (oldest first), with its attempts."""
        listing: list[dict[str, Any]] = self._call("GET", "notifications")
        return listing

    def notification_settings(self, **kw: Any) -> dict[str, Any]:
        """Merge ``kw`` into the notification settings (none: read them); the settings."""
        settings: dict[str, Any] = (
            self._call("POST", "notifications/settings", kw)
            if kw
            else self._call("GET", "notifications/settings")
        )
        return settings

    def deliver_notifications(
        self, ids: list[str] | None = None, order: str = "oldest"
    ) -> list[dict[str, Any]]:
        """Send the held notifications, ``oldest`` or ``newest`` first (``ids``: exactly those,
        in that order); the notifications sent, with their attempts."""
        sent: list[dict[str, Any]] = self._call(
            "POST", "notifications/deliver", _sending(ids, order)
        )
        return sent

    def redeliver_notifications(
        self, ids: list[str] | None = None, order: str = "oldest"
    ) -> list[dict[str, Any]]:
        """Retry every notification not delivered yet (``ids``: exactly those, delivered or
        not); the notifications sent, with their attempts."""
        sent: list[dict[str, Any]] = self._call(
            "POST", "notifications/redeliver", _sending(ids, order)
        )
        return sent

    def clear_notifications(self) -> int:
        """Empty the outbox; how many notifications it held."""
        cleared: int = self._call("DELETE", "notifications")["cleared"]
        return cleared

    # --- the rest ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``{"requests": {"<method>": {"<outcome>": n}}}``."""
        stats: dict[str, Any] = self._call("GET", "stats")
        return stats

    def reset(self) -> None:
        """Back to a fresh simulator (state, behaviour, faults, rules, holds, notifications,
        stats, clock)."""
        self._call("POST", "reset")


def _sending(ids: list[str] | None, order: str) -> dict[str, Any]:
    body: dict[str, Any] = {"order": order}
    if ids is not None:
        body["ids"] = ids
    return body


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text[:200]

"""An Alipay simulator for development and tests (never shipped in the Lambda layer).

A real HTTP server (standard library, loopback) that speaks the v2 gateway and the v3 API for
``alipay.open.auth.token.app`` and ``alipay.open.auth.token.app.query`` with real signatures,
plus the consent pages, single-use codes, refresh rotation with a grace period, revocation, a
movable clock and injectable faults. Every protocol rule comes from the signing layer.

Endpoints:

- ``POST /gateway.do`` (v2; parameters from the query string and the form body). Also the
  merchant-scoped ``alipay.open.mini.baseinfo.query`` (needs ``app_auth_token``).
- ``POST /v3/alipay/open/auth/token/app``, ``GET /v3/alipay/open/auth/token/app/query``.
- ``GET /oauth2/appToAppAuth.htm``, ``GET /oauth2/appToAppBatchAuth.htm`` (consent pages),
  ``POST /oauth2/approve`` (the page's form: 302 to ``redirect_uri`` with ``app_id``,
  ``app_auth_code`` and ``state``).

Control API (JSON bodies; 400 ``{"error": ...}`` on bad input):

- ``POST /simulator/codes`` ``{"auth_app_id"?, "user_id"?, "batch_size"?}`` ->
  ``{"app_auth_code", "auth_app_ids", "user_id", "batch", "expires_in"}``. ``batch_size``
  (1..20) makes a batch authorization (10 min code, ``tokens[]`` only).
- ``POST /simulator/revoke`` ``{"auth_app_id"}`` -> ``{"auth_app_id", "revoked_pairs"}``
  (404 for an unknown app): every pair of the app stops; query says ``invalid``.
- ``POST /simulator/clock`` ``{"advance_seconds": N}`` -> ``{"now", "beijing"}``;
  ``GET /simulator/clock`` reads it.
- ``POST /simulator/faults`` with any of ``latency_ms``, ``error_rate``, ``timeout_rate``,
  ``timeout_seconds``, ``timeout_after_processing``, ``rate_limit_per_second``,
  ``escape_slashes``, ``response_fault``, ``response_fault_rate``,
  ``response_fault_after_processing`` (merged into the current faults) -> the faults; ``GET``
  reads them. See :class:`~appauth_dev.simulator.faults.Faults` for their meaning. An optional
  ``"seed": <int>`` restarts the fault decisions from that seed (until the next reset), so a
  test with a fractional rate sees the same sequence on every run.
- Response faults corrupt the answer the simulator computed, after signing: ``response_fault``
  is ``null`` or one of ``tamper`` (one character of the signed node / v3 body changed),
  ``wrong_key`` (signed with a freshly generated RSA key), ``drop_sign`` (v2 ``sign`` removed,
  v3 ``alipay-signature`` header removed), ``garbage`` (200 with non-JSON bytes),
  ``truncate`` (the body cut in half, Content-Length matching the cut body), ``oversized``
  (a 200 body over 1 MiB) and ``html_502`` (a proxy's HTML 502 page);
  ``response_fault_rate`` (0..1, default 1) is its probability per call;
  ``response_fault_after_processing`` (default true: Alipay processed the call and the answer
  was damaged in transit, the dangerous case) or false (the state is left unchanged).
  Corrupted answers count as ``corrupted`` in the statistics.
- ``POST /simulator/reset`` clears codes, tokens, faults, statistics and the clock offset, and
  reseeds the random generators.
- ``GET /simulator/stats`` -> ``{"requests": {"<method>": {"<outcome>": n}}}``; outcomes are
  ``success``, ``business_error``, ``rejected``, ``invalid_signature``, ``fault_error``,
  ``rate_limited``, ``timeout``, ``corrupted``.
"""

from __future__ import annotations

from .config import SimulatorConfig
from .faults import Faults
from .server import RunningSimulator, start_simulator
from .state import SimulatorState

__all__ = ["Faults", "RunningSimulator", "SimulatorConfig", "SimulatorState", "start_simulator"]

"""An Alipay simulator for development and tests (never shipped in the Lambda layer).

A real HTTP server (standard library, loopback) that speaks the v2 gateway and the v3 API for
``alipay.open.auth.token.app`` and ``alipay.open.auth.token.app.query`` with real signatures,
plus the consent pages, single-use codes, refresh rotation with grace periods, a settable
rule for superseded refresh tokens, revocation (silent or notified), signed grant and
cancellation notifications through an outbox with delivery faults, per-merchant records, a
movable clock, random and targeted faults, and held requests. Every protocol rule comes from
the signing layer.

Endpoints:

- ``POST /gateway.do`` (v2; parameters from the query string and the form body). Also the
  merchant-scoped ``alipay.open.mini.baseinfo.query`` (needs ``app_auth_token``).
- ``POST /v3/alipay/open/auth/token/app``, ``GET /v3/alipay/open/auth/token/app/query``.
- ``GET /oauth2/appToAppAuth.htm``, ``GET /oauth2/appToAppBatchAuth.htm`` (consent pages),
  ``POST /oauth2/approve`` (the page's form: 302 to ``redirect_uri`` with ``app_id``,
  ``app_auth_code`` and ``state``). When ``grant_notifications`` is on and a ``notify_url`` is
  set, approval issues the authorization's pair(s) at once and sends one signed
  ``open_app_auth_notify`` per authorized app, carrying its pair, before the redirect (see
  notifications below); the exchange of the code answers those same pairs. Otherwise the pairs
  are issued on the exchange (nothing could observe them earlier).

Control API (JSON bodies; 400 ``{"error": ...}`` on bad input, 404 for an unknown id):

- ``POST /simulator/codes`` ``{"auth_app_id"?, "user_id"?, "batch_size"?, "notify"?: false,
  "out_biz_no"?}`` -> ``{"app_auth_code", "auth_app_ids", "user_id", "batch", "expires_in"}``.
  ``batch_size`` (1..20) makes a batch authorization (10 min code, ``tokens[]`` only). Without
  ``notify`` the pairs are issued on the exchange (a failed exchange leaves no merchant);
  ``notify: true`` issues them now and sends the grant notification(s) whatever
  ``grant_notifications`` says (``out_biz_no`` goes into its ``trigger_context``); the answer
  then adds ``"notifications": [<outcome>, ...]``.
- ``POST /simulator/revoke`` ``{"auth_app_id", "notify"?: false}`` ->
  ``{"auth_app_id", "revoked_pairs", "notification"}`` (404 for an unknown app): every pair of
  the app stops; query says ``invalid``. ``notify: false`` (default) cancels silently
  (``notification`` is null). ``notify: true`` builds a signed
  ``alipay.open.auth.appauth.cancelled`` message-service notification (the vectors' fields,
  signed with the Alipay key; the layer's ``verify_notification`` accepts it) and sends it
  through the outbox: ``notification`` = ``<outcome>`` = ``{"id", "notify_id", "auth_app_id",
  "form_body", "delivered", "status", "answer", "error"}``, where ``delivered`` means HTTP 200
  with the body exactly ``success``; ``status``/``answer`` are null when no HTTP answer came
  (``error`` says why: an exception's type, ``held in the outbox`` or ``not sent: no
  notify_url``). A failed delivery is reported, never raised. Python:
  ``RunningSimulator.revoke(auth_app_id, notify=False)``.
- ``POST /simulator/clock`` ``{"advance_seconds": N}`` -> ``{"now", "beijing"}`` (scheduled
  notification retries that fall due go out before it answers); ``GET /simulator/clock`` reads
  it.
- ``POST /simulator/behaviour`` with any of ``superseded_refresh``, ``token_grace_seconds``,
  ``refresh_grace_seconds``, ``notify_url`` (merged) -> the behaviour; ``GET`` reads it. Python:
  ``SimulatorState.set_behaviour(**changes)`` / ``.behaviour`` (:class:`Behaviour`).
  ``superseded_refresh`` is what a refresh with a superseded refresh token gets while within
  ``refresh_grace_seconds`` of being superseded: ``refuse`` (default: 40002
  ``isv.refresh-token-invalid``), ``same_pair`` (accepted, answering the pair that superseded
  it, unchanged: an idempotent replay) or ``new_pair`` (accepted, a fresh pair that supersedes
  the current one). After the refresh grace, and for a cancelled merchant, always refused.
  ``token_grace_seconds``: how long a superseded ``app_auth_token`` still works for API calls
  and query. Both graces default to the config's ``grace_seconds``; ``notify_url`` to null.
  The endpoint also takes ``grant_notifications`` (a notification setting, below); the answer
  names it only when the call did, and ``GET`` never does.
- Notifications: every notification built goes into the outbox and is POSTed to
  ``notify_url`` (form-encoded, 3 s timeout, synchronously, every attempt recorded).
  ``GET /simulator/notifications`` -> ``[{"id": "n1"..., "kind": "grant"|"cancellation",
  "notify_id", "auth_app_id", "form_body" (as delivered), "genuine_body" (as signed),
  "tampered", "created_at", "held", "delivered", "attempts": [{"at", "status", "answer",
  "error", "delivered"}, ...], "next_attempt_at"}, ...]`` (oldest first; raw tokens: test use
  only); ``DELETE`` empties it -> ``{"cleared": n}``. ``GET|POST
  /simulator/notifications/settings`` (merged; see
  :class:`~appauth_dev.simulator.notify.NotificationSettings`): ``grant_notifications`` (true),
  ``copies`` (1..10: each delivery round POSTs it N times), ``hold`` (false: new ones stay
  undelivered until delivered on demand), ``tamper`` (null, ``biz_content``, ``auth_app_id``
  or ``wrong_key``: damaged after signing, so verification fails), ``retry_schedule`` (null, or
  seconds on the simulator clock between failed rounds; due retries go out on a clock advance
  and from a background thread). ``POST /simulator/notifications/deliver`` ``{"order"?:
  "oldest"|"newest", "ids"?: [...]}`` sends the held ones (``ids``: exactly those, in that
  order); ``POST /simulator/notifications/redeliver`` (same body) retries every one not
  delivered yet (``ids``: exactly those, even delivered ones) -> the notifications sent.
  Python: ``RunningSimulator.outbox`` (:class:`~appauth_dev.simulator.notify.Outbox`).
- ``GET /simulator/merchants/{auth_app_id}`` (404 if unknown; Python
  ``SimulatorState.merchant_record``) -> ``{"auth_app_id", "user_id", "status":
  "authorized"|"cancelled", "current": <pair>, "pairs": [<pair>, ...] (every pair issued, oldest
  first), "refresh_calls": [{"at", "outcome", "fault"}, ...], "rotations", "exchanges"}``;
  ``<pair>`` = ``{"app_auth_token", "app_refresh_token", "issued_at", "superseded_at",
  "source": "authorization_code"|"refresh_token", "token_accepted", "refresh_accepted"}`` (the
  last two: would a call / a refresh with it be accepted now). A refresh call's ``outcome`` is
  ``rotated``, ``replayed_same``, ``replayed_new``, ``refused`` or ``not_processed`` (a fault
  stopped it first); ``fault`` names the fault that hit the call (``timeout``, ``tamper``, ...,
  ``hold``), so an answer lost after processing is still recorded as what it did. ``rotations``
  counts refresh calls that issued a pair, ``exchanges`` code exchanges that did.
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
- ``POST /simulator/faults/rules`` adds a targeted rule -> the rule with its ``id`` (``r1``,
  ...); ``GET`` lists them (with ``matched``, ``fired``, ``active``); ``DELETE`` clears them ->
  ``{"cleared": n}``. Python: ``RunningSimulator.faults.add_rule(**rule)``, ``.rules()``,
  ``.clear_rules()``. A rule: ``method`` (``alipay.open.auth.token.app``,
  ``alipay.open.auth.token.app.query``, ``alipay.open.mini.baseinfo.query`` or null: any; v2
  and v3 calls alike), ``grant_type`` (``authorization_code``, ``refresh_token`` or null),
  ``auth_app_id`` (null, or the app the call's code / refresh token / app_auth_token belongs
  to), ``nth`` (only the Nth matching call from now) or ``count`` (the next N matching calls,
  default 1), ``fault``, ``after_processing`` (default true) and ``timeout_seconds``
  (default the faults' ``timeout_seconds``). Rules are tried in order before the random
  faults; each active rule whose filters match counts the call, the first to fire takes it.
  Faults: ``error`` (unsigned 20000, before processing), ``rate_limited`` (signed
  call-limited, before processing), ``http_503`` (a proxy's bare HTML 503, no Alipay headers,
  before processing), ``timeout`` (hold ``timeout_seconds``, then close without an answer),
  any response fault above, and ``hold``; ``after_processing`` says whether the call takes
  effect before a ``timeout``, response fault or ``hold`` (ignored for the three
  before-processing faults). Fired rules count in the statistics under the outcomes above
  (``http_503`` under ``http_503``; a held call under its eventual answer's outcome).
- ``hold``: the matching request blocks in its handler thread until released; held after
  processing, the state has changed and only the answer waits; held before processing, the
  call takes effect on release (this is how tests force reorderings). ``GET /simulator/holds``
  -> ``[{"id", "rule_id", "method", "auth_app_id", "since"}, ...]`` (oldest first);
  ``?wait=S&count=N`` first blocks up to S seconds (max 60) until N requests are held.
  ``POST /simulator/holds/{id}/release`` ``{"then"?: null | <fault>}`` ->
  ``{"released", "then"}`` lets it go on: answered normally, or into ``error``,
  ``rate_limited``, ``http_503`` (never processed if it was held before processing),
  ``timeout`` or a response fault (processed, then the answer is lost or damaged). Python:
  ``RunningSimulator.faults.holds()``, ``.wait_for_hold(timeout)`` (TimeoutError if none),
  ``.release(hold_id, then=None)``. Reset and shutdown abort every held request (the
  connection is closed, nothing is processed) and end injected timeouts.
- ``POST /simulator/reset`` clears codes, tokens, records, behaviour, faults, rules, holds,
  notifications and their settings, statistics and the clock offset, and reseeds the random generators.
- ``GET /simulator/stats`` -> ``{"requests": {"<method>": {"<outcome>": n}}}``; outcomes are
  ``success``, ``business_error``, ``rejected``, ``invalid_signature``, ``fault_error``,
  ``rate_limited``, ``timeout``, ``corrupted``, ``http_503``.

:class:`~appauth_dev.simulator.control.SimulatorControl` wraps every control endpoint for tests
and the demo. Certificate mode refuses a wrong or missing ``app_cert_sn`` /
``alipay_root_cert_sn`` the way Alipay does (v2 under the method node, v3 with a 400 body; see
``gateway`` and ``v3`` for the codes and why those answers name no Alipay certificate).
"""

from __future__ import annotations

from .config import SimulatorConfig
from .control import SimulatorControl, SimulatorControlError
from .faults import Faults
from .server import RunningSimulator, start_simulator
from .state import Behaviour, SimulatorState

__all__ = [
    "Behaviour",
    "Faults",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorControl",
    "SimulatorControlError",
    "SimulatorState",
    "start_simulator",
]

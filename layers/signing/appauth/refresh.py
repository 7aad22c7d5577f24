"""Rotation that never loses a token: the refresh protocol.

For each merchant (see README, "The rotation protocol"):

1. **Lease** (conditional on ``version`` and no live lease; owner = the run's request id). The
   lease outlives the worst case of the refresh call plus every store and park retry, and the
   function's timeout. A refresh is sent only while the run still has that worst case left.
2. **Refresh** with the stored refresh token. Each failure has a class, decided by what Alipay
   can have done:

   - *transient* (nothing sent, 5xx/429 before processing, ``20000``, rate limits): Alipay did
     not rotate. Retry later with exponential backoff and jitter; the status never changes.
   - *permanent* (``40002`` invalid refresh token, ``20001`` invalid token, grant gone): a claim
     about the pair that a superseded or forged answer could also make, so it is confirmed with
     ``alipay.open.auth.token.app.query`` before any status change.
   - *outcome unknown* (no answer, an answer we cannot verify or use): Alipay may have rotated.
     The item is marked, and the merchant is reconciled, never refreshed blindly.
3. **Store** the new pair in ONE write fenced by ``lease_owner = me AND version = leased``.
   Durable sinks, in order: the table (retried with backoff), the parking queue, and, when both
   refuse, one structured log line holding the pair sealed under the token key. A refusal is
   classified: a newer grant or a cancellation won (audited, stop) or the lease was lost (park).

**Verify** (the sweep, after the due merchants): a merchant whose ``verify_at`` has come is
leased like a refresh and its token queried (sharing the run's rate limit and time). ``valid``:
what Alipay said (methods, period) is stored and the next check is due in ``VerifyEveryDays``;
``invalid``: ``revoked``; the token unknown to Alipay: the merchant is refreshed now (its refresh
token may still work, and a refused one is confirmed as above); no usable answer: asked again
later. A merchant marked for reconciliation is reconciled instead.

**Reconcile** (the lease was taken over from a run that died, or the item is marked): resend the
stored refresh token once. Alipay either answers (a replay of the pair it issued, or a fresh one:
stored as ``recovered``), or refuses it, and then the query decides: ``valid`` -> keep the pair,
retry soon, alarmed (the pair works, its refresh token may not); ``invalid`` -> ``revoked``;
the token unknown to Alipay -> ``needs_reauth``. Only a signed answer changes a status.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from botocore.exceptions import BotoCoreError, ClientError

from appauth.alipay.client import AlipayClient
from appauth.alipay.credentials import is_app_id
from appauth.alipay.errors import (
    AlipayError,
    OutcomeUnknownError,
    SignatureError,
    TransportError,
    UnexpectedResponseError,
)
from appauth.alipay.models import TokenGrant
from appauth.envelope import SealedTokens, TokenDecryptionError
from appauth.errors import InvalidRequestError
from appauth.lifecycle import Transition
from appauth.parking import GrantSink, Kept
from appauth.store import STATUS_GRANTED, Lease, RefreshWrite, StoredAuthorization, TokenStore

logger = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 60.0
STORE_ATTEMPTS = 3
STORE_BACKOFF_SECONDS = 0.5
REFUSED_WRITE_CALLS = 4


class Outcome(StrEnum):
    """What happened to one merchant in a run (the manual trigger lists them)."""

    ROTATED = "rotated"
    RECOVERED = "recovered"  # reconciled: Alipay's pair recovered by the resend
    SKIPPED_LEASED = "skipped_leased"
    DEFERRED_TRANSIENT = "deferred_transient"
    DEFERRED_UNCONFIRMED = "deferred_unconfirmed"  # refused, but the query could not confirm
    # Alipay refused the call for a reason that is not the merchant's pair (signature,
    # certificate SN, permission): our setup is wrong. Never a status change; alarmed.
    DEFERRED_ALIPAY_ERROR = "deferred_alipay_error"
    REFUSED_PAIR_VALID = "refused_pair_valid"  # refresh refused, the query says the pair works
    OUTCOME_UNKNOWN = "outcome_unknown"  # marked for reconciliation
    NEEDS_REAUTH = "needs_reauth"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"  # a newer grant or a cancellation won the race: ours dropped
    PARKED = "parked"
    LAST_RESORT = "logged_last_resort"
    LOST = "lost"
    UNREADABLE = "unreadable"
    STOPPED_EARLY = "stopped_early"
    STOPPED_ON_ERROR = "stopped_on_error"  # the due index could not be read: the rest waits
    NOT_FOUND = "not_found"
    NOT_GRANTED = "not_granted"
    VERIFIED = "verified"  # the sweep asked Alipay: the grant is valid, its info is stored
    VERIFY_DEFERRED = "verify_deferred"  # the sweep got no usable answer: asked again later


@dataclass
class RefreshReport:
    due: int = 0
    verify_due: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reconciled: int = 0
    merchants: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    MAX_LISTED = 1000

    def add(self, auth_app_id: str, outcome: Outcome, *, reconciled: bool = False) -> None:
        with self._lock:
            self.outcomes[outcome.value] += 1
            self.reconciled += reconciled
            if len(self.merchants) < self.MAX_LISTED:
                self.merchants.append({"auth_app_id": auth_app_id, "outcome": outcome.value})

    def count(self, outcome: Outcome) -> int:
        return self.outcomes[outcome.value]

    def as_dict(self) -> dict[str, int]:
        counts = {outcome.value: self.outcomes[outcome.value] for outcome in Outcome}
        return {
            "due": self.due,
            "verify_due": self.verify_due,
            "reconciled": self.reconciled,
            **counts,
        }


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter from the stored consecutive failure count, capped."""

    base: timedelta
    cap: timedelta

    def delay(self, failures: int, rng: random.Random) -> timedelta:
        ceiling = min(self.cap, self.base * (1 << max(0, failures - 1)))
        return ceiling * rng.uniform(0.5, 1.0)


TRANSIENT_BACKOFF = Backoff(timedelta(minutes=5), timedelta(hours=6))
# "Retried soon": the refresh token was refused though the pair works; alarmed meanwhile.
REFUSED_BACKOFF = Backoff(timedelta(minutes=15), timedelta(hours=2))
UNREADABLE_RETRY = Backoff(timedelta(hours=6), timedelta(hours=24))
# The sweep could not verify a merchant: ask again after about an hour (the next run or two).
VERIFY_RETRY = Backoff(timedelta(hours=1), timedelta(hours=6))


# Why a leased pair was not sent (what the item records; KMS unreachable: ``kms_<error>``).
UNREADABLE_PAIR = "unreadable_pair"
NO_TIME_LEFT = "stopped_early"


@dataclass(frozen=True)
class _NotSent:
    """Nothing went to Alipay for this lease; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class Budget:
    """How long each step can take at worst, from the configured timeouts (never a constant).

    ``reserve`` is what a worker must still have before it sends a refresh: the refresh itself,
    then sealing, the table write with its retries, the parking queue and the last resort.
    """

    refresh_call: float
    query_call: float
    aws_call: float
    store_attempts: int = STORE_ATTEMPTS
    store_backoff: float = STORE_BACKOFF_SECONDS

    @classmethod
    def for_client(cls, client: AlipayClient, aws_call: float) -> Budget:
        return cls(
            refresh_call=client.worst_case_seconds(retry_safe=False),
            query_call=client.worst_case_seconds(retry_safe=True),
            aws_call=aws_call,
        )

    @property
    def store(self) -> float:
        seal = self.aws_call
        # Every attempt is one transaction; a refused one is not retried but re-read, audited and
        # offered to the fenced fallback (its read and its transaction): four calls more.
        table = (self.store_attempts + REFUSED_WRITE_CALLS) * self.aws_call + self._pauses
        park = 2 * self.aws_call  # seal again if needed + send
        return seal + table + park

    @property
    def _pauses(self) -> float:
        return sum(self.store_backoff * 2.0**n for n in range(self.store_attempts - 1))

    @property
    def reserve(self) -> float:
        """Before a refresh: the call and everything that stores its answer."""
        return self.refresh_call + self.store

    @property
    def confirm(self) -> float:
        """Before a confirming query: the query and one status write."""
        return self.query_call + self.aws_call

    def lease_seconds(self, function_timeout: float) -> float:
        """Longer than the worst case of one merchant and than the function's own timeout."""
        return max(self.reserve + self.confirm, function_timeout) + LEASE_MARGIN_SECONDS


class TokenBucket:
    """A client-side rate limit shared by the pool: ``rate`` calls per second, bursts of
    ``burst``. ``acquire`` blocks the calling worker until a call is allowed."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._capacity = burst if burst is not None else max(1.0, rate)
        self._tokens = self._capacity
        self._monotonic = monotonic
        self._sleep = sleep
        self._updated = monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._monotonic()
                self._tokens = min(
                    self._capacity, self._tokens + (now - self._updated) * self._rate
                )
                self._updated = now
                # The tolerance keeps float rounding from leaving a bucket a hair short forever.
                if self._tokens >= 1 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1)
                    return
                wait_for = (1 - self._tokens) / self._rate
            self._sleep(wait_for)


@dataclass
class Refresher:
    """One run's collaborators. ``time_left`` is the run's remaining seconds; ``owner`` its id."""

    store: TokenStore
    client: AlipayClient
    sink: GrantSink
    clock: Callable[[], datetime]
    owner: str
    budget: Budget
    lease_seconds: float
    time_left: Callable[[], float] = lambda: float("inf")
    limiter: TokenBucket | None = None
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep

    # --- a run ----------------------------------------------------------------------------

    def refresh_due(self, *, concurrency: int = 1, limit: int | None = None) -> RefreshReport:
        """Every due merchant, read page by page from the sparse index, through a bounded pool."""
        report = RefreshReport()

        def candidates() -> Iterable[tuple[str, int | None]]:
            for auth_app_id, version in self.store.due(self.clock(), limit=limit):
                report.due += 1
                yield auth_app_id, version

        self._run(candidates(), report, concurrency, self._one_safely)
        return report

    def verify_due(self, report: RefreshReport, *, concurrency: int = 1) -> RefreshReport:
        """The verification sweep: every granted merchant whose ``verify_at`` has come, read
        page by page from the sparse ``verify`` index, through the same pool, rate limit and
        time budget as the rotations (run it after them: a due rotation is more urgent)."""

        def candidates() -> Iterable[tuple[str, int | None]]:
            for auth_app_id, version in self.store.verify_due(self.clock()):
                report.verify_due += 1
                yield auth_app_id, version

        self._run(candidates(), report, concurrency, self._verify_safely)
        return report

    def refresh_now(self, auth_app_ids: Sequence[str], *, concurrency: int = 1) -> RefreshReport:
        """The manual trigger: these merchants now, due or not."""
        report = RefreshReport()
        report.due = len(auth_app_ids)
        self._run(((app, None) for app in auth_app_ids), report, concurrency, self._one_safely)
        return report

    def _run(
        self,
        candidates: Iterable[tuple[str, int | None]],
        report: RefreshReport,
        concurrency: int,
        work: Callable[[str, int | None, RefreshReport], None],
    ) -> None:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            in_flight: set[Future[None]] = set()
            try:
                self._dispatch(candidates, report, concurrency, pool, in_flight, work=work)
            except (BotoCoreError, ClientError) as error:
                # The due index could not be read: finish what was taken, report, stop.
                logger.error("Reading the due index failed", extra={"error": type(error).__name__})
                report.add("-", Outcome.STOPPED_ON_ERROR)
            for future in in_flight:
                future.result()

    def _dispatch(
        self,
        candidates: Iterable[tuple[str, int | None]],
        report: RefreshReport,
        concurrency: int,
        pool: ThreadPoolExecutor,
        in_flight: set[Future[None]],
        *,
        work: Callable[[str, int | None, RefreshReport], None],
    ) -> None:
        for auth_app_id, version in candidates:
            if self.time_left() < self.budget.reserve:
                # Not enough time to store an answer: this one and the rest stay due.
                report.add(auth_app_id, Outcome.STOPPED_EARLY)
                return
            if len(in_flight) >= 2 * concurrency:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    in_flight.discard(future)
                    future.result()
            in_flight.add(pool.submit(work, auth_app_id, version, report))

    def _one_safely(self, auth_app_id: str, version: int | None, report: RefreshReport) -> None:
        try:
            self.refresh_one(auth_app_id, version, report)
        except Exception:
            # One merchant's surprise (an AWS error outside the durable path) never stops the
            # run; its lease lapses and the next run reconciles it.
            logger.exception("Refresh of one merchant failed", extra={"auth_app_id": auth_app_id})
            report.add(auth_app_id, Outcome.OUTCOME_UNKNOWN)

    def _verify_safely(self, auth_app_id: str, version: int | None, report: RefreshReport) -> None:
        try:
            self.verify_one(auth_app_id, version, report)
        except Exception:
            logger.exception("Verifying one merchant failed", extra={"auth_app_id": auth_app_id})
            report.add(auth_app_id, Outcome.VERIFY_DEFERRED)

    # --- the verification sweep -------------------------------------------------------------

    def verify_one(self, auth_app_id: str, version: int | None, report: RefreshReport) -> None:
        """Ask Alipay about one granted merchant (see the module docstring, "Verify")."""
        if version is None:
            report.add(auth_app_id, Outcome.NOT_FOUND)
            return
        # The check may turn into a rotation: it needs the time an answer needs.
        lease = self._lease(auth_app_id, version, report)
        if lease is None:
            return
        resent: list[bool] = []
        if lease.needs_reconcile:
            # A refresh died or its answer was lost: reconciling is what this merchant needs.
            outcome = self._rotate(lease, resent)
            report.add(auth_app_id, outcome, reconciled=outcome != Outcome.OUTCOME_UNKNOWN)
            return
        report.add(auth_app_id, self._verify(lease, resent))

    def _lease(self, auth_app_id: str, version: int, report: RefreshReport) -> Lease | None:
        """The merchant claimed for this run, if the run still has the time an answer needs and
        nobody else holds it (reported otherwise)."""
        if self.time_left() < self.budget.reserve:
            report.add(auth_app_id, Outcome.STOPPED_EARLY)
            return None
        lease = self.store.acquire_lease(
            auth_app_id,
            version=version,
            now=self.clock(),
            seconds=self.lease_seconds,
            owner=self.owner,
        )
        if lease is None:
            report.add(auth_app_id, Outcome.SKIPPED_LEASED)
        return lease

    def _verify(self, lease: Lease, resent: list[bool]) -> Outcome:
        opened = self._open_pair(lease)
        if isinstance(opened, _NotSent):
            return self._defer_unsent_verification(lease, opened.reason)
        app_auth_token = opened[0]
        queried_at = self.clock()
        try:
            info = self.client.query_authorization(app_auth_token)
        except AlipayError as error:
            if error.signed and error.app_auth_token_dead:
                # The token is dead, but its refresh token may not be: refresh now. A refused
                # refresh token is confirmed (and the merchant ended) by the refresh path.
                logger.warning(
                    "Verification found the token dead: refreshing",
                    extra={"auth_app_id": lease.auth_app_id, "reason": _reason(error)},
                )
                return self._rotate(lease, resent)
            if error.permanent:
                # Our setup (permission, signature), not the merchant: never a rotation or a
                # status change; asked again later, alarmed like the refresh's.
                logger.error(
                    "Alipay refused a query for a reason that is not the pair: check the app",
                    extra={"auth_app_id": lease.auth_app_id, "reason": _reason(error)},
                )
                self._defer_verification(lease, _reason(error))
                return Outcome.DEFERRED_ALIPAY_ERROR
            return self._defer_verification(lease, _reason(error))
        except (TransportError, SignatureError, UnexpectedResponseError) as error:
            return self._defer_verification(lease, _reason(error))
        if info.auth_app_id != lease.auth_app_id:
            return self._defer_verification(lease, "query_named_another_app")
        if not info.valid:
            return self._end(lease, Transition.REVOKED, f"verify:query:{info.status}", queried_at)
        if not self.store.record_authorization_info(
            lease.stored, info, verified_at=queried_at, owner=lease.owner
        ):
            return Outcome.SUPERSEDED
        return Outcome.VERIFIED

    def _defer_unsent_verification(self, lease: Lease, reason: str) -> Outcome:
        """The sweep's answer to a pair it could not send: ask again later."""
        if reason == UNREADABLE_PAIR:
            self._defer_verification(lease, reason, backoff=UNREADABLE_RETRY)
            return Outcome.UNREADABLE
        return self._defer_verification(lease, reason, immediate=reason == NO_TIME_LEFT)

    def _defer_verification(
        self,
        lease: Lease,
        reason: str,
        *,
        immediate: bool = False,
        backoff: Backoff = VERIFY_RETRY,
    ) -> Outcome:
        """Ask again later; the rotation schedule (``next_refresh_at``) is left alone."""
        now = self.clock()
        failures = lease.stored.refresh_failures + 1
        until = now if immediate else now + backoff.delay(failures, self.rng)
        self.store.defer_verification(lease, until=until, reason=reason)
        return Outcome.STOPPED_EARLY if immediate else Outcome.VERIFY_DEFERRED

    # --- one merchant ---------------------------------------------------------------------

    def refresh_one(self, auth_app_id: str, version: int | None, report: RefreshReport) -> None:
        if version is None:
            stored = self.store.get(auth_app_id)
            if stored is None:
                report.add(auth_app_id, Outcome.NOT_FOUND)
                return
            if stored.status != STATUS_GRANTED:
                report.add(auth_app_id, Outcome.NOT_GRANTED)
                return
            version = stored.version
        lease = self._lease(auth_app_id, version, report)
        if lease is None:
            return
        resent: list[bool] = []  # set when this run reconciles a lost answer right away
        reconciling = lease.needs_reconcile
        outcome = self._rotate(lease, resent)
        report.add(
            auth_app_id,
            outcome,
            reconciled=(reconciling or bool(resent)) and outcome != Outcome.OUTCOME_UNKNOWN,
        )

    def _open_pair(self, lease: Lease) -> tuple[str, str] | _NotSent:
        """The leased pair in clear, once the rate limit lets a call go and the run still has
        the time an answer needs; otherwise why nothing may be sent (the caller defers)."""
        try:
            pair = self.store.open_tokens(lease.stored)
        except TokenDecryptionError:
            # One unreadable item (tampered, key gone) must not stop the others; audit, move on.
            logger.error("Stored pair does not decrypt", extra={"auth_app_id": lease.auth_app_id})
            return _NotSent(UNREADABLE_PAIR)
        except (BotoCoreError, ClientError) as error:
            # KMS is unreachable: nothing was sent to Alipay, so this is plainly transient.
            return _NotSent(f"kms_{type(error).__name__}")
        if self.limiter is not None:
            self.limiter.acquire()
        if self.time_left() < self.budget.reserve:
            # The decrypt or the rate limit took the time an answer needs: do not send.
            return _NotSent(NO_TIME_LEFT)
        return pair

    def _rotate(self, lease: Lease, resent: list[bool]) -> Outcome:
        opened = self._open_pair(lease)
        if isinstance(opened, _NotSent):
            return self._release_unsent(lease, opened.reason)
        app_auth_token, refresh_token = opened
        try:
            response = self.client.refresh(refresh_token)
        except (OutcomeUnknownError, SignatureError, UnexpectedResponseError) as error:
            # Alipay may have rotated the pair (no answer, or one we cannot use).
            return self._outcome_unknown(lease, error, resent)
        except TransportError as error:
            # Never sent, or refused before processing (5xx/429 from a proxy): not rotated.
            return self._defer_transient(lease, _reason(error))
        except AlipayError as error:
            if error.transient:
                return self._defer_transient(lease, _reason(error))
            if error.refresh_token_refused:
                return self._confirm(lease, app_auth_token, _reason(error))
            return self._defer_alipay_error(lease, error)
        if response.incomplete:
            logger.error(
                "Refresh answer had incomplete entries",
                extra={"auth_app_id": lease.auth_app_id, "incomplete": response.incomplete},
            )
        grant = next((g for g in response.grants if g.auth_app_id == lease.auth_app_id), None)
        if grant is None:
            return self._outcome_unknown(
                lease,
                UnexpectedResponseError("the refresh answer names another merchant app"),
                resent,
            )
        return self._store_durably(lease, grant)

    def _release_unsent(self, lease: Lease, reason: str) -> Outcome:
        """The rotation's answer to a pair it could not send: the lease released, retried later."""
        if reason == UNREADABLE_PAIR:
            self._release(lease, reason, UNREADABLE_RETRY)
            return Outcome.UNREADABLE
        if reason == NO_TIME_LEFT:
            self._release(
                lease,
                reason,
                TRANSIENT_BACKOFF,
                reconcile=lease.stored.reconcile_reason,
                immediate=True,
                count_failure=False,
            )
            return Outcome.STOPPED_EARLY
        return self._defer_transient(lease, reason)  # KMS: plainly transient

    def _outcome_unknown(self, lease: Lease, error: Exception, resent: list[bool]) -> Outcome:
        reason = f"outcome_unknown:{type(error).__name__}"
        logger.error(
            "Refresh outcome unknown", extra={"auth_app_id": lease.auth_app_id, "reason": reason}
        )
        if not lease.needs_reconcile:
            # Marked first, keeping the lease: if this run dies now, the next one reconciles.
            if self.store.mark_reconcile(lease, reason):
                marked = Lease(
                    _with_reconcile(lease, reason), lease.owner, lease.until, lease.took_over
                )
                if self.time_left() >= self.budget.reserve:
                    # Resend once now: a replaying Alipay hands back what it issued while the
                    # superseded refresh token is still honoured.
                    resent.append(True)
                    return self._rotate(marked, resent)
                self._release(marked, reason, TRANSIENT_BACKOFF, reconcile=reason, immediate=True)
            return Outcome.OUTCOME_UNKNOWN
        # The resend was lost too: keep the mark, back off, alarm (outcome_unknown metric).
        self._release(lease, reason, TRANSIENT_BACKOFF, reconcile=reason)
        return Outcome.OUTCOME_UNKNOWN

    def _defer_transient(self, lease: Lease, reason: str) -> Outcome:
        self._release(
            lease,
            reason,
            TRANSIENT_BACKOFF,
            reconcile=lease.stored.reconcile_reason,
            transition=Transition.REFRESH_FAILED,
        )
        return Outcome.DEFERRED_TRANSIENT

    def _confirm(self, lease: Lease, app_auth_token: str, refused: str) -> Outcome:
        """Alipay refused the refresh token: ask it about the pair before changing anything."""
        if self.time_left() < self.budget.confirm:
            self._release(lease, refused, TRANSIENT_BACKOFF, reconcile=refused, immediate=True)
            return Outcome.DEFERRED_UNCONFIRMED
        queried_at = self.clock()
        try:
            info = self.client.query_authorization(app_auth_token)
        except AlipayError as error:
            if error.signed and error.app_auth_token_dead:
                # Signed: Alipay no longer knows this token (superseded beyond its grace, or
                # deleted). Only the merchant can mend it.
                return self._end(
                    lease, Transition.NEEDS_REAUTH, f"{refused};query:{_reason(error)}", queried_at
                )
            if error.permanent and not error.app_auth_token_dead:
                return self._defer_alipay_error(lease, error)
            return self._unconfirmed(lease, refused)
        except (TransportError, SignatureError, UnexpectedResponseError):
            return self._unconfirmed(lease, refused)
        if info.auth_app_id != lease.auth_app_id:
            return self._unconfirmed(lease, refused)
        if not info.valid:
            return self._end(
                lease, Transition.REVOKED, f"{refused};query:{info.status}", queried_at
            )
        # The pair works, but its refresh token was refused (e.g. Alipay rotated and the answer
        # was lost while it refuses superseded tokens). Keep serving it; retry soon; alarmed.
        logger.error(
            "Refresh refused while the pair is valid",
            extra={"auth_app_id": lease.auth_app_id, "reason": refused},
        )
        self._release(lease, f"{refused};query:valid", REFUSED_BACKOFF, reconcile=refused)
        return Outcome.REFUSED_PAIR_VALID

    def _defer_alipay_error(self, lease: Lease, error: AlipayError) -> Outcome:
        reason = _reason(error)
        logger.error(
            "Alipay refused a call for a reason that is not the pair: check the app's keys",
            extra={"auth_app_id": lease.auth_app_id, "reason": reason},
        )
        self._release(lease, reason, TRANSIENT_BACKOFF, reconcile=lease.stored.reconcile_reason)
        return Outcome.DEFERRED_ALIPAY_ERROR

    def _unconfirmed(self, lease: Lease, refused: str) -> Outcome:
        self._release(lease, f"{refused};unconfirmed", TRANSIENT_BACKOFF, reconcile=refused)
        return Outcome.DEFERRED_UNCONFIRMED

    def _end(
        self, lease: Lease, transition: Transition, reason: str, confirmed_at: datetime
    ) -> Outcome:
        if not self.store.end_authorization(
            lease, transition, reason=reason, confirmed_at=confirmed_at
        ):
            return Outcome.SUPERSEDED  # a re-authorization or a cancellation got there first
        return Outcome.NEEDS_REAUTH if transition is Transition.NEEDS_REAUTH else Outcome.REVOKED

    def _release(
        self,
        lease: Lease,
        reason: str,
        backoff: Backoff,
        *,
        reconcile: str | None = None,
        transition: Transition | None = None,
        immediate: bool = False,
        count_failure: bool = True,
    ) -> None:
        failures = lease.stored.refresh_failures + (1 if count_failure else 0)
        now = self.clock()
        until = now if immediate else now + backoff.delay(failures, self.rng)
        self.store.release_lease(
            lease,
            until=until,
            reason=reason,
            failures=failures,
            reconcile_reason=reconcile,
            transition=transition,
        )

    # --- the durable sinks ----------------------------------------------------------------

    def _store_durably(self, lease: Lease, grant: TokenGrant) -> Outcome:
        """Table (with retries), then parking queue, then the last-resort log line."""
        recovered = lease.needs_reconcile
        sealed = self._seal(grant)
        written: RefreshWrite | None = None
        if sealed is not None:
            for attempt in range(1, STORE_ATTEMPTS + 1):
                try:
                    written = self.store.store_refreshed(lease, grant, sealed)
                    break
                except (BotoCoreError, ClientError) as error:
                    logger.warning(
                        "Storing the refreshed pair failed",
                        extra={
                            "auth_app_id": lease.auth_app_id,
                            "attempt": attempt,
                            "error": type(error).__name__,
                        },
                    )
                    if attempt < STORE_ATTEMPTS:
                        self.sleep(STORE_BACKOFF_SECONDS * 2 ** (attempt - 1))
        if written is RefreshWrite.STORED:
            return Outcome.RECOVERED if recovered else Outcome.ROTATED
        if written in (RefreshWrite.SUPERSEDED, RefreshWrite.REVOKED) and sealed is not None:
            # The item moved on (a grant or a cancellation). Ours still lands if it was issued
            # after both (the issue-time fences decide); otherwise the newer one won.
            try:
                # "+late": a recovery, allowed onto needs_reauth (our pair is newer than the one
                # found dead); a cancellation's revoked_ms still fences it out.
                if self.store.save_sealed(grant, sealed, source="refresh+late").stored:
                    return Outcome.RECOVERED if recovered else Outcome.ROTATED
            except Exception:  # whatever failed, the pair still goes somewhere durable
                logger.exception(
                    "Storing a late refreshed pair failed", extra={"auth_app_id": lease.auth_app_id}
                )
                return self._keep(grant, sealed, "store_unavailable")
            logger.warning(
                "Refreshed pair not stored: a newer grant or a cancellation won",
                extra={"auth_app_id": lease.auth_app_id, "why": written.value},
            )
            return Outcome.SUPERSEDED
        reason = "lease_lost" if written is RefreshWrite.LEASE_LOST else "store_unavailable"
        return self._keep(grant, sealed, reason)

    def _keep(self, grant: TokenGrant, sealed: SealedTokens | None, reason: str) -> Outcome:
        return _KEPT_OUTCOMES[self.sink.keep(grant, sealed, source="refresh", reason=reason)]

    def _seal(self, grant: TokenGrant) -> SealedTokens | None:
        try:
            return self.store.cipher.seal(grant.auth_app_id, grant.secrets())
        except (BotoCoreError, ClientError) as error:
            logger.error(
                "Sealing the refreshed pair failed",
                extra={"auth_app_id": grant.auth_app_id, "error": type(error).__name__},
            )
            return None


_KEPT_OUTCOMES = {
    Kept.PARKED: Outcome.PARKED,
    Kept.LAST_RESORT: Outcome.LAST_RESORT,
    Kept.LOST: Outcome.LOST,
}


def _with_reconcile(lease: Lease, reason: str) -> StoredAuthorization:
    return replace(lease.stored, reconcile_reason=reason)


def _reason(error: Exception) -> str:
    if isinstance(error, AlipayError):
        return f"alipay_{error.code}_{error.sub_code}" if error.sub_code else f"alipay_{error.code}"
    if isinstance(error, TransportError) and error.status is not None:
        return f"http_{error.status}"
    return type(error).__name__


@dataclass(frozen=True)
class RefreshRequest:
    """What the refresh function was asked: the schedule's job (``{"due": true}``, or the
    Scheduler's empty event) or these merchants now (``{"auth_app_ids": [...]}``)."""

    auth_app_ids: tuple[str, ...] = ()

    MAX_IDS = 100

    @classmethod
    def from_event(cls, event: object) -> RefreshRequest:
        if event is None or event == {}:
            return cls()
        if not isinstance(event, dict):
            raise InvalidRequestError("the event must be a JSON object")
        unknown = set(event) - {"due", "auth_app_ids"}
        if unknown:
            raise InvalidRequestError(f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
        if "auth_app_ids" in event:
            if "due" in event:
                raise InvalidRequestError("give either due or auth_app_ids, not both")
            ids = event["auth_app_ids"]
            if (
                not isinstance(ids, list)
                or not ids
                or len(ids) > cls.MAX_IDS
                or not all(isinstance(i, str) and is_app_id(i) for i in ids)
            ):
                raise InvalidRequestError(
                    f"auth_app_ids must be a list of 1 to {cls.MAX_IDS} Alipay app ids"
                )
            return cls(tuple(dict.fromkeys(ids)))
        if event.get("due") is not True:
            raise InvalidRequestError("due must be true")
        return cls()

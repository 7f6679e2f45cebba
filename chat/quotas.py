"""Quotas: budgets of tokens and of requests per day or month (UTC) for a user, a group or an
API key (``Quota``), enforced when a request is admitted, before its upstream call.

Admission reserves. Checking what was used is not enough: usage is counted when an answer ends,
so requests admitted together all saw the same room (issue 33, finding 2: ten streams at once
took a key with 98 of 1,000 tokens left to 1,902; a 5-request budget with 1 used answered all of
10 requests). ``admit`` is one transaction per request: it locks the rows of the quotas that
apply (PostgreSQL: ``SELECT … FOR UPDATE`` in id order; SQLite, which has no row locks: its
database write lock, taken by the transaction's first statement), reads what each budget used
(``UsageDay``) and what running requests hold of it (``QuotaReservation``), refuses with 429
when one has no room, else inserts one reservation: one request, and the request's prompt
and output limit, the output limit lowered to the tokens left after the prompt
(``cap_output_tokens``). Admissions to a budget thus follow one another in every process.

The prompt (issue 33, "what users would still miss", 1): counted before the transaction, only
when a token budget applies, by the backend's own ``/tokenize`` where it has one, else
estimated (``chat.relay.tokenize``: UTF-8 bytes / 4 plus 4 per message and 768 per image; at
most 0.5 s, a backend without one remembered). A request whose prompt alone leaves no room for
one token of output is refused with the same 429, saying so.

Settling: when the request ends (answered, stopped, failed, its client gone) the record of what
it used (``chat.records``: the durable writer, through database outages too) deletes its
reservation in the transaction that counts the usage, so no reader sees both or neither. A
budget is passed only by what the prompts' counts missed (an estimate below the true count).

What counts (``UsageDay.admitted``): a request counts once admitted, whatever becomes of it (an
answer that failed upstream or was stopped counts one request and the tokens the model server
reported). Requests refused before admission (a 400, a 404, the quota's own 429) do not count.
An admitted request that ends before anything of it is recorded (its turn could not be stored,
its client left before its stream began) is released whole: it counts nothing.

A process that dies holding reservations: each expires ``HOLD_S`` after it was made, and the
process that holds it pushes that back every ``RENEW_EVERY_S`` until it is settled
(``renew_held``, from the sweeper), for at most ``MAX_HOLD_S`` (an answer longer than that
counts only its usage once it ends). An expired reservation counts no more, and is deleted by
the next renewal in any process that holds some.

Cost: a request to which no quota applies pays the cached lookup (``selectors.quotas_aget``:
no query). One with quotas pays one thread hop and one transaction (a lock, two reads per
quota, one INSERT), and with a token budget the prompt's count (one call to the backend's
tokenizer, 0.5 s at most; none once it is known to have none); its settle is one DELETE in its
record's batch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from chat import readcache, records, selectors
from chat.http import Refusal
from chat.models import ApiKey, Quota, QuotaReservation
from chat.relay.background import spawn

logger = logging.getLogger(__name__)

# A reservation counts this long after it was made or last renewed (s): a dead process's are
# given back within it.
HOLD_S = 60.0
# How often a process renews the reservations it holds (s): three tries before they expire.
RENEW_EVERY_S = 20.0
# Never renewed past this (s): a reservation whose settle was lost is given back after it.
# Above the longest answer a backend allows (``BackendConfig.total_timeout_s``, 900 s by
# default) with its queue and retries.
MAX_HOLD_S = 3600.0

# A chat completion's names for its output limit (OpenAI's reference: max_tokens, deprecated
# for max_completion_tokens, which not every upstream knows yet).
CHAT_OUTPUT_LIMITS = ["max_tokens", "max_completion_tokens"]

# This process's reservations not settled yet: id -> when made (time.monotonic() s).
_held: dict[int, float] = {}
_renewed_at = 0.0


@dataclass(frozen=True)
class BudgetLeft:
    """What is left of one quota's budget in its current day or month (UTC): ``left`` of
    ``limit`` ``unit``s ("token": prompt and completion together, or "request"), until
    ``resets``. ``name`` says whose and which, e.g. "daily token budget of user ada";
    ``used``: counted so far, ``held``: reserved by requests still running."""

    unit: str
    left: int
    limit: int
    resets: datetime
    name: str
    used: int = 0
    held: int = 0
    # The prompt of the request refused for it (tokens, as counted at admission): it had room,
    # but not for that prompt and one token of output.
    prompt: int = 0

    @property
    def low(self) -> bool:
        """A fifth or less is left: the chat then shows it."""
        return self.left * 5 <= self.limit


async def budgets_left(
    *, user: User, api_key: ApiKey | None = None, lookups: readcache.Lookups | None = None
) -> list[BudgetLeft]:
    """Every budget of the quotas of ``user``, of their groups and of ``api_key``, with what is
    left of it now (used and held subtracted). Costs nothing when no quota applies (a cached
    lookup); else one thread hop, two queries per quota."""
    quotas = await _quotas(user, api_key, lookups or readcache.Lookups())
    if not quotas:
        return []
    return await sync_to_async(_budgets)(quotas, timezone.now())


async def admit(
    *,
    user: User,
    api_key: ApiKey | None = None,
    lookups: readcache.Lookups,
    request: dict[str, Any] | None = None,
    default: int | None = None,
    fields: list[str] | None = None,
    prompt: Callable[[], Awaitable[int]] | None = None,
) -> int | None:
    """Admit one request under the quotas of ``user``, of their groups and of ``api_key`` (see
    the module): reserve one request and, when a token budget applies, the request's prompt
    (``await prompt()``: its tokens, counted only then; None: not counted) and its output limit
    (``request``'s ``fields``, else the slot's ``default``), lowered in ``request`` to the
    tokens left after the prompt; ``request`` None: a request without output (embeddings),
    which reserves its request and its prompt. Returns the reservation's id, to be settled
    when the request ends (a record's ``settles``, or ``release``), or None when no quota
    applies. Raises ``Refusal`` 429 (``quota_exceeded``) naming the first budget without room
    (for the prompt, with one token of output), its true usage (used and held) and when it
    resets, with ``Retry-After`` (s) until then."""
    quotas = await _quotas(user, api_key, lookups)
    if not quotas:
        return None
    names = fields or CHAT_OUTPUT_LIMITS
    asked = 0 if request is None else output_limit(request, default=default, fields=names)
    prompt_tokens = 0
    if prompt is not None and any(quota.max_tokens is not None for quota in quotas):
        prompt_tokens = await prompt()
    admitted = await _reserve_in_thread(
        quotas,
        user_id=user.pk,
        api_key_id=api_key.pk if api_key else None,
        asked=asked,
        prompt=prompt_tokens,
        output=request is not None,
    )
    if isinstance(admitted, BudgetLeft):
        raise _refusal(admitted)
    reservation, tokens_left = admitted
    _held[reservation] = time.monotonic()
    if request is not None:
        cap_output_tokens(request, tokens_left=tokens_left, default=default, fields=names)
    return reservation


async def release(reservation: int | None) -> None:
    """Give ``reservation`` back whole: its request ended before anything of it was recorded,
    and counts nothing. Through the records' writer (kept through a database outage); never
    raises."""
    if reservation is None:
        return
    label = f"quota reservation {reservation}"
    await records.write(records.Record(settles=reservation, label=label))
    forget(reservation)


def release_soon(reservation: int | None) -> None:
    """``release`` in a task of its own: for a request being cancelled, which cannot wait."""
    if reservation is not None:
        spawn(release(reservation))


def forget(reservation: int | None) -> None:
    """Stop renewing ``reservation``: the record that settles it was written (or is kept to be,
    through a database outage)."""
    if reservation is not None:
        _held.pop(reservation, None)


async def renew_held() -> int:
    """Push back the expiry of this process's reservations not settled yet (one UPDATE), at
    most every ``RENEW_EVERY_S``, and delete the expired ones of every process; those made
    over ``MAX_HOLD_S`` ago are let expire. Nothing when this process holds none. Returns how
    many were renewed."""
    global _renewed_at
    now = time.monotonic()
    if not _held or now - _renewed_at < RENEW_EVERY_S:
        return 0
    _renewed_at = now
    for reservation, made in list(_held.items()):
        if now - made > MAX_HOLD_S:
            logger.warning("quota reservation %s: never settled; let expire", reservation)
            _held.pop(reservation, None)
    return await sync_to_async(_renew)(list(_held))


def output_limit(request: dict[str, Any], *, default: int | None, fields: list[str]) -> int | None:
    """The output limit ``request`` asks for (tokens): the smallest of its ``fields`` that are
    integers, else ``default`` (the slot's); None: none at all."""
    present = [request[name] for name in fields if isinstance(request.get(name), int)]
    return min(present) if present else default


def cap_output_tokens(
    request: dict[str, Any], *, tokens_left: int | None, default: int | None, fields: list[str]
) -> bool:
    """Lower the request's output limit to ``tokens_left`` (of a token budget) when it would
    allow more, so that the upstream itself stops the answer at the budget with
    ``finish_reason: "length"`` (``"incomplete"`` with ``max_output_tokens`` on the Responses
    API). ``fields`` are the request's names for the limit, the first set when none is present
    (chat completions: ``max_tokens`` and ``max_completion_tokens``); ``default`` is the slot's,
    which applies when the request gives none. Returns whether the budget is now the limit.

    ``tokens_left`` is what is left after the prompt as counted at admission (``admit``): an
    answer takes the total past the budget only by what that count missed."""
    if tokens_left is None:
        return False
    asked = output_limit(request, default=default, fields=fields)
    if asked is not None and asked <= tokens_left:
        return False
    present = [name for name in fields if isinstance(request.get(name), int)]
    for name in present or fields[:1]:
        request[name] = max(tokens_left, 1)
    return True


# ------------------------------------------------------------------------------------------------
# In the thread
# ------------------------------------------------------------------------------------------------
def _reserve(
    quotas: list[Quota],
    *,
    user_id: int,
    api_key_id: int | None,
    asked: int | None,
    prompt: int = 0,
    output: bool = True,
) -> tuple[int, int | None] | BudgetLeft:
    """In one transaction: lock ``quotas``, then either the first budget without room (for
    ``prompt`` tokens and, when the request has ``output``, one more), or (the new
    reservation's id, the tokens left of the tightest token budget after the prompt: None when
    none applies). ``asked``: the request's output limit (None: none)."""
    now = timezone.now()
    needs = prompt + (1 if output else 0)
    with transaction.atomic():
        _lock(quotas)
        budgets = _budgets(quotas, now)
        full = next((budget for budget in budgets if budget.left <= 0), None)
        if full is not None:
            return full
        short = next((b for b in budgets if b.unit == "token" and b.left < needs), None)
        if short is not None:
            return dataclasses.replace(short, prompt=prompt)
        tokens_left = min((b.left for b in budgets if b.unit == "token"), default=None)
        tokens = 0
        if tokens_left is not None:
            tokens_left -= prompt
            tokens = prompt + (tokens_left if asked is None else max(min(asked, tokens_left), 0))
        reservation = QuotaReservation.objects.create(
            user_id=user_id,
            api_key_id=api_key_id,
            tokens=tokens,
            created_at=now,
            expires_at=now + timedelta(seconds=HOLD_S),
        )
    return reservation.pk, tokens_left


_reserve_in_thread = sync_to_async(_reserve)


def _lock(quotas: list[Quota]) -> None:
    """Hold ``quotas`` until the transaction ends, so that admissions to them follow one
    another in every process: on PostgreSQL their rows, in id order (two admissions to the
    same budgets cannot deadlock); on SQLite, its database write lock, taken by a write: a
    transaction that began by reading could not write once another had ("database is
    locked" at once, not a wait)."""
    rows = Quota.objects.filter(pk__in=[quota.pk for quota in quotas])
    if connection.features.has_select_for_update:
        list(rows.order_by("pk").select_for_update().values_list("pk", flat=True))
    else:
        rows.update(period=F("period"))


def _budgets(quotas: list[Quota], now: datetime) -> list[BudgetLeft]:
    """Every budget of ``quotas`` at ``now``: per quota, what its reservations hold, then what
    it used. In that order: a settle committed between the two reads (on PostgreSQL, outside
    the quotas' lock) is counted twice for that moment, never missed."""
    budgets: list[BudgetLeft] = []
    for quota in quotas:
        since, resets = _quota_period(quota, now)
        held_tokens, held_requests = selectors.quota_held(quota=quota, now=now)
        used_tokens, used_requests = selectors.quota_used(quota=quota, since=since.date())
        for used, held, limit, unit in (
            (used_tokens, held_tokens, quota.max_tokens, "token"),
            (used_requests, held_requests, quota.max_requests, "request"),
        ):
            if limit is not None:
                name = f"{_PERIOD_WORD[quota.period]} {unit} budget of {quota.target}"
                left = max(limit - used - held, 0)
                budgets.append(BudgetLeft(unit, left, limit, resets, name, used, held))
    return budgets


def _renew(reservations: list[int]) -> int:
    now = timezone.now()
    renewed = 0
    if reservations:
        renewed = QuotaReservation.objects.filter(pk__in=reservations).update(
            expires_at=now + timedelta(seconds=HOLD_S)
        )
    QuotaReservation.objects.filter(expires_at__lte=now).delete()
    return renewed


# ------------------------------------------------------------------------------------------------
# Periods and refusals
# ------------------------------------------------------------------------------------------------
_PERIOD_WORD: dict[str, str] = {Quota.Period.DAY: "daily", Quota.Period.MONTH: "monthly"}


def _quota_period(quota: Quota, now: datetime) -> tuple[datetime, datetime]:
    """(start, end) of the day or month (UTC) that contains ``now``, for ``quota``."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if quota.period == Quota.Period.DAY:
        return day, day + timedelta(days=1)
    month = day.replace(day=1)
    following = (month + timedelta(days=32)).replace(day=1)
    return month, following


def _refusal(budget: BudgetLeft) -> Refusal:
    """The 429 for ``budget`` used up, or without room for the request's prompt: its true
    usage (used and held by requests running)."""
    held = f", {budget.held:,} of them held for answers in progress" if budget.held else ""
    state = f"has {budget.left:,} left" if budget.prompt else "is used up"
    prompt = (
        f" This request's prompt is about {budget.prompt:,} tokens: no room for it and its answer."
        if budget.prompt
        else ""
    )
    return Refusal(
        f"The {budget.name} ({budget.limit:,} {budget.unit}s) {state} "
        f"({budget.used + budget.held:,} used{held}).{prompt} It resets at "
        f"{budget.resets:%Y-%m-%d %H:%M} UTC.",
        status=429,
        type="insufficient_quota",
        code="quota_exceeded",
        retry_after=(budget.resets - timezone.now()).total_seconds(),
    )


async def _quotas(user: User, api_key: ApiKey | None, lookups: readcache.Lookups) -> list[Quota]:
    return await selectors.quotas_aget(
        user=user, api_key_id=api_key.pk if api_key is not None else None, lookups=lookups
    )

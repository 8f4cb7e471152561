"""Daily deliveries, exactly once: one record per (schedule, local date, symbol), claimed with a
lease, finished with its outcome, pruned behind a persistent horizon."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Iterable, Literal, Sequence

from sqlalchemy import Select, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..schedule_time import aware
from .daily import DailySchedule
from .readings import ReadingIn, ReadingStore
from .tables import DeliveryRow, MarkRow, UTCDateTime
from .validation import _chunks, _reason, _valid_item_id

__all__ = [
    "PRUNE_HORIZON",
    "FINAL_STATES",
    "BEFORE_HORIZON",
    "DeliveryState",
    "Delivery",
    "Claim",
    "Outcome",
    "delivery_marker",
    "DeliveryStore",
]

DeliveryState = Literal["claimed", "failed", "sent", "skipped"]
PRUNE_HORIZON = "deliveries_pruned_before"
FINAL_STATES = ("sent", "skipped")
BEFORE_HORIZON = "not posted: due before the delivery-retention horizon (its record may have been pruned)"


def delivery_marker(schedule_id: int, local_day: date, symbol: str) -> tuple[str, str]:
    """The deterministic ``(marker, nonce)`` of one daily post.

    The marker goes in the message (embed footer) so a restarted dispatcher can find a post it
    made but did not record; the nonce (25 chars, Discord's maximum) lets Discord itself drop a
    duplicate send within its nonce window.
    """
    marker = f"liqmap-d{schedule_id}-{local_day.isoformat()}-{symbol}"
    nonce = "lq" + hashlib.sha256(marker.encode()).hexdigest()[:23]
    return marker, nonce


@dataclass(frozen=True)
class Delivery:
    """One daily post (schedule x local date x symbol) and where it stands.

    ``state``: ``claimed`` (a dispatcher is sending, or crashed while sending), ``failed`` (the send
    raised; outcome unknown until verified), ``sent`` (``message_id`` known), ``skipped`` (``detail``
    says why). Only ``sent`` and ``skipped`` are final.
    """

    id: int
    schedule_id: int
    local_date: date
    symbol: str
    channel_id: int
    state: str
    marker: str
    nonce: str
    message_id: int | None
    attempts: int
    due_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    detail: str | None

    @property
    def final(self) -> bool:
        return self.state in ("sent", "skipped")

    @classmethod
    def _of(cls, r: DeliveryRow) -> "Delivery":
        return cls(r.id, r.schedule_id, r.local_date, r.symbol, r.channel_id, r.state, r.marker, r.nonce,
                   r.message_id, r.attempts, r.due_at, r.claimed_at, r.finished_at, r.detail)


@dataclass(frozen=True)
class Claim:
    """One post a dispatcher wants to make (or skip): a schedule's run on a local date, for one symbol."""

    schedule: DailySchedule
    local_date: date
    symbol: str
    due_at: datetime


@dataclass(frozen=True)
class Outcome:
    """How a claimed delivery ended: ``sent`` (with ``message_id``), ``failed`` or ``skipped``."""

    delivery_id: int
    state: DeliveryState
    message_id: int | None = None
    detail: str | None = None
    attempts: int | None = None  # the claim's attempt number: the outcome is written only if still ours


def lock_free(ids: Sequence[int]) -> Select[tuple[int]]:
    """The ids among ``ids`` that no other transaction holds, locked for this one: PostgreSQL's
    ``SELECT ... FOR UPDATE SKIP LOCKED``. Two dispatchers taking over stale claims at once never wait
    on each other's rows: each takes the rows the other has not locked (SQLite ignores the clause;
    its writes are serialised by the database lock, and the compare-and-set decides)."""
    return select(DeliveryRow.id).where(DeliveryRow.id.in_(list(ids))).with_for_update(skip_locked=True)


def _reclaimable(row: DeliveryRow, now: datetime, lease: timedelta) -> bool:
    """A record may be taken over when its send failed, or its claimer has held it longer than ``lease``."""
    if row.state == "failed":
        return True
    return row.state == "claimed" and (row.claimed_at is None or now - row.claimed_at >= lease)


class DeliveryStore(ReadingStore):
    """The ``deliveries`` and ``store_marks`` tables."""

    async def deliveries(self, schedule_id: int, local_day: date | None = None) -> list[Delivery]:
        """The delivery records of a schedule (of one local date when given)."""
        if not _valid_item_id(schedule_id):
            return []
        q = select(DeliveryRow).where(DeliveryRow.schedule_id == schedule_id)
        if local_day is not None:
            q = q.where(DeliveryRow.local_date == local_day)
        async with self._session() as s:
            return [Delivery._of(r) for r in await s.scalars(q.order_by(DeliveryRow.id))]

    async def claim_delivery(
        self,
        sched: DailySchedule,
        local_day: date,
        symbol: str,
        *,
        due_at: datetime,
        now: datetime,
        lease: timedelta,
    ) -> tuple[Delivery | None, bool]:
        """Take the right to send one daily post. Returns ``(delivery, recovering)``.

        * no record yet: insert it as ``claimed`` (the unique key makes this exactly one winner
          across processes) -> ``(d, False)``;
        * a ``failed`` record, or a ``claimed`` one older than ``lease`` (its sender crashed):
          take it over with a compare-and-set -> ``(d, True)``: the caller must check the channel
          for the marker before sending again;
        * a final record, a fresh claim by someone else, or a lost race -> ``(None, False)``.
        """
        now = aware(now)
        marker, nonce = delivery_marker(sched.id, local_day, symbol)
        async with self._session() as s:
            horizon = await self._horizon(s)
        if horizon is not None and aware(due_at) < horizon:
            # its record may have been pruned: never claimed anew (an existing record is still verified below)
            await self.skip_delivery(sched, local_day, symbol, due_at=due_at, now=now, detail=BEFORE_HORIZON)
        else:
            try:
                async with self._session() as s, s.begin():
                    row = DeliveryRow(
                        schedule_id=sched.id, local_date=local_day, symbol=symbol, channel_id=sched.channel_id,
                        state="claimed", marker=marker, nonce=nonce, attempts=1, due_at=due_at, claimed_at=now,
                    )
                    s.add(row)
                    await s.flush()
                    return Delivery._of(row), False
            except IntegrityError:
                pass
        async with self._session() as s, s.begin():
            row = await s.scalar(
                select(DeliveryRow).where(
                    DeliveryRow.schedule_id == sched.id, DeliveryRow.local_date == local_day, DeliveryRow.symbol == symbol
                )
            )
            if row is None or not _reclaimable(row, now, lease):
                return None, False
            if await s.scalar(lock_free([row.id])) is None:  # another dispatcher is taking it over right now
                return None, False
            res = await s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == row.id, DeliveryRow.state == row.state, DeliveryRow.attempts == row.attempts)
                .values(state="claimed", claimed_at=now, attempts=row.attempts + 1)
                .execution_options(synchronize_session=False)
            )
            if not res.rowcount:
                return None, False
            await s.refresh(row)
            return Delivery._of(row), True

    async def finish_delivery(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        now: datetime,
        message_id: int | None = None,
        detail: str | None = None,
    ) -> None:
        """Record the outcome of a claimed delivery (``sent``, ``failed`` or ``skipped``)."""
        if state not in ("sent", "failed", "skipped"):
            raise ValueError(f"bad delivery state {state!r}")
        if not _valid_item_id(delivery_id):
            return
        async with self._session() as s, s.begin():
            await s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == delivery_id)
                .values(state=state, message_id=message_id, finished_at=aware(now),
                        detail=_reason(detail) if detail else None)
            )

    async def skip_delivery(
        self, sched: DailySchedule, local_day: date, symbol: str, *, due_at: datetime, now: datetime, detail: str
    ) -> bool:
        """Record a post that will not be made (missed beyond the grace window, or no data).

        Never overrides a record that is ``sent``; a non-final record is turned into ``skipped`` only
        by its claimer (use :meth:`finish_delivery`). Returns True when a skip was recorded.
        """
        marker, nonce = delivery_marker(sched.id, local_day, symbol)
        now = aware(now)
        try:
            async with self._session() as s, s.begin():
                s.add(DeliveryRow(
                    schedule_id=sched.id, local_date=local_day, symbol=symbol, channel_id=sched.channel_id,
                    state="skipped", marker=marker, nonce=nonce, attempts=0, due_at=due_at, finished_at=now,
                    detail=_reason(detail),
                ))
            return True
        except IntegrityError:
            return False

    async def prune_horizon(self) -> datetime | None:
        """The instant before which final delivery records may have been pruned (None: never pruned)."""
        async with self._session() as s:
            return await self._horizon(s)

    @staticmethod
    async def _horizon(s: AsyncSession) -> datetime | None:
        return await s.scalar(select(MarkRow.at).where(MarkRow.name == PRUNE_HORIZON))

    async def prune_deliveries(self, before: datetime, *, batch: int = 5000, max_batches: int = 100) -> int:
        """Delete final (``sent``/``skipped``) delivery records due before ``before``; returns how many.

        First the prune horizon is raised to ``before`` (never lowered) and committed: from then on
        no post due before the horizon is claimed anew (:meth:`claim_many` records it ``skipped``),
        so a pruned record can never let its post be made again, whatever a schedule's
        ``next_run_at`` says or the clock reads. Records still ``claimed`` or ``failed`` are kept
        (the lease and the marker check need them). Deletes in transactions of at most ``batch``
        rows, at most ``max_batches`` of them (the rest waits for the next prune).
        """
        before = aware(before)
        if batch < 1 or max_batches < 1:
            raise ValueError("batch and max_batches must be at least 1")
        async with self._session() as s, s.begin():
            mark = await s.get(MarkRow, PRUNE_HORIZON)
            if mark is None:
                s.add(MarkRow(name=PRUNE_HORIZON, at=before))
            elif mark.at < before:
                mark.at = before
        total = 0
        for _ in range(max_batches):
            async with self._session() as s, s.begin():
                ids = (
                    select(DeliveryRow.id)
                    .where(DeliveryRow.state.in_(FINAL_STATES), DeliveryRow.due_at < before)
                    .order_by(DeliveryRow.id)
                    .limit(batch)
                )
                res = await s.execute(delete(DeliveryRow).where(DeliveryRow.id.in_(ids)))
                n = res.rowcount or 0
            total += n
            if n < batch:
                break
        return total

    async def deliveries_for(self, runs: Iterable[tuple[int, date]]) -> dict[tuple[int, date, str], Delivery]:
        """Delivery records of several (schedule id, local date) runs, keyed by (id, date, symbol)."""
        wanted = {(sid, d) for sid, d in runs if _valid_item_id(sid)}
        if not wanted:
            return {}
        ids = sorted({sid for sid, _ in wanted})
        days = sorted({d for _, d in wanted})
        out: dict[tuple[int, date, str], Delivery] = {}
        async with self._session() as s:
            for chunk in _chunks(ids, 500):
                rows = await s.scalars(
                    select(DeliveryRow).where(DeliveryRow.schedule_id.in_(chunk), DeliveryRow.local_date.in_(days))
                )
                for r in rows:
                    if (r.schedule_id, r.local_date) in wanted:
                        out[(r.schedule_id, r.local_date, r.symbol)] = Delivery._of(r)
        return out

    async def claim_many(self, claims: Sequence[Claim], *, now: datetime, lease: timedelta) -> list[tuple[Delivery, bool]]:
        """:meth:`claim_delivery` for many posts in one transaction; returns only the claims won.

        If another process inserted one of the records meanwhile, the batch is rolled back and the
        claims are retried one by one (each still exactly-once through the unique key).
        """
        if not claims:
            return []
        now = aware(now)
        keys = {(c.schedule.id, c.local_date, c.symbol) for c in claims}
        try:
            async with self._session() as s, s.begin():
                existing: dict[tuple[int, date, str], DeliveryRow] = {}
                ids = sorted({c.schedule.id for c in claims})
                days = sorted({c.local_date for c in claims})
                for chunk in _chunks(ids, 500):
                    for r in await s.scalars(
                        select(DeliveryRow).where(DeliveryRow.schedule_id.in_(chunk), DeliveryRow.local_date.in_(days))
                    ):
                        if (r.schedule_id, r.local_date, r.symbol) in keys:
                            existing[(r.schedule_id, r.local_date, r.symbol)] = r
                won: list[tuple[DeliveryRow, bool]] = []
                horizon = await self._horizon(s)
                stale = sorted(r.id for r in existing.values() if _reclaimable(r, now, lease))
                free: set[int] = set()
                for chunk in _chunks(stale, 500):  # rows another dispatcher holds are left to it (SKIP LOCKED)
                    free.update(await s.scalars(lock_free(chunk)))
                for c in claims:
                    r = existing.get((c.schedule.id, c.local_date, c.symbol))
                    if r is None:
                        marker, nonce = delivery_marker(c.schedule.id, c.local_date, c.symbol)
                        if horizon is not None and aware(c.due_at) < horizon:
                            # its record may have been pruned: never claim it anew (see prune_deliveries)
                            s.add(DeliveryRow(
                                schedule_id=c.schedule.id, local_date=c.local_date, symbol=c.symbol,
                                channel_id=c.schedule.channel_id, state="skipped", marker=marker, nonce=nonce,
                                attempts=0, due_at=c.due_at, finished_at=now, detail=BEFORE_HORIZON,
                            ))
                            continue
                        r = DeliveryRow(
                            schedule_id=c.schedule.id, local_date=c.local_date, symbol=c.symbol,
                            channel_id=c.schedule.channel_id, state="claimed", marker=marker, nonce=nonce,
                            attempts=1, due_at=c.due_at, claimed_at=now,
                        )
                        s.add(r)
                        won.append((r, False))
                    elif r.id in free:
                        res = await s.execute(
                            update(DeliveryRow)
                            .where(DeliveryRow.id == r.id, DeliveryRow.state == r.state, DeliveryRow.attempts == r.attempts)
                            .values(state="claimed", claimed_at=now, attempts=r.attempts + 1)
                            .execution_options(synchronize_session=False)
                        )
                        if res.rowcount:
                            r.state, r.claimed_at, r.attempts = "claimed", now, r.attempts + 1
                            won.append((r, True))
                await s.flush()
                return [(Delivery._of(r), rec) for r, rec in won]
        except IntegrityError:
            out = []
            for c in claims:
                d, rec = await self.claim_delivery(c.schedule, c.local_date, c.symbol, due_at=c.due_at, now=now, lease=lease)
                if d is not None:
                    out.append((d, rec))
            return out

    async def finish_many(self, outcomes: Sequence[Outcome], *, now: datetime,
                          readings: Sequence[ReadingIn] = ()) -> None:
        """Record the outcomes of many claimed deliveries in one transaction.

        An outcome with ``attempts`` is written only while the record is still that claim (state
        ``claimed``, same attempt number): if another dispatcher took the claim over meanwhile (its
        lease ran out), its record wins and this stale outcome is dropped.

        ``readings`` (the records of the reports just posted, :class:`ReadingIn`) are kept in the
        same transaction, so a posted report is never recorded without its reading; they are kept
        even when the outcome is dropped as stale (the post was made, with that reading). A
        schedule removed meanwhile simply loses its readings.
        """
        if not outcomes and not readings:
            return
        now = aware(now)
        plain, guarded = [], []
        for o in outcomes:
            if o.state not in ("sent", "failed", "skipped"):
                raise ValueError(f"bad delivery state {o.state!r}")
            if not _valid_item_id(o.delivery_id):
                continue  # matches no row
            row = {"b_id": o.delivery_id, "b_state": o.state, "b_message_id": o.message_id, "b_finished_at": now,
                   "b_detail": _reason(o.detail) if o.detail else None}
            if o.attempts is None:
                plain.append(row)
            else:
                guarded.append({**row, "b_attempts": o.attempts})
        t = DeliveryRow.__table__
        values = dict(state=bindparam("b_state"), message_id=bindparam("b_message_id"),
                      finished_at=bindparam("b_finished_at", type_=UTCDateTime()), detail=bindparam("b_detail"))
        keep = [r for r in readings if _valid_item_id(r.schedule_id)]
        for attempt in range(2):
            try:
                async with self._session() as s, s.begin():  # (executemany: rowcount is not reliable on asyncpg)
                    if plain:
                        await s.execute(update(t).where(t.c.id == bindparam("b_id")).values(**values), plain)
                    if guarded:
                        await s.execute(
                            update(t)
                            .where(t.c.id == bindparam("b_id"), t.c.state == "claimed",
                                   t.c.attempts == bindparam("b_attempts"))
                            .values(**values),
                            guarded,
                        )
                    await self._keep_readings(s, keep, now)
                return
            except IntegrityError:
                if attempt or not keep:
                    raise
                keep = await self._live_readings(keep)  # a schedule was removed meanwhile: drop its readings

    async def renew_claim(self, delivery_id: int, attempts: int, *, now: datetime) -> bool:
        """Refresh the lease of a claim still held (state ``claimed``, same attempt number).

        False if another dispatcher took it over: the caller must then not send.
        """
        if not _valid_item_id(delivery_id):
            return False
        async with self._session() as s, s.begin():
            res = await s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == delivery_id, DeliveryRow.state == "claimed", DeliveryRow.attempts == attempts)
                .values(claimed_at=aware(now))
                .execution_options(synchronize_session=False)
            )
            return bool(res.rowcount)

    async def skip_many(self, skips: Sequence[Claim], *, now: datetime, detail: str | Sequence[str]) -> int:
        """Record ``skipped`` for posts that have no record yet (others are left alone); returns how many."""
        if not skips:
            return 0
        now = aware(now)
        details = [detail] * len(skips) if isinstance(detail, str) else list(detail)
        existing = await self.deliveries_for((c.schedule.id, c.local_date) for c in skips)
        todo = [(c, why) for c, why in zip(skips, details) if (c.schedule.id, c.local_date, c.symbol) not in existing]
        try:
            async with self._session() as s, s.begin():
                for c, why in todo:
                    marker, nonce = delivery_marker(c.schedule.id, c.local_date, c.symbol)
                    s.add(DeliveryRow(
                        schedule_id=c.schedule.id, local_date=c.local_date, symbol=c.symbol,
                        channel_id=c.schedule.channel_id, state="skipped", marker=marker, nonce=nonce, attempts=0,
                        due_at=c.due_at, finished_at=now, detail=_reason(why),
                    ))
            return len(todo)
        except IntegrityError:
            n = 0
            for c, why in todo:
                n += await self.skip_delivery(c.schedule, c.local_date, c.symbol, due_at=c.due_at, now=now, detail=why)
            return n

"""Skew alerts: a channel's subscription to changes of one symbol's skew class, with hysteresis
thresholds and a cooldown; the last announced class is kept (compare-and-set) so a restart stays quiet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import bindparam, select, update

from analysis.errors import InputError
from analysis.hysteresis import HysteresisParams
from analysis.symbols import parse_symbol
from analysis.windows import parse_window

from ..schedule_time import aware
from .subscriptions import SubscriptionStore
from .tables import SkewAlertRow
from .validation import (
    DEFAULT_COOLDOWN_S,
    MAX_COOLDOWN_S,
    MIN_COOLDOWN_S,
    _f,
    _finite,
    _parse_exchange,
    _parse_id,
    _valid_item_id,
)

__all__ = ["SkewAlert", "SkewAlertStore"]


@dataclass(frozen=True)
class SkewAlert:
    """A skew-change subscription of ``channel_id`` to one (symbol, window, exchange).

    ``mild``/``heavy``/``exit_*`` are None when the defaults apply; ``params`` resolves them.
    ``last_class`` is the last class announced (or recorded as the baseline), None before the first
    observation.
    """

    id: int
    guild_id: int
    channel_id: int
    symbol: str
    window: str
    exchange: str
    mild: float | None
    heavy: float | None
    exit_mild: float | None
    exit_heavy: float | None
    cooldown_s: int
    last_class: str | None
    last_ratio: float | None
    last_announced_at: datetime | None
    paused_reason: str | None
    paused_at: datetime | None
    created_by: int
    created_at: datetime

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None

    @property
    def params(self) -> HysteresisParams:
        return _hysteresis(self.mild, self.heavy, self.exit_mild, self.exit_heavy)

    @classmethod
    def _of(cls, r: SkewAlertRow) -> "SkewAlert":
        return cls(r.id, r.guild_id, r.channel_id, r.symbol, r.window, r.exchange, r.mild, r.heavy, r.exit_mild,
                   r.exit_heavy, r.cooldown_s, r.last_class, r.last_ratio, r.last_announced_at, r.paused_reason,
                   r.paused_at, r.created_by, r.created_at)


def _hysteresis(mild: float | None, heavy: float | None, exit_mild: float | None, exit_heavy: float | None) -> HysteresisParams:
    kw: dict[str, float] = {}
    if mild is not None:
        kw["mild"] = mild
    if heavy is not None:
        kw["heavy"] = heavy
    return HysteresisParams(exit_mild=exit_mild, exit_heavy=exit_heavy, **kw)


class SkewAlertStore(SubscriptionStore):
    """The ``skew_alerts`` table."""

    async def add_skew_alert(
        self,
        guild_id: int,
        channel_id: int,
        *,
        symbol: str,
        window: str,
        exchange: str,
        created_by: int,
        mild: float | None = None,
        heavy: float | None = None,
        exit_mild: float | None = None,
        exit_heavy: float | None = None,
        cooldown_s: int | None = None,
        now: datetime | None = None,
    ) -> SkewAlert:
        """Validate and store a skew alert (thresholds default to the metrics' mild/heavy)."""
        guild_id, channel_id = _parse_id(guild_id, "server id"), _parse_id(channel_id, "channel id")
        created_by = _parse_id(created_by, "user id")
        sym = parse_symbol(symbol).symbol
        win = parse_window(window).label
        exch = _parse_exchange(exchange, self.exchanges)
        _hysteresis(mild, heavy, exit_mild, exit_heavy)  # validates
        cd = DEFAULT_COOLDOWN_S if cooldown_s is None else cooldown_s
        if isinstance(cd, bool) or not isinstance(cd, int) or not (MIN_COOLDOWN_S <= cd <= MAX_COOLDOWN_S):
            raise InputError(
                f"cooldown must be {MIN_COOLDOWN_S // 60} minute(s) to {MAX_COOLDOWN_S // 86400} days, in seconds (got {cd!r})"
            )
        now = aware(now)
        values = dict(
            guild_id=guild_id, channel_id=channel_id, symbol=sym, window=win, exchange=exch,
            mild=_f(mild), heavy=_f(heavy), exit_mild=_f(exit_mild), exit_heavy=_f(exit_heavy),
            cooldown_s=cd, created_by=created_by, created_at=now,
        )
        return await self._insert_subscription(SkewAlertRow, values, SkewAlert._of, f"skew alert for {sym} {win} on {exch}")

    async def list_skew_alerts(self, guild_id: int) -> list[SkewAlert]:
        """Every skew subscription of a server (paused ones too), oldest first."""
        return await self._guild_rows(SkewAlertRow, SkewAlert._of, guild_id)

    async def get_skew_alert(self, alert_id: int) -> SkewAlert | None:
        return await self._one(SkewAlertRow, SkewAlert._of, alert_id)

    async def remove_skew_alert(self, guild_id: int, alert_id: int) -> SkewAlert:
        """Delete a server's skew subscription; InputError if it has no such id."""
        async with self._session() as s, s.begin():
            row = await self._owned(s, SkewAlertRow, guild_id, alert_id, "skew alert")
            out = SkewAlert._of(row)
            await s.delete(row)
            return out

    async def resume_skew_alert(self, guild_id: int, alert_id: int) -> SkewAlert:
        """Unpause; the next check records a fresh baseline (no notice for what changed while paused)."""
        async with self._session() as s, s.begin():
            row = await self._owned(s, SkewAlertRow, guild_id, alert_id, "skew alert")
            row.paused_reason = None
            row.paused_at = None
            row.last_class = None
            row.last_ratio = None
            await s.flush()
            return SkewAlert._of(row)

    async def active_skew_alerts(self) -> list[SkewAlert]:
        """Every unpaused skew subscription."""
        async with self._session() as s:
            rows = await s.scalars(select(SkewAlertRow).where(SkewAlertRow.paused_reason.is_(None)).order_by(SkewAlertRow.id))
            return [SkewAlert._of(r) for r in rows]

    async def record_baselines(self, items: Sequence[tuple[int, str, float | None]]) -> None:
        """Set the first observed class of skew alerts that have none yet: ``(alert id, class key, ratio)``."""
        items = [i for i in items if _valid_item_id(i[0])]
        if not items:
            return
        t = SkewAlertRow.__table__
        stmt = (
            update(t)
            .where(t.c.id == bindparam("b_id"), t.c.last_class.is_(None))
            .values(last_class=bindparam("b_class"), last_ratio=bindparam("b_ratio"))
        )
        async with self._session() as s, s.begin():
            await s.execute(stmt, [{"b_id": i, "b_class": k, "b_ratio": _finite(r)} for i, k, r in items])

    async def set_skew_alert_class(
        self,
        alert_id: int,
        *,
        expected: str | None,
        new: str | None,
        ratio: float | None,
        announced_at: datetime | None,
        previous_announced_at: datetime | None = None,
        restore: bool = False,
    ) -> bool:
        """Compare-and-set the last announced class (so two dispatchers cannot both announce).

        ``announced_at`` is written as ``last_announced_at`` (None leaves it unchanged unless
        ``restore`` is set, which writes ``previous_announced_at`` back: used to undo a claim
        whose notice could not be sent).
        """
        values: dict[str, Any] = {"last_class": new, "last_ratio": _finite(ratio)}
        if restore:
            values["last_announced_at"] = None if previous_announced_at is None else aware(previous_announced_at)
        elif announced_at is not None:
            values["last_announced_at"] = aware(announced_at)
        if not _valid_item_id(alert_id):
            return False
        cond = SkewAlertRow.last_class.is_(None) if expected is None else SkewAlertRow.last_class == expected
        async with self._session() as s, s.begin():
            res = await s.execute(update(SkewAlertRow).where(SkewAlertRow.id == alert_id, cond).values(**values))
            return bool(res.rowcount)

"""The symbols the bot is subscribed to, read for :class:`analysis.sources.budget.Demand`.

Daily reports, skew alerts and cluster alerts that are not paused: their symbols are refreshed
first when an exchange budget (Binance's open-interest history) cannot serve every symbol at once.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["subscribed_symbols"]


async def subscribed_symbols(engine: AsyncEngine) -> set[str]:
    """Every symbol of an active daily report, skew alert or cluster alert."""
    from .cluster_store import ClusterRow
    from .store import DailyRow, SkewAlertRow

    out: set[str] = set()
    async with engine.connect() as conn:
        for (text,) in (await conn.execute(select(DailyRow.symbols).where(DailyRow.paused_reason.is_(None)))).all():
            out.update(s for s in str(text).split(",") if s)
        for (sym,) in (await conn.execute(select(SkewAlertRow.symbol).where(SkewAlertRow.paused_reason.is_(None)))).all():
            out.add(str(sym))
        for (sym,) in (await conn.execute(select(ClusterRow.symbol).where(ClusterRow.paused_reason.is_(None)))).all():
            out.add(str(sym))
    return out

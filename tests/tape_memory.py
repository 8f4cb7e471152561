"""An in-memory TapeSink (and TapeReader) for the tape tests: de-duplicates on (venue, key)."""

from __future__ import annotations

from collections.abc import Sequence

from analysis.tape.events import Gap, LiquidationEvent


class MemorySink:
    """Keeps events and gaps in lists; ``fail_next`` write calls raise (a database outage)."""

    def __init__(self) -> None:
        self.events: list[LiquidationEvent] = []
        self.keys: set[tuple[str, str]] = set()
        self.gap_log: list[Gap] = []  # every write_gap call, in order
        self.fail_next = 0
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("database is down")

    async def write_events(self, events: Sequence[LiquidationEvent]) -> int:
        self._maybe_fail()
        new = 0
        for ev in events:
            if (ev.venue, ev.key) in self.keys:
                continue
            self.keys.add((ev.venue, ev.key))
            self.events.append(ev)
            new += 1
        return new

    async def write_gap(self, gap: Gap) -> None:
        self._maybe_fail()
        self.gap_log.append(gap)

    def gaps_now(self) -> list[Gap]:
        """The gaps as a database would hold them: one per (venue, symbol, start), last write wins."""
        rows: dict[tuple[str, str | None, int], Gap] = {}
        for g in self.gap_log:
            rows[(g.venue, g.symbol, g.start_ms)] = g
        return list(rows.values())

    async def events_of(self, symbol: str, start_ms: int, end_ms: int, venues: Sequence[str] | None = None) -> list[LiquidationEvent]:
        out = [e for e in self.events if e.symbol == symbol and start_ms <= e.time_ms < end_ms
               and (venues is None or e.venue in venues)]
        return sorted(out, key=lambda e: e.time_ms)

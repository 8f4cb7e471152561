"""The measured layer: Hyperliquid's real positions and their real liquidation prices.

Hyperliquid publishes every account's positions (``clearinghouseState``). This package finds
accounts (:mod:`.stream`, :mod:`.discovery`), polls them within the documented rate limit
(:mod:`.budget`, :mod:`.tracker`), builds a **measured** :class:`~analysis.liqmap.LiquidationMap`
with its coverage stated (:mod:`.measured_map`) and scores the estimated map's shape against it
(:mod:`.compare`, :mod:`.compare_chart`).
"""

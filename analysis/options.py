"""Chart option names the front ends offer (``--theme``, ``--stack``), without importing matplotlib.

:mod:`analysis.chart` uses these; ``liqmap --help`` lists them.
"""

from __future__ import annotations

__all__ = ["THEMES", "STACKS"]

THEMES: tuple[str, ...] = ("dark", "light")
STACKS: tuple[str, ...] = ("tier", "venue")

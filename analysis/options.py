"""Chart option names the front ends offer (``--theme``, ``--stack``), without importing matplotlib.

:mod:`analysis.chart` uses these; ``liqmap --help`` lists them.
"""

from __future__ import annotations

__all__ = ["THEMES", "STACKS", "VIEWS"]

THEMES: tuple[str, ...] = ("dark", "light")
STACKS: tuple[str, ...] = ("tier", "venue")
VIEWS: tuple[str, ...] = ("map", "heatmap", "both")  # what `liqmap report --view` draws

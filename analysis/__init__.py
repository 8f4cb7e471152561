"""liqmap's analysis core: market data in, liquidation maps, readings, charts and text out.

Nothing in this package knows about Discord. Data flows one way:
source -> Bars -> model -> LiquidationMap -> metrics -> chart / commentary.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"

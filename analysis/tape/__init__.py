"""liqmap's own tape of realized liquidations: venue feeds, normalised events, gaps."""

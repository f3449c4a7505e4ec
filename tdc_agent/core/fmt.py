"""Number formats shared by tables and reports (one definition each, named for what they print)."""

from __future__ import annotations


def fmt_macs_sig3(x: float) -> str:
    """MACs to 3 significant digits in the unit that fits: ``6.56 G``, ``412 M``, ``3.2 K``, ``12``."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f}"


def fmt_macs_fixed(x: float) -> str:
    """MACs with fixed decimals, in M below 1 G (``412.35 M``) and in G from there (``6.560 G``)."""
    return f"{x / 1e6:,.2f} M" if x < 1e9 else f"{x / 1e9:,.3f} G"

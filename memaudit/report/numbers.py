"""Numbers that show their scale in tables (terminal and HTML): a small effect prints as
0.00073, never as 0.00 (issue #19: weak memorization read as none). JSON keeps full floats."""

from __future__ import annotations

import math


def sig(x: float | None, digits: int = 2, missing: str = "–") -> str:
    """``x`` with ``digits`` decimals when that shows at least one significant digit (so
    ordinary values print as before: 0.44, 4.01), else with ``digits`` significant digits
    (0.00073, 1.2e-07 below 1e-6); 0 prints as 0, None/NaN as ``missing``."""
    if x is None or isinstance(x, bool):
        return missing
    try:
        v = float(x)
    except (TypeError, ValueError):
        return missing
    if not math.isfinite(v):
        return missing
    if v == 0:
        return "0"
    if abs(v) >= 10.0 ** (-digits):
        return f"{v:.{digits}f}"
    if abs(v) < 1e-6:
        return f"{v:.{max(digits - 1, 0)}e}"
    # Decimals that keep `digits` significant digits of v.
    decimals = digits - 1 - math.floor(math.log10(abs(v)))
    return f"{v:.{decimals}f}"


def mean_std(mean: float | None, std: float | None, digits: int = 2) -> str:
    """ "mean ± std", each with :func:`sig` (a small std is not printed as 0.00 either)."""
    text = sig(mean, digits, missing="n/a")
    return text if std is None else f"{text} ± {sig(std, digits)}"

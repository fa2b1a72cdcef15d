"""The intervals and the paired test every evaluation report uses, at the bottom of ``evaluation``
(tower reports and the analyses both read them).

Intervals are Wilson score intervals (they stay inside [0, 1] and keep their coverage near 0 and
1, where the normal approximation does not). Two models scored on the same items differ by what
McNemar's exact test sees: only the items exactly one of them got right (``b``: the first alone,
``c``: the second alone) carry information, and under "no difference" each is a fair coin, so the
two-sided p-value is the binomial tail ``2 * P(X <= min(b, c))``, ``X ~ Bin(b + c, 1/2)``, capped at 1.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
ALPHA = 0.05  # a difference is marked significant when McNemar's p is below this


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct / total`` (fractions); (0, 1) for no questions.

    Args:
        correct: items right.
        total: items scored.
        z: the normal quantile of the coverage (``Z95``: 95 %).
    """
    if total == 0:
        return 0.0, 1.0
    share = correct / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    return min(share, max(0.0, centre - half)), max(
        share, min(1.0, centre + half)
    )  # rounding never leaves the share outside


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts."""
    n = first_only + second_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(first_only, second_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


__all__ = ["ALPHA", "Z95", "mcnemar_exact", "wilson_interval"]

"""The dry run's sample and the interval it states.

What a dry run projects is bytes: the output of the whole input.  A few very
large files (multi-frame series, videos) often hold most of an archive's
bytes; a sample of files drawn all alike mostly misses them, and an interval
computed from such a sample (a bootstrap over the files, or the ratio
estimator's variance) is far narrower than the uncertainty it hides.  So the
sample is drawn by size: each of the `n` draws picks one file with a
probability proportional to its bytes (with replacement; a file drawn twice
is processed once and counted twice).  Each draw then estimates the output
per input byte of the whole input without bias, its own ratio (output /
input, 0 for a file written nowhere), and the projection is the input's bytes
times the mean ratio of the draws.  The ratios lie between 0 and 1 (an output
is never larger than its input, unless the target is a native syntax), so
their mean is close to normal even for small samples, and the interval is
the mean plus or minus Student's t quantile times its standard error.

Two floors keep it honest where the spread of the draws says too little.  A
kind of file none of the draws met may hold up to ``ln(20)/n`` of the input's
bytes (at 95% confidence, one-sided: the "rule of three"), and its output
may lie anywhere between nothing and its input: so the half-width is never
less than that share times the larger of the mean ratio and its complement.
That floor alone covers a sample of identical files, and with one or two
draws it spans everything possible.  The interval never leaves 0 .. the
input's bytes (unless the target is native: then only 0 bounds it).
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.bulk.plan import Item

__all__ = ["LEVEL", "Draws", "draw_by_size", "project", "t_quantile"]

LEVEL = 0.90
"""The confidence of the dry run's interval."""


@dataclass(frozen=True)
class Draws:
    """The walk's totals and the files drawn: every file when there are no more than the draws asked for."""

    files: int
    total: int  # bytes of every file walked
    drawn: list[Item]  # one per draw (a file may come more than once); every file once when `census`
    census: bool


def draw_by_size(items: Iterable[Item], n: int, rng: random.Random) -> Draws:
    """`n` draws from the stream `items`, each a file with probability proportional to its size.

    One pass, memory in `n`: each draw is a one-file weighted reservoir,
    which the next file of cumulative size ``W`` replaces with probability
    ``size / W``.  Rather than a random number per file and draw, each draw
    holds the cumulative size at which it is next replaced (``W / u`` for a
    uniform ``u``: the chance that no file replaces it before ``W'`` is
    ``W / W'``), so a file costs one comparison.  Empty files are never drawn
    (they hold no bytes).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    files = total = 0
    first: list[Item] = []  # every file while there are no more than n: then all of them are processed
    drawn: list[Item | None] = [None] * n
    due = [(0.0, slot) for slot in range(n)]  # (cumulative size at which it is replaced, slot)
    for item in items:
        files += 1
        if files <= n:
            first.append(item)
        if item.size <= 0:
            continue
        total += item.size
        while due[0][0] < total:
            _, slot = heapq.heappop(due)
            drawn[slot] = item
            heapq.heappush(due, (total / (1.0 - rng.random()), slot))
    if files <= n:
        return Draws(files, total, first, True)
    return Draws(files, total, [item for item in drawn if item is not None], False)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom, else the Cornish-Fisher expansion
    (Abramowitz and Stegun 26.7.5; within 0.2% from 3 degrees of freedom on, for p up to 0.975)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = statistics.NormalDist().inv_cdf(p)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


def project(ratios: Sequence[float], total: int, *, bounded: bool = True,
            level: float = LEVEL) -> tuple[float, float, float]:
    """(projection, low, high) of a sum over the input from the `ratios` of draws by size.

    A ratio is the drawn file's quantity per input byte (its output size over
    its size, 0 when it is written nowhere).  `bounded`: no ratio exceeds 1
    (outputs are never larger than inputs), so neither does the sum exceed
    `total`.  See the module's description for the interval.
    """
    n = len(ratios)
    if n == 0 or total <= 0:
        return 0.0, 0.0, float(total) if bounded else 0.0
    mean = math.fsum(ratios) / n
    half = 0.0
    if n > 1:
        spread = math.fsum((r - mean) ** 2 for r in ratios) / (n - 1)
        half = t_quantile(0.5 + level / 2, n - 1) * math.sqrt(spread / n)
    unseen = min(1.0, math.log(2 / (1 - level)) / n)  # bytes a kind of file no draw met may hold
    half = max(half, unseen * max(mean, abs(1 - mean)))
    low = max(0.0, mean - half)
    high = min(1.0, mean + half) if bounded else mean + half
    return total * mean, total * low, total * high

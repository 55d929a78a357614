"""Poisson shot noise over a whole field, fast where the expectation is constant.

A support film makes every pixel of an image count electrons, so the shot noise is drawn over
the whole field (a 512 × 512 image: 262 144 Poisson draws); numpy's Poisson sampler costs about
40 ns per draw there. Outside the aggregate the expectation is one constant λ (the film's), and
i.i.d. Poisson(λ) counts can be drawn by inversion through a guide table (Chen & Asau's indexed
search): a uniform u picks bin ⌊u·M⌋ of a table of M starting points, and a short search
along the cumulative distribution F gives the smallest k with F(k) > u. That is Poisson(λ)
exactly (to F's float64 rounding; the table covers λ ± 12√λ + 20, beyond which either tail
holds less than 1e-30), in about a third of the time: one uniform, two gathers and a
comparison per pixel, plus a search step for a few.

`poisson_counts` uses it for the pixels outside the smallest box that holds every pixel whose
expectation differs from the field's minimum, and numpy's sampler inside the box. Draw order
from ``rng``: the uniforms of the outside pixels (the rows above the box, the rows below, then
the columns left of and right of the box in the box's rows, each block in row-major order),
then numpy's Poisson draws of the box. A function of ``rng``'s state and ``expected`` alone.
"""

from __future__ import annotations

import math

import numpy as np

#: Fewest constant pixels for which the table pays for building it.
_MIN_TABLE_PIXELS = 4096
#: The table spans λ ± (this many standard deviations + 20): each tail beyond is < 1e-30.
_TAIL_SIGMAS = 12.0
#: Guide-table bins per table entry (more bins: fewer search steps).
_BINS_PER_ENTRY = 4


def _poisson_inversion_table(lam: float) -> tuple[int, np.ndarray, np.ndarray]:
    """(k_0, F, guide) of Poisson(λ) over k = k_0 … k_0 + K: F[i] = P(X ≤ k_0 + i) with
    F[-1] = 1, guide[j] = min i: F[i] > j/M."""
    from scipy.special import gammaln

    spread = _TAIL_SIGMAS * math.sqrt(lam) + 20.0
    low, high = max(0, int(math.floor(lam - spread))), int(math.ceil(lam + spread))
    k = np.arange(low, high + 1, dtype=np.float64)
    cdf = np.cumsum(np.exp(k * math.log(lam) - lam - gammaln(k + 1.0)))
    cdf[-1] = 1.0  # u < 1 always: the search stops at the table's end
    bins = _BINS_PER_ENTRY * cdf.shape[0]
    guide = np.searchsorted(cdf, np.arange(bins, dtype=np.float64) / bins, side="right")
    return low, cdf, guide


def constant_poisson(rng: np.random.Generator, lam: float, count: int) -> np.ndarray:
    """``count`` i.i.d. Poisson(``lam``) draws (int64) by guide-table inversion of uniforms.

    Args:
        rng: the random stream (``count`` uniforms are drawn).
        lam: expectation λ > 0.
        count: number of draws.

    Returns:
        (count,) int64.
    """
    low, cdf, guide = _poisson_inversion_table(float(lam))
    uniform = rng.random(count)
    k = guide[(uniform * guide.shape[0]).astype(np.intp)]
    todo = np.flatnonzero(cdf[k] <= uniform)
    while todo.size:
        k[todo] += 1
        todo = todo[cdf[k[todo]] <= uniform[todo]]
    k = k.astype(np.int64)
    k += low
    return k


def poisson_counts(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Poisson counts of an (H, W) field of expectations (see the module docstring).

    Args:
        rng: the random stream.
        expected: (H, W) expected counts ≥ 0.

    Returns:
        (H, W) int64 counts, each Poisson(expected) and independent.
    """
    expected = np.asarray(expected, dtype=np.float64)
    if expected.ndim != 2 or expected.size == 0:
        return rng.poisson(expected)
    lam = float(expected.min())
    varying = expected != lam
    rows = np.flatnonzero(varying.any(axis=1))
    cols = np.flatnonzero(varying.any(axis=0))
    height, width = expected.shape
    if rows.size:
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    else:
        r0 = r1 = c0 = c1 = 0
    outside = height * width - (r1 - r0) * (c1 - c0)
    if lam <= 0 or outside < _MIN_TABLE_PIXELS:
        return rng.poisson(expected)
    counts = np.empty((height, width), dtype=np.int64)
    blocks = [(slice(0, r0), slice(None)), (slice(r1, height), slice(None)),
              (slice(r0, r1), slice(0, c0)), (slice(r0, r1), slice(c1, width))]
    sizes = [counts[block].size for block in blocks]
    drawn = constant_poisson(rng, lam, sum(sizes))
    start = 0
    for block, size in zip(blocks, sizes):
        counts[block] = drawn[start:start + size].reshape(counts[block].shape)
        start += size
    if r1 > r0:
        counts[r0:r1, c0:c1] = rng.poisson(expected[r0:r1, c0:c1])
    return counts

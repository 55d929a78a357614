"""Full-field shot noise (hagg_tf.stem.shot_noise) and the shared resampling (hagg_tf.stem.resample)."""

import math

import numpy as np
import pytest
from scipy import ndimage, stats

from hagg_tf.stem.resample import background_level, resample
from hagg_tf.stem.shot_noise import constant_poisson, poisson_counts


@pytest.mark.parametrize("lam", [0.3, 4.0, 37.5, 230.0, 4000.0])
def test_constant_poisson_is_poisson(lam):
    draws = constant_poisson(np.random.default_rng(11), lam, 200_000)
    assert draws.dtype == np.int64 and draws.min() >= 0
    # Mean and variance within 5 standard errors (var of the sample variance ≈ 2λ²/n + λ/n).
    n = draws.size
    assert abs(draws.mean() - lam) < 5 * math.sqrt(lam / n)
    assert abs(draws.var() - lam) < 5 * math.sqrt((2 * lam ** 2 + lam) / n)
    # Pearson χ² over the cells expected ≥ 20 times, tails pooled into the end cells.
    k = np.arange(int(lam + 10 * math.sqrt(lam) + 20))
    expected = stats.poisson.pmf(k, lam) * n
    keep = np.flatnonzero(expected >= 20)
    low, high = keep[0], keep[-1]
    observed = np.bincount(np.clip(draws, low, high) - low, minlength=high - low + 1)
    cells = stats.poisson.pmf(np.arange(low, high + 1), lam) * n
    cells[0] = stats.poisson.cdf(low, lam) * n
    cells[-1] = stats.poisson.sf(high - 1, lam) * n
    chi2 = float(((observed - cells) ** 2 / cells).sum())
    assert stats.chi2.sf(chi2, cells.size - 1) > 1e-4


def test_poisson_counts_uses_numpy_where_the_expectation_varies_and_is_reproducible():
    expected = np.full((300, 320), 12.5)
    expected[100:180, 40:200] += np.linspace(0.0, 500.0, 80 * 160).reshape(80, 160)
    first = poisson_counts(np.random.default_rng(3), expected)
    assert np.array_equal(first, poisson_counts(np.random.default_rng(3), expected))
    # Draw order: the constant pixels' uniforms first, then numpy's Poisson of the box.
    rng = np.random.default_rng(3)
    outside = 300 * 320 - 80 * 160
    constant_poisson(rng, 12.5, outside)
    assert np.array_equal(first[100:180, 40:200], rng.poisson(expected[100:180, 40:200]))
    # Both parts are Poisson of their own expectation: standardised residuals ~ N(0, 1).
    residual = (first - expected) / np.sqrt(expected)
    assert abs(residual.mean()) < 5 / math.sqrt(residual.size)
    assert abs(residual.std() - 1) < 0.02
    # No constant background (or an all-zero one, as without a film): numpy's sampler alone.
    zero_background = np.where(expected > 12.5, expected, 0.0)
    assert np.array_equal(poisson_counts(np.random.default_rng(5), zero_background),
                          np.random.default_rng(5).poisson(zero_background))


def _scipy_resample(counts, electrons, zoom):
    """The resampling as first written, with scipy.ndimage.zoom."""
    intensity = counts / electrons
    if zoom < 1.0:
        intensity = ndimage.gaussian_filter(intensity, sigma=(1.0 / zoom - 1.0) / 2.0,
                                            mode="nearest")
    resampled = ndimage.zoom(intensity, zoom, order=1, grid_mode=True, mode="grid-constant",
                             cval=background_level(intensity))
    return np.maximum(resampled, 0.0) * (electrons / zoom ** 2)


@pytest.mark.parametrize("shape,zoom", [((384, 384), 512 / 384), ((614, 614), 512 / 614),
                                        ((100, 37), 2.7), ((57, 300), 0.41), ((64, 64), 1.0)])
def test_resample_equals_scipy_zoom_and_keeps_the_dose_per_area(shape, zoom):
    rng = np.random.default_rng(0)
    counts = rng.poisson(40.0, shape).astype(np.float64) + 300.0
    ours, electrons = resample(counts, 123.0, zoom)
    reference = _scipy_resample(counts, 123.0, zoom)
    assert ours.shape == reference.shape and ours.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(ours, reference, rtol=1e-13, atol=0)
    assert electrons == pytest.approx(123.0 / zoom ** 2)
    # A uniform field keeps its intensity fraction: counts / electrons per pixel.
    flat, new_electrons = resample(np.full(shape, 246.0), 123.0, zoom)
    np.testing.assert_allclose(flat / new_electrons, 2.0, rtol=1e-12)


def test_inference_and_database_share_one_resampling():
    from hagg_tf.estimation import images

    assert images.resample is resample and images.background_level is background_level

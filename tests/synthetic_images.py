"""Synthetic HAADF detector counts shared by the export tests (not a test module)."""

import numpy as np

ELECTRONS_PER_PIXEL = 21_456.0  # 149 e/Å² on (1.2 nm)² pixels


def synthetic_counts(rng, leading_shape, size):
    """uint16 counts of shape leading_shape + (size, size): a dark background (p below t) with a
    few bright and dim discs, so that the 1/p inversion of CNN^1 has pixels on both sides of the
    threshold."""
    yy, xx = np.mgrid[:size, :size]
    intensity = np.zeros(tuple(leading_shape) + (size, size))
    for index in np.ndindex(*leading_shape):
        for _ in range(4):
            cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
            radius = rng.uniform(5, 20)
            level = rng.choice([0.004, 0.02, 0.15])  # TiO2-like, mid, WO3-like fractions
            intensity[index] += level * ((yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2)
    return rng.poisson(intensity * ELECTRONS_PER_PIXEL).astype(np.uint16)

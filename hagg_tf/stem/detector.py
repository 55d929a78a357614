"""The HAADF detector: measured angular sensitivity or a flat annulus (paper Sec. 2.1.3).

The shipped file ``data/haadf_detector_sensitivity.txt`` is the measured sensitivity of the
Bremen group's ThermoFisher Spectra 300 HAADF detector at 91 mm camera length, published with
Gerken et al., "Material discrimination in nanoparticle hetero-aggregates by analysis of STEM
images", Part. Part. Syst. Charact. (2023), public repository
UniBremenIFPElectronMicroscopy/Material-Discrimination-in-Nanoparticle-Hetero-Aggregates-by-
Analysis-of-STEM-images, file RawData/HAADF_Spektra_91mm_R50_v2.txt. Column 1: scattering
angle in rad (0.05–0.30); column 2: relative sensitivity (0–1.03). The curve rises from 0 at
51 mrad and falls to 0 at about 255 mrad, i.e. it is the 55–250 mrad annulus with its
measured edges and inner non-uniformity.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import numpy as np

FLAT_INNER_MRAD = 55.0
FLAT_OUTER_MRAD = 250.0
SENSITIVITY_FILE = "haadf_detector_sensitivity.txt"
DETECTOR_MODES = ("sensitivity", "flat")


@functools.lru_cache(maxsize=4)
def load_sensitivity(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a detector sensitivity curve.

    Args:
        path: a two-column text file (angle in rad, relative sensitivity); None loads the
            shipped Spectra 300 curve.

    Returns:
        (angles_mrad (M,), sensitivity (M,)), angles increasing.

    Raises:
        ValueError: the file is malformed (names the file).
    """
    if path is None:
        resource = importlib.resources.files("hagg_tf.stem") / "data" / SENSITIVITY_FILE
        text, name = resource.read_text(), str(resource)
    else:
        text, name = Path(path).read_text(), str(path)
    try:
        values = np.loadtxt(text.splitlines(), ndmin=2)
    except ValueError as error:
        raise ValueError(f"{name}: not a two-column numeric sensitivity file ({error})") from None
    if values.shape[1] != 2 or len(values) < 2:
        raise ValueError(f"{name}: expected two columns (angle rad, sensitivity), got shape {values.shape}")
    angles_mrad, sensitivity = 1000.0 * values[:, 0], values[:, 1]
    if not (np.all(np.isfinite(values)) and np.all(np.diff(angles_mrad) > 0) and np.all(sensitivity >= 0)):
        raise ValueError(f"{name}: angles must increase and sensitivities be finite and >= 0")
    return angles_mrad, sensitivity


def bin_weights(bin_edges_mrad: np.ndarray, mode: str = "sensitivity",
                sensitivity_path: str | None = None) -> np.ndarray:
    """Weights that turn angle-binned scattered intensity into the detector signal.

    The bins hold intensity already integrated over each ring (abTEM's
    FlexibleAnnularDetector sums the diffraction-pattern pixels, so the 2π sin θ dθ ring area
    is included); the signal is Σ_k w_k I_k.

    Args:
        bin_edges_mrad: (K + 1,) increasing bin edges, mrad.
        mode: "sensitivity" (measured curve, averaged over each bin) or "flat"
            (1 inside 55–250 mrad, fractional for partly covered bins).
        sensitivity_path: optional custom sensitivity file for mode "sensitivity".

    Returns:
        (K,) weights in [0, ~1].
    """
    edges = np.asarray(bin_edges_mrad, dtype=float)
    if mode == "flat":
        low = np.clip(edges[:-1], FLAT_INNER_MRAD, FLAT_OUTER_MRAD)
        high = np.clip(edges[1:], FLAT_INNER_MRAD, FLAT_OUTER_MRAD)
        return (high - low) / np.diff(edges)
    if mode != "sensitivity":
        raise ValueError(f"unknown detector mode {mode!r}; choose one of {DETECTOR_MODES}")
    angles, sensitivity = load_sensitivity(sensitivity_path)
    # Average the curve over each bin (fine sub-sampling) so narrow features are not aliased.
    sub = np.linspace(0.0, 1.0, 17)
    samples = edges[:-1, None] + sub[None, :] * np.diff(edges)[:, None]
    values = np.interp(samples, angles, sensitivity, left=0.0, right=0.0)
    # Trapezoid rule on the uniform sub-grid (np.trapezoid needs numpy >= 2).
    return (values[:, 1:] + values[:, :-1]).mean(axis=1) / 2.0

"""Model parameters θ = (θ_Df, θ_ρ, θ_0, θ_1) and generator settings (paper Sec. 2.1.1, Table 2)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from typing import Iterator

# Table 2 of the paper: the grid the training database spans.
TABLE2_FRACTAL_DIMENSIONS = tuple(round(1.5 + 0.1 * i, 1) for i in range(11))
TABLE2_MIXING_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))
TABLE2_CLUSTER_SIZES = tuple(range(1, 7))

WO3 = 0
TIO2 = 1
MATERIAL_NAMES = {WO3: "WO3", TIO2: "TiO2"}


#: Largest seed (and draw index): aggregate files and image metadata store both as signed
#: 64-bit integers.
MAX_SEED = 2 ** 63 - 1


class ParameterError(ValueError):
    """Raised for a θ, seed or generator setting outside the model's domain."""


def require_seed(value, name: str = "seed") -> int:
    """``value`` as a Python int, if it is an integer in [0, :data:`MAX_SEED`].

    Python and numpy integers pass; floats (even 3.0: a seed that went through a float may have
    lost digits), strings and bools are refused, as are values numpy cannot seed with (negative)
    or files cannot store (≥ 2**63). Used for every seed and draw index of the model API.

    Args:
        value: the seed or index.
        name: the argument's name, for the message.

    Raises:
        ParameterError: naming ``name`` and the value.
    """
    # numpy's bool is no numbers.Integral; Python's bool is one, hence the explicit test.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"{name} must be a non-negative integer below 2**63, got "
                             f"{value!r} ({type(value).__name__})")
    if not 0 <= int(value) <= MAX_SEED:
        raise ParameterError(f"{name} must be a non-negative integer below 2**63, got {value!r}")
    return int(value)


def _require_integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterError(f"{name} must be an integer >= 1, got {value!r}")
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise ParameterError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def require_finite(name: str, value, error: type[ValueError] = None) -> float:
    """``value`` as a finite float, else ``error`` (default `ParameterError`) naming ``name``."""
    error = ParameterError if error is None else error
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{name} must be finite, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ModelParameters:
    """The four parameters θ of the stochastic 3D model.

    Attributes:
        fractal_dimension: θ_Df ∈ (1, 3), the preset fractal dimension (Eq. 5).
        mixing_ratio: θ_ρ ∈ [0, 1], the intended fraction of WO3 particles (Eq. 3).
        wo3_cluster_size: θ_0 ≥ 1, particles per primary WO3 cluster (label 0).
        tio2_cluster_size: θ_1 ≥ 1, particles per primary TiO2 cluster (label 1).
    """

    fractal_dimension: float
    mixing_ratio: float
    wo3_cluster_size: int
    tio2_cluster_size: int

    def __post_init__(self):
        fractal_dimension = require_finite("fractal_dimension (theta_Df)", self.fractal_dimension)
        if not 1.0 < fractal_dimension < 3.0:
            raise ParameterError(
                f"fractal_dimension (theta_Df) must lie in the open interval (1, 3), got {fractal_dimension}")
        mixing_ratio = require_finite("mixing_ratio (theta_rho)", self.mixing_ratio)
        if not 0.0 <= mixing_ratio <= 1.0:
            raise ParameterError(f"mixing_ratio (theta_rho) must lie in [0, 1], got {mixing_ratio}")
        object.__setattr__(self, "fractal_dimension", fractal_dimension)
        object.__setattr__(self, "mixing_ratio", mixing_ratio)
        object.__setattr__(self, "wo3_cluster_size",
                           _require_integer("wo3_cluster_size (theta_0)", self.wo3_cluster_size))
        object.__setattr__(self, "tio2_cluster_size",
                           _require_integer("tio2_cluster_size (theta_1)", self.tio2_cluster_size))

    @property
    def tio2_cluster_probability(self) -> float:
        """P(L_k = 1) = (1−θ_ρ)θ_0 / ((1−θ_ρ)θ_0 + θ_ρθ_1), the chance a primary cluster is TiO2."""
        tio2_weight = (1.0 - self.mixing_ratio) * self.wo3_cluster_size
        wo3_weight = self.mixing_ratio * self.tio2_cluster_size
        return tio2_weight / (tio2_weight + wo3_weight)

    def as_tuple(self) -> tuple[float, float, int, int]:
        return (self.fractal_dimension, self.mixing_ratio, self.wo3_cluster_size, self.tio2_cluster_size)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_sequence(cls, values) -> "ModelParameters":
        values = list(values)
        if len(values) != 4:
            raise ParameterError(
                f"theta needs four values (theta_Df, theta_rho, theta_0, theta_1), got {len(values)}: {values!r}")
        return cls(*values)

    def __str__(self) -> str:
        return (f"θ=(Df={self.fractal_dimension:g}, ρ={self.mixing_ratio:g}, "
                f"θ0={self.wo3_cluster_size}, θ1={self.tio2_cluster_size})")


def table2_grid() -> Iterator[ModelParameters]:
    """All 11 × 9 × 6 × 6 = 3564 parameter vectors of Table 2, in a fixed order."""
    for values in itertools.product(TABLE2_FRACTAL_DIMENSIONS, TABLE2_MIXING_RATIOS,
                                    TABLE2_CLUSTER_SIZES, TABLE2_CLUSTER_SIZES):
        yield ModelParameters(*values)


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Settings of the aggregate generator that are not part of θ.

    Attributes:
        radius_mean: mean of the log-normal particle radius distribution, nm.
        radius_std: standard deviation of the radius distribution, nm.
        fractal_prefactor: k_f of Eq. 5.
        min_size, max_size: the target particle count N is uniform on {min_size, …, max_size}.
        contact_tolerance: particles touch when their distance ≤ tolerance·(r_i + r_j) (Eq. 2).
        placement_attempts: candidate positions tried per particle or cluster before that
            cluster (or, for cluster–cluster aggregation, the aggregate) is restarted.
        max_restarts: restarts of one aggregate before the generator gives up with an error.
    """

    radius_mean: float = 12.0
    radius_std: float = 3.0
    fractal_prefactor: float = 1.3
    min_size: int = 20
    max_size: int = 80
    contact_tolerance: float = 1.01
    placement_attempts: int = 16
    max_restarts: int = 1000

    def __post_init__(self):
        for name in ("radius_mean", "radius_std", "fractal_prefactor"):
            value = require_finite(name, getattr(self, name))
            if value <= 0:
                raise ParameterError(f"{name} must be positive, got {value}")
        tolerance = require_finite("contact_tolerance", self.contact_tolerance)
        if tolerance < 1.0:
            raise ParameterError(f"contact_tolerance must be >= 1, got {tolerance}")
        for name in ("min_size", "max_size", "placement_attempts", "max_restarts"):
            _require_integer(name, getattr(self, name))
        if self.min_size > self.max_size:
            raise ParameterError(
                f"size bounds reversed: min_size={self.min_size} > max_size={self.max_size}")

    @property
    def lognormal_mu_sigma(self) -> tuple[float, float]:
        """Parameters (μ, σ) of log(r) giving the configured radius mean and s.d."""
        variance_ratio = 1.0 + (self.radius_std / self.radius_mean) ** 2
        sigma = math.sqrt(math.log(variance_ratio))
        mu = math.log(self.radius_mean) - 0.5 * sigma ** 2
        return mu, sigma

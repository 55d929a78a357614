"""The aggregate container shared by the whole pipeline (SPEC §3)."""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from hagg_tf.model.parameters import ModelParameters, require_seed


def _integral_array(name: str, values, dtype) -> np.ndarray:
    """``values`` cast to the integer ``dtype``, refusing values the cast would change.

    A plain ``astype`` truncates 0.5 to 0 and wraps 300 to 44 (int8) without a word.
    """
    values = np.asarray(values)
    if values.dtype.kind == "b":
        values = values.astype(dtype)
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be integers, got dtype {values.dtype}")
    info = np.iinfo(dtype)
    wrong = (values < info.min) | (values > info.max)
    if values.dtype.kind == "f":
        wrong |= ~np.isfinite(values) | (values != np.floor(values))
    if np.any(wrong):
        raise ValueError(f"{name} must be whole numbers in [{info.min}, {info.max}], got "
                         f"{values[wrong][:3].tolist()}")
    return values.astype(dtype)


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclasses.dataclass(eq=False)
class Aggregate:
    """A hetero-aggregate of spherical particles.

    Attributes:
        positions: (N, 3) float64 particle centres, nm. The generator puts the aggregate's
            centre of mass (masses ∝ r³) at the origin.
        radii: (N,) float64 particle radii, nm.
        labels: (N,) int8 material labels, 0 = WO3, 1 = TiO2.
        cluster_ids: (N,) int32 index of the primary cluster each particle came from.
        params: the θ that generated the aggregate (None for hand-made aggregates).
        seed: the base seed of the draw (None when not drawn by the generator).
        index: the draw's index under that seed.
        target_size: the target particle count N drawn for it; the actual size can exceed it
            because the last primary cluster is added whole.
        restarts: how often the generator restarted this aggregate (the paper's "∞" value).

    Raises:
        ValueError: on construction, for values the arrays' dtypes would change (a label 0.5,
            a cluster id 2.5) or out of their domain, and for a seed or index outside
            [0, ``MAX_SEED``] (``ParameterError``), which no aggregate file could store.
    """

    positions: np.ndarray
    radii: np.ndarray
    labels: np.ndarray
    cluster_ids: np.ndarray
    params: ModelParameters | None = None
    seed: int | None = None
    index: int | None = None
    target_size: int | None = None
    restarts: int = 0

    def __post_init__(self):
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.radii = np.asarray(self.radii, dtype=np.float64)
        self.labels = _integral_array("labels", self.labels, np.int8)
        self.cluster_ids = _integral_array("cluster_ids", self.cluster_ids, np.int32)
        # Seeds and indices obey the generator's bounds, so that every aggregate can be saved.
        self.seed = None if self.seed is None else require_seed(self.seed, "seed")
        self.index = None if self.index is None else require_seed(self.index, "index")
        if self.target_size is not None:
            self.target_size = _count("target_size", self.target_size, 1)
        self.restarts = _count("restarts", self.restarts, 0)
        size = self.radii.shape[0] if self.radii.ndim == 1 else -1
        if self.positions.ndim != 2 or self.positions.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3), got {self.positions.shape}")
        if self.radii.ndim != 1 or self.positions.shape[0] != size:
            raise ValueError(
                f"radii must have shape ({self.positions.shape[0]},), got {self.radii.shape}")
        for name in ("labels", "cluster_ids"):
            if getattr(self, name).shape != (size,):
                raise ValueError(f"{name} must have shape ({size},), got {getattr(self, name).shape}")
        if size == 0:
            raise ValueError("an aggregate needs at least one particle")
        if not (np.all(np.isfinite(self.positions)) and np.all(np.isfinite(self.radii))):
            raise ValueError("positions and radii must be finite")
        if np.any(self.radii <= 0):
            raise ValueError("radii must be positive")
        if not np.all(np.isin(self.labels, (0, 1))):
            raise ValueError("labels must be 0 (WO3) or 1 (TiO2)")
        if np.any(self.cluster_ids < 0):
            raise ValueError("cluster_ids must be non-negative")

    @property
    def size(self) -> int:
        """Number of particles N."""
        return int(self.radii.shape[0])

    @property
    def masses(self) -> np.ndarray:
        """(N,) particle masses up to a constant, m_i ∝ r_i³ (same density for both materials)."""
        return self.radii ** 3

    def center_of_mass(self) -> np.ndarray:
        """(3,) centre of mass c_0 of Eq. 4, nm."""
        masses = self.masses
        return masses @ self.positions / masses.sum()

    def __eq__(self, other) -> bool:
        if not isinstance(other, Aggregate):
            return NotImplemented
        return (np.array_equal(self.positions, other.positions)
                and np.array_equal(self.radii, other.radii)
                and np.array_equal(self.labels, other.labels)
                and np.array_equal(self.cluster_ids, other.cluster_ids)
                and self.params == other.params and self.seed == other.seed
                and self.index == other.index and self.target_size == other.target_size
                and self.restarts == other.restarts)

"""The design of the training database: which θ, which draws, which split, which shard.

Paper Sec. 2.3: for each of the 324 triples (θ_ρ, θ_0, θ_1) of Table 2, two values of θ_Df are
drawn at random from Table 2's eleven values, and each of the resulting 648 parameter
configurations θ = (θ_Df, θ_ρ, θ_0, θ_1) generates 50 aggregates: 32 400 (aggregate, image, θ)
triplets. They are split into T (19 440, training) and E (12 960, evaluation) "such that there
is no model parameter configuration that occurs less than 20 times" in either; we read "model
parameter configuration" as the full 4-vector θ (the multi-image networks need ν = 12 images of
one θ), and split every θ's 50 draws 30 : 20, which meets the rule with margin and gives the
paper's totals exactly. The two θ_Df of a triple are drawn without replacement, so the 648
configurations are distinct and each has exactly 50 draws.

The validation set for early stopping is carved out of T only (never E) as whole
configurations: all 30 T-draws of 65 randomly chosen θ (1 950 images, 10 % of T). Whole
configurations, because the multi-image networks CNN^0 and CNN^1 need ν = 12 images of one θ
per validation sample (a few draws of every θ could form none); as a bonus, early stopping then
watches configurations the networks never trained on. The stored splits are therefore

==============  ==========================  ==========================================
split           per θ (paper preset)        role
==============  ==========================  ==========================================
``train``       30 (583 θ), 0 (65 θ)        T without the validation part: gradient steps
``validation``  0 (583 θ), 30 (65 θ)        part of T: early stopping, model selection
``evaluation``  20                          E: all reported results
==============  ==========================  ==========================================

(``validation_per_theta`` can instead take a few draws of every θ, stratified; the ``tiny``
preset does so.)

and ``train+validation`` is the paper's T.

Indices. Configuration ``theta_id`` (0 … 647) is triple ``theta_id // 2`` with its
``theta_id % 2``-th θ_Df; its draws are the sample indices ``theta_id · 50 + r``, r = 0 … 49.
Sample ``i`` is the aggregate ``sample_aggregate(θ, seed, i)`` and the image
``render_stem(aggregate, seed=seed, index=i)``: a function of (seed, i) alone.

Shards. Each split is cut into ``num_shards`` shards. A split's indices are put in one random
order (fixed by the seed) and shard k holds every ``num_shards``-th of them, from position k, in
that order: every shard is a uniform random sample of the split, in random order, so that
interleaved reading plus a modest shuffle buffer mixes θ well (index order would feed the
network one θ region of the grid at a time). Everything here is a function of the
`DatasetConfig` alone: no randomness depends on workers or on which machine writes a shard.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Optional

import numpy as np

from hagg_tf.model.parameters import (TABLE2_CLUSTER_SIZES, TABLE2_FRACTAL_DIMENSIONS,
                                      TABLE2_MIXING_RATIOS, GeneratorConfig, ModelParameters)

SPLITS = ("train", "validation", "evaluation")
# SeedSequence branches of the design, apart from the aggregate and image streams (which use
# (seed,) and (seed, "STEM") as entropy): "DATA" then a stream number.
_DESIGN_ENTROPY = 0x44415441
_THETA_STREAM, _SPLIT_STREAM, _SHARD_STREAM, _VALIDATION_STREAM = 1, 2, 3, 4
# The paper's field of view: 512 pixels of 1.2 nm (hagg_tf.stem.DEFAULT_PIXEL_SIZE_NM).
_PAPER_FIELD_OF_VIEW_NM = 512 * 1.2


def all_triples() -> tuple[tuple[float, int, int], ...]:
    """The 324 triples (θ_ρ, θ_0, θ_1) of Table 2 in a fixed order (θ_ρ slowest)."""
    return tuple(itertools.product(TABLE2_MIXING_RATIOS, TABLE2_CLUSTER_SIZES,
                                   TABLE2_CLUSTER_SIZES))


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Everything that determines a database's content (and nothing that does not).

    Attributes:
        seed: base seed of the aggregates, images, θ_Df draws, split and shard order.
        triples: the (θ_ρ, θ_0, θ_1) triples; None means all 324 of Table 2.
        fractal_dimensions_per_triple: θ_Df values drawn (without replacement) per triple.
        samples_per_theta: aggregates (and images) per configuration θ.
        evaluation_per_theta: of those, how many go to E.
        validation_per_theta: of the rest (T), how many go to the validation split, for
            every θ.
        validation_thetas: whole configurations whose T-draws all go to the validation split
            (so that ν-image validation samples exist).
        min_per_theta: the rule of Sec. 2.3 — every θ at least this often in T and in E.
        image_size: pixels per image edge.
        pixel_size_nm: pixel edge, nm; None keeps the paper's 614.4 nm field of view
            (1.2 nm at 512 pixels), so that smaller test images still hold the aggregates.
        dose: electron dose, e/Å².
        num_shards: shards per split.
        min_size, max_size: the generator's target particle count range.
        conditions: None (the paper's idealized images), or the name of the domain
            randomization ranges (`hagg_tf.data.randomization.CONDITION_RANGES`, e.g.
            ``"realistic"``): every sample then draws its imaging conditions and particle size
            distribution from them (`draw_conditions`), so ``dose``, ``min_size`` and
            ``max_size`` are not used; the images are rendered at the drawn pixel size over
            the grid's field of view and resampled to the grid (``image_size`` pixels of
            `effective_pixel_size_nm`).
    """

    seed: int = 0
    triples: tuple[tuple[float, int, int], ...] | None = None
    fractal_dimensions_per_triple: int = 2
    samples_per_theta: int = 50
    evaluation_per_theta: int = 20
    validation_per_theta: int = 0
    validation_thetas: int = 65
    min_per_theta: int = 20
    image_size: int = 512
    pixel_size_nm: float | None = None
    dose: float = 149.0
    num_shards: int = 32
    min_size: int = 20
    max_size: int = 80
    conditions: str | None = None

    def __post_init__(self):
        if self.triples is not None:
            triples = tuple((float(rho), int(size0), int(size1))
                            for rho, size0, size1 in self.triples)
            if not triples:
                raise ValueError("triples must not be empty")
            object.__setattr__(self, "triples", triples)
            for triple in triples:
                ModelParameters(2.0, *triple)  # validates θ_ρ, θ_0, θ_1
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 1 <= self.fractal_dimensions_per_triple <= len(TABLE2_FRACTAL_DIMENSIONS):
            raise ValueError(f"fractal_dimensions_per_triple must be in 1..."
                             f"{len(TABLE2_FRACTAL_DIMENSIONS)}, got "
                             f"{self.fractal_dimensions_per_triple}")
        if min(self.evaluation_per_theta, self.validation_per_theta, self.validation_thetas) < 0:
            raise ValueError(
                "evaluation_per_theta, validation_per_theta and validation_thetas must be >= 0")
        configurations = ((len(self.triples) if self.triples is not None else len(all_triples()))
                          * self.fractal_dimensions_per_triple)
        if self.validation_thetas >= configurations:
            raise ValueError(f"validation_thetas={self.validation_thetas} leaves none of the "
                             f"{configurations} configurations for training")
        if self.train_per_theta < 1:
            raise ValueError(
                f"samples_per_theta={self.samples_per_theta} leaves no training draws after "
                f"{self.evaluation_per_theta} evaluation and {self.validation_per_theta} "
                f"validation draws per θ")
        if self.training_pool_per_theta < self.min_per_theta:
            raise ValueError(
                f"T gets {self.training_pool_per_theta} draws per θ, fewer than "
                f"min_per_theta={self.min_per_theta} (paper Sec. 2.3)")
        if self.evaluation_per_theta < self.min_per_theta:
            raise ValueError(
                f"E gets {self.evaluation_per_theta} draws per θ, fewer than "
                f"min_per_theta={self.min_per_theta} (paper Sec. 2.3)")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.pixel_size_nm is not None and not self.pixel_size_nm > 0:
            raise ValueError(f"pixel_size_nm must be positive, got {self.pixel_size_nm}")
        if not self.dose > 0:
            raise ValueError(f"dose must be positive, got {self.dose}")
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}")
        GeneratorConfig(min_size=self.min_size, max_size=self.max_size)  # validates the range
        if self.conditions is not None:
            from hagg_tf.data.randomization import condition_ranges

            condition_ranges(self.conditions)  # raises ValueError naming the known ones

    @property
    def train_per_theta(self) -> int:
        """Draws per θ in the ``train`` split (T without validation)."""
        return self.samples_per_theta - self.evaluation_per_theta - self.validation_per_theta

    @property
    def training_pool_per_theta(self) -> int:
        """Draws per θ in T = train ∪ validation."""
        return self.samples_per_theta - self.evaluation_per_theta

    @property
    def effective_pixel_size_nm(self) -> float:
        """The pixel size used for rendering, nm."""
        if self.pixel_size_nm is not None:
            return float(self.pixel_size_nm)
        return _PAPER_FIELD_OF_VIEW_NM / self.image_size

    @property
    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(min_size=self.min_size, max_size=self.max_size)

    def to_dict(self) -> dict:
        """JSON-able settings (stored in the manifest; compared on resume)."""
        values = dataclasses.asdict(self)
        values["triples"] = None if self.triples is None else [list(t) for t in self.triples]
        values["effective_pixel_size_nm"] = self.effective_pixel_size_nm
        if self.conditions is None:
            # Absent, not null: the settings (and their sha256) of databases made before the
            # field existed, the paper preset's among them, stay what they were.
            del values["conditions"]
        else:
            from hagg_tf.data.randomization import condition_ranges

            # The ranges themselves, so that a database made with other ranges under the same
            # name is caught on resume.
            values["condition_ranges"] = condition_ranges(self.conditions).to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "DatasetConfig":
        values = {key: value for key, value in values.items()
                  if key in {field.name for field in dataclasses.fields(cls)}}
        if values.get("triples") is not None:
            values["triples"] = tuple(tuple(triple) for triple in values["triples"])
        return cls(**values)

    def replace(self, **changes) -> "DatasetConfig":
        return dataclasses.replace(self, **changes)


#: Named settings. ``paper`` is the database of Sec. 2.3; ``tiny`` is for tests (seconds);
#: ``small`` is a 512-pixel sample for benchmarks of the input pipeline; ``realistic`` is the
#: paper's design with every image under randomly drawn imaging conditions and particle sizes
#: (`hagg_tf.data.randomization`; ``preset("tiny", conditions="realistic")`` is its test size).
PRESETS = {
    "paper": DatasetConfig(),
    "tiny": DatasetConfig(triples=((0.9, 1, 6), (0.5, 3, 3), (0.1, 6, 1)),
                          samples_per_theta=8, evaluation_per_theta=3, validation_per_theta=1,
                          validation_thetas=0, min_per_theta=3, image_size=64, num_shards=2),
    "small": DatasetConfig(triples=((0.9, 1, 6), (0.7, 2, 4), (0.5, 3, 3), (0.3, 4, 2),
                                    (0.1, 6, 1), (0.5, 6, 6)),
                           samples_per_theta=24, evaluation_per_theta=8, validation_thetas=2,
                           min_per_theta=8, num_shards=4),
    "realistic": DatasetConfig(conditions="realistic"),
}


def preset(name: str, **overrides) -> DatasetConfig:
    """The named preset, with fields overridden (e.g. ``preset("tiny", seed=3)``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def _design_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _DESIGN_ENTROPY, stream]))


@dataclasses.dataclass(frozen=True)
class DatasetDesign:
    """The realised design of a `DatasetConfig` (see the module docstring).

    Attributes:
        config: the settings.
        thetas: (C, 4) float64 configurations θ = (θ_Df, θ_ρ, θ_0, θ_1), row = theta_id.
        sample_theta: (M,) int64 theta_id of every sample index 0 … M−1.
        sample_split: (M,) int8 split of every sample (position in `SPLITS`).
        shards: per split name, a list of ``num_shards`` int64 arrays of sample indices in
            record order.
    """

    config: DatasetConfig
    thetas: np.ndarray
    sample_theta: np.ndarray
    sample_split: np.ndarray
    shards: dict

    @property
    def num_samples(self) -> int:
        return int(self.sample_theta.shape[0])

    @property
    def num_thetas(self) -> int:
        return int(self.thetas.shape[0])

    def params(self, theta_id: int) -> ModelParameters:
        """θ of configuration ``theta_id`` as `ModelParameters`."""
        fractal_dimension, mixing_ratio, size0, size1 = self.thetas[int(theta_id)]
        return ModelParameters(float(fractal_dimension), float(mixing_ratio), int(size0),
                               int(size1))

    def split_indices(self, split: str) -> np.ndarray:
        """Sample indices of ``split`` in ascending order."""
        return np.flatnonzero(self.sample_split == SPLITS.index(split))

    def counts_per_theta(self, split: str) -> np.ndarray:
        """(C,) number of samples of each θ in ``split``."""
        return np.bincount(self.sample_theta[self.split_indices(split)],
                           minlength=self.num_thetas)

    def shard_name(self, split: str, shard: int) -> str:
        return shard_file_name(split, shard, self.config.num_shards)


def shard_file_name(split: str, shard: int, num_shards: int) -> str:
    """File name of a shard, e.g. ``train-00003-of-00032.tfrecord``."""
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


@functools.lru_cache(maxsize=8)
def build_design(config: DatasetConfig) -> DatasetDesign:
    """Realises the design of ``config``: θ list, split of every sample, shard contents."""
    triples = all_triples() if config.triples is None else config.triples
    values = np.array(TABLE2_FRACTAL_DIMENSIONS)
    theta_rng = _design_rng(config.seed, _THETA_STREAM)
    rows = []
    for mixing_ratio, size0, size1 in triples:
        for fractal_dimension in theta_rng.choice(values, config.fractal_dimensions_per_triple,
                                                  replace=False):
            rows.append((float(fractal_dimension), mixing_ratio, size0, size1))
    thetas = np.array(rows, dtype=np.float64)
    per_theta = config.samples_per_theta
    sample_theta = np.repeat(np.arange(len(rows), dtype=np.int64), per_theta)

    # Per θ: a random permutation of its draws; the first go to E, the next to validation.
    split_rng = _design_rng(config.seed, _SPLIT_STREAM)
    ranks = np.argsort(split_rng.random((len(rows), per_theta)), axis=1).reshape(-1)
    sample_split = np.full(sample_theta.shape, SPLITS.index("train"), dtype=np.int8)
    sample_split[ranks < config.evaluation_per_theta] = SPLITS.index("evaluation")
    sample_split[(ranks >= config.evaluation_per_theta)
                 & (ranks < config.evaluation_per_theta + config.validation_per_theta)] = \
        SPLITS.index("validation")
    validation_ids = _design_rng(config.seed, _VALIDATION_STREAM).choice(
        len(rows), config.validation_thetas, replace=False)
    sample_split[np.isin(sample_theta, validation_ids)
                 & (sample_split != SPLITS.index("evaluation"))] = SPLITS.index("validation")

    shard_rng = _design_rng(config.seed, _SHARD_STREAM)
    shards = {}
    for split in SPLITS:
        members = np.flatnonzero(sample_split == SPLITS.index(split))
        order = members[shard_rng.permutation(members.shape[0])]
        shards[split] = [order[shard::config.num_shards] for shard in range(config.num_shards)]
    design = DatasetDesign(config, thetas, sample_theta, sample_split, shards)
    for array in (thetas, sample_theta, sample_split, *itertools.chain(*shards.values())):
        array.setflags(write=False)  # cached and shared: keep it immutable
    return design


def check_split_rule(counts_per_theta: dict[str, np.ndarray], minimum: int) -> list[str]:
    """Violations of the Sec. 2.3 rule: every θ at least ``minimum`` times in T and in E.

    Args:
        counts_per_theta: per split name, (C,) counts of each θ (as in the manifest).
        minimum: the rule's minimum (20 in the paper).

    Returns:
        Human-readable violations; empty when the rule holds.
    """
    training = np.asarray(counts_per_theta["train"]) + np.asarray(counts_per_theta["validation"])
    evaluation = np.asarray(counts_per_theta["evaluation"])
    problems = []
    for name, counts in (("T (train+validation)", training), ("E (evaluation)", evaluation)):
        for theta_id in np.flatnonzero(counts < minimum):
            problems.append(f"theta_id {theta_id} occurs {counts[theta_id]} times in {name}, "
                            f"fewer than {minimum}")
    return problems


def expected_multi_image_samples(counts_per_theta: np.ndarray, num_images: int) -> int:
    """Samples of ν images per pass: every θ gives ⌊n_θ / ν⌋ full groups."""
    return int(np.sum(np.asarray(counts_per_theta) // int(num_images)))


def cyclic_subsets(num_available: int, num_images: int) -> np.ndarray:
    """Indices of the n cyclic ν-subsets {(k + j) mod n : j < ν}, k = 0..n−1, of n images.

    Every image is used ν times and sits in every slot of a stack exactly once; the estimators
    of θ_0 and θ_1 (:mod:`hagg_tf.estimation.estimators`) average the ν-image heads over these
    subsets, and the ν-image heads are selected on the same mean
    (:mod:`hagg_tf.training.group_heads`).

    Args:
        num_available: n, the number of images of the sample.
        num_images: ν, the images per stack of CNN^0 / CNN^1.

    Returns:
        int array (n, ν): the n cyclic windows (for n = ν the ν rotations of one stack).

    Raises:
        ValueError: n < ν.
    """
    if num_available < num_images:
        raise ValueError(f"{num_available} images, but the multi-image networks need at least "
                         f"nu = {num_images}")
    starts = np.arange(num_available)[:, np.newaxis]
    return (starts + np.arange(num_images)[np.newaxis, :]) % num_available


def disjoint_groups(theta_id: np.ndarray, nu: int, seed: int = 0,
                    max_groups_per_theta: Optional[int] = None) -> np.ndarray:
    """Groups of ``nu`` images of one configuration each, no image used twice.

    The images of every configuration are shuffled (seeded) and cut into ``⌊n/ν⌋`` groups; the
    rest are left out (with the paper's 20 evaluation images per θ: one group for ν = 12 or 16,
    two for ν = 8, five for ν = 4).

    Args:
        theta_id: (N,) configuration id of every image.
        nu: group size ν ≥ 1.
        seed: shuffling seed.
        max_groups_per_theta: at most this many groups per configuration.

    Returns:
        (G, ν) int64 rows into ``theta_id``, configurations in ascending id order.
    """
    if nu < 1:
        raise ValueError(f"nu must be >= 1, got {nu}")
    theta_id = np.asarray(theta_id)
    rng = np.random.default_rng(seed)
    groups = []
    for configuration in np.unique(theta_id):
        rows = rng.permutation(np.flatnonzero(theta_id == configuration))
        count = len(rows) // nu
        if max_groups_per_theta is not None:
            count = min(count, max_groups_per_theta)
        groups.extend(rows[k * nu:(k + 1) * nu] for k in range(count))
    return np.asarray(groups, dtype=np.int64).reshape(-1, nu)

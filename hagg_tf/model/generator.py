"""Drawing hetero-aggregates from the stochastic 3D model (paper Sec. 2.1.1–2.1.2).

The model grows primary clusters particle by particle (particle–cluster aggregation) and joins
them into a hetero-aggregate (cluster–cluster aggregation). Both steps are the same geometric
operation: attach a rigid piece B (one particle, or a primary cluster) to the growing body A so
that

* B's centre of mass lies on the sphere of radius d around A's centre of mass (masses ∝ r³,
  as everywhere in the package), with d from Eq. 8, where — and only there — the radii are
  replaced by their mean (Sec. 2.1.2): R_A and R_C are equal-mass radii of gyration and a is
  one mean radius for the whole build, that of all particles of the cluster or aggregate
  being built (drawn before placement, as FracVAL, the paper's ref. [8], does);
* some particle i of A and some particle j of B touch (distance (1 + 1e-6)(r_i + r_j)), and
* no particle of B overlaps a particle of A.

Instead of rejection sampling on the whole Eq.-8 sphere, candidates are placed analytically: for
a contact pair (i, j) the centre C of B must lie on the sphere inside the spherical zone where
``| |C − x_i| − s_ij | ≤ ρ_j`` (s_ij the contact distance, ρ_j the distance of j from B's
centre). C is drawn uniformly on that zone, particle j uniformly on the circle where it touches
i at distance ρ_j from C, and B is rotated (uniformly, given that constraint) into place. Only
the overlap test remains as rejection, done for a batch of candidates at once.

Eq. 8 can ask for a distance no touching position reaches (for the second particle at
θ_Df = 2.5 it asks for about 2.38 mean radii, contact allows at most about 2). The procedure is
then approximate, as the paper says: the reachable distance nearest to d is used, and when
every candidate there overlaps, distances a few tenths of a radius further out or in. Past that
a primary cluster is redrawn; a primary cluster that cannot be attached to the aggregate is
redrawn a few times and then the whole aggregate restarts (the paper's "∞" value). Restarts are
counted on the result.

Why these choices (measured over random Table-2 θ, 150 aggregates per θ_Df):

* one mean radius per build: with the mean of the placed particles plus the newcomer, a large
  newcomer raises a and — Eq. 8 being a small difference of large terms at high D_f — is pushed
  outwards; size then correlates with distance from the centre (r = 0.43 at θ_Df = 2.5) and the
  mass-weighted D_f(A) falls short of θ_Df (2.38 at θ_Df = 2.5);
* the sphere around the mass-weighted centre (not the unweighted centroid): with the centroid,
  mean D_f(A) was 2.27 at θ_Df = 2.3 and 2.43 at 2.5; around the centre of mass it is within
  ±0.03 of θ_Df over the whole of Table 2 (see the Fig. 4 test and README), at the price of
  more restarts at θ_Df = 2.5.
"""

from __future__ import annotations

import math

import numpy as np

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters, TIO2, WO3, require_seed

# Placed contacts sit this fraction beyond exact touching so that float round-off can never
# turn a contact into an overlap; 1e-6 is far inside the 1 % contact tolerance of Eq. 2.
_CONTACT_CLEARANCE = 1.0 + 1e-6
# Redraws of a primary cluster that failed to attach before the whole aggregate restarts.
_CLUSTER_REDRAWS = 4
# Distance offsets, in tenths of the mean radius, tried in turn when a shell is crowded.
_DISTANCE_OFFSETS = (0, 1, -1, 2, -2, 4)


class GenerationError(RuntimeError):
    """Raised when an aggregate cannot be drawn within ``GeneratorConfig.max_restarts``."""


def rng_for(seed: int, index: int) -> np.random.Generator:
    """The random stream of draw ``index`` under base ``seed``.

    It depends on (seed, index) alone, so a draw is the same however work is split into shards
    or processes; it equals ``np.random.SeedSequence(seed).spawn(index + 1)[index]``.

    Raises:
        ParameterError: ``seed`` or ``index`` is not an integer in [0, ``MAX_SEED``].
    """
    seed, index = require_seed(seed, "seed"), require_seed(index, "index")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def eq8_distance(size_a: int, size_b: int, mean_radius: float, gyration_a: float,
                 gyration_b: float, fractal_dimension: float, fractal_prefactor: float) -> float:
    """Distance d of Eq. 8 between the centres of mass of A and B, nm.

    Args:
        size_a, size_b: particle counts N_A and N_C.
        mean_radius: a, the mean radius of A ∪ B, nm.
        gyration_a, gyration_b: radii of gyration R_A and R_C with equal masses, nm.
        fractal_dimension: the target D_f.
        fractal_prefactor: k_f.

    Returns:
        d ≥ 0; where Eq. 8 gives a negative square, 0 (the nearest real value).
    """
    total = size_a + size_b
    squared = (mean_radius ** 2 * total ** 2 / (size_a * size_b)
               * (total / fractal_prefactor) ** (2.0 / fractal_dimension)
               - total / size_b * gyration_a ** 2 - total / size_a * gyration_b ** 2)
    return math.sqrt(squared) if squared > 0 else 0.0


def _random_rotations(count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3, 3) rotation matrices, uniform (Haar) on SO(3), from Gaussian quaternions."""
    quaternions = rng.standard_normal((count, 4))
    quaternions /= np.sqrt((quaternions ** 2).sum(axis=1, keepdims=True))
    w, x, y, z = quaternions.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=1)


def _cross(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise cross product of two (K, 3) arrays (np.cross costs ~15 µs of axis juggling)."""
    a0, a1, a2 = first[:, 0], first[:, 1], first[:, 2]
    b0, b1, b2 = second[:, 0], second[:, 1], second[:, 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=1)


def _orthonormal_frames(axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (K, 3) unit vectors completing each unit vector of ``axes`` (K, 3) to a basis."""
    helpers = np.zeros_like(axes)
    use_x = np.abs(axes[:, 0]) < 0.9
    helpers[use_x, 0] = 1.0
    helpers[~use_x, 1] = 1.0
    first = _unit(_cross(axes, helpers))
    return first, _cross(axes, first)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """(K, 3) rows scaled to unit length."""
    return vectors / np.sqrt((vectors ** 2).sum(axis=1, keepdims=True))


def _alignment_rotations(sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(K, 3, 3) rotations taking unit rows of ``sources`` onto unit rows of ``targets``.

    Rodrigues' formula; antiparallel pairs get a half turn about a perpendicular axis.
    """
    axes = _cross(sources, targets)
    sines = np.sqrt((axes ** 2).sum(axis=1))
    cosines = (sources * targets).sum(axis=1)
    degenerate = sines < 1e-12
    safe_axes = np.where(degenerate[:, None], _orthonormal_frames(sources)[0],
                         axes / np.where(degenerate, 1.0, sines)[:, None])
    sines = np.where(degenerate, 0.0, sines)
    cosines = np.where(degenerate, np.sign(cosines), cosines)
    cross = np.zeros((axes.shape[0], 3, 3))
    cross[:, 0, 1], cross[:, 0, 2] = -safe_axes[:, 2], safe_axes[:, 1]
    cross[:, 1, 0], cross[:, 1, 2] = safe_axes[:, 2], -safe_axes[:, 0]
    cross[:, 2, 0], cross[:, 2, 1] = -safe_axes[:, 1], safe_axes[:, 0]
    return (np.eye(3)[None] + sines[:, None, None] * cross
            + (1.0 - cosines)[:, None, None] * cross @ cross)


def _attach_particle_at(body_positions: np.ndarray, body_radii: np.ndarray,
                        body_center: np.ndarray, radius: float, distance: float, attempts: int,
                        rng: np.random.Generator) -> np.ndarray | None:
    """``_attach_at`` for a single particle, candidate by candidate in scalar arithmetic.

    Most particles fit at the first or second candidate, and for one particle the zone of
    ``_attach_at`` is a circle; scalar math with one vectorised overlap test per candidate is
    several times cheaper there than building a batch of candidates (measured: about 60 µs
    against 200 µs per placement).

    Returns:
        (1, 3) placed centre, or None when every candidate overlapped.
    """
    offsets = body_positions - body_center
    body_distances = np.sqrt((offsets * offsets).sum(axis=1))
    contact = (body_radii + radius) * _CONTACT_CLEARANCE
    # The sphere |x − c| = d meets the contact sphere of particle i for |D_i − s_i| ≤ d ≤ D_i + s_i.
    nearest = np.clip(distance, np.abs(body_distances - contact), body_distances + contact)
    deviation = np.abs(nearest - distance)
    candidates = np.flatnonzero(deviation <= deviation.min() + 1e-9)
    overlap_limit = (body_radii + radius) ** 2
    center_x, center_y, center_z = (float(value) for value in body_center)
    for choice in rng.integers(candidates.shape[0], size=attempts):
        anchor = int(candidates[choice])
        anchor_distance, center_distance = float(body_distances[anchor]), float(nearest[anchor])
        angle = 2.0 * math.pi * rng.random()
        if anchor_distance < 1e-9 or center_distance < 1e-9:
            axis = rng.standard_normal(3)
            axis_x, axis_y, axis_z = axis / math.sqrt(axis @ axis)
            cosine = 1.0
        else:
            axis_x, axis_y, axis_z = (float(value) / anchor_distance for value in offsets[anchor])
            touch = float(contact[anchor])
            cosine = ((center_distance ** 2 + anchor_distance ** 2 - touch ** 2)
                      / (2.0 * center_distance * anchor_distance))
            cosine = min(1.0, max(-1.0, cosine))
        sine = math.sqrt(1.0 - cosine * cosine)
        # An orthonormal frame (first, second) perpendicular to the axis.
        if abs(axis_x) < 0.9:
            first_x, first_y, first_z = 0.0, axis_z, -axis_y
        else:
            first_x, first_y, first_z = -axis_z, 0.0, axis_x
        norm = math.sqrt(first_x ** 2 + first_y ** 2 + first_z ** 2)
        first_x, first_y, first_z = first_x / norm, first_y / norm, first_z / norm
        second_x = axis_y * first_z - axis_z * first_y
        second_y = axis_z * first_x - axis_x * first_z
        second_z = axis_x * first_y - axis_y * first_x
        radial, tangential = sine * math.cos(angle), sine * math.sin(angle)
        candidate = np.array([
            center_x + center_distance * (cosine * axis_x + radial * first_x + tangential * second_x),
            center_y + center_distance * (cosine * axis_y + radial * first_y + tangential * second_y),
            center_z + center_distance * (cosine * axis_z + radial * first_z + tangential * second_z)])
        gaps = body_positions - candidate
        if not ((gaps * gaps).sum(axis=1) < overlap_limit).any():
            return candidate[None, :]
    return None


def _attach_at(body_positions: np.ndarray, body_radii: np.ndarray, body_center: np.ndarray,
               piece_offsets: np.ndarray, piece_radii: np.ndarray, distance: float,
               attempts: int, rng: np.random.Generator) -> np.ndarray | None:
    """Places a rigid piece of two or more particles touching the body without overlap.

    Its centre of mass goes to ``distance`` from the body's.

    All ``attempts`` candidates are drawn and tested at once (vectorised); the first that
    overlaps nothing is taken, which is distributed as sequential rejection would be.

    Args:
        body_positions: (N_A, 3) centres of the body's particles, nm.
        body_radii: (N_A,) their radii, nm.
        body_center: (3,) the body's centre of mass, nm.
        piece_offsets: (N_B, 3) the piece's particle centres relative to its centre of mass, nm.
        piece_radii: (N_B,) their radii, nm.
        distance: the wanted distance d between the two centres (Eq. 8), nm.
        attempts: candidate placements drawn.
        rng: random stream.

    Returns:
        (N_B, 3) placed centres, or None when every candidate overlapped.
    """
    body_distances = np.sqrt(((body_positions - body_center) ** 2).sum(axis=1))  # (N_A,)
    piece_distances = np.sqrt((piece_offsets ** 2).sum(axis=1))  # (N_B,)
    contact = (body_radii[:, None] + piece_radii[None, :]) * _CONTACT_CLEARANCE  # (N_A, N_B)
    reach_low = np.abs(contact - piece_distances[None, :])
    reach_high = contact + piece_distances[None, :]
    # Centre distances for which the pair (i, j) can touch: the sphere |C − c_A| = d must meet
    # the shell reach_low ≤ |C − x_i| ≤ reach_high.
    admissible_low = np.maximum(np.maximum(body_distances[:, None] - reach_high,
                                           reach_low - body_distances[:, None]), 0.0)
    admissible_high = body_distances[:, None] + reach_high
    nearest = np.clip(distance, admissible_low, admissible_high)
    deviation = np.abs(nearest - distance)
    candidate_pairs = np.flatnonzero(deviation <= deviation.min() + 1e-9)
    piece_count = piece_radii.shape[0]

    pairs = candidate_pairs[rng.integers(candidate_pairs.shape[0], size=attempts)]  # (K,)
    body_index, piece_index = np.divmod(pairs, piece_count)
    center_distance = nearest.flat[pairs]  # (K,)
    anchors = body_positions[body_index]  # (K, 3)
    anchor_distance = body_distances[body_index]
    low, high = reach_low.flat[pairs], reach_high.flat[pairs]

    # 1. The piece's centre, uniform on the zone of the sphere |C − c_A| = center_distance where
    #    |C − x_i| ∈ [low, high]; a zone's area is linear in cos φ (Archimedes). Where the
    #    anchor sits at the centre (or d = 0) every direction qualifies.
    isotropic = (anchor_distance < 1e-9) | (center_distance < 1e-9)
    axes = np.where(isotropic[:, None], _unit(rng.standard_normal((attempts, 3))),
                    (anchors - body_center) / np.where(isotropic, 1.0, anchor_distance)[:, None])
    denominator = np.where(isotropic, 1.0, 2.0 * center_distance * anchor_distance)
    base = center_distance ** 2 + anchor_distance ** 2
    cos_high = np.minimum(1.0, (base - low ** 2) / denominator)
    cos_low = np.maximum(-1.0, (base - high ** 2) / denominator)
    cos_low = np.minimum(cos_low, cos_high)  # equal at a degenerate zone, up to round-off
    cosines = np.where(isotropic, 1.0, cos_low + (cos_high - cos_low) * rng.random(attempts))
    sines = np.sqrt(np.maximum(0.0, 1.0 - cosines ** 2))
    first, second = _orthonormal_frames(axes)
    angles = rng.uniform(0.0, 2.0 * np.pi, attempts)
    directions = cosines[:, None] * axes + sines[:, None] * (
        np.cos(angles)[:, None] * first + np.sin(angles)[:, None] * second)
    piece_centers = body_center + center_distance[:, None] * directions  # (K, 3)

    # 2. Particle j on the circle where it touches particle i at its distance from the centre.
    lever = piece_distances[piece_index]  # (K,)
    touch = contact.flat[pairs]
    to_anchor = anchors - piece_centers
    separation = np.maximum(np.sqrt((to_anchor ** 2).sum(axis=1)), 1e-12)
    to_anchor /= separation[:, None]
    along = np.clip((separation ** 2 + lever ** 2 - touch ** 2) / (2.0 * separation),
                    -lever, lever)
    circle_radius = np.sqrt(np.maximum(0.0, lever ** 2 - along ** 2))
    first, second = _orthonormal_frames(to_anchor)
    angles = rng.uniform(0.0, 2.0 * np.pi, attempts)
    touching = (piece_centers + along[:, None] * to_anchor + circle_radius[:, None]
                * (np.cos(angles)[:, None] * first + np.sin(angles)[:, None] * second))

    # 3. Rotate the piece uniformly, given that particle j points at its touching position.
    rotated = np.einsum("kab,nb->kna", _random_rotations(attempts, rng), piece_offsets)
    has_lever = lever > 1e-9
    safe_lever = np.where(has_lever, lever, 1.0)[:, None]
    sources = rotated[np.arange(attempts), piece_index] / safe_lever
    targets = _unit(np.where(has_lever[:, None], touching - piece_centers, sources))
    alignment = _alignment_rotations(np.where(has_lever[:, None], sources, targets), targets)
    placed = np.einsum("kab,knb->kna", alignment, rotated) + piece_centers[:, None, :]

    return _first_clear(placed, body_positions, body_radii, piece_radii)


def _first_clear(candidates: np.ndarray, body_positions: np.ndarray, body_radii: np.ndarray,
                 piece_radii: np.ndarray) -> np.ndarray | None:
    """The first of (K, N_B, 3) candidate placements overlapping no body particle, or None."""
    gaps = ((candidates[:, None, :, :] - body_positions[None, :, None, :]) ** 2).sum(axis=-1)
    overlap_limit = (body_radii[:, None] + piece_radii[None, :]) ** 2
    clear = ~(gaps < overlap_limit[None]).any(axis=(1, 2))  # (K,)
    if not clear.any():
        return None
    return candidates[int(clear.argmax())]


def _attach(body_positions: np.ndarray, body_radii: np.ndarray, body_center: np.ndarray,
            piece_offsets: np.ndarray, piece_radii: np.ndarray, distance: float,
            attempts: int, rng: np.random.Generator) -> np.ndarray | None:
    """Attaches a piece at the admissible centre distance nearest to ``distance``.

    Admissible means touching without overlap. The requested distance is tried first; when
    every candidate there overlaps, distances a little further from it are tried, alternately
    outside and inside, so that a crowded shell moves the piece by as little as geometry needs.
    Past that small window the caller redraws or restarts (the paper's "∞"), which keeps the
    empirical D_f(A) centred on θ_Df (moving pieces far out instead would make loose outliers).
    Arguments as for ``_attach_at``; ``attempts`` is spent per distance.
    """
    step = 0.1 * float(np.concatenate([body_radii, piece_radii]).mean())
    single_particle = piece_radii.shape[0] == 1
    for offset in _DISTANCE_OFFSETS:
        trial_distance = distance + offset * step
        if trial_distance < 0:
            continue
        if single_particle:
            placed = _attach_particle_at(body_positions, body_radii, body_center,
                                         float(piece_radii[0]), trial_distance, attempts, rng)
        else:
            placed = _attach_at(body_positions, body_radii, body_center, piece_offsets,
                                piece_radii, trial_distance, attempts, rng)
        if placed is not None:
            return placed
    return None


def _mass_center(positions: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(3,) centre of mass of (N, 3) positions with masses ∝ r³ (Eq. 4), nm."""
    masses = radii ** 3
    return masses @ positions / masses.sum()


def _equal_mass_gyration(positions: np.ndarray) -> float:
    """Radius of gyration of (N, 3) positions with all masses equal, as in Eq. 8, nm."""
    return math.sqrt(max(0.0, ((positions - positions.mean(axis=0)) ** 2).sum(axis=1).mean()))


def draw_radii(count: int, config: GeneratorConfig, rng: np.random.Generator) -> np.ndarray:
    """(count,) independent log-normal radii with the configured mean and s.d., nm."""
    mu, sigma = config.lognormal_mu_sigma
    return rng.lognormal(mu, sigma, size=count)


def sample_primary_cluster(size: int, fractal_dimension: float, config: GeneratorConfig,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Draws a homogeneous primary cluster by particle–cluster aggregation (N_C = 1, R_C = 0).

    Args:
        size: number of particles.
        fractal_dimension: θ_Df used in Eq. 8.
        config: generator settings.
        rng: random stream.

    Returns:
        positions (size, 3) nm relative to the cluster's centroid, radii (size,) nm, and the
        number of times the cluster had to be restarted.
    """
    restarts = 0
    while True:
        radii = draw_radii(size, config, rng)
        # One mean radius for the whole build (as FracVAL, the paper's ref. [8]): were it the
        # mean of the particles placed so far plus the new one, a large newcomer would raise it
        # and, Eq. 8 being a small difference of large terms at high D_f, be pushed outwards,
        # correlating size with distance from the centre and biasing the mass-weighted D_f(A).
        mean_radius = radii.mean()
        positions = np.zeros((size, 3))
        failed = False
        for count in range(1, size):
            distance = eq8_distance(count, 1, mean_radius, _equal_mass_gyration(positions[:count]),
                                    0.0, fractal_dimension, config.fractal_prefactor)
            placed = _attach(positions[:count], radii[:count],
                             _mass_center(positions[:count], radii[:count]), np.zeros((1, 3)),
                             radii[count:count + 1], distance, config.placement_attempts, rng)
            if placed is None:
                failed = True
                break
            positions[count] = placed[0]
        if not failed:
            return positions - _mass_center(positions, radii), radii, restarts
        restarts += 1
        if restarts > config.max_restarts:
            raise GenerationError(
                f"could not grow a primary cluster of {size} particles at D_f={fractal_dimension} "
                f"within {config.max_restarts} restarts")


def sample_aggregate(params: ModelParameters, seed: int, index: int = 0,
                     config: GeneratorConfig | None = None) -> Aggregate:
    """Draws one hetero-aggregate from the stochastic 3D model.

    Args:
        params: θ = (θ_Df, θ_ρ, θ_0, θ_1).
        seed: base seed; with ``index`` it fixes the draw completely.
        index: index of the draw under ``seed``.
        config: generator settings (radius distribution, k_f, size range, retry bounds).

    Returns:
        The aggregate, centre of mass (masses ∝ r³) at the origin, with its target size and the
        number of restarts (of primary clusters and of the whole aggregate) it needed.

    Raises:
        ParameterError: ``seed`` or ``index`` is not an integer in [0, ``MAX_SEED``] (a float
            seed would otherwise be truncated, one ≥ 2**63 could not be saved), or a bad θ.
        GenerationError: past ``config.max_restarts`` restarts of the aggregate.
    """
    seed, index = require_seed(seed, "seed"), require_seed(index, "index")
    if not isinstance(params, ModelParameters):
        params = ModelParameters.from_sequence(params)
    config = config or GeneratorConfig()
    rng = rng_for(seed, index)
    target_size = int(rng.integers(config.min_size, config.max_size + 1))
    tio2_probability = params.tio2_cluster_probability
    cluster_sizes = {WO3: params.wo3_cluster_size, TIO2: params.tio2_cluster_size}
    fractal_dimension = params.fractal_dimension

    restarts = 0
    while True:
        # All primary clusters are drawn before any is placed, so that Eq. 8 uses one mean
        # radius a, that of the final aggregate (see sample_primary_cluster for why).
        cluster_labels = []
        total = 0
        while total < target_size:
            label = TIO2 if rng.random() < tio2_probability else WO3
            cluster_labels.append(label)
            total += cluster_sizes[label]
        clusters = []
        for label in cluster_labels:
            offsets, cluster_radii, cluster_restarts = sample_primary_cluster(
                cluster_sizes[label], fractal_dimension, config, rng)
            restarts += cluster_restarts
            clusters.append((offsets, cluster_radii))
        radius_sum = sum(cluster_radii.sum() for _, cluster_radii in clusters)

        positions = np.empty((total, 3))
        radii = np.empty(total)
        labels = np.empty(total, dtype=np.int8)
        cluster_ids = np.empty(total, dtype=np.int32)
        count = 0
        failed = False
        for cluster_index, label in enumerate(cluster_labels):
            size = cluster_sizes[label]
            offsets, cluster_radii = clusters[cluster_index]
            for redraw in range(_CLUSTER_REDRAWS + 1):
                if redraw:
                    # A cluster that cannot be attached is redrawn with new radii.
                    restarts += 1
                    radius_sum -= cluster_radii.sum()
                    offsets, cluster_radii, cluster_restarts = sample_primary_cluster(
                        size, fractal_dimension, config, rng)
                    restarts += cluster_restarts
                    radius_sum += cluster_radii.sum()
                if count == 0:
                    placed = offsets
                    break
                distance = eq8_distance(count, size, radius_sum / total,
                                        _equal_mass_gyration(positions[:count]),
                                        _equal_mass_gyration(offsets), fractal_dimension,
                                        config.fractal_prefactor)
                placed = _attach(positions[:count], radii[:count],
                                 _mass_center(positions[:count], radii[:count]), offsets,
                                 cluster_radii, distance, config.placement_attempts, rng)
                if placed is not None:
                    break
            if placed is None:
                failed = True
                break
            positions[count:count + size] = placed
            radii[count:count + size] = cluster_radii
            labels[count:count + size] = label
            cluster_ids[count:count + size] = cluster_index
            count += size
        if not failed:
            break
        restarts += 1
        if restarts > config.max_restarts:
            raise GenerationError(f"could not draw an aggregate for {params} within "
                                  f"{config.max_restarts} restarts")

    positions, radii = positions[:count], radii[:count]
    masses = radii ** 3
    positions = positions - masses @ positions / masses.sum()
    return Aggregate(positions=positions, radii=radii.copy(), labels=labels[:count].copy(),
                     cluster_ids=cluster_ids[:count].copy(), params=params, seed=seed,
                     index=index, target_size=target_size, restarts=restarts)

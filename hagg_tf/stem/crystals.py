"""Crystal structures and viewing directions for the HAADF reference simulations (paper Sec. 2.1.3).

The paper took its crystal parameters from refs. [5, 14, 24, 38]; the same sources are used
here. Each `CrystalPhase` records what was taken from where (``source``) and what is an
approximation (``notes``), and the values end up in the provenance of the shipped tables.

* Rutile TiO2: K. Sugiyama, Y. Takéuchi, Z. Kristallogr. 194 (1991) 305 (paper ref. [38]),
  25 °C refinement: P4_2/mnm, a = 4.5937 Å, c = 2.9587 Å, O at (x, x, 0), x = 0.30478.
* Anatase TiO2: M. Horn, C. F. Schwerdtfeger, Z. Kristallogr. 136 (1972) 273 (ref. [14]),
  room temperature: I4_1/amd (origin choice 1), a = 3.7842 Å, c = 9.5146 Å, O at (0, 0, z),
  z = 0.2081.
* γ-WO3 (monoclinic, the room-temperature phase): B. O. Loopstra, H. M. Rietveld,
  Acta Cryst. B 25 (1969) 1420 (ref. [24]): P2_1/n, a = 7.306 Å, b = 7.540 Å, c = 7.692 Å,
  β = 90.88°, 2 W + 6 O in the asymmetric unit.
* δ-WO3 (triclinic): R. Diehl, G. Brandt, E. Salje, Acta Cryst. B 34 (1978) 1105 (ref. [5]):
  P-1, a = 7.309 Å, b = 7.522 Å, c = 7.678 Å, α = 88.81°, β = 90.92°, γ = 90.93°.
  Approximation: the δ-phase's 32 atomic sites are taken as the γ-phase sites (expanded to
  P1) in the δ cell. Both phases are the same corner-sharing WO6 network and differ in the
  small octahedral tilt pattern; the atom count per volume (what the HAADF signal mostly
  depends on) follows the δ cell exactly, only the tilt pattern is approximated.

All lattice constants and coordinates were written down from memory of the published values;
neither the papers nor their CIFs were available here to check them against, so treat them as
close to, not identical with, the refinements. For γ-WO3 the transcribed site
O2 = (−0.0011, 0.0381, 0.7232) collided with the inversion image of O1 (0.71 Å apart), so
O2 was moved to the free a-bridging site (−0.0011, 0.4619, 0.2232); the resulting structure
is chemically consistent (every W six-coordinated, W–O 1.64–2.23 Å, O–O ≥ 2.35 Å, X-ray
density 7.27 g/cm³). The HAADF signal of WO3 comes mostly from W (Z = 74 against 8, with
the signal growing roughly as Z^1.7), so residual O errors of ~0.1 Å matter little. Users
with the original CIFs pass them to ``tools/make_haadf_tables.py --structure_files``.

Thermal vibration (frozen phonons) uses isotropic mean-square displacements U_iso (Å², per
Cartesian direction) chosen by hand at typical room-temperature magnitudes for these oxides
(Ti 0.005–0.0055, W 0.004, O 0.006–0.008); they are not the refined per-site values of the
cited studies (see `CrystalPhase.u_iso`).

The amorphous carbon support film (`AMORPHOUS_CARBON`, `amorphous_slab`) is no crystal: a
seeded random hard-sphere structure at the density of evaporated carbon films (sources at
`CARBON_FILM_DENSITY_G_CM3`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hagg_tf.model.parameters import TIO2, WO3

# Unique fractional sites of γ-WO3 in P2_1/n (Loopstra & Rietveld 1969, ref. [24]).
_GAMMA_WO3_SITES = (
    ("W", (0.2466, 0.0259, 0.2844)),
    ("W", (0.2528, 0.0347, 0.7810)),
    ("O", (0.0003, 0.0337, 0.2162)),
    ("O", (-0.0011, 0.4619, 0.2232)),  # corrected, see module docstring
    ("O", (0.2839, 0.2599, 0.2848)),
    ("O", (0.2112, 0.2586, 0.7318)),
    ("O", (0.2850, 0.0410, 0.0045)),
    ("O", (0.2829, 0.0053, 0.4939)),
)


@dataclasses.dataclass(frozen=True)
class CrystalPhase:
    """One crystal phase of one material.

    Attributes:
        material: "WO3" or "TiO2".
        label: the material label of SPEC §3 (0 = WO3, 1 = TiO2).
        phase: phase name ("rutile", "anatase", "gamma", "delta").
        cellpar: (a, b, c, α, β, γ) in Å and degrees.
        spacegroup: international number used to expand ``sites`` (with ``setting``).
        setting: ASE spacegroup setting (2 = P2_1/n for No. 14; 1 = origin choice 1 for 141).
        sites: unique sites as (element, fractional xyz).
        u_iso: isotropic mean-square displacement per element, Å² (σ² per direction).
        source: literature reference of the structure.
        notes: approximations made.
    """

    material: str
    label: int
    phase: str
    cellpar: tuple[float, float, float, float, float, float]
    spacegroup: int
    setting: int
    sites: tuple[tuple[str, tuple[float, float, float]], ...]
    u_iso: dict
    source: str
    notes: str = ""

    @property
    def key(self) -> str:
        return f"{self.material}/{self.phase}"

    def unit_cell(self):
        """The conventional unit cell as an `ase.Atoms` (needs the optional ASE dependency)."""
        from ase.spacegroup import crystal  # optional 'physics' extra
        symbols = [element for element, _ in self.sites]
        basis = [position for _, position in self.sites]
        return crystal(symbols, basis, spacegroup=self.spacegroup, setting=self.setting,
                       cellpar=list(self.cellpar), onduplicates="keep")

    def sigmas(self) -> dict:
        """Frozen-phonon displacement s.d. per element and direction, Å."""
        return {element: math.sqrt(u) for element, u in self.u_iso.items()}

    def as_dict(self) -> dict:
        return {"material": self.material, "phase": self.phase, "cellpar": list(self.cellpar),
                "spacegroup": self.spacegroup, "setting": self.setting,
                "sites": [[element, list(position)] for element, position in self.sites],
                "u_iso_A2": dict(self.u_iso), "source": self.source, "notes": self.notes}


RUTILE = CrystalPhase(
    material="TiO2", label=TIO2, phase="rutile",
    cellpar=(4.5937, 4.5937, 2.9587, 90.0, 90.0, 90.0), spacegroup=136, setting=1,
    sites=(("Ti", (0.0, 0.0, 0.0)), ("O", (0.30478, 0.30478, 0.0))),
    u_iso={"Ti": 0.0055, "O": 0.0062},
    source="K. Sugiyama, Y. Takeuchi, Z. Kristallogr. 194 (1991) 305-313 (paper ref. [38]), 25 C")
ANATASE = CrystalPhase(
    material="TiO2", label=TIO2, phase="anatase",
    cellpar=(3.7842, 3.7842, 9.5146, 90.0, 90.0, 90.0), spacegroup=141, setting=1,
    sites=(("Ti", (0.0, 0.0, 0.0)), ("O", (0.0, 0.0, 0.2081))),
    u_iso={"Ti": 0.0050, "O": 0.0075},
    source="M. Horn, C. F. Schwerdtfeger, Z. Kristallogr. 136 (1972) 273-281 (paper ref. [14])")
GAMMA_WO3 = CrystalPhase(
    material="WO3", label=WO3, phase="gamma",
    cellpar=(7.306, 7.540, 7.692, 90.0, 90.88, 90.0), spacegroup=14, setting=2,
    sites=_GAMMA_WO3_SITES,
    u_iso={"W": 0.0040, "O": 0.0080},
    source="B. O. Loopstra, H. M. Rietveld, Acta Cryst. B 25 (1969) 1420-1421 (paper ref. [24])",
    notes=("site O2 moved from (-0.0011, 0.0381, 0.7232), which collided with the inversion "
           "image of O1, to the free a-bridging site (-0.0011, 0.4619, 0.2232)"))
DELTA_WO3 = CrystalPhase(
    material="WO3", label=WO3, phase="delta",
    cellpar=(7.309, 7.522, 7.678, 88.81, 90.92, 90.93), spacegroup=1, setting=1,
    sites=(),  # filled below from the γ sites expanded to P1
    u_iso={"W": 0.0040, "O": 0.0080},
    source="R. Diehl, G. Brandt, E. Salje, Acta Cryst. B 34 (1978) 1105-1111 (paper ref. [5]), cell",
    notes=("atomic sites approximated by the gamma-WO3 sites of ref. [24] expanded to P1 "
           "(same WO6 network; the phases differ by small octahedral tilts)"))


def _expanded_sites(phase: CrystalPhase) -> tuple:
    cell = phase.unit_cell()
    return tuple((symbol, tuple(float(v) for v in np.round(position, 6)))
                 for symbol, position in zip(cell.get_chemical_symbols(),
                                             cell.get_scaled_positions(wrap=True)))


def _gamma_sites_p1() -> tuple:
    # Expand P2_1/n by hand so that building the δ phase does not need ASE at import time.
    operations = ((1, 1, 1, 0.0, 0.0, 0.0), (-1, -1, -1, 0.0, 0.0, 0.0),
                  (-1, 1, -1, 0.5, 0.5, 0.5), (1, -1, 1, 0.5, 0.5, 0.5))
    sites = []
    for element, (x, y, z) in _GAMMA_WO3_SITES:
        for sx, sy, sz, tx, ty, tz in operations:
            position = np.mod([sx * x + tx, sy * y + ty, sz * z + tz], 1.0)
            sites.append((element, tuple(float(v) for v in np.round(position, 6))))
    return tuple(sites)


DELTA_WO3 = dataclasses.replace(DELTA_WO3, sites=_gamma_sites_p1())

PHASES = {phase.key: phase for phase in (RUTILE, ANATASE, GAMMA_WO3, DELTA_WO3)}


def systematic_tilt_angles(count: int = 9) -> np.ndarray:
    """Angles (degrees) of the systematic tilt series from [100] (0°) to [010] (90°).

    The paper tilts "in nine equal steps from a [100]- towards a [010]-viewing direction" and
    adds one random tilt for ten orientations in all; nine orientations from [100] to [010]
    inclusive (eight equal 11.25° steps) give the nine systematic ones.
    """
    return np.linspace(0.0, 90.0, count)


def viewing_direction(cell: np.ndarray, angle_deg: float) -> np.ndarray:
    """Unit viewing (beam) direction between the lattice directions [100] and [010].

    Args:
        cell: (3, 3) lattice vectors as rows, Å.
        angle_deg: 0 gives [100], 90 gives [010]; in between the direction turns within the
            plane of a and b (for the non-orthogonal WO3 cells [010] lies within 1.1° of ⊥a).

    Returns:
        (3,) Cartesian unit vector.
    """
    a_hat = cell[0] / np.linalg.norm(cell[0])
    b_hat = cell[1] / np.linalg.norm(cell[1])
    total = math.acos(np.clip(a_hat @ b_hat, -1.0, 1.0))
    fraction = angle_deg / 90.0
    # Spherical interpolation so that equal angle steps are equal rotations.
    direction = (math.sin((1 - fraction) * total) * a_hat + math.sin(fraction * total) * b_hat)
    direction /= math.sin(total)
    return direction / np.linalg.norm(direction)


def random_direction(seed: int) -> np.ndarray:
    """A uniformly random unit viewing direction (the paper's 'random tilt'), reproducible."""
    rng = np.random.default_rng(seed)
    vector = rng.normal(size=3)
    return vector / np.linalg.norm(vector)


def _mass_density_ratio(numbers, positions, extent, reference_density):
    """Mass in the box [0, extent) over the ideal crystal's mass in that volume."""
    from ase.data import atomic_masses
    inside = np.all((positions >= 0.0) & (positions < extent), axis=1)
    return atomic_masses[numbers[inside]].sum() / (reference_density * np.prod(extent))


def oriented_slab(phase: CrystalPhase, direction: np.ndarray, lateral_nm: float,
                  thickness_nm: float, *, unit_cell=None, match_density: bool = True,
                  search_range: tuple[float, float] = (0.95, 1.2)):
    """Cut an orthogonal slab from the crystal with ``direction`` along the beam (z).

    The slab is a box Lx × Ly × thickness cut from the infinite crystal; the multislice treats
    it as laterally periodic, so for tilted (aperiodic) projections there is a seam at the box
    edge. A box edge that is not commensurate with the lattice planes it cuts holds the wrong
    number of planes (for WO3 at 1.28 nm up to 9 % too few atoms), so with ``match_density``
    Lx and Ly are chosen within ``search_range`` × lateral_nm such that the box's mass density
    matches the crystal's (to < 0.5 % in practice; the result reports it).

    Args:
        phase: the crystal phase.
        direction: (3,) beam direction in the crystal's Cartesian frame.
        lateral_nm: nominal box edge in x and y, nm.
        thickness_nm: box depth along the beam, nm.
        unit_cell: an `ase.Atoms` to use instead of ``phase.unit_cell()`` (user CIF).
        match_density: choose Lx, Ly for the right density (else Lx = Ly = lateral_nm).
        search_range: range of Lx/lateral_nm and Ly/lateral_nm searched.

    Returns:
        (`ase.Atoms` with an orthogonal cell (Å) and pbc, density ratio box/crystal).
    """
    from ase import Atoms  # optional 'physics' extra
    from ase.data import atomic_masses
    cell_atoms = phase.unit_cell() if unit_cell is None else unit_cell
    beam = np.asarray(direction, dtype=float)
    beam /= np.linalg.norm(beam)
    # For the tilt series (beam in the a–b plane) x is the a×b normal, along which the
    # crystal's projected density is periodic.
    helper = np.array([0.0, 0.0, 1.0]) if abs(beam[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x_axis = helper - (helper @ beam) * beam
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(beam, x_axis)
    rotation = np.stack([x_axis, y_axis, beam])  # rows: new axes in old coordinates
    high_factor = search_range[1] if match_density else 1.0
    lateral_max, depth = 10.0 * lateral_nm * high_factor, 10.0 * thickness_nm
    box_corners = np.array([[i * lateral_max, j * lateral_max, k * depth]
                            for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    corners_crystal = box_corners @ rotation  # back to crystal Cartesian coordinates
    lattice = np.asarray(cell_atoms.cell)
    fractional = corners_crystal @ np.linalg.inv(lattice)
    low = np.floor(fractional.min(axis=0)).astype(int) - 1
    high = np.ceil(fractional.max(axis=0)).astype(int) + 1
    grid = np.stack(np.meshgrid(*[np.arange(lo, hi) for lo, hi in zip(low, high)],
                                indexing="ij"), axis=-1).reshape(-1, 3)
    base_positions = cell_atoms.get_positions()
    translations = grid @ lattice
    positions = (translations[:, None, :] + base_positions[None, :, :]).reshape(-1, 3)
    numbers = np.tile(cell_atoms.get_atomic_numbers(), len(grid))
    rotated = positions @ rotation.T
    keep = np.all((rotated >= 0.0) & (rotated < [lateral_max, lateral_max, depth]), axis=1)
    numbers, rotated = numbers[keep], rotated[keep]
    reference = atomic_masses[cell_atoms.get_atomic_numbers()].sum() / cell_atoms.get_volume()
    lx = ly = 10.0 * lateral_nm
    if match_density:
        candidates = 10.0 * lateral_nm * np.linspace(search_range[0], search_range[1], 241)
        # x first with y at its largest (least noisy), then y with the chosen x.
        errors = [abs(_mass_density_ratio(numbers, rotated, (c, lateral_max, depth), reference) - 1)
                  for c in candidates]
        lx = float(candidates[int(np.argmin(errors))])
        errors = [abs(_mass_density_ratio(numbers, rotated, (lx, c, depth), reference) - 1)
                  for c in candidates]
        ly = float(candidates[int(np.argmin(errors))])
    extent = np.array([lx, ly, depth])
    inside = np.all((rotated >= 0.0) & (rotated < extent), axis=1)
    ratio = float(_mass_density_ratio(numbers, rotated, extent, reference))
    return Atoms(numbers=numbers[inside], positions=rotated[inside], cell=np.diag(extent),
                 pbc=True), ratio


# --- Amorphous carbon support film -------------------------------------------------------------
#
# Density: evaporated (arc or e-beam) carbon films, the usual TEM support films, have
# 1.75-2.2 g/cm³: 1.75 g/cm³ for the 1-16 nm films measured by M. Wanner, D. Bach,
# D. Gerthsen, R. Werner, B. Tesche, Ultramicroscopy 106 (2006) 341 (doi
# 10.1016/j.ultramic.2005.10.004); about 1.9-2.0 for evaporated and up to 2.2 for sputtered
# a-C in the review table of J. Robertson, Mater. Sci. Eng. R 37 (2002) 129 (values written
# from memory of that table, not checked against it). 2.0 g/cm³ is the middle of that range;
# the HAADF signal of a film scales with its areal mass, so another density is a thickness
# rescaled by density / 2.0.
CARBON_FILM_DENSITY_G_CM3 = 2.0
CARBON_FILM_DENSITY_RANGE_G_CM3 = (1.75, 2.2)
# Shortest C-C distance of amorphous carbon ≈ the sp2 bond, 1.42 Å; a hard-core distance of
# 1.4 Å keeps the random structure free of unphysically close pairs.
CARBON_MIN_DISTANCE_ANGSTROM = 1.4
CARBON_MOLAR_MASS_G_MOL = 12.011  # IUPAC conventional standard atomic weight of C
_AVOGADRO = 6.02214076e23


@dataclasses.dataclass(frozen=True)
class AmorphousPhase:
    """An amorphous material built as a seeded random structure (the support film).

    The structure is random sequential addition of hard spheres: uniform random positions,
    each rejected if it lies closer than ``min_distance_angstrom`` to an accepted atom
    (periodically in x, y and z), until the box holds the number of atoms of the density.
    A hard-core gas at the right density, not a bonded sp2/sp3 network: the high-angle
    (55-250 mrad) signal is thermal-diffuse, incoherent scattering from single atoms, which
    depends on the atoms per area and hardly on the short-range order.

    Attributes:
        material: chemical symbol ("C").
        phase: "amorphous".
        element: the element the structure is made of.
        density_g_cm3: mass density, g/cm³.
        min_distance_angstrom: hard-core distance, Å.
        molar_mass_g_mol: molar mass of the element, g/mol.
        u_iso: isotropic mean-square displacement per element, Å² (frozen phonons on top).
        source: where the density and distances come from.
        notes: approximations made.
    """

    material: str
    phase: str
    element: str
    density_g_cm3: float
    min_distance_angstrom: float
    molar_mass_g_mol: float
    u_iso: dict
    source: str
    notes: str = ""

    @property
    def key(self) -> str:
        return f"{self.material}/{self.phase}"

    @property
    def number_density_per_A3(self) -> float:
        """Atoms per Å³ at the phase's density."""
        return self.density_g_cm3 / self.molar_mass_g_mol * _AVOGADRO * 1.0e-24

    def sigmas(self) -> dict:
        """Frozen-phonon displacement s.d. per element and direction, Å."""
        return {element: math.sqrt(u) for element, u in self.u_iso.items()}

    def as_dict(self) -> dict:
        return {"material": self.material, "phase": self.phase, "element": self.element,
                "density_g_cm3": self.density_g_cm3,
                "min_distance_angstrom": self.min_distance_angstrom,
                "molar_mass_g_mol": self.molar_mass_g_mol, "u_iso_A2": dict(self.u_iso),
                "structure": "random sequential addition of hard spheres, periodic box",
                "source": self.source, "notes": self.notes}


AMORPHOUS_CARBON = AmorphousPhase(
    material="C", phase="amorphous", element="C", density_g_cm3=CARBON_FILM_DENSITY_G_CM3,
    min_distance_angstrom=CARBON_MIN_DISTANCE_ANGSTROM,
    molar_mass_g_mol=CARBON_MOLAR_MASS_G_MOL,
    # U_iso 0.005 Å² (B ≈ 0.4 Å²): a typical room-temperature magnitude for graphitic carbon,
    # chosen by hand like the oxides' values; on a random structure it matters little.
    u_iso={"C": 0.0050},
    source=("density of evaporated carbon films 1.75-2.2 g/cm3 (Wanner et al., Ultramicroscopy "
            "106 (2006) 341; Robertson, Mater. Sci. Eng. R 37 (2002) 129), 2.0 used; hard-core "
            "distance 1.4 A ~ the sp2 C-C bond 1.42 A"),
    notes="hard-core random structure at the right density, not a bonded sp2/sp3 network")

AMORPHOUS_PHASES = {AMORPHOUS_CARBON.key: AMORPHOUS_CARBON}


def _minimum_image(delta: np.ndarray, extent: np.ndarray) -> np.ndarray:
    return delta - extent * np.round(delta / extent)


def amorphous_positions(extent_angstrom, number_density_per_A3: float,
                        min_distance_angstrom: float, seed: int, *,
                        batch_size: int = 512, max_batches: int = 1000000) -> np.ndarray:
    """Random sequential addition of hard spheres in a periodic box, vectorised in batches.

    Each batch proposes uniform random points; a point is rejected if it lies within
    ``min_distance_angstrom`` (minimum image, periodic in all three directions) of an
    accepted atom or of an earlier point of the same batch, so the result is hard-core
    however the batches fall. Accepted atoms are kept in a cell list (cell edge ≥ the
    hard-core distance, so only the 27 neighbouring cells need checking).

    Args:
        extent_angstrom: (3,) box edges Lx, Ly, Lz, Å (each ≥ 3 × the hard-core distance).
        number_density_per_A3: target atoms per Å³; the box gets round(density × volume).
        min_distance_angstrom: hard-core distance d, Å.
        seed: seed of the positions (same seed, same structure).
        batch_size: points proposed per batch.
        max_batches: give up (ValueError) after this many batches (too dense to fill).

    Returns:
        (N, 3) float64 positions in [0, L), Å.
    """
    extent = np.asarray(extent_angstrom, dtype=np.float64)
    d = float(min_distance_angstrom)
    cells = np.floor(extent / d).astype(np.int64)
    if np.any(cells < 3):
        raise ValueError(f"box {extent.tolist()} A too small for hard-core distance {d} A")
    target = int(round(number_density_per_A3 * float(np.prod(extent))))
    cell_size = extent / cells
    # A cell of edge < 2d/√3·... holds few hard-core points; 16 slots is far more than needed.
    slots = 16
    occupancy = np.full((*cells, slots), -1, dtype=np.int64)
    counts = np.zeros(tuple(cells), dtype=np.int64)
    positions = np.empty((target, 3), dtype=np.float64)
    accepted = 0
    rng = np.random.default_rng(seed)
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for _ in range(max_batches):
        if accepted >= target:
            break
        candidates = rng.uniform(size=(batch_size, 3)) * extent
        cell_index = np.minimum((candidates / cell_size).astype(np.int64), cells - 1)
        # Conflicts with accepted atoms: the slots of the 27 neighbouring cells.
        neighbours = np.mod(cell_index[:, None, :] + offsets[None], cells)  # (B, 27, 3)
        ids = occupancy[neighbours[..., 0], neighbours[..., 1], neighbours[..., 2]]  # (B,27,S)
        ids = ids.reshape(batch_size, -1)
        valid = ids >= 0
        near = positions[np.where(valid, ids, 0)]  # (B, 27·S, 3)
        delta = _minimum_image(near - candidates[:, None, :], extent)
        too_close = valid & (np.einsum("bkx,bkx->bk", delta, delta) < d * d)
        keep = ~too_close.any(axis=1)
        survivors = np.flatnonzero(keep)
        # Conflicts within the batch: reject a point close to any earlier surviving point.
        if survivors.size > 1:
            points = candidates[survivors]
            delta = _minimum_image(points[:, None, :] - points[None, :, :], extent)
            close = np.einsum("ijx,ijx->ij", delta, delta) < d * d
            close = np.tril(close, k=-1)
            survivors = survivors[~close.any(axis=1)]
        survivors = survivors[: target - accepted]
        new = np.arange(accepted, accepted + survivors.size)
        positions[new] = candidates[survivors]
        # Slots: the cell's count plus the point's rank among this batch's points in its cell.
        flat = np.ravel_multi_index(tuple(cell_index[survivors].T), tuple(cells))
        order = np.argsort(flat, kind="stable")
        sorted_flat = flat[order]
        first = np.searchsorted(sorted_flat, sorted_flat, side="left")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size) - first
        slot = counts.reshape(-1)[flat] + rank
        if slot.size and slot.max() >= slots:
            raise RuntimeError("cell list overflow")  # impossible for cell edge < 2 d
        occupancy.reshape(-1, slots)[flat, slot] = new
        np.add.at(counts.reshape(-1), flat, 1)
        accepted += survivors.size
    if accepted < target:
        raise ValueError(f"could place only {accepted} of {target} atoms at hard-core distance "
                         f"{d} A; the density is too high for random sequential addition")
    return positions


def amorphous_slab(phase: AmorphousPhase, lateral_nm: float, thickness_nm: float, seed: int):
    """A seeded amorphous slab, periodic laterally (and along the beam), as an `ase.Atoms`.

    Args:
        phase: the amorphous phase (e.g. `AMORPHOUS_CARBON`).
        lateral_nm: box edge in x and y, nm.
        thickness_nm: box depth along the beam (z), nm.
        seed: structure seed (same seed, same atoms).

    Returns:
        `ase.Atoms` with an orthogonal cell (Å) and pbc (needs the optional ASE dependency).
    """
    from ase import Atoms  # optional 'physics' extra
    extent = np.array([10.0 * lateral_nm, 10.0 * lateral_nm, 10.0 * thickness_nm])
    positions = amorphous_positions(extent, phase.number_density_per_A3,
                                    phase.min_distance_angstrom, seed)
    return Atoms(symbols=[phase.element] * len(positions), positions=positions,
                 cell=np.diag(extent), pbc=True)

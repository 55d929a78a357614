"""Frozen-phonon multislice HAADF thickness series with abTEM (paper Sec. 2.1.3).

One run per (phase, orientation) gives the whole thickness series: the slab is as deep as the
largest thickness and abTEM detects at intermediate exit planes. The intensity is the fraction
of the incident probe intensity scattered onto the detector (the probe is normalised to 1), as
angle-resolved rings from abTEM's FlexibleAnnularDetector, weighted afterwards by the measured
detector sensitivity (or a flat 55–250 mrad annulus); both are stored. The amorphous carbon
support film (`simulate_film_series`) uses the same microscope, detector and numerics, with
independent random structures as its configurations.

Imports abTEM and ASE lazily: they are the optional ``physics`` extra.
"""

from __future__ import annotations

import dataclasses
import platform
import time
import zlib

import numpy as np

from hagg_tf.stem import crystals, detector


@dataclasses.dataclass(frozen=True)
class MultisliceSettings:
    """Numerical and microscope settings of the reference simulations.

    Attributes:
        energy_ev: acceleration voltage × e, eV (300 kV).
        semiangle_mrad: probe semi-convergence angle β, mrad.
        defocus_angstrom: probe defocus, Å. The table needs the HAADF signal averaged over
            probe positions, and that average does not depend on the probe's aberrations at all
            (see `simulate_thickness_series`); a probe defocused by more than the slab depth
            spreads over the whole box at every depth, so each run already averages over the
            cell and few positions suffice (a focused 0.6 Å probe on sparse W columns needs
            hundreds). Otherwise aberration-free (Cs-corrected).
        lateral_nm: nominal edge of the simulation box, nm; the actual Lx, Ly lie within
            0.95–1.2 × this, chosen so the box holds the crystal's density
            (`crystals.oriented_slab`).
        gpts: grid points per nominal edge; the sampling lateral / gpts (kept on the actual
            box) must be ≤ 0.0262 Å so the 2/3 antialiasing aperture passes 250 mrad at 300 kV
            (λ = 1.97 pm).
        slice_thickness_angstrom: multislice slice thickness, Å.
        max_thickness_nm: slab depth, nm (the table's largest thickness).
        exit_every_nm: thickness step of the table, nm (a multiple of the slice thickness).
        num_configs: frozen-phonon configurations.
        num_positions: probe positions, on a jittered (stratified random) grid.
        scan_fraction: the positions cover the central scan_fraction × box; 1 (the whole
            periodic box) makes every run an unbiased estimate of the position average.
        parametrization: atomic potential parametrization ("kirkland" as in paper ref. [21]).
        projection: "infinite" (each atom's projected potential in one slice) or "finite".
        bin_step_mrad: width of the detector's angular bins, mrad.
        seed: base seed of phonon displacements and probe positions.
    """

    energy_ev: float = 300e3
    semiangle_mrad: float = 21.1
    defocus_angstrom: float = 1000.0
    lateral_nm: float = 1.28
    gpts: int = 512
    slice_thickness_angstrom: float = 2.0
    max_thickness_nm: float = 64.0
    exit_every_nm: float = 1.0
    num_configs: int = 2
    num_positions: int = 10
    scan_fraction: float = 1.0
    parametrization: str = "kirkland"
    projection: str = "infinite"
    bin_step_mrad: float = 1.0
    seed: int = 20231028

    def __post_init__(self):
        slices_per_exit = self.exit_every_nm * 10.0 / self.slice_thickness_angstrom
        if abs(slices_per_exit - round(slices_per_exit)) > 1e-9:
            raise ValueError("exit_every_nm must be a multiple of slice_thickness_angstrom")
        wavelength = _wavelength_angstrom(self.energy_ev)
        max_angle = wavelength / (3.0 * self.sampling_angstrom) * 1000.0
        if max_angle < detector.FLAT_OUTER_MRAD:
            raise ValueError(
                f"sampling {self.sampling_angstrom:.4f} A reaches only {max_angle:.0f} mrad; "
                f"the detector needs {detector.FLAT_OUTER_MRAD:.0f} mrad")

    @property
    def sampling_angstrom(self) -> float:
        return 10.0 * self.lateral_nm / self.gpts

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _wavelength_angstrom(energy_ev: float) -> float:
    """Relativistic electron wavelength, Å."""
    electron_rest_energy_ev = 510998.95
    hc_ev_angstrom = 12398.419843
    momentum_ev = np.sqrt(energy_ev * (energy_ev + 2 * electron_rest_energy_ev))
    return float(hc_ev_angstrom / momentum_ev)


@dataclasses.dataclass(frozen=True)
class Orientation:
    """A viewing direction of the systematic tilt series or the random tilt.

    Attributes:
        label: table label ("tilt00.00" … "tilt90.00", "random").
        tilt_deg: angle from [100] towards [010] (NaN for the random tilt).
        direction: (3,) unit beam direction in the crystal's Cartesian frame.
    """

    label: str
    tilt_deg: float
    direction: tuple[float, float, float]


def orientations(phase: crystals.CrystalPhase, count: int = 9) -> list[Orientation]:
    """The paper's ten orientations of one phase: ``count`` systematic tilts plus one random."""
    cell = np.asarray(phase.unit_cell().cell)
    result = []
    for angle in crystals.systematic_tilt_angles(count):
        direction = crystals.viewing_direction(cell, angle)
        result.append(Orientation(f"tilt{angle:05.2f}", float(angle), tuple(map(float, direction))))
    # The random tilt is fixed per phase (seeded by the phase name) so tables are reproducible.
    direction = crystals.random_direction(zlib.crc32(phase.key.encode()))
    result.append(Orientation("random", float("nan"), tuple(map(float, direction))))
    return result


def _fft_size(minimum: int) -> int:
    """Smallest even size >= minimum with prime factors 2, 3, 5, 7 only (fast FFTs)."""
    size = minimum + (minimum % 2)
    while True:
        rest = size
        for factor in (2, 3, 5, 7):
            while rest % factor == 0:
                rest //= factor
        if rest == 1:
            return size
        size += 2


def probe_positions(settings: MultisliceSettings, seed: int, extent_angstrom) -> np.ndarray:
    """(P, 2) jittered-grid probe positions in Å inside the central scan window of the box."""
    rng = np.random.default_rng(seed)
    extent = np.asarray(extent_angstrom, dtype=float)
    columns = int(np.ceil(np.sqrt(settings.num_positions)))
    rows = int(np.ceil(settings.num_positions / columns))
    window = settings.scan_fraction * extent
    start = 0.5 * (extent - window)
    cells = [(i, j) for i in range(rows) for j in range(columns)][: settings.num_positions]
    cells = np.asarray(cells, dtype=float)
    jitter = rng.uniform(size=cells.shape)
    return start + (cells + jitter) * (window / [rows, columns])


def simulate_thickness_series(phase: crystals.CrystalPhase, orientation: Orientation,
                              settings: MultisliceSettings, *, unit_cell=None) -> dict:
    """Run one frozen-phonon multislice thickness series.

    The table value is the detector signal averaged over probe positions r_p in the periodic
    box (a particle pixel sees the lattice at a random offset). For incident wave
    ψ = Σ_q a_q e^{iχ(q)} e^{iq·(r − r_p)}, multislice is linear, so the exit wave in direction
    k is Σ_q S(k, q) a_q e^{iχ(q)} e^{−iq·r_p}; averaging |·|² over r_p removes every q ≠ q′ term:
    ⟨I⟩ = Σ_q |a_q|² Σ_{k∈det} |S(k, q)|², independent of the aberration phase χ. Each run at a
    uniformly random position is therefore an unbiased estimate of ⟨I⟩ for any defocus, and a
    strongly defocused probe makes that estimate low-variance. The standard errors returned are
    over all (configuration, position) runs.

    Args:
        phase: crystal phase.
        orientation: viewing direction.
        settings: numerical settings.
        unit_cell: optional `ase.Atoms` replacing the built-in structure (user CIF).

    Returns:
        A JSON-able dict with ``thickness_nm`` (T,), ``intensity`` (T,) sensitivity-weighted,
        ``intensity_flat`` (T,), their standard errors over phonon configurations
        (``*_sem``), ``total_intensity`` (T,) the probe intensity left inside the
        antialiasing aperture, the atoms count, run time and settings.
    """
    import abtem  # optional 'physics' extra

    started = time.time()
    seed = settings.seed + zlib.crc32(f"{phase.key}/{orientation.label}".encode()) % 100000
    slab, density_ratio = crystals.oriented_slab(phase, np.asarray(orientation.direction),
                                                 settings.lateral_nm, settings.max_thickness_nm,
                                                 unit_cell=unit_cell)
    frozen = abtem.FrozenPhonons(slab, num_configs=settings.num_configs, sigmas=phase.sigmas(),
                                 ensemble_mean=False, seed=seed)
    series = _detect_series(frozen, np.diag(np.asarray(slab.cell))[:2], settings, seed)
    return {
        "material": phase.material, "phase": phase.phase, "orientation": orientation.label,
        "tilt_deg": orientation.tilt_deg, "direction": list(orientation.direction),
        **series,
        "num_atoms": int(len(slab)), "box_angstrom": [float(v) for v in np.diag(np.asarray(slab.cell))],
        "density_ratio": density_ratio, "seed": int(seed),
        "runtime_s": time.time() - started,
        "settings": settings.as_dict(), "crystal": phase.as_dict(),
    }


def exit_planes(settings: MultisliceSettings) -> tuple[int, ...]:
    """Exit-plane slice indices of the thickness series: -1 (the entrance, thickness 0), then
    after every ``exit_every_nm``, down to ``max_thickness_nm``.

    Given explicitly because abTEM's integer form (every n slices) leaves out the entrance
    when the slab is only n slices deep.
    """
    num_slices = int(round(settings.max_thickness_nm * 10.0 / settings.slice_thickness_angstrom))
    exit_every = int(round(settings.exit_every_nm * 10.0 / settings.slice_thickness_angstrom))
    return tuple(range(-1, num_slices, exit_every))


def _detect_series(structures, extent_angstrom, settings: MultisliceSettings, seed: int) -> dict:
    """Scan the probe through the potential of ``structures`` (an abTEM frozen-phonon or atoms
    ensemble over a box of lateral ``extent_angstrom``, (2,) Å) at the seeded probe positions;
    detector signal per exit plane.

    Returns the table columns (``thickness_nm``, ``intensity``, ``intensity_flat``, their
    standard errors over all (configuration, position) runs, ``total_intensity``),
    ``max_angle_mrad``, and the grid (``gpts``) and ``probe_positions_angstrom`` used.
    """
    import abtem  # optional 'physics' extra

    # Keep the sampling of the settings (it fixes the largest angle) on the box given.
    gpts = tuple(_fft_size(int(np.ceil(length / settings.sampling_angstrom)))
                 for length in extent_angstrom)
    potential = abtem.Potential(structures, gpts=gpts,
                                slice_thickness=settings.slice_thickness_angstrom,
                                parametrization=settings.parametrization,
                                projection=settings.projection, exit_planes=exit_planes(settings))
    positions = probe_positions(settings, seed, extent_angstrom)
    probe = abtem.Probe(energy=settings.energy_ev, semiangle_cutoff=settings.semiangle_mrad,
                        defocus=settings.defocus_angstrom)
    rings = abtem.FlexibleAnnularDetector(step_size=settings.bin_step_mrad)
    measurement = probe.scan(potential, scan=abtem.CustomScan(positions), detectors=rings)
    measurement = measurement.compute(progress_bar=False, scheduler="synchronous")
    # axes: (configs, exit planes, positions, radial bins, azimuthal bins); abTEM drops the
    # axes of length 1, which a reshape restores (it keeps the order).
    planes = potential.exit_planes
    array = np.asarray(measurement.array, dtype=np.float64)
    values = array.reshape(settings.num_configs, len(planes), len(positions),
                           *array.shape[-2:]).sum(axis=-1)
    radial_step = float(measurement.radial_sampling)
    edges = float(measurement.radial_offset) + radial_step * np.arange(values.shape[-1] + 1)
    weighted = values @ detector.bin_weights(edges, "sensitivity")
    flat = values @ detector.bin_weights(edges, "flat")
    # Every (configuration, position) run is an independent unbiased estimate: (runs, exit planes).
    runs_weighted = np.moveaxis(weighted, 1, -1).reshape(-1, weighted.shape[1])
    runs_flat = np.moveaxis(flat, 1, -1).reshape(-1, flat.shape[1])
    runs = runs_weighted.shape[0]
    sem = (lambda a: a.std(axis=0, ddof=1) / np.sqrt(runs) if runs > 1 else np.zeros(a.shape[1]))
    thickness_nm = (np.asarray(planes) + 1) * settings.slice_thickness_angstrom / 10.0
    # abTEM's first exit plane is the entrance surface (thickness 0): keep it, it must be ≈ 0.
    return {
        "thickness_nm": thickness_nm.tolist(),
        "intensity": runs_weighted.mean(axis=0).tolist(),
        "intensity_sem": sem(runs_weighted).tolist(),
        "intensity_flat": runs_flat.mean(axis=0).tolist(),
        "intensity_flat_sem": sem(runs_flat).tolist(),
        "total_intensity": values.sum(axis=-1).mean(axis=(0, 2)).tolist(),
        "max_angle_mrad": float(edges[-1]),
        "gpts": list(gpts), "probe_positions_angstrom": positions.tolist(),
    }


FILM_ORIENTATION = "random"  # an amorphous film has no orientation; the table's label


def simulate_film_series(phase: crystals.AmorphousPhase, settings: MultisliceSettings) -> dict:
    """Frozen-phonon multislice thickness series of an amorphous film (the support film).

    Each of ``settings.num_configs`` configurations is an independent amorphous structure
    (`crystals.amorphous_slab`, its own seed) with its own thermal displacements (Gaussian,
    σ² = U_iso per direction), so the standard errors cover structure and phonons. The box is
    ``settings.lateral_nm`` square (the builder fills it at the phase's density exactly, so no
    edge matching is needed) and as deep as ``settings.max_thickness_nm``; probe positions
    and the position average are as in `simulate_thickness_series`.

    Args:
        phase: the amorphous phase (e.g. `crystals.AMORPHOUS_CARBON`).
        settings: numerical settings.

    Returns:
        The same JSON-able dict as `simulate_thickness_series` with orientation "random"
        and ``structure_seeds`` instead of a crystal direction.
    """
    import abtem  # optional 'physics' extra

    started = time.time()
    seed = settings.seed + zlib.crc32(f"{phase.key}/{FILM_ORIENTATION}".encode()) % 100000
    streams = np.random.SeedSequence([seed, settings.num_configs]).spawn(settings.num_configs)
    structure_seeds = [int(stream.generate_state(1)[0]) for stream in streams]
    sigma = phase.sigmas()[phase.element]
    structures = []
    for stream, structure_seed in zip(streams, structure_seeds):
        slab = crystals.amorphous_slab(phase, settings.lateral_nm, settings.max_thickness_nm,
                                       structure_seed)
        thermal = np.random.default_rng(stream.spawn(1)[0]).normal(scale=sigma,
                                                                   size=(len(slab), 3))
        slab.positions = slab.positions + thermal
        slab.wrap()
        structures.append(slab)
    ensemble = abtem.AtomsEnsemble(structures, ensemble_mean=False)
    series = _detect_series(ensemble, np.diag(np.asarray(structures[0].cell))[:2], settings,
                            seed)
    return {
        "material": phase.material, "phase": phase.phase, "orientation": FILM_ORIENTATION,
        "tilt_deg": float("nan"), "direction": [0.0, 0.0, 1.0],
        **series,
        "num_atoms": int(len(structures[0])),
        "box_angstrom": [float(v) for v in np.diag(np.asarray(structures[0].cell))],
        "density_ratio": 1.0, "seed": int(seed), "structure_seeds": structure_seeds,
        "runtime_s": time.time() - started,
        "settings": settings.as_dict(), "crystal": phase.as_dict(),
    }


def software_versions() -> dict:
    """Versions recorded in the provenance."""
    import abtem
    import ase
    return {"abtem": abtem.__version__, "ase": ase.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform()}

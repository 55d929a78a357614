"""HAADF reference tables: intensity versus thickness per material, phase and orientation.

File format (plain text, version 1) — the shipped tables and user tables (e.g. exported
from STEMSIM) use the same format and the same loader:

    # any number of comment lines starting with '#'
    # provenance: {"single-line": "JSON object", "optional": true}
    material,phase,orientation,thickness_nm,intensity[,more columns]
    TiO2,rutile,tilt00.00,0.0,0.0
    TiO2,rutile,tilt00.00,1.0,0.00021
    ...

* ``material``: ``WO3`` or ``TiO2`` (case-insensitive; SPEC labels 0 and 1).
* ``phase``, ``orientation``: free labels without commas; each (material, phase, orientation)
  is one table. When rendering, a particle gets a uniformly random phase of its material and
  then a uniformly random orientation of that phase (paper Sec. 2.1.4).
* ``thickness_nm``: strictly increasing within a table, ≥ 0, at least two rows.
* ``intensity``: HAADF intensity as a fraction of the incident beam (0 ≤ I ≤ 1), finite.
  Other numeric columns may follow (the shipped file adds ``intensity_flat``, the flat
  55–250 mrad detector, and standard errors); pick one with ``load_tables(column=...)``.
* Rows of a table need not be contiguous; different tables may use different thickness
  grids. Between rows the intensity is interpolated linearly; beyond the last row it is
  extrapolated linearly with the slope of the table's last quarter (clamped at ≥ 0) — the
  shipped tables reach 64 nm, a particle diameter met by fewer than 1 in 10⁴ particles.

The amorphous carbon support film has its own file in the same format,
``hagg_tf/stem/data/carbon_film_table.csv`` (material ``C``, phase ``amorphous``, orientation
``random``, one table), loaded by `load_film_table`; `load_tables` rejects it (a film is not
a particle material).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import importlib.resources
import io
import json
from pathlib import Path

import numpy as np

from hagg_tf.model.parameters import TIO2, WO3

FORMAT_VERSION = 1
REQUIRED_COLUMNS = ("material", "phase", "orientation", "thickness_nm", "intensity")
MATERIAL_LABELS = {"wo3": WO3, "tio2": TIO2}
MATERIAL_NAMES = {WO3: "WO3", TIO2: "TiO2"}
SHIPPED_TABLES = "haadf_tables.csv"
PROVENANCE_PREFIX = "provenance:"
# The support film: material and phase as in hagg_tf.stem.crystals.AMORPHOUS_CARBON (the
# computation side; tables.py does not import it so that loading needs no ASE).
SHIPPED_FILM_TABLE = "carbon_film_table.csv"
FILM_MATERIAL = "C"
FILM_PHASE = "amorphous"
FILM_LABEL = -1  # not a particle material label (SPEC §3 has 0 = WO3 and 1 = TiO2 only)


class TableError(ValueError):
    """A HAADF table file is missing, malformed or physically invalid."""


@dataclasses.dataclass(frozen=True)
class HaadfTable:
    """One intensity-versus-thickness curve.

    Attributes:
        material: "WO3" or "TiO2" (or "C" for the support film, `load_film_table`).
        label: 0 (WO3) or 1 (TiO2); `FILM_LABEL` for the film.
        phase: phase label.
        orientation: orientation label.
        thickness_nm: (T,) strictly increasing thicknesses, nm.
        intensity: (T,) fraction of the incident beam on the detector.
        source: the file it came from (set by `load_film_table`; "<memory>" otherwise).
        sha256: hex digest of that file's text (None for tables built in memory).
        provenance: the file's parsed ``# provenance:`` JSON (set by `load_film_table`).
    """

    material: str
    label: int
    phase: str
    orientation: str
    thickness_nm: np.ndarray
    intensity: np.ndarray
    source: str = "<memory>"
    sha256: str | None = None
    provenance: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.material}/{self.phase}/{self.orientation}"

    def extended(self, far_nm: float = 1.0e4) -> tuple[np.ndarray, np.ndarray]:
        """Nodes (thickness, intensity) with one far node that encodes the linear extrapolation."""
        thickness, intensity = self.thickness_nm, self.intensity
        tail = thickness >= thickness[0] + 0.75 * (thickness[-1] - thickness[0])
        if tail.sum() >= 2:
            slope = float(np.polyfit(thickness[tail], intensity[tail], 1)[0])
        else:
            slope = float((intensity[-1] - intensity[-2]) / (thickness[-1] - thickness[-2]))
        far_value = max(0.0, intensity[-1] + slope * (far_nm - thickness[-1]))
        if far_value == 0.0 and slope < 0:
            # Where the extrapolation would cross zero, stop at zero there instead of at far_nm.
            zero_at = thickness[-1] - intensity[-1] / slope
            return np.append(thickness, [zero_at, far_nm]), np.append(intensity, [0.0, 0.0])
        return np.append(thickness, far_nm), np.append(intensity, far_value)

    def __call__(self, thickness_nm) -> np.ndarray:
        """Intensity at the given thicknesses (nm); 0 where the thickness is 0 (no material)."""
        nodes, values = self.extended()
        thickness_nm = np.asarray(thickness_nm, dtype=float)
        return np.where(thickness_nm > 0, np.interp(thickness_nm, nodes, values), 0.0)


class HaadfTables:
    """A validated set of HAADF tables covering both materials.

    Attributes:
        tables: the tables, in file order.
        provenance: the parsed ``# provenance:`` JSON (empty dict if absent).
        source: the file the tables came from (``hagg_tf:stem/data/...`` for the shipped ones,
            so that nothing machine-specific ends up in image metadata or records).
        column: the intensity column used.
        sha256: hex digest of the table file's text (None for tables built in memory).
    """

    def __init__(self, tables: list[HaadfTable], provenance: dict | None = None,
                 source: str = "<memory>", column: str = "intensity", sha256: str | None = None):
        self.tables = list(tables)
        self.provenance = dict(provenance or {})
        self.source = source
        self.column = column
        self.sha256 = sha256
        missing = [MATERIAL_NAMES[label] for label in (WO3, TIO2)
                   if not any(table.label == label for table in self.tables)]
        if missing:
            raise TableError(f"{source}: no table for material(s) {', '.join(missing)}")
        # Per material: phases, and per phase the table indices, for the two-stage random choice.
        self._phase_tables: dict[int, list[np.ndarray]] = {}
        for label in (WO3, TIO2):
            phases: dict[str, list[int]] = {}
            for position, table in enumerate(self.tables):
                if table.label == label:
                    phases.setdefault(table.phase, []).append(position)
            self._phase_tables[label] = [np.asarray(v) for v in phases.values()]
        self._nodes = [table.extended() for table in self.tables]
        self._max_thickness = float(min(table.thickness_nm[-1] for table in self.tables))

    def __len__(self) -> int:
        return len(self.tables)

    @property
    def keys(self) -> list[str]:
        return [table.key for table in self.tables]

    @property
    def max_thickness_nm(self) -> float:
        """The smallest of the tables' largest thicknesses (beyond it values are extrapolated)."""
        return self._max_thickness

    def phases(self, label: int) -> list[str]:
        return [self.tables[int(group[0])].phase for group in self._phase_tables[label]]

    def choose(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random table per particle: uniform phase of its material, then uniform orientation.

        Args:
            labels: (N,) material labels.
            rng: random generator (two uniform draws per particle, in particle order).

        Returns:
            (N,) int table indices.
        """
        labels = np.asarray(labels)
        draws = rng.random((labels.shape[0], 2))
        chosen = np.empty(labels.shape[0], dtype=np.int64)
        for label, groups in self._phase_tables.items():
            mask = labels == label
            if not mask.any():
                continue
            phase_index = np.minimum((draws[mask, 0] * len(groups)).astype(int), len(groups) - 1)
            sizes = np.array([len(group) for group in groups])[phase_index]
            orientation_index = np.minimum((draws[mask, 1] * sizes).astype(int), sizes - 1)
            chosen[mask] = [groups[p][o] for p, o in zip(phase_index, orientation_index)]
        return chosen

    def intensity(self, table_index: int, thickness_nm: np.ndarray) -> np.ndarray:
        """Intensity of table ``table_index`` at ``thickness_nm`` (0 where thickness is 0)."""
        nodes, values = self._nodes[table_index]
        result = np.interp(thickness_nm, nodes, values)
        # Exactly zero where there is no material (abTEM leaves ~1e-14 at zero thickness), so
        # empty pixels draw no shot noise.
        result[thickness_nm <= 0] = 0.0
        return result

    def to_text(self, extra_columns: dict[str, list[np.ndarray]] | None = None,
                comments: list[str] | None = None) -> str:
        """Serialise in the documented format (intensity column named ``intensity``)."""
        return tables_text(self.tables, self.provenance, extra_columns, comments)


def tables_text(table_list: list[HaadfTable], provenance: dict,
                extra_columns: dict[str, list[np.ndarray]] | None = None,
                comments: list[str] | None = None) -> str:
    """Serialise tables (particle tables or the film table) in the documented format.

    Args:
        table_list: the tables, written in this order.
        provenance: JSON-able dict written as the ``# provenance:`` line.
        extra_columns: more numeric columns, per name one (T,) array per table.
        comments: comment lines written after the format line.

    Returns:
        The file text.
    """
    extra_columns = extra_columns or {}
    out = io.StringIO()
    out.write(f"# hagg_tf HAADF reference tables, format version {FORMAT_VERSION}\n")
    out.write("# intensity: fraction of the incident beam on the detector; thickness in nm.\n")
    for line in comments or []:
        out.write(f"# {line}\n")
    out.write(f"# {PROVENANCE_PREFIX} {json.dumps(provenance, sort_keys=True)}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(REQUIRED_COLUMNS) + list(extra_columns))
    for position, table in enumerate(table_list):
        for row, (t, value) in enumerate(zip(table.thickness_nm, table.intensity)):
            extras = [f"{extra_columns[name][position][row]:.6e}" for name in extra_columns]
            writer.writerow([table.material, table.phase, table.orientation, f"{t:g}",
                             f"{value:.6e}"] + extras)
    return out.getvalue()


def _parse(text: str, source: str, column: str) -> HaadfTables:
    names = {key: MATERIAL_NAMES[label] for key, label in MATERIAL_LABELS.items()}
    provenance, tables = _parse_tables(text, source, column, names)
    return HaadfTables(tables, provenance, source, column,
                       hashlib.sha256(text.encode()).hexdigest())


def _parse_tables(text: str, source: str, column: str,
                  names: dict[str, str]) -> tuple[dict, list[HaadfTable]]:
    """Parse and validate the documented format; ``names`` maps lower-case material → name."""
    provenance: dict = {}
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if body.startswith(PROVENANCE_PREFIX):
                try:
                    provenance = json.loads(body[len(PROVENANCE_PREFIX):])
                except json.JSONDecodeError as error:
                    raise TableError(f"{source}:{number}: provenance is not valid JSON ({error})") from None
            continue
        if stripped:
            lines.append((number, stripped))
    if not lines:
        raise TableError(f"{source}: no header or data rows")
    header = [name.strip() for name in next(csv.reader([lines[0][1]]))]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise TableError(f"{source}: header lacks column(s) {', '.join(missing)} "
                         f"(need {', '.join(REQUIRED_COLUMNS)})")
    if column not in header:
        raise TableError(f"{source}: no intensity column {column!r} (columns: {', '.join(header)})")
    where = {name: header.index(name) for name in header}
    rows: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for number, line in lines[1:]:
        fields = [field.strip() for field in next(csv.reader([line]))]
        if len(fields) != len(header):
            raise TableError(f"{source}:{number}: expected {len(header)} fields, got {len(fields)}")
        material = fields[where["material"]]
        if material.lower() not in names:
            raise TableError(f"{source}:{number}: unknown material {material!r} "
                             f"(known: {', '.join(names.values())})")
        try:
            thickness = float(fields[where["thickness_nm"]])
            value = float(fields[where[column]])
        except ValueError:
            raise TableError(f"{source}:{number}: thickness and {column} must be numbers") from None
        if not (np.isfinite(thickness) and np.isfinite(value)):
            raise TableError(f"{source}:{number}: thickness and {column} must be finite")
        if thickness < 0 or value < 0 or value > 1:
            raise TableError(f"{source}:{number}: need thickness >= 0 and 0 <= {column} <= 1 "
                             f"(fraction of the incident beam), got {thickness}, {value}")
        key = (names[material.lower()], fields[where["phase"]], fields[where["orientation"]])
        rows.setdefault(key, []).append((thickness, value))
    tables = []
    for (material, phase, orientation), values in rows.items():
        values_array = np.asarray(values, dtype=np.float64)
        thickness = values_array[:, 0]
        if len(thickness) < 2 or np.any(np.diff(thickness) <= 0):
            raise TableError(f"{source}: table {material}/{phase}/{orientation} needs at least two "
                             "rows with strictly increasing thickness_nm")
        tables.append(HaadfTable(material, MATERIAL_LABELS.get(material.lower(), FILM_LABEL),
                                 phase, orientation, thickness, values_array[:, 1]))
    return provenance, tables


def _read_table_file(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise TableError(f"{path}: HAADF table file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TableError(f"{path}: cannot read HAADF table file ({error})") from None


def load_tables(path: str | Path | None = None, column: str = "intensity") -> HaadfTables:
    """Load and validate HAADF tables.

    Args:
        path: a table file in the documented format; None loads the shipped abTEM tables.
        column: the intensity column to use: "intensity" (detector with the measured
            sensitivity curve) or, for the shipped file, "intensity_flat" (flat 55–250 mrad).

    Returns:
        The validated tables.

    Raises:
        TableError: missing file, malformed content or invalid values (message names the file).
    """
    if path is None:
        return _shipped_tables(column)
    path = Path(path)
    return _parse(_read_table_file(path), str(path), column)


def _shipped_text(filename: str, missing_hint: str) -> tuple[str, str]:
    """(text, source name) of a table file shipped in ``hagg_tf/stem/data/``.

    Raises:
        TableError: the file is missing (the message says how to make it).
    """
    resource = importlib.resources.files("hagg_tf.stem") / "data" / filename
    try:
        return resource.read_text(), f"hagg_tf:stem/data/{filename}"
    except FileNotFoundError:
        raise TableError(f"{resource}: {missing_hint}") from None


@functools.lru_cache(maxsize=4)
def _shipped_tables(column: str) -> HaadfTables:
    text, source = _shipped_text(SHIPPED_TABLES, "the shipped HAADF tables are missing; create "
                                 "them with tools/make_haadf_tables.py or pass a table file")
    return _parse(text, source, column)


def load_film_table(path: str | Path | None = None, column: str = "intensity") -> HaadfTable:
    """Load and validate the HAADF table of the amorphous carbon support film.

    The file has the documented format with exactly one table, material ``C``, phase
    ``amorphous`` (any orientation label; the shipped one is ``random``), thickness starting
    at 0. Its intensity is the fraction of the beam that the film alone scatters onto the
    detector, per film thickness (nm).

    Args:
        path: a film table file; None loads the shipped abTEM table
            ``hagg_tf/stem/data/carbon_film_table.csv``.
        column: "intensity" (measured detector sensitivity) or "intensity_flat" (flat
            55–250 mrad annulus), as for the particle tables.

    Returns:
        The table (material "C", label `FILM_LABEL`), with its source, sha256 and provenance.

    Raises:
        TableError: missing file, malformed content, invalid values, or not exactly one
            C/amorphous table (the message names the file).
    """
    if path is None:
        return _shipped_film_table(column)
    path = Path(path)
    return _parse_film(_read_table_file(path), str(path), column)


def _parse_film(text: str, source: str, column: str) -> HaadfTable:
    provenance, tables = _parse_tables(text, source, column,
                                       {FILM_MATERIAL.lower(): FILM_MATERIAL})
    if len(tables) != 1 or tables[0].phase != FILM_PHASE:
        found = ", ".join(table.key for table in tables)
        raise TableError(f"{source}: a film table file holds exactly one {FILM_MATERIAL}/"
                         f"{FILM_PHASE} table, found: {found}")
    table = tables[0]
    if table.thickness_nm[0] != 0.0:
        raise TableError(f"{source}: the film table must start at thickness 0 nm, "
                         f"starts at {table.thickness_nm[0]:g}")
    return dataclasses.replace(table, source=source, provenance=provenance,
                               sha256=hashlib.sha256(text.encode()).hexdigest())


@functools.lru_cache(maxsize=4)
def _shipped_film_table(column: str) -> HaadfTable:
    text, source = _shipped_text(SHIPPED_FILM_TABLE, "the shipped support-film table is "
                                 "missing; create it with tools/make_haadf_tables.py "
                                 "--phases=C/amorphous or pass a file")
    return _parse_film(text, source, column)
